//! Progress on stderr: a bar redrawn in place on a terminal, JSON lines otherwise
//! (`{"phase","type","done","total"}`, `total` null while unknown), so a script or a log
//! collector reads the same steps a person watches. stdout stays for the final report.
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    mode: Mode,
    /// With `Mode::Kept`: the last step, for whoever asks (an admin API job's status).
    kept: Option<std::sync::Arc<Mutex<serde_json::Value>>>,
    /// When the bar was last drawn (it is redrawn at most 10 times a second).
    drawn: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bar,
    Lines,
    Silent,
    Kept,
}

impl Progress {
    /// A bar when stderr is a terminal, JSON lines otherwise.
    pub fn stderr() -> Progress {
        let mode = if std::io::stderr().is_terminal() { Mode::Bar } else { Mode::Lines };
        Progress { mode, kept: None, drawn: Mutex::new(None) }
    }

    /// Reports nothing (library callers, tests).
    pub fn silent() -> Progress {
        Progress { mode: Mode::Silent, kept: None, drawn: Mutex::new(None) }
    }

    /// Keeps the last step in `into` (as the JSON line would say it) instead of printing it.
    pub fn kept(into: std::sync::Arc<Mutex<serde_json::Value>>) -> Progress {
        Progress { mode: Mode::Kept, kept: Some(into), drawn: Mutex::new(None) }
    }

    /// `done` of `total` (if known) in `phase`, for resource type `rtype` (or the whole step).
    pub fn update(&self, phase: &str, rtype: Option<&str>, done: u64, total: Option<u64>) {
        match self.mode {
            Mode::Silent => {}
            Mode::Kept => {
                if let Some(k) = &self.kept {
                    *k.lock().unwrap_or_else(|p| p.into_inner()) =
                        json!({"phase": phase, "type": rtype, "done": done, "total": total});
                }
            }
            Mode::Lines => {
                let line = json!({"phase": phase, "type": rtype, "done": done, "total": total});
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            Mode::Bar => {
                let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
                let finished = total == Some(done);
                if !finished && drawn.is_some_and(|d| d.elapsed() < Duration::from_millis(100)) {
                    return;
                }
                *drawn = Some(Instant::now());
                let _ = write!(std::io::stderr().lock(), "\r\x1b[2K{}", bar(phase, rtype, done, total));
            }
        }
    }

    /// Ends the bar's line (nothing for JSON lines).
    pub fn finish(&self) {
        if self.mode == Mode::Bar {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

/// `phase Type [=====>    ] done/total` (without a total: `phase Type done`).
fn bar(phase: &str, rtype: Option<&str>, done: u64, total: Option<u64>) -> String {
    let label = match rtype {
        Some(t) => format!("{phase} {t}"),
        None => phase.to_owned(),
    };
    match total {
        Some(total) if total > 0 => {
            const WIDTH: u64 = 30;
            let filled = (done.min(total) * WIDTH / total) as usize;
            let rest = WIDTH as usize - filled;
            format!("{label} [{}{}] {done}/{total}", "=".repeat(filled), " ".repeat(rest))
        }
        _ => format!("{label} {done}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_the_share_done() {
        assert_eq!(
            bar("export", Some("Patient"), 5, Some(10)),
            format!("export Patient [{}{}] 5/10", "=".repeat(15), " ".repeat(15))
        );
        assert_eq!(bar("purge", None, 3, None), "purge 3");
        assert!(bar("x", None, 12, Some(10)).ends_with("12/10"), "more than announced does not overflow the bar");
    }
}
