//! The lifecycle record: every tenant state change, and every data operation on a tenant
//! (export, restore, verify, purge, with its counts), as one JSON line in
//! `state_dir/lifecycle.jsonl` (`at`, `who`, `operation`, `tenant`, `from`, `to`, `counts`, `ok`). Appended,
//! never rewritten, and never deleted with a tenant: it is what an audit asks for when a
//! tenant is gone.
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// `cli:$USER` or `admin-api`.
    pub who: String,
    pub operation: String,
    pub tenant: String,
    /// The status before (`null` for a create).
    pub from: Option<String>,
    pub to: String,
    /// The tenant's id prefix (state changes): a prefix once recorded is never given again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// For the data operations (export, restore, verify, purge): resources per type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<std::collections::BTreeMap<String, u64>>,
    /// For the data operations: whether it finished without anything found wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

/// The record's file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("lifecycle.jsonl")
}

/// Appends `entry` as one line (one write of a whole line, synced before this returns).
pub fn append(state_dir: &Path, entry: &Entry) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path(state_dir))?;
    f.write_all(&line)?;
    f.sync_data()
}

/// Every entry so far, oldest first (a line that does not parse is skipped).
pub fn read(state_dir: &Path) -> std::io::Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path(state_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
