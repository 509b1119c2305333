//! Which tenants get a `tenant` label value of their own on `/metrics` (`metrics.tenant_labels`),
//! so that ten thousand tenants are not ten thousand sets of series in a Prometheus server.
//!
//! The rule is sticky: a tenant given its own value keeps it for the life of the process, and the
//! others are counted under [`OTHER`]. So no series ever flips between a tenant's name and
//! `other` (each stays one monotonic counter, and the sum over all values is every request), at
//! the price that `top N` means the first N tenants to send a request since the process started,
//! not the N busiest of the moment. A reload that changes the rule applies it to the tenants not
//! named yet (`none` names no one from then on); a restart starts afresh.
use crate::config::TenantLabels;
use std::collections::HashSet;
use std::sync::RwLock;

/// The label value every tenant without one of its own is counted under (a tenant named
/// `other` is always counted there).
pub const OTHER: &str = "other";

/// The rule and the tenants named so far.
pub struct Labeller(RwLock<State>);

struct State {
    rule: TenantLabels,
    named: HashSet<Box<str>>,
}

impl Labeller {
    pub fn new(rule: TenantLabels) -> Self {
        Labeller(RwLock::new(State { rule, named: HashSet::new() }))
    }

    /// The rule from now on (a reload).
    pub fn set_rule(&self, rule: TenantLabels) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).rule = rule;
    }

    /// The label value `tenant` is counted under: its own name, or [`OTHER`].
    pub fn label<'a>(&self, tenant: &'a str) -> &'a str {
        {
            let state = self.0.read().unwrap_or_else(|p| p.into_inner());
            match state.rule {
                TenantLabels::None => return OTHER,
                _ if state.named.contains(tenant) => return tenant,
                TenantLabels::Top(n) if state.named.len() >= n => return OTHER,
                _ => {}
            }
        }
        let mut state = self.0.write().unwrap_or_else(|p| p.into_inner());
        let room = match state.rule {
            TenantLabels::None => false,
            TenantLabels::All => true,
            TenantLabels::Top(n) => state.named.len() < n,
        };
        if tenant == OTHER || !(room || state.named.contains(tenant)) {
            return OTHER;
        }
        state.named.insert(tenant.into());
        tenant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_names_the_first_n_and_keeps_them() {
        let l = Labeller::new(TenantLabels::Top(2));
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("c"), OTHER, "no room left");
        assert_eq!(l.label("a"), "a", "a named tenant keeps its name");
        assert_eq!(l.label("c"), OTHER, "and one counted under other stays there");
        assert_eq!(l.label(OTHER), OTHER);
    }

    #[test]
    fn all_and_none() {
        let l = Labeller::new(TenantLabels::All);
        for t in ["a", "b", "c"] {
            assert_eq!(l.label(t), t);
        }
        assert_eq!(l.label(OTHER), OTHER, "never a name of its own: it is the sum");
        let l = Labeller::new(TenantLabels::None);
        assert_eq!((l.label("a"), l.label("b")), (OTHER, OTHER));
    }

    #[test]
    fn a_new_rule_applies_to_tenants_not_named_yet() {
        let l = Labeller::new(TenantLabels::Top(1));
        assert_eq!((l.label("a"), l.label("b")), ("a", OTHER));
        l.set_rule(TenantLabels::Top(2));
        assert_eq!((l.label("b"), l.label("c")), ("b", OTHER));
        l.set_rule(TenantLabels::Top(1));
        assert_eq!((l.label("a"), l.label("b")), ("a", "b"), "lowering N names no one new, drops no one");
        l.set_rule(TenantLabels::None);
        assert_eq!(l.label("a"), OTHER);
    }

    #[test]
    fn the_setting_parses_and_refuses() {
        let parse = |v: &str| TenantLabels::try_from(v.to_owned());
        assert_eq!(parse("all"), Ok(TenantLabels::All));
        assert_eq!(parse("none"), Ok(TenantLabels::None));
        assert_eq!(parse("top 100"), Ok(TenantLabels::Top(100)));
        for bad in ["top 0", "top", "top -1", "top +5", "top 1x", "Top 5", "top  5", "some", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(TenantLabels::default(), TenantLabels::Top(100));
    }
}
