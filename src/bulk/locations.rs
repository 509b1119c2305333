//! Where an upstream puts an export job's status and files. Servers name them differently
//! (HAPI: `$export-poll-status?_jobId={id}` and `Binary/{id}`; the Helios FHIR Server:
//! `export-status/{id}` and `export-file/{id}/{name}`). fhir-fence accepts exactly these forms,
//! under the upstream's own base, and asks for the paths it builds from them: never a URL as
//! the upstream wrote it.
use crate::fhir::reference::is_id;
use serde::{Deserialize, Serialize};

/// How the upstream names a job's status URL and its files.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Form {
    /// `{base}/$export-poll-status?_jobId={id}`, files `{base}/Binary/{id}` (HAPI).
    #[default]
    PollStatus,
    /// `{base}/export-status/{id}`, files `{base}/export-file/{id}/{name}` (Helios).
    ExportStatus,
}

/// The form and the upstream's job id from a kickoff's `Content-Location`.
pub fn job(base: &str, location: &str) -> Option<(Form, String)> {
    let rest = location.strip_prefix(base)?;
    let (form, id) = if let Some(id) = rest.strip_prefix("/$export-poll-status?_jobId=") {
        (Form::PollStatus, id)
    } else {
        (Form::ExportStatus, rest.strip_prefix("/export-status/")?)
    };
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then(|| (form, id.to_owned()))
}

/// The job's status path, relative to the upstream's base.
pub fn status_path(form: Form, job: &str) -> String {
    match form {
        Form::PollStatus => format!("$export-poll-status?_jobId={job}"),
        Form::ExportStatus => format!("export-status/{job}"),
    }
}

/// The path (relative to the upstream's base) of a file a manifest of `job` names by `url`:
/// one of the job's own files in the job's form, nothing else.
pub fn file_path(form: Form, job: &str, base: &str, url: &str) -> Option<String> {
    let rest = url.strip_prefix(base)?;
    let safe = match form {
        Form::PollStatus => is_id(rest.strip_prefix("/Binary/")?),
        Form::ExportStatus => {
            let name = rest.strip_prefix("/export-file/")?.strip_prefix(job)?.strip_prefix('/')?;
            !name.is_empty()
                && name != "."
                && name != ".."
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    safe.then(|| rest[1..].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://h:1/fhir";

    #[test]
    fn jobs_only_from_the_upstreams_own_status_urls() {
        assert_eq!(
            job(BASE, "http://h:1/fhir/$export-poll-status?_jobId=ab-12"),
            Some((Form::PollStatus, "ab-12".into()))
        );
        assert_eq!(job(BASE, "http://h:1/fhir/export-status/ab-12"), Some((Form::ExportStatus, "ab-12".into())));
        for bad in [
            "http://evil/fhir/$export-poll-status?_jobId=ab",
            "http://h:1/fhir/$export-poll-status?_jobId=a&x=1",
            "http://h:1/fhir/$export-poll-status?_jobId=",
            "http://h:1/fhir/export-status/",
            "http://h:1/fhir/export-status/a/../b",
            "http://h:1/fhirx/export-status/ab",
            "http://evil/fhir/export-status/ab",
        ] {
            assert_eq!(job(BASE, bad), None, "{bad}");
        }
        assert_eq!(status_path(Form::PollStatus, "j1"), "$export-poll-status?_jobId=j1");
        assert_eq!(status_path(Form::ExportStatus, "j1"), "export-status/j1");
    }

    #[test]
    fn files_only_of_the_job_in_its_form() {
        let file = |form, url| file_path(form, "j1", BASE, url);
        assert_eq!(file(Form::PollStatus, "http://h:1/fhir/Binary/b-7").as_deref(), Some("Binary/b-7"));
        assert_eq!(
            file(Form::ExportStatus, "http://h:1/fhir/export-file/j1/Patient-0").as_deref(),
            Some("export-file/j1/Patient-0")
        );
        for (form, bad) in [
            (Form::PollStatus, "http://h:1/fhir/export-file/j1/Patient-0"),
            (Form::ExportStatus, "http://h:1/fhir/Binary/b-7"),
            (Form::ExportStatus, "http://h:1/fhir/export-file/j2/Patient-0"),
            (Form::ExportStatus, "http://h:1/fhir/export-file/j1x/Patient-0"),
            (Form::ExportStatus, "http://h:1/fhir/export-file/j1/.."),
            (Form::ExportStatus, "http://h:1/fhir/export-file/j1/a/b"),
            (Form::ExportStatus, "http://h:1/fhir/export-file/j1/a?x=1"),
            (Form::ExportStatus, "http://h:1/fhir/export-file/j1/"),
            (Form::PollStatus, "http://evil/fhir/Binary/b-7"),
            (Form::PollStatus, "http://h:1/fhir/Binary/b%2F7"),
        ] {
            assert_eq!(file(form, bad), None, "{bad}");
        }
    }
}
