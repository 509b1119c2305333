//! An in-process fake FHIR upstream on a loopback port bound to 0: it records every request
//! it gets and answers from a closure, so edge cases (malformed JSON, foreign entries, hangs)
//! are deterministic. It serves a small CapabilityStatement by itself.
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::net::TcpListener;

pub enum Answer {
    Json(u16, Value),
    Raw(u16, &'static str, &'static str),
    /// Never answers (for timeouts).
    Hang,
    /// Status, extra headers, optional JSON body.
    Headers(u16, Vec<(&'static str, String)>, Option<Value>),
    /// The inner answer, once `release` is notified (a slow upstream the test controls).
    After(Arc<tokio::sync::Notify>, Box<Answer>),
    /// Status, content type, and a body produced chunk by chunk (for large streams).
    Chunks(u16, &'static str, Box<dyn Iterator<Item = Bytes> + Send + Sync>),
    /// Status, `Content-Encoding` and a body already encoded (sent whatever the request asked).
    Encoded(u16, &'static str, Bytes),
}

/// A response body pulled from an iterator, one chunk per frame.
struct IterBody(Box<dyn Iterator<Item = Bytes> + Send + Sync>);

impl http_body::Body for IterBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Option<Value>,
    /// The body as received.
    pub raw: Bytes,
}

impl Seen {
    pub fn param(&self, name: &str) -> Vec<&str> {
        self.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

pub struct Fake {
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// Requests received so far, without the CapabilityStatement fetches.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path != "/fhir/metadata").cloned().collect()
    }
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }
}

pub fn capability_statement() -> Value {
    let params = json!([
        {"name": "_id", "type": "token"}, {"name": "_tag", "type": "token"}, {"name": "_security", "type": "token"},
        {"name": "name", "type": "string"}, {"name": "subject", "type": "reference"},
        {"name": "patient", "type": "reference"}, {"name": "_lastUpdated", "type": "date"}
    ]);
    json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
        "format": ["json"], "implementation": {"description": "fake", "url": "http://fake/fhir"},
        "rest": [{"mode": "server", "resource": [
            {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "patch"}], "searchParam": params},
            {"type": "Observation", "interaction": [{"code": "read"}], "searchParam": params}
        ], "interaction": [{"code": "transaction"}, {"code": "history-system"}],
        "operation": [{"name": "expunge", "definition": "x"}]}]})
}

pub async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Fake {
    start_with(capability_statement(), handler).await
}

/// A fake upstream serving `cs` as its CapabilityStatement.
pub async fn start_with(cs: Value, handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}/fhir", listener.local_addr().unwrap().port());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(handler);
    let (seen2, h2) = (seen.clone(), handler.clone());
    let cs = Arc::new(cs);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (seen, handler, cs) = (seen2.clone(), h2.clone(), cs.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, handler, cs) = (seen.clone(), handler.clone(), cs.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body.collect().await.unwrap().to_bytes();
                        let s = Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_owned(),
                            query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                                .into_owned()
                                .collect(),
                            headers: parts.headers.clone(),
                            body: if bytes.is_empty() { None } else { serde_json::from_slice(&bytes).ok() },
                            raw: bytes,
                        };
                        seen.lock().unwrap().push(s.clone());
                        let answer =
                            if s.path == "/fhir/metadata" { Answer::Json(200, (*cs).clone()) } else { handler(&s) };
                        let answer = match answer {
                            Answer::After(release, inner) => {
                                release.notified().await;
                                *inner
                            }
                            other => other,
                        };
                        let full = |b: Bytes| Full::new(b).boxed();
                        let mut extra = vec![];
                        let (status, ct, body): (u16, &str, BoxBody<Bytes, Infallible>) = match answer {
                            Answer::Json(st, v) => {
                                (st, "application/fhir+json;charset=utf-8", full(Bytes::from(v.to_string())))
                            }
                            Answer::Raw(st, ct, b) => (st, ct, full(Bytes::from_static(b.as_bytes()))),
                            Answer::Headers(st, h, v) => {
                                extra = h;
                                let b = v.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
                                (st, "application/fhir+json;charset=utf-8", full(b))
                            }
                            Answer::Chunks(st, ct, it) => (st, ct, IterBody(it).boxed()),
                            Answer::Encoded(st, encoding, b) => {
                                extra = vec![("content-encoding", encoding.to_owned())];
                                (st, "application/fhir+json;charset=utf-8", full(b))
                            }
                            Answer::Hang => {
                                std::future::pending::<()>().await;
                                unreachable!()
                            }
                            Answer::After(..) => unreachable!("unwrapped above"),
                        };
                        let mut resp = Response::new(body);
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        resp.headers_mut().insert("content-type", ct.parse().unwrap());
                        for (k, v) in extra {
                            resp.headers_mut().insert(k, v.parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Fake { base, seen }
}

/// A resource as the upstream would store it for `tenant` (prefixed id, tenant tag).
pub fn stored(rtype: &str, prefix: &str, tenant: &str, local: &str) -> Value {
    json!({"resourceType": rtype, "id": format!("{prefix}-{local}"),
        "meta": {"versionId": "1", "tag": [{"system": super::SYSTEM, "code": tenant}]}})
}

pub fn searchset(base: &str, resources: Vec<Value>, next: Option<&str>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| json!({"fullUrl": format!("{base}/{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()), "resource": r, "search": {"mode": "match"}}))
        .collect();
    let mut links = vec![json!({"relation": "self", "url": format!("{base}/Patient?_tag=secret")})];
    if let Some(n) = next {
        links.push(json!({"relation": "next", "url": n}));
    }
    json!({"resourceType": "Bundle", "id": "upstream-search-uuid", "type": "searchset", "total": entries.len(), "link": links, "entry": entries})
}
