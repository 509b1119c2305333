//! A replay's results for people (summary), for CI (JUnit XML) and for tools (JSON).
use super::run::{Check, Outcome};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub target: String,
    pub exchanges: usize,
    pub tenants: Vec<String>,
    pub summary: Summary,
    pub outcomes: Vec<Outcome>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub isolation_failures: usize,
    pub transparency_checked: usize,
    pub transparency_passed: usize,
    /// Passed ÷ checked, 1.0 when nothing was checked.
    pub transparency_rate: f64,
    pub refusals_checked: usize,
    pub refusals_passed: usize,
}

impl Report {
    pub fn new(run_id: String, target: String, exchanges: usize, tenants: Vec<String>, outcomes: Vec<Outcome>) -> Self {
        let mut s = Summary::default();
        for o in &outcomes {
            s.isolation_failures += o.isolation.failed() as usize;
            if o.transparency != Check::Skipped {
                s.transparency_checked += 1;
                s.transparency_passed += (o.transparency == Check::Pass) as usize;
            }
            if o.refusal != Check::Skipped {
                s.refusals_checked += 1;
                s.refusals_passed += (o.refusal == Check::Pass) as usize;
            }
        }
        s.transparency_rate = if s.transparency_checked == 0 {
            1.0
        } else {
            s.transparency_passed as f64 / s.transparency_checked as f64
        };
        Report { run_id, target, exchanges, tenants, summary: s, outcomes }
    }

    /// Isolation failures and failed expected refusals fail a run; transparency differences
    /// fail it only when asked (`strict`).
    pub fn passed(&self, strict: bool) -> bool {
        let s = &self.summary;
        s.isolation_failures == 0
            && s.refusals_passed == s.refusals_checked
            && (!strict || s.transparency_passed == s.transparency_checked)
    }

    pub fn text(&self, max_listed: usize) -> String {
        let s = &self.summary;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "replayed {} exchanges as {} tenants ({}) against {}",
            self.exchanges,
            self.tenants.len(),
            self.tenants.join(", "),
            self.target
        );
        let _ = writeln!(t, "isolation:    {} failures", s.isolation_failures);
        let _ = writeln!(
            t,
            "transparency: {}/{} identical ({:.1} %)",
            s.transparency_passed,
            s.transparency_checked,
            100.0 * s.transparency_rate
        );
        let _ = writeln!(t, "refusals:     {}/{} as expected", s.refusals_passed, s.refusals_checked);
        let mut section = |title: &str, pick: &dyn Fn(&Outcome) -> &Check| {
            let failed: Vec<&Outcome> = self.outcomes.iter().filter(|o| pick(o).failed()).collect();
            if failed.is_empty() {
                return;
            }
            let _ = writeln!(t, "\n{title} ({}):", failed.len());
            for o in failed.iter().take(max_listed) {
                if let Check::Fail(why) = pick(o) {
                    let _ = writeln!(t, "  exchange {} ({} {}) as {}: {why}", o.exchange, o.method, o.path, o.tenant);
                }
            }
            if failed.len() > max_listed {
                let _ = writeln!(t, "  … {} more in the JSON report", failed.len() - max_listed);
            }
        };
        section("ISOLATION FAILURES", &|o| &o.isolation);
        section("refusals not as expected", &|o| &o.refusal);
        section("transparency differences", &|o| &o.transparency);
        t
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    /// One test suite per tenant, one test case per exchange; each failed check is a failure.
    pub fn junit(&self) -> String {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let failures = |o: &Outcome| {
            [("isolation", &o.isolation), ("transparency", &o.transparency), ("refusal", &o.refusal)]
                .into_iter()
                .filter_map(|(k, c)| match c {
                    Check::Fail(why) => Some((k, why.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let total_failed = self.outcomes.iter().filter(|o| !failures(o).is_empty()).count();
        let _ = writeln!(
            x,
            "<testsuites name=\"fhir-fence replay {}\" tests=\"{}\" failures=\"{total_failed}\">",
            esc(&self.run_id),
            self.outcomes.len()
        );
        for tenant in &self.tenants {
            let mine: Vec<&Outcome> = self.outcomes.iter().filter(|o| &o.tenant == tenant).collect();
            let failed = mine.iter().filter(|o| !failures(o).is_empty()).count();
            let _ = writeln!(
                x,
                "  <testsuite name=\"tenant {}\" tests=\"{}\" failures=\"{failed}\">",
                esc(tenant),
                mine.len()
            );
            for o in mine {
                let _ = write!(
                    x,
                    "    <testcase classname=\"replay.{}\" name=\"{} {} {}\"",
                    esc(tenant),
                    esc(&o.exchange),
                    esc(&o.method),
                    esc(&o.path)
                );
                let f = failures(o);
                if f.is_empty() {
                    x.push_str("/>\n");
                    continue;
                }
                x.push_str(">\n");
                for (kind, why) in f {
                    let _ = writeln!(x, "      <failure type=\"{kind}\" message=\"{}\"/>", esc(&why));
                }
                x.push_str("    </testcase>\n");
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(tenant: &str, isolation: Check, transparency: Check) -> Outcome {
        Outcome {
            exchange: "e1".into(),
            tenant: tenant.into(),
            method: "GET".into(),
            path: "Patient?name=<x>".into(),
            status: 200,
            isolation,
            transparency,
            refusal: Check::Skipped,
        }
    }

    #[test]
    fn summary_exit_rule_and_junit() {
        let r = Report::new(
            "r1".into(),
            "http://t".into(),
            1,
            vec!["a".into(), "b".into()],
            vec![
                outcome("a", Check::Pass, Check::Fail("status 200 recorded, 404 replayed".into())),
                outcome("b", Check::Fail("Patient/9 written by tenant a".into()), Check::Pass),
            ],
        );
        assert_eq!(r.summary.isolation_failures, 1);
        assert_eq!((r.summary.transparency_checked, r.summary.transparency_passed), (2, 1));
        assert!(!r.passed(false));
        assert!(r.text(10).contains("exchange e1 (GET Patient?name=<x>) as b: Patient/9 written by tenant a"));
        let x = r.junit();
        assert!(x.contains("<failure type=\"isolation\" message=\"Patient/9 written by tenant a\"/>"), "{x}");
        assert!(x.contains("name=\"e1 GET Patient?name=&lt;x&gt;\""), "{x}");
        let ok = Report::new(
            "r".into(),
            "t".into(),
            1,
            vec!["a".into()],
            vec![outcome("a", Check::Pass, Check::Fail("d".into()))],
        );
        assert!(ok.passed(false) && !ok.passed(true));
    }
}
