//! Locks across processes, as files in `lifecycle.state_dir` held with the operating system's
//! advisory lock (released when the file closes, so a crashed holder never leaves one behind):
//! tenant changes take turns (two CLI runs, the CLI beside the admin API), and one data command
//! at a time runs on a tenant (a move and a purge of the same tenant would undo each other).
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// A lock held until dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] File);

fn open(state_dir: &Path, name: &str) -> std::io::Result<(File, PathBuf)> {
    let dir = state_dir.join("locks");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.lock"));
    Ok((OpenOptions::new().create(true).truncate(false).write(true).open(&path)?, path))
}

/// Waits for the lock `name`.
pub fn wait(state_dir: &Path, name: &str) -> std::io::Result<Held> {
    let (f, _) = open(state_dir, name)?;
    f.lock()?;
    Ok(Held(f))
}

/// The lock `name` if no one holds it; `Err` names the lock file when someone does.
pub fn take(state_dir: &Path, name: &str) -> Result<Held, String> {
    let (f, path) = open(state_dir, name).map_err(|e| e.to_string())?;
    match f.try_lock() {
        Ok(()) => Ok(Held(f)),
        Err(TryLockError::WouldBlock) => Err(format!("held by another process or run ({})", path.display())),
        Err(TryLockError::Error(e)) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_lock_is_refused_until_dropped() {
        let dir = std::env::temp_dir().join(format!("fence-lock-{}", uuid::Uuid::new_v4().simple()));
        let held = take(&dir, "tenant-a").unwrap();
        assert!(take(&dir, "tenant-a").unwrap_err().contains("held by another"));
        assert!(take(&dir, "tenant-b").is_ok(), "another tenant's lock is another file");
        drop(held);
        assert!(take(&dir, "tenant-a").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
