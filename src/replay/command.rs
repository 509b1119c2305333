//! The `record` and `replay` commands: files and runtimes around the library parts.
use super::report::Report;
use super::run::{self, Plan};
use super::{compare, format, har, record};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The `replay` command's arguments (parsed by `cli`).
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The traffic file (NDJSON, `docs/replay-format.md`).
    #[arg(long)]
    pub traffic: Option<PathBuf>,
    /// The FHIR base URL to replay against (fhir-fence's public base).
    #[arg(long)]
    pub target: Option<String>,
    /// fhir-fence's config: tokens for --tenants are minted with its issuers' signing keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The tenants to replay as, comma-separated (at least two for the isolation check).
    #[arg(long, value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// The issuer in --config that mints the tokens (default: the only one allowed to assert the tenant).
    #[arg(long)]
    pub issuer: Option<String>,
    /// A ready token instead of minting one: `TENANT=TOKEN` (repeatable).
    #[arg(long)]
    pub token: Vec<String>,
    /// Another ignore rule for the transparency check, `Type.path` or `*.path` (repeatable).
    #[arg(long)]
    pub ignore: Vec<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Fail (exit 1) on transparency differences too, not only on isolation failures.
    #[arg(long)]
    pub strict: bool,
    /// Names this run's markers (default: random).
    #[arg(long)]
    pub run_id: Option<String>,
}

/// Exit code for a run that could not start (bad arguments, unreadable files).
const USAGE: u8 = 2;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("fhir-fence {what}: {e}");
    ExitCode::from(USAGE)
}

pub fn record(listen: &str, upstream: &str, timeout_secs: u64, out: &Path) -> ExitCode {
    let file = match std::fs::File::create(out) {
        Ok(f) => f,
        Err(e) => return fail("record", format!("{}: {e}", out.display())),
    };
    runtime().block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return fail("record", format!("cannot listen on {listen}: {e}")),
        };
        eprintln!("fhir-fence record: listening on {listen}, forwarding to {upstream}, writing {}", out.display());
        let writer = Box::new(std::io::BufWriter::new(file));
        let timeout = std::time::Duration::from_secs(timeout_secs);
        match record::serve(listener, upstream, timeout, writer, crate::server::shutdown_signal()).await {
            Ok(n) => {
                eprintln!("fhir-fence record: {n} exchanges written to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail("record", e),
        }
    })
}

pub fn import_har(har_path: &Path, base: &str, out: &Path) -> ExitCode {
    let bytes = match std::fs::read(har_path) {
        Ok(b) => b,
        Err(e) => return fail("replay import-har", format!("{}: {e}", har_path.display())),
    };
    let (exchanges, skipped) = match har::import(&bytes, base) {
        Ok(r) => r,
        Err(e) => return fail("replay import-har", e),
    };
    let written = std::fs::File::create(out).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        exchanges.iter().try_for_each(|x| format::write_line(&mut w, x))?;
        std::io::Write::flush(&mut w)
    });
    if let Err(e) = written {
        return fail("replay import-har", format!("{}: {e}", out.display()));
    }
    eprintln!("{} exchanges written to {} ({skipped} entries outside {base} left out)", exchanges.len(), out.display());
    ExitCode::SUCCESS
}

pub fn replay(args: &ReplayArgs, mint: &dyn Fn(&str) -> Result<String, String>) -> ExitCode {
    match plan(args, mint) {
        Ok(plan) => {
            let plan = Arc::new(plan);
            let outcomes = runtime().block_on(run::run(plan.clone()));
            let tenants = plan.tenants.iter().map(|(t, _)| t.clone()).collect();
            let report = Report::new(plan.run_id.clone(), plan.target.clone(), plan.exchanges.len(), tenants, outcomes);
            print!("{}", report.text(25));
            for (path, text) in [(&args.json, report.json()), (&args.junit, report.junit())] {
                if let Some(p) = path {
                    if let Err(e) = std::fs::write(p, text) {
                        return fail("replay", format!("{}: {e}", p.display()));
                    }
                }
            }
            if report.passed(args.strict) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail("replay", e),
    }
}

fn plan(args: &ReplayArgs, mint: &dyn Fn(&str) -> Result<String, String>) -> Result<Plan, String> {
    let traffic = args.traffic.as_ref().ok_or("--traffic FILE is required")?;
    let target = args.target.as_ref().ok_or("--target URL is required")?.trim_end_matches('/').to_owned();
    let file = std::fs::File::open(traffic).map_err(|e| format!("{}: {e}", traffic.display()))?;
    let exchanges = format::read(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", traffic.display()))?;
    let mut tenants: Vec<(String, String)> = Vec::new();
    for t in &args.token {
        let (name, tok) = t.split_once('=').ok_or_else(|| format!("--token {t}: expected TENANT=TOKEN"))?;
        tenants.push((name.to_owned(), tok.to_owned()));
    }
    for name in &args.tenants {
        if !tenants.iter().any(|(t, _)| t == name) {
            tenants.push((name.clone(), mint(name)?));
        }
    }
    if tenants.len() < 2 {
        return Err("give at least two tenants (--tenants a,b or --token): isolation needs another tenant".into());
    }
    let rules = compare::rules(&args.ignore)?;
    let run_id = args.run_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
    Ok(Plan { exchanges, target, tenants, rules, run_id })
}
