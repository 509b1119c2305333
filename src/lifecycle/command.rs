//! `fhir-fence tenant …`: the CLI's side of the lifecycle (the arguments are parsed in
//! `cli.rs`). A human line on a terminal, one JSON line otherwise; exit 0 on success (also
//! when nothing needed changing), 1 on a refusal, with the reason.
use super::change::{self, Changed, LifecycleError, Operation, View};
use serde_json::json;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

/// Who the lifecycle record names for a change from the CLI.
pub fn who() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

/// A state change (or a create) of tenant `name`.
pub fn run(config: &Path, name: &str, op: Operation) -> ExitCode {
    let operation = op.name();
    match change::apply(config, name, op, &who()) {
        Ok(done) => {
            out(&serde_json::to_value(&done).unwrap_or_default(), || human(&done));
            ExitCode::SUCCESS
        }
        Err(e) => refused(name, operation, &e),
    }
}

pub fn list(config: &Path) -> ExitCode {
    match change::list(config) {
        Ok(views) if std::io::stdout().is_terminal() => {
            for v in &views {
                println!("{}", line(v));
            }
            ExitCode::SUCCESS
        }
        Ok(views) => {
            for v in &views {
                println!("{}", serde_json::to_string(v).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => refused("-", "list", &e),
    }
}

pub fn show(config: &Path, name: &str) -> ExitCode {
    match change::show(config, name) {
        Ok(v) => {
            out(&serde_json::to_value(&v).unwrap_or_default(), || line(&v));
            ExitCode::SUCCESS
        }
        Err(e) => refused(name, "show", &e),
    }
}

fn out(value: &serde_json::Value, human: impl FnOnce() -> String) {
    if std::io::stdout().is_terminal() {
        println!("{}", human());
    } else {
        println!("{value}");
    }
}

fn refused(name: &str, operation: &str, e: &LifecycleError) -> ExitCode {
    let value = json!({"tenant": name, "operation": operation, "result": "refused", "error": e.to_string()});
    out(&value, || format!("tenant {name}: {operation} refused: {e}"));
    ExitCode::FAILURE
}

fn human(d: &Changed) -> String {
    let to = d.to.as_str();
    match (d.changed(), d.from) {
        (false, _) => format!("tenant {}: {} unchanged (already {to})", d.tenant, d.operation),
        (true, None) => format!("tenant {}: created ({to})", d.tenant),
        (true, Some(from)) => format!("tenant {}: {} done, {} → {to}", d.tenant, d.operation, from.as_str()),
    }
}

fn line(v: &View) -> String {
    let mut s = format!(
        "{}\t{}\tprefix={}\tupstream={}\t{:?}\t(in {})",
        v.name,
        v.status.as_str(),
        v.prefix,
        v.upstream,
        v.isolation,
        v.defined_in
    );
    if let Some(at) = &v.purge_allowed_at {
        s.push_str(&format!("\tpurge allowed from {at}"));
    }
    s
}
