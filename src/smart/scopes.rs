//! A token's SMART scopes, parsed once when the token is verified.
//!
//! `context/Type.perms`: context `patient`, `user` or `system`; Type a resource type or `*`;
//! perms a non-empty subset of `cruds` in that order (v2), or v1's `read` (= `rs`), `write`
//! (= `cud`) and `*` (all). Anything else grants nothing: other scopes (`openid`, `launch`,
//! `offline_access`…) are not about data; a data scope fhir-fence cannot read (an unknown type
//! among them), or one narrowed
//! by a query (`patient/Observation.rs?category=laboratory`, whose restriction fhir-fence does
//! not enforce), grants nothing rather than more than it says.
use serde_json::Value;

/// Where a scope applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// The launch patient's compartment only.
    Patient,
    /// Whatever the user may see (the tenant's data, here).
    User,
    /// A backend service: the tenant's data.
    System,
}

/// `c r u d s` as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    pub const C: Perms = Perms(1);
    pub const R: Perms = Perms(2);
    pub const U: Perms = Perms(4);
    pub const D: Perms = Perms(8);
    pub const S: Perms = Perms(16);
    const LETTERS: [(char, Perms); 5] =
        [('c', Perms::C), ('r', Perms::R), ('u', Perms::U), ('d', Perms::D), ('s', Perms::S)];

    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    pub fn intersects(self, other: Perms) -> bool {
        self.0 & other.0 != 0
    }

    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// The letters not in `self` that `needed` has.
    pub fn missing(self, needed: Perms) -> Perms {
        Perms(needed.0 & !self.0)
    }

    /// v2 letters (`cruds` order), or v1's words.
    fn parse(s: &str) -> Option<Perms> {
        match s {
            "read" => return Some(Perms::R.union(Perms::S)),
            "write" => return Some(Perms::C.union(Perms::U).union(Perms::D)),
            "*" => return Some(Perms(31)),
            "" => return None,
            _ => {}
        }
        let mut perms = Perms::default();
        let mut next = 0;
        for ch in s.chars() {
            let at = Self::LETTERS.iter().position(|(c, _)| *c == ch)?;
            if at < next {
                return None; // out of order or repeated: not v2's grammar
            }
            perms = perms.union(Self::LETTERS[at].1);
            next = at + 1;
        }
        Some(perms)
    }
}

impl std::fmt::Display for Perms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (c, p) in Self::LETTERS {
            if self.contains(p) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One data scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub context: Context,
    /// `None`: `*`, every type.
    pub rtype: Option<String>,
    pub perms: Perms,
}

/// What a token's scopes grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub scopes: Vec<Scope>,
    /// The `patient` launch context: a patient's local id in the tenant's namespace.
    pub patient: Option<String>,
}

impl Grant {
    /// The grant of a token's (or introspection answer's) claims: `scope` (a space-separated
    /// string) or, without it, `scp` (a string or an array of strings, as some providers write
    /// it), and `patient`. A `patient` that is not a FHIR id is no launch context.
    pub fn from_claims(claims: &Value) -> Grant {
        // `scope` when the token has one, else `scp`: never both added together.
        let mut words: Vec<&str> = Vec::new();
        match claims.get("scope").or_else(|| claims.get("scp")) {
            Some(Value::String(s)) => words.extend(s.split(' ')),
            Some(Value::Array(a)) => words.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
        let patient = claims
            .get("patient")
            .and_then(Value::as_str)
            .filter(|p| crate::fhir::reference::is_id(p))
            .map(str::to_owned);
        Grant { scopes: words.into_iter().filter_map(parse_scope).collect(), patient }
    }

    /// A stable fingerprint of the grant (never 0), binding what was found with it (a page token).
    pub fn fingerprint(&self) -> u64 {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("{self:?}").as_bytes());
        let bytes: [u8; 8] = digest.as_ref()[..8].try_into().expect("8 bytes");
        u64::from_le_bytes(bytes).max(1)
    }

    /// Whether any scope is a `patient/` one (answers are then checked for the patient).
    pub fn confines(&self) -> bool {
        self.scopes.iter().any(|s| s.context == Context::Patient)
    }

    /// The permissions on `rtype` the scopes of these contexts give together.
    pub fn perms(&self, rtype: Option<&str>, confined: bool) -> Perms {
        self.scopes
            .iter()
            .filter(|s| (s.context == Context::Patient) == confined)
            .filter(|s| s.rtype.is_none() || s.rtype.as_deref() == rtype)
            .fold(Perms::default(), |p, s| p.union(s.perms))
    }
}

fn parse_scope(word: &str) -> Option<Scope> {
    let (context, rest) = word.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    if rest.contains('?') {
        return None; // a query-narrowed scope: its restriction is not enforced here
    }
    let (rtype, perms) = rest.split_once('.')?;
    let rtype = match rtype {
        "*" => None,
        t if crate::fhir::shape::Model::r4().is_resource_type(t) => Some(t.to_owned()),
        _ => return None,
    };
    Some(Scope { context, rtype, perms: Perms::parse(perms)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grant(scope: &str) -> Grant {
        Grant::from_claims(&json!({"scope": scope, "patient": "p1"}))
    }

    #[test]
    fn v2_and_v1_scopes_parse_into_permissions() {
        let g = grant(
            "openid launch/patient patient/Observation.rs user/Patient.cud system/*.read patient/Encounter.write",
        );
        assert_eq!(g.scopes.len(), 4);
        assert_eq!(g.perms(Some("Observation"), true).to_string(), "rs");
        assert_eq!(g.perms(Some("Encounter"), true).to_string(), "cud");
        assert_eq!(g.perms(Some("Patient"), false).to_string(), "cruds");
        assert_eq!(g.perms(Some("Observation"), false).to_string(), "rs");
        assert_eq!(g.patient.as_deref(), Some("p1"));
    }

    #[test]
    fn what_cannot_be_read_grants_nothing() {
        for nothing in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.",
            "patient/Observation.x",
            "patient/Observation",
            "patient/Nonsense.rs",
            "admin/Observation.rs",
            "patient/Observation.rs?category=laboratory",
            "Patient/Observation.rs",
            "patient/observation.rs",
        ] {
            assert!(grant(nothing).scopes.is_empty(), "{nothing}");
        }
        let scp = Grant::from_claims(&json!({"scp": ["system/Patient.r", "system/Patient.s"], "patient": "../x"}));
        assert_eq!(scp.perms(Some("Patient"), false).to_string(), "rs");
        assert_eq!(scp.patient, None, "a patient that is no id is no launch context");
        let both = Grant::from_claims(&json!({"scope": "patient/*.rs", "scp": "system/*.cruds", "patient": "p"}));
        assert_eq!(both.perms(None, false), Perms::default(), "scp does not add to scope");
        assert_eq!(Perms::R.union(Perms::S).missing(Perms::C.union(Perms::S)).to_string(), "c");
    }
}
