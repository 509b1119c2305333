//! Why a body did not pass the gate, with the path of the offending member.
/// Why a body is not FHIR R4 JSON, with the path of the offending member
/// (`Observation.subject.reference: expected a string`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", self.path())]
pub struct ShapeError {
    /// Path segments, innermost first (pushed while the check unwinds).
    segments: Vec<String>,
    problem: String,
}

impl ShapeError {
    pub(super) fn new(problem: impl Into<String>) -> Self {
        ShapeError { segments: Vec::new(), problem: problem.into() }
    }

    pub(super) fn at(mut self, segment: impl Into<String>) -> Self {
        self.segments.push(segment.into());
        self
    }

    /// `Observation.component[1].code`.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for s in self.segments.iter().rev() {
            if !out.is_empty() && !s.starts_with('[') {
                out.push('.');
            }
            out.push_str(s);
        }
        out
    }
}
