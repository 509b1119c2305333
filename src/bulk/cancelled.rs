//! Cancelled export jobs, as every replica must see them. With `[redis]` set, a cancel is
//! written to Redis (expiring when the job's handles would, `export.job_ttl_secs`) before the
//! upstream job is cancelled, and every status or file request asks Redis. A positive answer is
//! cached here (a cancelled job stays cancelled); a negative one is not cached at all, or a
//! cancel on another replica would go unseen for as long as it was kept: the next check after a
//! cancel, on any replica, sees it. That costs one Redis round trip per status poll or file
//! download, each of which also costs an upstream exchange. When Redis cannot answer, the check
//! fails closed (503, retry): a cancelled job's files are never served because a replica could
//! not ask. Without `[redis]`, cancellations are this process's alone (one replica).
use super::ExportError;
use crate::state::Snapshot;
use std::time::Duration;

fn key(snap: &Snapshot, job: &str) -> Option<(std::sync::Arc<crate::shared_store::Store>, String)> {
    snap.shared.as_ref().map(|s| (s.clone(), s.key("export-cancelled", job)))
}

/// Whether export job `job` was cancelled, here or on another replica.
pub async fn is_cancelled(snap: &Snapshot, job: &str) -> Result<bool, ExportError> {
    if snap.export_tombstones.contains_key(job) {
        return Ok(true);
    }
    let Some((store, key)) = key(snap, job) else { return Ok(false) };
    match store.has_flag(key).await {
        Ok(true) => {
            snap.export_tombstones.insert(job.to_owned(), ()).await;
            Ok(true)
        }
        Ok(false) => Ok(false),
        Err(e) => {
            tracing::debug!(job, error = %e, "export cancellations cannot be checked");
            Err(ExportError::CancellationsUnknown)
        }
    }
}

/// Records `job` as cancelled (first in Redis, where every replica sees it), until its handles
/// would have expired anyway.
pub async fn cancel(snap: &Snapshot, job: &str) -> Result<(), ExportError> {
    if let Some((store, key)) = key(snap, job) {
        let ttl = Duration::from_secs(snap.loaded.config.export.job_ttl_secs);
        store.set_flag(key, ttl).await.map_err(|e| {
            tracing::debug!(job, error = %e, "export cancellation cannot be shared");
            ExportError::CancellationsUnknown
        })?;
    }
    snap.export_tombstones.insert(job.to_owned(), ()).await;
    Ok(())
}
