//! `GET [base]/_export-file/[file]`: one export file, streamed from the upstream Binary through
//! the NDJSON filter, in constant memory.
//!
//! Output lines pass the same outbound check as every other answer (`outbound`): marker
//! coding and id prefix required, then stripped, references turned back into local ids.
//! Error files are sanitised (the upstream's diagnostics only reach the log); deleted-files
//! entries are kept only inside the caller's id namespace. The upstream's `Content-Length` and
//! `ETag` describe the unfiltered file, so none of its headers are passed on: the answer is
//! chunked. A failure mid-stream (an over-long line, a stalled or broken upstream) aborts the
//! response, so a client can never mistake a cut-off file for a whole one.
use super::handle::{self, File, Kind};
use super::ndjson::{Check, NdjsonFilter};
use super::ExportError;
use crate::answer::{Body, BoxError};
use crate::error::Error;
use crate::headers::base_headers;
use crate::headers::set_correlation;
use crate::identity::Caller;
use crate::limits::GatePermit;
use crate::metrics::Metrics;
use crate::outbound;
use crate::scope::{Ctx, ScopeError};
use crate::state::Snapshot;
use crate::tenancy::Tenant;
use crate::upstream::{media_type, media_type_is, Upstream};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub const NDJSON: &str = "application/fhir+ndjson";

/// Opens the file handle, asks the upstream for the file's raw content and answers with the
/// filtered stream.
pub async fn download(
    snap: Arc<Snapshot>,
    caller: &Caller,
    upstream: Arc<Upstream>,
    token: &str,
    correlation: &str,
) -> Result<Response<Body>, Error> {
    let file = handle::open_file(&snap, caller, token).await?;
    let tenant = caller.tenant.clone();
    let ctx = Ctx { snap: &snap, tenant: &tenant, upstream: &upstream, correlation, grant: 0 };
    let (status, headers, body, permit) = upstream.stream(&file.path, NDJSON, base_headers(ctx.correlation)).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(ExportError::UnknownHandle.into()),
        other => return Err(ScopeError::Refused(other.as_u16(), "export file download".into()).into()),
    }
    if !media_type_is(media_type(&headers), &[NDJSON, "application/ndjson"]) {
        return Err(ScopeError::Unprovable.into());
    }
    let filter = file_filter(&snap, &tenant, &upstream, &file, correlation);
    let idle = upstream.idle_timeout();
    let report = Report {
        tenant: tenant.name.clone(),
        correlation: correlation.to_owned(),
        rtype: file.rtype,
        frames: 0,
        bytes: 0,
        metrics: snap.metrics.clone(),
    };
    let body = Filtered {
        upstream: body,
        filter,
        idle: Box::pin(tokio::time::sleep(idle)),
        idle_for: idle,
        report,
        done: false,
        _permit: permit,
    };
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    set_correlation(resp.headers_mut(), correlation);
    Ok(resp)
}

/// The line filter for one file: the kind's check, and for output files the needle (the
/// caller's id prefix) and the fast path in front of it.
pub fn file_filter(
    snap: &Arc<Snapshot>,
    tenant: &Arc<Tenant>,
    upstream: &Arc<Upstream>,
    file: &File,
    correlation: &str,
) -> NdjsonFilter<Check> {
    let max_line = snap.loaded.config.export.max_line_bytes;
    let filter = NdjsonFilter::new(expected_type(file), max_line, check(snap, tenant, upstream, file, correlation));
    let needle = format!("\"{}-", tenant.prefix);
    match file.kind {
        // Subscriptions have their criteria restored by the full check; they take the long way.
        Kind::Output if file.rtype == "Subscription" => filter.with_needle(needle.as_bytes()),
        Kind::Output => filter.with_needle(needle.as_bytes()).with_fast_path(outbound::ExportLines::new(
            snap.clone(),
            tenant.clone(),
            upstream.clone(),
            &file.rtype,
        )),
        Kind::Error | Kind::Deleted => filter,
    }
}

