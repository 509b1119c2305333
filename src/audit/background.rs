//! Where the audit sinks' writer tasks run (shared by the file/stdout writer and the FHIR sink).

/// Where a writer task runs: the runtime that built the sink if there is one (in `serve`, the
/// main thread's, away from the workers serving clients), else the one of the first record.
#[derive(Clone)]
pub(crate) struct Background(Option<tokio::runtime::Handle>);

impl Background {
    pub(crate) fn here() -> Self {
        Background(tokio::runtime::Handle::try_current().ok())
    }

    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.0 {
            Some(h) => drop(h.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}
