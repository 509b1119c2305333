//! `fhir-fence record` as a child process, for the tests that record a client's traffic against
//! a plain server and then replay it through fhir-fence (`tests/conformance`, `replay_classes.rs`).
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

pub struct Recorder {
    child: Child,
    lines: Lines<BufReader<ChildStderr>>,
    /// The base URL the recorded client sends its requests to.
    pub base: String,
}

impl Recorder {
    /// Starts `bin record` in front of `upstream`, writing the traffic to `out`; returns once
    /// it listens.
    pub async fn start(bin: &str, upstream: &str, out: &Path) -> Recorder {
        let port = super::free_port();
        let mut child = tokio::process::Command::new(bin)
            .args(["record", "--listen", &format!("127.0.0.1:{port}"), "--upstream", upstream])
            .args(["--out", out.to_str().unwrap()])
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().unwrap_or_default();
        assert!(first.contains("listening on"), "the recorder did not start: {first}");
        // The recorder serves the upstream's own base path (HAPI's `/fhir`, Helios's root).
        let path = url::Url::parse(upstream).unwrap().path().trim_end_matches('/').to_owned();
        Recorder { child, lines, base: format!("http://127.0.0.1:{port}{path}") }
    }

    /// Stops the recorder as Ctrl-C would (SIGTERM), checks it ended well, and returns its last
    /// line (`N exchanges written …`).
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let last = self.lines.next_line().await.unwrap().unwrap_or_default();
        assert!(self.child.wait().await.unwrap().success(), "the recorder failed: {last}");
        last
    }
}
