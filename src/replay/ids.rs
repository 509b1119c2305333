//! Server-assigned ids, recorded against replayed, for one tenant's replay.
//!
//! A recording made against a plain server holds the ids that server assigned (`Location`
//! headers, transaction-response entries); a replay gets other ids. Later requests in the
//! recording name the recorded ids, so they are mapped forward before sending, and answers are
//! mapped back before comparing.
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
pub struct Ids {
    forward: HashMap<(String, String), String>,
    back: HashMap<(String, String), String>,
    fresh: Vec<(String, String)>,
}

impl Ids {
    pub fn learn(&mut self, rtype: &str, recorded: &str, replayed: &str) {
        if recorded == replayed {
            return;
        }
        self.forward.insert((rtype.to_owned(), recorded.to_owned()), replayed.to_owned());
        if self.back.insert((rtype.to_owned(), replayed.to_owned()), recorded.to_owned()).is_none() {
            self.fresh.push((rtype.to_owned(), replayed.to_owned()));
        }
    }

    /// Learns from a recorded and a replayed `Location` (or `response.location`).
    pub fn learn_locations(&mut self, recorded: &str, replayed: &str) {
        if let (Some((t1, a)), Some((t2, b))) = (type_and_id(recorded), type_and_id(replayed)) {
            if t1 == t2 {
                self.learn(t1, a, b);
            }
        }
    }

    pub fn recorded_for(&self, rtype: &str, replayed: &str) -> Option<&str> {
        self.back.get(&(rtype.to_owned(), replayed.to_owned())).map(String::as_str)
    }

    pub fn replayed_for(&self, rtype: &str, recorded: &str) -> Option<&str> {
        self.forward.get(&(rtype.to_owned(), recorded.to_owned())).map(String::as_str)
    }

    /// `…Type/id[/_history/v]` with the id mapped (forward: recorded → replayed), if known.
    pub fn map_reference(&self, s: &str, forward: bool) -> Option<String> {
        let (rtype, id) = type_and_id(s)?;
        let map = if forward { &self.forward } else { &self.back };
        let new = map.get(&(rtype.to_owned(), id.to_owned()))?;
        let at = s.rfind(&format!("{rtype}/{id}"))? + rtype.len() + 1;
        Some(format!("{}{new}{}", &s[..at], &s[at + id.len()..]))
    }

    /// A request path (`Type/id/…`) with its id mapped forward.
    pub fn map_path(&self, path: &str) -> String {
        let segs: Vec<&str> = path.split('/').collect();
        let mut out: Vec<String> = segs.iter().map(|s| (*s).to_owned()).collect();
        for i in 0..segs.len().saturating_sub(1) {
            if is_type(segs[i]) {
                if let Some(new) = self.replayed_for(segs[i], segs[i + 1]) {
                    out[i + 1] = new.to_owned();
                }
            }
        }
        out.join("/")
    }

    /// A query string with `Type/id` values (and `_id` values, of `rtype`) mapped forward.
    pub fn map_query(&self, query: &str, rtype: Option<&str>) -> String {
        if self.forward.is_empty() || query.is_empty() {
            return query.to_owned();
        }
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let mut changed = false;
        let mapped: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| {
                let values: Vec<String> = v
                    .split(',')
                    .map(|item| {
                        let by_ref = self.map_reference(item, true);
                        let by_id = (k == "_id").then(|| rtype.and_then(|t| self.replayed_for(t, item))).flatten();
                        match (by_ref, by_id) {
                            (Some(m), _) => m,
                            (None, Some(m)) => m.to_owned(),
                            (None, None) => item.to_owned(),
                        }
                    })
                    .collect();
                let nv = values.join(",");
                changed |= nv != v;
                (k, nv)
            })
            .collect();
        if !changed {
            return query.to_owned();
        }
        form_urlencoded::Serializer::new(String::new()).extend_pairs(mapped).finish()
    }

    /// A body with ids mapped — forward (recorded → replayed, for requests) or back (for
    /// comparing answers): resource ids and every `Type/id` string.
    pub fn map_body(&self, v: &mut Value, forward: bool) {
        if self.forward.is_empty() {
            return;
        }
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(t)), Some(Value::String(id))) =
                    (m.get("resourceType").cloned(), m.get_mut("id"))
                {
                    let mapped = if forward { self.replayed_for(&t, id) } else { self.recorded_for(&t, id) };
                    if let Some(new) = mapped {
                        *id = new.to_owned();
                    }
                }
                m.values_mut().for_each(|x| self.map_body(x, forward));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.map_body(x, forward)),
            Value::String(s) => {
                if let Some(new) = self.map_reference(s, forward) {
                    *s = new;
                }
            }
            _ => {}
        }
    }

    /// The replayed ids learned since the last call (for the other tenants' isolation checks).
    pub fn take_fresh(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.fresh)
    }
}

fn is_type(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// The `Type/id` a reference, URL or location ends with (`/_history/v` allowed after it).
pub fn type_and_id(s: &str) -> Option<(&str, &str)> {
    let s = s.split(['?', '#']).next()?;
    let segs: Vec<&str> = s.split('/').collect();
    let n = segs.len();
    let at = if n >= 4 && segs[n - 2] == "_history" { n - 4 } else { n.checked_sub(2)? };
    let (t, id) = (segs[at], segs[at + 1]);
    (is_type(t) && is_id(id)).then_some((t, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_map_in_paths_queries_bodies_and_back() {
        let mut ids = Ids::default();
        ids.learn_locations("http://hapi/fhir/Patient/123/_history/1", "http://fence/fhir/Patient/ab-9/_history/1");
        assert_eq!(ids.map_path("Patient/123/_history/1"), "Patient/ab-9/_history/1");
        assert_eq!(ids.map_path("Patient/1234"), "Patient/1234");
        assert_eq!(ids.map_query("subject=Patient%2F123&_count=5", None), "subject=Patient%2Fab-9&_count=5");
        assert_eq!(ids.map_query("_id=123,77", Some("Patient")), "_id=ab-9%2C77");
        let mut body =
            json!({"resourceType": "Patient", "id": "123", "link": [{"other": {"reference": "Patient/123"}}]});
        ids.map_body(&mut body, true);
        assert_eq!(
            body,
            json!({"resourceType": "Patient", "id": "ab-9", "link": [{"other": {"reference": "Patient/ab-9"}}]})
        );
        assert_eq!(
            ids.map_reference("http://fence/fhir/Patient/ab-9", false).as_deref(),
            Some("http://fence/fhir/Patient/123")
        );
        assert_eq!(type_and_id("Observation/o1/_history/2"), Some(("Observation", "o1")));
        assert_eq!(type_and_id("urn:uuid:1234"), None);
    }
}
