//! The command line: `serve`, `check`, `token`, `record`, `replay`, `inject`, `webhook`,
//! `tenant-data` (export, restore, verify, purge; the work is in `tenant_data/`). The interface is a
//! contract other tools rely on.
use crate::config;
use crate::identity::mint;
use crate::state::Snapshot;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "fhir-fence", version, about = "Tenant isolation in front of an unmodified FHIR R4 server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public and admin listeners.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file; names the bad key and why (exit 1).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a JWT signed by an issuer with a signing key in the config (development aid).
    Token {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "dev-user")]
        sub: String,
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The issuer's name in the config; defaults to the only issuer allowed to assert the tenant.
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Record a client's traffic against a plain FHIR server (pass-through, no tenancy).
    Record {
        /// Where clients connect, `IP:port`; they use the upstream's base path on it.
        #[arg(long)]
        listen: String,
        /// The FHIR server's base URL (`http://host:port/fhir`).
        #[arg(long)]
        upstream: String,
        /// The traffic file (NDJSON) to write; Authorization and cookies are never written.
        #[arg(long)]
        out: PathBuf,
        /// Seconds to wait for the upstream's answer; then the client gets a 504 and nothing is recorded.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Add the fhir-fence sidecar to the Kubernetes manifests annotated `fhir-fence.dev/inject:
    /// enabled` (multi-document YAML, a file or stdin; the result on stdout).
    Inject {
        /// The manifests; `-` or absent: stdin.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        /// The image when a workload does not name one (`fhir-fence.dev/image`).
        #[arg(long, default_value = concat!("ghcr.io/fhir-fence/fhir-fence:", env!("CARGO_PKG_VERSION")))]
        image: String,
    },
    /// Serve the mutating admission webhook that adds the sidecar to Pods annotated
    /// `fhir-fence.dev/inject: enabled` (HTTPS, `POST /mutate`; certificate files re-read on change).
    Webhook {
        /// Where the API server connects, `IP:port`.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// The PEM certificate chain (e.g. a Secret's `tls.crt`).
        #[arg(long)]
        cert: PathBuf,
        /// The PEM private key (e.g. a Secret's `tls.key`).
        #[arg(long)]
        key: PathBuf,
        /// The image when a Pod does not name one (`fhir-fence.dev/image`).
        #[arg(long, default_value = concat!("ghcr.io/fhir-fence/fhir-fence:", env!("CARGO_PKG_VERSION")))]
        image: String,
    },
    /// A tenant's data carried out and back in, on its upstream directly: export, restore,
    /// verify, purge. Progress on stderr, the JSON report on stdout.
    TenantData {
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        op: TenantDataCommand,
    },
    /// Replay recorded traffic as several tenants at once and check isolation and transparency.
    #[command(args_conflicts_with_subcommands = true)]
    Replay {
        #[command(subcommand)]
        import: Option<ReplayCommand>,
        #[command(flatten)]
        args: Box<crate::replay::command::ReplayArgs>,
    },
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Convert a HAR file to the traffic format (entries under --base only).
    ImportHar {
        #[arg(long)]
        har: PathBuf,
        /// The FHIR base URL the HAR's requests went to.
        #[arg(long)]
        base: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TenantDataCommand {
    /// Every current resource of the tenant, in its local form, to DIR/Type.ndjson and
    /// DIR/manifest.json (counts, a digest per resource). Resumable: a rerun continues.
    Export {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Load an export into an empty tenant (on its own upstream, which may differ from the
    /// export's), every reference intact; then verify it. Resumable: a rerun continues.
    Restore {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        from: PathBuf,
    },
    /// Compare an export's files and the tenant's data with the export's manifest.
    Verify {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        against: PathBuf,
    },
    /// Delete every upstream resource of a tenant taken out of service, and prove none is left.
    Purge {
        #[arg(long)]
        tenant: String,
        /// Also remove each deleted resource's history (`$expunge`, where the upstream allows it).
        #[arg(long)]
        expunge: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config).and_then(Snapshot::build) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Inject { file, image } => {
            let text = match file.as_deref().filter(|f| f.as_os_str() != "-") {
                Some(f) => std::fs::read_to_string(f),
                None => std::io::read_to_string(std::io::stdin()),
            };
            let injected = text
                .map_err(|e| e.to_string())
                .and_then(|t| crate::kube::inject::inject(&t, &image).map_err(|e| e.to_string()));
            match injected {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fhir-fence inject: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token { config, tenant, sub, ttl, issuer } => {
            match token(&config, &tenant, &sub, ttl, issuer.as_deref()) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fhir-fence token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => serve(&config),
        Command::Webhook { listen, cert, key, image } => webhook(&listen, &cert, &key, &image),
        Command::Record { listen, upstream, out, timeout } => {
            crate::replay::command::record(&listen, &upstream, timeout, &out)
        }
        Command::TenantData { config, op } => {
            use crate::tenant_data::command::{run, Op};
            let (tenant, op) = match op {
                TenantDataCommand::Export { tenant, out } => (tenant, Op::Export { out }),
                TenantDataCommand::Restore { tenant, from } => (tenant, Op::Restore { from }),
                TenantDataCommand::Verify { tenant, against } => (tenant, Op::Verify { against }),
                TenantDataCommand::Purge { tenant, expunge } => (tenant, Op::Purge { expunge }),
            };
            run(&config, &tenant, op)
        }
        Command::Replay { import: Some(ReplayCommand::ImportHar { har, base, out }), .. } => {
            crate::replay::command::import_har(&har, &base, &out)
        }
        Command::Replay { import: None, args } => {
            let (config, issuer) = (args.config.clone(), args.issuer.clone());
            let mint = move |tenant: &str| match &config {
                Some(c) => token(c, tenant, "fhir-fence-replay", 7200, issuer.as_deref()),
                None => Err(format!("no token for tenant {tenant}: give --config or --token {tenant}=TOKEN")),
            };
            crate::replay::command::replay(&args, &mint)
        }
    }
}

fn token(path: &std::path::Path, tenant: &str, sub: &str, ttl: u64, issuer: Option<&str>) -> Result<String, String> {
    let loaded = config::load(path).map_err(|e| e.to_string())?;
    let snap = Snapshot::build(loaded).map_err(|e| e.to_string())?;
    let issuers = &snap.loaded.config.issuers;
    let name = match issuer {
        Some(n) => n.to_owned(),
        None => {
            let candidates: Vec<&String> =
                issuers.iter().filter(|(_, i)| i.asserts().iter().any(|t| t == tenant)).map(|(n, _)| n).collect();
            match candidates.as_slice() {
                [one] => (*one).clone(),
                [] => return Err(format!("no issuer may assert tenant {tenant:?}")),
                _ => return Err(format!("several issuers may assert {tenant:?}; choose one with --issuer")),
            }
        }
    };
    let cfg = issuers.get(&name).ok_or_else(|| format!("no issuer named {name:?}"))?;
    if !cfg.asserts().iter().any(|t| t == tenant) {
        return Err(format!("issuer {name:?} may not assert tenant {tenant:?}"));
    }
    let keys = snap.verifier.issuer_keys(&name).ok_or_else(|| format!("no issuer named {name:?}"))?;
    mint(cfg, keys, tenant, sub, ttl).map_err(|e| e.to_string())
}

/// JSON log lines on stdout, at the level `FHIR_FENCE_LOG` sets (`info`). Lines are written by a
/// background thread, so a request never waits on stdout (lines beyond its buffer are dropped
/// rather than delay requests; the audit trail is the record that counts its losses). Keep the
/// guard until exit: it flushes.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let (stdout, flush_on_exit) = tracing_appender::non_blocking(std::io::stdout());
    tracing_subscriber::fmt()
        .json()
        .with_writer(stdout)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FHIR_FENCE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    flush_on_exit
}

fn webhook(listen: &str, cert: &std::path::Path, key: &std::path::Path, image: &str) -> ExitCode {
    let _flush_on_exit = init_logging();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let cert = match crate::server_cert::ServerCert::load(cert, key) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fhir-fence webhook: {e}");
                return ExitCode::FAILURE;
            }
        };
        cert.follow();
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fhir-fence webhook: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(listen, "webhook: serving POST /mutate");
        match crate::kube::webhook::serve(listener, cert, image.into(), crate::server::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fhir-fence webhook: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn serve(path: &std::path::Path) -> ExitCode {
    let _flush_on_exit = init_logging();
    // The main thread's runtime runs the admin listener, the reload triggers and the audit
    // writers (started on the runtime that builds the snapshot); the public listener runs on
    // the worker threads (`workers.rs`).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let snap = match config::load(path).and_then(Snapshot::build) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("{}: invalid: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        let cfg = &snap.loaded.config;
        let workers = crate::workers::count(cfg.server.workers);
        let public = match cfg.server.listen.parse().map_err(std::io::Error::other).and_then(|a| crate::workers::bind(a, workers)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", cfg.server.listen);
                return ExitCode::FAILURE;
            }
        };
        let admin = match tokio::net::TcpListener::bind(&cfg.admin.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", cfg.admin.listen);
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(public = %cfg.server.listen, admin = %cfg.admin.listen, base = %snap.public_base, workers, "fhir-fence listening");
        tokio::spawn(preload_capabilities(snap.clone()));
        let live = crate::live::Live::new(path, snap);
        crate::live::spawn_triggers(live.clone());
        // Each worker drains its own connections before `run` returns.
        if let Err(e) = crate::workers::run(live, public, admin, crate::server::shutdown_signal()).await {
            eprintln!("cannot start the worker threads: {e}");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    })
}

/// Reads every upstream's CapabilityStatement, retrying until each answers (requests that need
/// it meanwhile get a 503). Runs in the background so fhir-fence can start before its upstream.
pub async fn preload_capabilities(snap: Arc<Snapshot>) {
    for name in snap.upstreams.keys() {
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            match snap.fetch_capabilities(name).await {
                Ok(caps) => {
                    if let Some(slot) = snap.capabilities.get(name) {
                        slot.store(Some(Arc::new(caps)));
                    }
                    tracing::info!(upstream = %name, "upstream capabilities loaded");
                    break;
                }
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "upstream capabilities not loaded yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }
}
