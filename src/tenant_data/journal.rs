//! The state files that make export and restore resumable: what is finished, written after
//! each finished step by replacing the file whole (written beside it, then renamed), so a crash
//! leaves either the state before the step or the state after it, never half of one.
use super::{DataError, Refusal};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The export's state, `DIR/.export-state.json`.
pub const EXPORT: &str = ".export-state.json";

/// The state of a restore of the export in DIR into `tenant`: `DIR/.restore-<tenant>.json`.
pub fn restore_file(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!(".restore-{tenant}.json"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportState {
    pub tenant: String,
    pub upstream: String,
    /// Types whose file is complete, with what the manifest will say of them (empty types too).
    pub done: BTreeMap<String, DoneType>,
    /// Set once `manifest.json` is written: a rerun changes nothing.
    pub complete: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneType {
    /// Local id → digest.
    pub resources: BTreeMap<String, String>,
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreState {
    pub tenant: String,
    pub upstream: String,
    /// SHA-256 of the plan (every transaction's entries in order): a rerun must find the same
    /// plan, or it is not continuing this restore.
    pub plan: String,
    pub transactions: usize,
    /// Transactions committed (indexes into the plan; they may commit out of order).
    pub done: std::collections::BTreeSet<usize>,
    pub complete: bool,
}

/// Reads a state file; `None` when there is none.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, DataError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| DataError::Corrupt(path.to_owned(), e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(path, e)),
    }
}

/// Replaces `path` whole with `value` (JSON).
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), DataError> {
    let bytes = serde_json::to_vec_pretty(value).expect("state serialises");
    replace(path, &bytes)
}

/// Writes `bytes` beside `path`, syncs, and renames it over `path` (as tenant files are written).
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    crate::lifecycle::store::write_atomic(path, bytes).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("fhir-fence-journal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(EXPORT);
        assert!(read::<ExportState>(&path).unwrap().is_none());
        let mut s = ExportState { tenant: "acme".into(), upstream: "main".into(), ..Default::default() };
        s.done.insert("Patient".into(), DoneType::default());
        write(&path, &s).unwrap();
        let back: ExportState = read(&path).unwrap().unwrap();
        assert_eq!((back.tenant.as_str(), back.done.len(), back.complete), ("acme", 1, false));
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(read::<ExportState>(&path), Err(DataError::Corrupt(..))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
