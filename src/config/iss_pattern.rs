//! What an issuer's `iss` setting accepts: one exact value, or a template with `{tenant}` once
//! in its path (`identity::tenant_source` reads the tenant from it). Here, beside the config,
//! because loading checks that no two issuers can match one `iss`.
/// The placeholder an issuer template holds once.
pub const PLACEHOLDER: &str = "{tenant}";

/// The longest value the placeholder stands for.
const MAX_PART: usize = 128;

/// What the `iss` claim must be for an issuer.
#[derive(Debug, Clone, PartialEq)]
pub enum IssPattern {
    Exact(String),
    /// `prefix{tenant}suffix`.
    Template {
        prefix: String,
        suffix: String,
    },
}

impl IssPattern {
    /// `Err` says what is wrong with the setting.
    pub fn parse(iss: &str) -> Result<IssPattern, String> {
        match iss.matches(PLACEHOLDER).count() {
            0 if iss.contains('{') || iss.contains('}') => Err(format!("the only placeholder is {PLACEHOLDER}")),
            0 => Ok(IssPattern::Exact(iss.to_owned())),
            1 => {
                let (prefix, suffix) = iss.split_once(PLACEHOLDER).expect("one placeholder");
                if prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
                    return Err(format!("the only placeholder is {PLACEHOLDER}"));
                }
                // The placeholder must sit after the authority: the keys are one provider's, and a
                // tenant part in the host name would be read across a `.` boundary.
                let authority_end = prefix.strip_prefix("https://").and_then(|rest| rest.find('/'));
                if authority_end.is_none() || iss.contains(['?', '#']) {
                    return Err(String::from(
                        "an issuer template is https://host/…{tenant}…, the placeholder in the path (no query, no fragment)",
                    ));
                }
                Ok(IssPattern::Template { prefix: prefix.to_owned(), suffix: suffix.to_owned() })
            }
            _ => Err(format!("{PLACEHOLDER} may appear once")),
        }
    }

    /// The placeholder's value when `iss` matches (`Some("")` for an exact match).
    pub fn matches<'a>(&self, iss: &'a str) -> Option<&'a str> {
        match self {
            IssPattern::Exact(e) => (e == iss).then_some(""),
            IssPattern::Template { prefix, suffix } => {
                let part = iss.strip_prefix(prefix.as_str())?.strip_suffix(suffix.as_str())?;
                let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
                let ok = !part.is_empty()
                    && part.len() <= MAX_PART
                    && part.bytes().all(plain)
                    && part != "."
                    && part != "..";
                ok.then_some(part)
            }
        }
    }

    /// Whether one `iss` value could match both patterns (templates: when one's fixed parts
    /// could hold the other's; read conservatively, so that an `iss` never picks between two).
    pub fn overlaps(&self, other: &IssPattern) -> bool {
        match (self, other) {
            (IssPattern::Exact(a), IssPattern::Exact(b)) => a == b,
            (IssPattern::Exact(e), t @ IssPattern::Template { .. })
            | (t @ IssPattern::Template { .. }, IssPattern::Exact(e)) => t.matches(e).is_some(),
            (IssPattern::Template { prefix: p1, suffix: s1 }, IssPattern::Template { prefix: p2, suffix: s2 }) => {
                (p1.starts_with(p2.as_str()) || p2.starts_with(p1.as_str()))
                    && (s1.ends_with(s2.as_str()) || s2.ends_with(s1.as_str()))
            }
        }
    }

    /// The `iss` a token for the placeholder value `part` carries (development tokens).
    pub fn fill(&self, part: &str) -> String {
        match self {
            IssPattern::Exact(e) => e.clone(),
            IssPattern::Template { prefix, suffix } => format!("{prefix}{part}{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_one_path_part() {
        let p = IssPattern::parse("https://login.example.com/{tenant}/v2.0").unwrap();
        assert_eq!(p.matches("https://login.example.com/acme/v2.0"), Some("acme"));
        assert_eq!(
            p.matches("https://login.example.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"),
            Some("9188040d-6c67-4c5b-b112-36a304b66dad")
        );
        for other in [
            "https://login.example.com//v2.0",
            "https://login.example.com/a/b/v2.0",
            "https://login.example.com/../v2.0",
            "https://login.example.com/a%2Fb/v2.0",
            "https://login.example.com/acme/v2.0/",
            "https://login.example.com.evil/acme/v2.0",
            "http://login.example.com/acme/v2.0",
        ] {
            assert_eq!(p.matches(other), None, "{other}");
        }
        assert_eq!(p.fill("acme"), "https://login.example.com/acme/v2.0");
        for bad in ["https://{tenant}.example.com/", "https://x/{tenant}/{tenant}", "https://x/{tid}", "x{tenant}"] {
            assert!(IssPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(IssPattern::parse("https://x/realms/acme").unwrap().matches("https://x/realms/acme"), Some(""));
    }

    #[test]
    fn overlapping_issuers_are_found() {
        let p = |s: &str| IssPattern::parse(s).unwrap();
        assert!(p("https://ids.test/{tenant}/v2.0").overlaps(&p("https://ids.test/x{tenant}/v2.0")));
        assert!(p("https://ids.test/{tenant}/v2.0").overlaps(&p("https://ids.test/acme/v2.0")));
        assert!(p("https://a.test/{tenant}").overlaps(&p("https://a.test/{tenant}/x")));
        assert!(!p("https://ids.test/{tenant}/v2.0").overlaps(&p("https://ids.test/{tenant}/v1.0")));
        assert!(!p("https://a.test/t/{tenant}").overlaps(&p("https://b.test/t/{tenant}")));
        assert!(!p("https://a.test/x").overlaps(&p("https://a.test/y")));
    }
}