fn expected_type(file: &File) -> &str {
    match file.kind {
        Kind::Output => &file.rtype,
        Kind::Error => "OperationOutcome",
        Kind::Deleted => "Bundle",
    }
}

/// The per-line check for this file's kind.
fn check(
    snap: &Arc<Snapshot>,
    tenant: &Arc<Tenant>,
    upstream: &Arc<Upstream>,
    file: &File,
    correlation: &str,
) -> Check {
    let (snap, tenant, upstream, correlation) =
        (snap.clone(), tenant.clone(), upstream.clone(), correlation.to_owned());
    match file.kind {
        Kind::Output => Box::new(move |v| {
            let ctx = Ctx { snap: &snap, tenant: &tenant, upstream: &upstream, correlation: &correlation, grant: 0 };
            outbound::resource(&ctx, v).ok()
        }),
        Kind::Error => Box::new(move |v| Some(outbound::export::error_line(&v, &correlation))),
        Kind::Deleted => Box::new(move |v| outbound::export::deleted_line(&tenant, v)),
    }
}

/// Who to name when the stream ends.
struct Report {
    tenant: String,
    correlation: String,
    rtype: String,
    /// Upstream data frames and bytes seen.
    frames: u64,
    bytes: u64,
    metrics: Arc<Metrics>,
}

/// The response body: upstream frames in, whole filtered lines out.
struct Filtered {
    upstream: Incoming,
    filter: NdjsonFilter<Check>,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
    report: Report,
    /// The upstream body ended and the last lines went out: nothing more, nothing counted twice.
    done: bool,
    /// The tenant's upstream connection, held until the body is dropped.
    _permit: GatePermit,
}

impl Filtered {
    fn finished(&mut self) -> Result<Option<Bytes>, BoxError> {
        let mut out = Vec::new();
        self.filter.finish(&mut out)?;
        let (c, r) = (self.filter.counts, &self.report);
        for (reason, n) in [("refused", c.refused), ("malformed", c.malformed), ("wrong-type", c.wrong_type)] {
            if n > 0 {
                r.metrics.ndjson_lines_dropped.with_label_values(&[r.metrics.tenant(&r.tenant), reason]).inc_by(n);
            }
        }
        if c.dropped() > 0 {
            tracing::warn!(target: "fhir_fence::export", correlation = %r.correlation, tenant = %r.tenant, rtype = %r.rtype,
                kept = c.kept, refused = c.refused, malformed = c.malformed, wrong_type = c.wrong_type,
                frames = r.frames, bytes = r.bytes, "export file lines blocked (not provably the caller's)");
        } else {
            tracing::info!(target: "fhir_fence::export", correlation = %r.correlation, tenant = %r.tenant, rtype = %r.rtype,
                kept = c.kept, frames = r.frames, bytes = r.bytes, "export file streamed");
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    fn fail(&mut self, e: &dyn std::fmt::Display) {
        self.done = true;
        let r = &self.report;
        tracing::warn!(target: "fhir_fence::export", correlation = %r.correlation, tenant = %r.tenant, rtype = %r.rtype,
            error = %e, "export file stream aborted");
    }
}

impl HttpBody for Filtered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        this.fail(&"the upstream stalled");
                        return Poll::Ready(Some(Err("the upstream stalled".into())));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(e))) => {
                    this.fail(&e);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.as_mut().reset(Instant::now() + this.idle_for);
                    let Ok(data) = frame.into_data() else { continue };
                    this.report.frames += 1;
                    this.report.bytes += data.len() as u64;
                    let mut out = Vec::with_capacity(data.len());
                    if let Err(e) = this.filter.push(&data, &mut out) {
                        this.fail(&e);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.finished() {
                        Ok(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                        Ok(None) => Poll::Ready(None),
                        Err(e) => {
                            this.fail(&e);
                            Poll::Ready(Some(Err(e)))
                        }
                    };
                }
            }
        }
    }
}
