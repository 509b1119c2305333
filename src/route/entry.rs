//! A Bundle entry's `request` read as the HTTP request it stands for, so batch and transaction
//! entries are classified by the same [`classify`] as single requests: the same allow-list of
//! paths, methods and parameters, the same refusals.
use super::classify::classify;
use super::error::RouteError;
use super::interaction::Interaction;
use super::query::{parse_query, Params};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use serde_json::Value;

/// One entry's request: what it asks for, and the conditional headers it carries.
#[derive(Debug)]
pub struct EntryRequest {
    pub method: Method,
    pub interaction: Interaction,
    pub params: Params,
    /// `ifMatch`, `ifNoneMatch`, `ifModifiedSince` and `ifNoneExist`, as the headers they stand for.
    pub headers: HeaderMap,
    /// The entry's URL under the public base, for the links in its answer.
    pub url: String,
}

/// The fields of `Bundle.entry.request` that stand for request headers.
const CONDITIONS: [(&str, HeaderName); 4] = [
    ("ifMatch", header::IF_MATCH),
    ("ifNoneMatch", header::IF_NONE_MATCH),
    ("ifModifiedSince", header::IF_MODIFIED_SINCE),
    ("ifNoneExist", HeaderName::from_static("if-none-exist")),
];

/// Reads `entry.request` (its `url` relative to the base, or absolute under `public_base`) and
/// classifies it under `base_path`. A condition that is not a string, or not a valid header
/// value, is refused rather than dropped: an entry must not lose the condition it was sent with.
pub fn entry_request(entry: &Value, public_base: &str, base_path: &str) -> Result<EntryRequest, RouteError> {
    let bad = |why: &str| RouteError::BadEntry(why.to_owned());
    let request = entry.get("request").ok_or_else(|| bad("the entry has no request"))?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some(m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH")) => Method::from_bytes(m.as_bytes()),
        _ => return Err(bad("request.method must be one of GET, HEAD, POST, PUT, DELETE, PATCH")),
    }
    .map_err(|_| bad("request.method"))?;
    let url = request.get("url").and_then(Value::as_str).ok_or_else(|| bad("the entry has no request.url"))?;
    let url = url.strip_prefix(&format!("{public_base}/")).unwrap_or(url).to_owned();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (format!("{base_path}/{p}"), Some(q)),
        None => (format!("{base_path}/{url}"), None),
    };
    let params = parse_query(query)?;
    let interaction = classify(&method, base_path, &path, &params)?;
    let mut headers = HeaderMap::new();
    for (field, name) in CONDITIONS {
        let Some(value) = request.get(field) else { continue };
        // Visible ASCII only, as `HeaderValue::to_str` reads it back (the scope code does).
        let value = value.as_str().filter(|v| v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
        let value = value.and_then(|v| HeaderValue::from_str(v).ok());
        headers.insert(
            name,
            value.ok_or_else(|| RouteError::BadEntry(format!("request.{field} is not a valid condition")))?,
        );
    }
    Ok(EntryRequest { method, interaction, params, headers, url })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(request: Value) -> Result<EntryRequest, RouteError> {
        entry_request(&json!({ "request": request }), "http://fence/fhir", "/fhir")
    }

    #[test]
    fn entries_are_classified_like_requests() {
        let e = read(json!({"method": "PUT", "url": "Patient?identifier=a%7Cb", "ifMatch": "W/\"2\""})).unwrap();
        assert_eq!(e.interaction, Interaction::ConditionalUpdate { rtype: "Patient".into() });
        assert_eq!(e.params, vec![("identifier".to_owned(), "a|b".to_owned())]);
        assert_eq!(e.headers.get(header::IF_MATCH).unwrap(), "W/\"2\"");
        let e = read(json!({"method": "GET", "url": "http://fence/fhir/Patient/p1/_history/3"})).unwrap();
        assert_eq!(e.interaction, Interaction::Vread { rtype: "Patient".into(), id: "p1".into(), version: "3".into() });
        assert_eq!(e.url, "Patient/p1/_history/3");
    }

    #[test]
    fn entries_are_refused_like_requests() {
        assert!(matches!(read(json!({"method": "GET", "url": "Patient/a%2Fb"})), Err(RouteError::BadPath(_))));
        assert!(matches!(
            read(json!({"method": "GET", "url": "Patient/$everything"})),
            Err(RouteError::OperationRefused(..))
        ));
        assert!(matches!(
            read(json!({"method": "DELETE", "url": "Patient/p1?_cascade=delete"})),
            Err(RouteError::Param { .. })
        ));
        assert!(matches!(read(json!({"method": "get", "url": "Patient/p1"})), Err(RouteError::BadEntry(_))));
        assert!(matches!(read(json!({"method": "GET"})), Err(RouteError::BadEntry(_))));
        assert!(matches!(entry_request(&json!({}), "http://f/fhir", "/fhir"), Err(RouteError::BadEntry(_))));
    }

    #[test]
    fn a_condition_is_never_dropped() {
        // Before: a condition that was no valid header value was left out, and the entry ran
        // unconditionally (a create that should have matched created a duplicate).
        let bad = read(json!({"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a\nb"}));
        assert!(matches!(bad, Err(RouteError::BadEntry(_))));
        let bad = read(json!({"method": "POST", "url": "Patient", "ifNoneExist": "name=Zoë"}));
        assert!(matches!(bad, Err(RouteError::BadEntry(_))));
        let bad = read(json!({"method": "PUT", "url": "Patient/p1", "ifMatch": ["W/\"1\""]}));
        assert!(matches!(bad, Err(RouteError::BadEntry(_))));
    }
}
