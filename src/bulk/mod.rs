//! Bulk Data export (issue #4), being built: `ndjson` is the streaming filter every export file
//! will pass through on its way to the client. Kickoff scoping, job handles and the download
//! endpoint are not wired yet: `$export` is still refused by `route`.
pub mod ndjson;
