//! Live configuration: the snapshot each request starts from, replaced whole on a reload.
//!
//! A reload — a source file changed (the config or a key file it names), SIGHUP, or
//! `POST /reload` on the admin listener — loads and validates the file and builds a new
//! snapshot from it ([`Snapshot::rebuild`]). If anything fails, the old snapshot keeps serving
//! and the failure is logged and counted (`fhir_fence_config_reloads_total{result="failed"}`).
//! A request holds the snapshot it started with until it is answered, so requests in flight
//! finish under the config they began with; the next request sees the new one (a suspension
//! takes effect there).
use crate::config::{self, ConfigError};
use crate::state::Snapshot;
use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long the source files must stay quiet after a change before it is read (editors and
/// Kubernetes write a file in several steps).
pub const SETTLE: Duration = Duration::from_millis(200);

pub struct Live {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    /// The source files' fingerprint at the last reload attempt, so a change is tried once.
    tried: Mutex<[u8; 32]>,
    /// One reload at a time.
    serial: tokio::sync::Mutex<()>,
    /// Counts successful reloads; tests and the admin endpoint read it.
    generation: watch::Sender<u64>,
}

impl Live {
    /// Serves `snap`, built from the config at `path`.
    pub fn new(path: &Path, snap: Arc<Snapshot>) -> Arc<Live> {
        let tried = fingerprint(&snap.loaded.source_files(path));
        Arc::new(Live {
            current: ArcSwap::new(snap),
            path: path.to_path_buf(),
            tried: Mutex::new(tried),
            serial: tokio::sync::Mutex::new(()),
            generation: watch::Sender::new(0),
        })
    }

    /// The snapshot a request starts with (and keeps until it is answered).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The config file this serves.
    pub fn config_path(&self) -> &Path {
        &self.path
    }

    /// The number of successful reloads so far, as a watch.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reloads now (`trigger` names why, for the log). On failure the old snapshot stays.
    pub async fn reload(&self, trigger: &'static str) -> Result<u64, ConfigError> {
        self.reload_seen(trigger, None).await
    }

    /// [`Live::reload`], given the source files and their fingerprint as the caller just read
    /// them for `snap` (the file watch), so that they are not read again when `snap` is still
    /// current: with ten thousand tenant files, each reading is a tenth of a second or more.
    async fn reload_seen(&self, trigger: &'static str, seen: Option<Seen>) -> Result<u64, ConfigError> {
        let _one = self.serial.lock().await;
        let before = self.snapshot();
        let (files, print) = match seen {
            Some(seen) if Arc::ptr_eq(&seen.snap, &before) => (seen.files, seen.print),
            _ => {
                let files = before.loaded.source_files(&self.path);
                let print = fingerprint(&files);
                (files, print)
            }
        };
        *self.tried.lock().unwrap_or_else(|p| p.into_inner()) = print;
        let built = config::load(&self.path).and_then(|loaded| Snapshot::rebuild(loaded, &before));
        let metrics = before.metrics.clone();
        match built {
            Ok(snap) => {
                // The same files as read above: their fingerprint stands (a change made since
                // is seen by the watch, and read then).
                let now = snap.loaded.source_files(&self.path);
                *self.tried.lock().unwrap_or_else(|p| p.into_inner()) =
                    if now == files { print } else { fingerprint(&now) };
                self.current.store(Arc::new(snap));
                self.generation.send_modify(|g| *g += 1);
                let generation = *self.generation.borrow();
                metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(trigger, generation, path = %self.path.display(), "configuration reloaded");
                Ok(generation)
            }
            Err(e) => {
                metrics.config_reloads.with_label_values(&["failed"]).inc();
                tracing::error!(trigger, error = %e, path = %self.path.display(), "configuration reload refused; the previous configuration stays");
                Err(e)
            }
        }
    }

    /// Reloads now, then waits (at most `bound`) until no request still holds the snapshot
    /// that was current before: when this returns `Ok(true)`, nothing acts under the old
    /// configuration any more (a write freeze is in force, a moved tenant's writes all go to
    /// its new upstream). `Ok(false)`: requests were still in flight when `bound` passed.
    pub async fn reload_and_drain(&self, trigger: &'static str, bound: Duration) -> Result<bool, ConfigError> {
        let before = self.snapshot();
        self.reload(trigger).await?;
        let deadline = tokio::time::Instant::now() + bound;
        while before.in_flight.get() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(true)
    }

    /// The longest a request may take upstream under the current snapshot: how long a drain
    /// can last.
    pub fn drain_bound(&self) -> Duration {
        let snap = self.snapshot();
        let longest = snap.loaded.config.upstreams.values().map(|u| u.request_timeout_ms).max().unwrap_or_default();
        Duration::from_millis(longest) * 2 + Duration::from_secs(1)
    }

    /// Reloads if a source file differs from what the last attempt read.
    async fn reload_if_changed(&self) {
        let snap = self.snapshot();
        let files = snap.loaded.source_files(&self.path);
        let print = fingerprint(&files);
        if print != *self.tried.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = self.reload_seen("file change", Some(Seen { snap, files, print })).await;
        }
    }

    /// The directories holding the current snapshot's source files, and `tenants_dir` (where
    /// a file added is a reload too).
    fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        let snap = self.snapshot();
        let files = snap.loaded.source_files(&self.path);
        files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).chain(snap.loaded.tenants_dir()).collect()
    }
}

