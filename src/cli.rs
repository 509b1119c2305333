//! The command line: `serve`, `check`, `token`, `tenant` (lifecycle: list, show, create, suspend,
//! resume, read-only, delete, undelete — the work in `lifecycle/`; data: export, restore, verify,
//! purge, adopt — the work in `tenant_data/`), `record`, `replay`, `inject`, `webhook`. The interface is a
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
    /// Manage tenants kept as files in `lifecycle.tenants_dir`: list, show, create and change
    /// their state (each change appended to `lifecycle.state_dir/lifecycle.jsonl`; a running
    /// fhir-fence picks it up through its file watch); and carry a tenant's data out and back in
    /// on its upstream directly: export, restore, verify, purge.
    Tenant {
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        action: TenantAction,
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
enum TenantAction {
    /// Every tenant (from the config file and from tenants_dir), with its status.
    List,
    /// One tenant.
    Show { name: String },
    /// A new tenant file (refused if the name or prefix is taken, or the result is invalid).
    Create {
        name: String,
        /// The id prefix, `[a-z0-9]{1,12}`.
        #[arg(long)]
        prefix: String,
        /// The upstream (in `[upstreams]`) holding the tenant's data.
        #[arg(long)]
        upstream: String,
        /// `shared` or `dedicated` (no other tenant may use its upstream).
        #[arg(long, default_value = "shared")]
        isolation: String,
        /// The status it starts with (`active`, `suspended`, `read-only`).
        #[arg(long, default_value = "active")]
        status: String,
        /// An issuer (by config name) that may assert the tenant; repeatable.
        #[arg(long = "issuer")]
        issuers: Vec<String>,
        /// A FHIR operation the tenant may call (without `$`); repeatable.
        #[arg(long = "operation")]
        operations: Vec<String>,
        /// Where its Subscriptions may deliver; repeatable.
        #[arg(long = "subscription-destination")]
        subscription_destinations: Vec<String>,
    },
    /// Refuse every request of the tenant (403).
    Suspend { name: String },
    /// Serve the tenant again (from suspended or read-only).
    Resume { name: String },
    /// Serve reads only; changes get 503 with Retry-After.
    ReadOnly { name: String },
    /// Mark the tenant deleting (refused like suspended); its data may be purged after
    /// `lifecycle.delete_grace_secs`.
    Delete { name: String },
    /// Take back a delete within the grace: the tenant comes back suspended.
    Undelete { name: String },
    /// Every current resource of the tenant, in its local form, to DIR/Type.ndjson and
    /// DIR/manifest.json (counts, a digest per resource), read from its upstream directly.
    /// Resumable: a rerun continues. Progress on stderr, the JSON report on stdout.
    Export {
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Load an export into an empty tenant (on its own upstream, which may differ from the
    /// export's), every reference intact; then verify it. Resumable: a rerun continues.
    Restore {
        name: String,
        #[arg(long)]
        from: PathBuf,
    },
    /// Compare an export's files and the tenant's data with the export's manifest.
    Verify {
        name: String,
        #[arg(long)]
        against: PathBuf,
    },
    /// Delete every upstream resource of a tenant taken out of service, and prove none is left.
    /// With --moved-from: the copy a finished `move` left on that upstream instead.
    Purge {
        name: String,
        /// Also remove each deleted resource's history (`$expunge`, where the upstream allows it).
        #[arg(long)]
        expunge: bool,
        /// The upstream a finished move took the tenant away from.
        #[arg(long = "moved-from")]
        moved_from: Option<String>,
    },
    /// Move the tenant's data to another upstream: copy while it works, catch up, freeze
    /// writes (read-only) for the last changes and the verification, switch. The source copy
    /// stays until `purge --moved-from`. Resumable: a rerun continues.
    Move {
        name: String,
        /// The upstream (in `[upstreams]`) to move to.
        #[arg(long)]
        to: String,
        /// `shared` or `dedicated` on the new upstream (default: as now).
        #[arg(long)]
        isolation: Option<String>,
    },
    /// Bring a legacy server's data (upstreams.LEGACY.legacy = true: no tenant coding, plain ids)
    /// into an empty tenant: ids prefixed, references rewritten, verified; what cannot be moved is
    /// reported with its reason. Resumable: a rerun continues; a finished one is a noop.
    Adopt {
        name: String,
        /// The legacy upstream (by name in [upstreams]).
        #[arg(long)]
        from: String,
        /// `TYPE?QUERY`: the resources that search on the legacy server matches (repeatable).
        #[arg(long = "where", value_name = "TYPE?QUERY")]
        wheres: Vec<String>,
        /// `Patient/ID`: the Patient and every resource of its compartment (repeatable).
        #[arg(long = "compartment", value_name = "Patient/ID")]
        compartments: Vec<String>,
        /// Also take what the selection references outside the Patient compartment
        /// (Organizations, Practitioners, Locations, …), transitively.
        #[arg(long)]
        with_referenced: bool,
        /// Exit 0 (`ok`) even when resources were left behind (they are still reported).
        #[arg(long)]
        accept_refusals: bool,
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
        Command::Tenant { config, action } => tenant(&config, action),
        Command::Webhook { listen, cert, key, image } => webhook(&listen, &cert, &key, &image),
        Command::Record { listen, upstream, out, timeout } => {
            crate::replay::command::record(&listen, &upstream, timeout, &out)
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

fn tenant(config: &std::path::Path, action: TenantAction) -> ExitCode {
    use crate::lifecycle::change::Operation;
    use crate::lifecycle::command;
    use crate::tenant_data::command::{run, Op};
    let (name, op) = match action {
        TenantAction::Export { name, out } => return run(config, &name, Op::Export { out }),
        TenantAction::Restore { name, from } => return run(config, &name, Op::Restore { from }),
        TenantAction::Verify { name, against } => return run(config, &name, Op::Verify { against }),
        TenantAction::Purge { name, expunge, moved_from } => {
            return run(config, &name, Op::Purge { expunge, moved_from })
        }
        TenantAction::Move { name, to, isolation } => {
            let isolation = match isolation.map(|i| serde_json::from_value::<config::Isolation>(serde_json::json!(i))) {
                Some(Err(e)) => {
                    eprintln!("fhir-fence tenant move: --isolation: {e}");
                    return ExitCode::from(2);
                }
                i => i.and_then(Result::ok),
            };
            return run(config, &name, Op::Move { to, isolation });
        }
        TenantAction::Adopt { name, from, wheres, compartments, with_referenced, accept_refusals } => {
            let op = Op::Adopt { from, wheres, compartments, with_referenced, accept_refusals };
            return run(config, &name, op);
        }
        TenantAction::List => return command::list(config),
        TenantAction::Show { name } => return command::show(config, &name),
        TenantAction::Create {
            name,
            prefix,
            upstream,
            isolation,
            status,
            issuers,
            operations,
            subscription_destinations,
        } => {
            // The flags read as the tenant table a file would hold (same names, same checks).
            let table = serde_json::json!({
                "prefix": prefix,
                "upstream": upstream,
                "isolation": isolation,
                "status": status,
                "issuers": issuers,
                "operations": operations,
                "subscription_destinations": subscription_destinations,
            });
            match serde_json::from_value::<config::Tenant>(table) {
                Ok(t) => (name, Operation::Create(Box::new(t))),
                Err(e) => {
                    eprintln!("fhir-fence tenant create: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        TenantAction::Suspend { name } => (name, Operation::Suspend),
        TenantAction::Resume { name } => (name, Operation::Resume),
        TenantAction::ReadOnly { name } => (name, Operation::ReadOnly),
        TenantAction::Delete { name } => (name, Operation::Delete),
        TenantAction::Undelete { name } => (name, Operation::Undelete),
    };
    command::run(config, &name, op)
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
