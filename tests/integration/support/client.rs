//! A tiny HTTP client for tests (hyper-util), answering status, headers and parsed JSON.
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The diagnostics of an OperationOutcome body (panics if the body is not one).
    pub fn diagnostics(&self) -> String {
        assert_eq!(self.body["resourceType"], "OperationOutcome", "expected an OperationOutcome, got {}", self.body);
        self.body["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned()
    }
}

pub struct Call {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
}

pub fn get(url: &str) -> Call {
    Call { method: Method::GET, url: url.to_owned(), headers: vec![], body: None }
}
pub fn delete(url: &str) -> Call {
    Call { method: Method::DELETE, url: url.to_owned(), headers: vec![], body: None }
}
pub fn put(url: &str, body: &Value) -> Call {
    Call::with_json(Method::PUT, url, body)
}
pub fn post(url: &str, body: &Value) -> Call {
    Call::with_json(Method::POST, url, body)
}
pub fn request(method: &str, url: &str) -> Call {
    Call { method: method.parse().unwrap(), url: url.to_owned(), headers: vec![], body: None }
}

impl Call {
    fn with_json(method: Method, url: &str, body: &Value) -> Call {
        Call {
            method,
            url: url.to_owned(),
            headers: vec![("content-type".into(), "application/fhir+json".into())],
            body: Some(Bytes::from(serde_json::to_vec(body).unwrap())),
        }
    }

    pub fn bearer(self, token: &str) -> Call {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn header(mut self, k: &str, v: &str) -> Call {
        self.headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn raw_body(mut self, b: impl Into<Bytes>) -> Call {
        self.body = Some(b.into());
        self
    }

    /// Sends and streams the answer's body into `each` (status and headers first); the body's
    /// error, if the stream is cut, is returned instead of panicking.
    pub async fn stream(
        self,
        mut each: impl FnMut(&[u8]),
    ) -> (u16, HeaderMap, Result<(), Box<dyn std::error::Error + Send + Sync>>) {
        let resp = self.response().await;
        let (parts, mut body) = resp.into_parts();
        let result = loop {
            match body.frame().await {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        each(data);
                    }
                }
            }
        };
        (parts.status.as_u16(), parts.headers, result)
    }

    /// Sends the request; the answer with its body still to read.
    async fn response(self) -> http::Response<hyper::body::Incoming> {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::builder().method(self.method).uri(&self.url);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(self.body.unwrap_or_default())).unwrap();
        client.request(req).await.expect("request failed")
    }

    pub async fn send(self) -> Reply {
        let resp = self.response().await;
        let (parts, body) = resp.into_parts();
        let raw = body.collect().await.unwrap().to_bytes();
        let body = if raw.is_empty() { Value::Null } else { serde_json::from_slice(&raw).unwrap_or(Value::Null) };
        Reply { status: parts.status.as_u16(), headers: parts.headers, body, raw }
    }
}
