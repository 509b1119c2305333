//! `fhir-fence replay import-har`: HAR (what browsers and many tools export) to the traffic format.
//!
//! Only entries under the given FHIR base URL are kept (a page's other requests are not FHIR
//! traffic); headers are filtered as the recorder filters them, so a HAR's credentials and
//! cookies do not reach the traffic file.
use super::format::{Exchange, Seen};
use base64::Engine;
use serde::Deserialize;

/// The part of HAR 1.2 this reads (other fields are allowed and ignored: HAR writers add many).
#[derive(Deserialize)]
struct Har {
    log: Log,
}

#[derive(Deserialize)]
struct Log {
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    request: HarRequest,
    response: HarResponse,
}

#[derive(Deserialize)]
struct HarRequest {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(rename = "postData")]
    post_data: Option<PostData>,
}

#[derive(Deserialize)]
struct HarResponse {
    status: u16,
    #[serde(default)]
    headers: Vec<Header>,
    content: Option<Content>,
}

#[derive(Deserialize)]
struct Header {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct PostData {
    text: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    text: Option<String>,
    encoding: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HarError {
    #[error("not a HAR file: {0}")]
    Parse(String),
    #[error("--base {0}: {1}")]
    Base(String, String),
    #[error("entry {0}: {1}")]
    Entry(usize, String),
}

/// The exchanges under `base`, in the HAR's order, and the number of entries left out.
pub fn import(har: &[u8], base: &str) -> Result<(Vec<Exchange>, usize), HarError> {
    let har: Har = serde_json::from_slice(har).map_err(|e| HarError::Parse(e.to_string()))?;
    let base_url =
        url::Url::parse(base.trim_end_matches('/')).map_err(|e| HarError::Base(base.into(), e.to_string()))?;
    let base_str = base_url.as_str().trim_end_matches('/').to_owned();
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, e) in har.log.entries.into_iter().enumerate() {
        let url =
            url::Url::parse(&e.request.url).map_err(|err| HarError::Entry(i, format!("{}: {err}", e.request.url)))?;
        let mut no_query = url.clone();
        no_query.set_query(None);
        no_query.set_fragment(None);
        let Some(rest) = no_query.as_str().strip_prefix(&base_str) else {
            skipped += 1;
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            skipped += 1;
            continue;
        }
        let pairs = |h: &[Header]| h.iter().map(|h| (h.name.clone(), h.value.clone())).collect::<Vec<_>>();
        let (qh, rh) = (pairs(&e.request.headers), pairs(&e.response.headers));
        let request_body = e.request.post_data.and_then(|p| p.text).unwrap_or_default();
        let content = e.response.content.unwrap_or(Content { text: None, encoding: None });
        let bytes = match (content.text, content.encoding.as_deref()) {
            (Some(t), Some("base64")) => base64::engine::general_purpose::STANDARD
                .decode(t.as_bytes())
                .map_err(|err| HarError::Entry(i, format!("response content: {err}")))?,
            (Some(t), _) => t.into_bytes(),
            (None, _) => Vec::new(),
        };
        out.push(Exchange::observed(
            format!("{:06}", out.len() + 1),
            &e.request.method,
            rest.trim_start_matches('/').to_owned(),
            url.query().unwrap_or_default().to_owned(),
            &qh,
            request_body.as_bytes(),
            // HAR writes status 0 for requests that got no answer: nothing to compare with.
            (e.response.status != 0).then_some(Seen { status: e.response.status, headers: &rh, body: &bytes }),
        ));
    }
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_entries_are_kept_without_credentials() {
        let har = serde_json::json!({"log": {"version": "1.2", "creator": {"name": "x"}, "entries": [
            {"request": {"method": "GET", "url": "https://ehr.example/fhir/Patient?name=x", "httpVersion": "HTTP/1.1",
                "headers": [{"name": "Authorization", "value": "Bearer secret"}, {"name": "Accept", "value": "application/fhir+json"}],
                "cookies": [{"name": "s", "value": "t"}]},
             "response": {"status": 200, "headers": [{"name": "Set-Cookie", "value": "s=t"}, {"name": "Content-Type", "value": "application/fhir+json"}],
                "content": {"mimeType": "application/fhir+json", "text": "eyJyZXNvdXJjZVR5cGUiOiJCdW5kbGUifQ==", "encoding": "base64"}}},
            {"request": {"method": "GET", "url": "https://ehr.example/app.js"}, "response": {"status": 200}},
            {"request": {"method": "POST", "url": "https://ehr.example/fhir", "postData": {"mimeType": "application/fhir+json", "text": "{\"resourceType\":\"Bundle\"}"}},
             "response": {"status": 0}}
        ]}});
        let (xs, skipped) = import(har.to_string().as_bytes(), "https://ehr.example/fhir/").unwrap();
        assert_eq!((xs.len(), skipped), (2, 1));
        assert_eq!((xs[0].request.path.as_str(), xs[0].request.query.as_str()), ("Patient", "name=x"));
        assert_eq!(xs[0].request.headers.keys().collect::<Vec<_>>(), vec!["accept"]);
        let r = xs[0].response.as_ref().unwrap();
        assert_eq!(r.headers.keys().collect::<Vec<_>>(), vec!["content-type"]);
        assert_eq!(r.body, Some(serde_json::json!({"resourceType": "Bundle"})));
        assert_eq!((xs[1].request.path.as_str(), xs[1].response.is_none()), ("", true));
        let line = serde_json::to_string(&xs).unwrap();
        assert!(!line.contains("secret") && !line.contains("s=t"));
    }
}