/// The source files of a snapshot and their fingerprint, as read for it.
struct Seen {
    snap: Arc<Snapshot>,
    files: Vec<PathBuf>,
    print: [u8; 32],
}

/// SHA-256 over every source file's path and contents (a missing file counts as such).
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in files {
        ctx.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_be_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"\xffmissing"),
        }
    }
    ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Starts the reload triggers that run beside the listeners: SIGHUP and source file changes.
pub fn spawn_triggers(live: Arc<Live>) {
    #[cfg(unix)]
    {
        let live = live.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; reload through the admin endpoint or the file");
                return;
            };
            while hup.recv().await.is_some() {
                let _ = live.reload("SIGHUP").await;
            }
        });
    }
    tokio::spawn(watch_files(live));
}

/// Watches the directories of the source files (a Kubernetes ConfigMap or Secret is swapped by
/// renaming a directory link, which only a directory watch sees) and reloads when a source
/// file's contents changed.
async fn watch_files(live: Arc<Live>) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    // Only events naming a source file (or a Kubernetes `..data`-style link), or a tenant file
    // (`NAME.toml` in `tenants_dir`, also one not read yet), count: a directory may also hold
    // files written all the time, such as an audit file, a log or the lifecycle record.
    let names: Arc<std::sync::RwLock<Wanted>> = Arc::default();
    let wanted = names.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Opening or reading a file is no change (and the check below reads the files: counting
        // those events would make the watcher wake itself for ever).
        if let EventKind::Access(kind) = event.kind {
            if kind != AccessKind::Close(AccessMode::Write) {
                return;
            }
        }
        let known = wanted.read().unwrap_or_else(|p| p.into_inner());
        let relevant = event.paths.iter().any(|p| known.counts(p));
        if relevant {
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config files; reload with SIGHUP or the admin endpoint");
            return;
        }
    };
    let mut watched = BTreeSet::new();
    let mut first = true;
    loop {
        let snap = live.snapshot();
        let files = snap.loaded.source_files(&live.path);
        *names.write().unwrap_or_else(|p| p.into_inner()) = Wanted {
            names: files.iter().filter_map(|f| f.file_name().map(|n| n.to_os_string())).collect(),
            tenants_dir: snap.loaded.tenants_dir().and_then(|d| std::fs::canonicalize(d).ok()),
        };
        for dir in live.watched_dirs().difference(&watched.clone()) {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir.clone());
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a config directory"),
            }
        }
        // A change made before the watches were armed (between the snapshot's load and now)
        // sent no event: looked for once.
        if std::mem::take(&mut first) {
            live.reload_if_changed().await;
        }
        if rx.recv().await.is_none() {
            return;
        }
        while tokio::time::timeout(SETTLE, rx.recv()).await.is_ok_and(|e| e.is_some()) {}
        live.reload_if_changed().await;
    }
}

/// Which changed paths the file watch counts.
#[derive(Default)]
struct Wanted {
    /// The source files' names.
    names: BTreeSet<std::ffi::OsString>,
    /// `lifecycle.tenants_dir`, canonical.
    tenants_dir: Option<PathBuf>,
}

impl Wanted {
    fn counts(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else { return false };
        if self.names.contains(name) || name.as_encoded_bytes().starts_with(b"..") {
            return true;
        }
        // A tenant file of `tenants_dir`, also a new one (hidden files are temporary ones).
        let bytes = name.as_encoded_bytes();
        let tenant_file = bytes.ends_with(b".toml") && !bytes.starts_with(b".");
        tenant_file
            && self
                .tenants_dir
                .as_ref()
                .is_some_and(|dir| path.parent().and_then(|p| std::fs::canonicalize(p).ok()).is_some_and(|p| &p == dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_files_count_and_the_lifecycle_record_does_not() {
        let dir = std::env::temp_dir().join(format!("fhir-fence-live-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let wanted = Wanted {
            names: ["config.toml".into()].into(),
            tenants_dir: Some(std::fs::canonicalize(dir.join("tenants")).unwrap()),
        };
        assert!(wanted.counts(&dir.join("config.toml")));
        assert!(wanted.counts(&dir.join("tenants/new.toml")), "a tenant file not read yet");
        assert!(!wanted.counts(&dir.join("tenants/.new.toml.123.tmp")), "a temporary file");
        assert!(!wanted.counts(&dir.join("tenants/notes.txt")));
        assert!(!wanted.counts(&dir.join("state/lifecycle.jsonl")));
        assert!(!wanted.counts(&dir.join("other.toml")), "a .toml outside tenants_dir");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
