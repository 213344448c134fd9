//! The `scanside` command line. The daemon and every tool are one binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scanside::config::Config;

#[derive(Parser)]
#[command(
    name = "scanside",
    version,
    about = "Edge DICOM appliance: receive, segment, measure, forward"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (on the embedded default configuration without --config).
    Run {
        /// A configuration file; repeat to layer (defaults first, the site's last:
        /// later files win key by key, arrays are replaced whole).
        #[arg(long)]
        config: Vec<PathBuf>,
    },
    /// Validate a configuration file, or a layered set (defaults first): prints
    /// every error with its key path and the file that set it.
    CheckConfig {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON schema of the configuration.
    ConfigSchema,
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Run the series gate over the DICOM files of one series (a folder or files).
    Gate {
        #[arg(long)]
        config: Vec<PathBuf>,
        paths: Vec<PathBuf>,
    },
    /// Model bundles.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Load the configured model and run its golden case (exit 0 when it agrees).
    Selftest {
        #[arg(long)]
        config: Vec<PathBuf>,
    },
    /// A first run: send a synthetic brain MR series with a tumour to a daemon (its
    /// own, started here, unless --to), wait, and print volumes, timings and results.
    Demo {
        /// DICOM HOST:PORT of a running daemon (default: start one in this process)
        #[arg(long)]
        to: Option<String>,
        /// HTTP HOST:PORT of that daemon's API (with --to)
        #[arg(long)]
        http: Option<String>,
        /// Called AE title
        #[arg(long, default_value = "SCANSIDE")]
        ae_title: String,
        /// Data directory of the daemon this command starts
        #[arg(long, default_value = "./scanside-demo-data")]
        data_dir: PathBuf,
        /// Seconds to wait for the result
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
    },
    /// Read a DICOM file as the daemon does; with --decode also decode its pixel data.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        decode: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Install a signed model bundle (a tar; its minisign signature beside it as
    /// FILE.minisig, or at URL.minisig): verify, unpack, load, run the golden case,
    /// then switch. A running daemon changes model after its job in flight.
    Install {
        /// Bundle file or http(s) URL
        bundle: String,
        /// Signature file (default: the bundle's path + ".minisig")
        #[arg(long)]
        signature: Option<PathBuf>,
        #[arg(long)]
        config: Vec<PathBuf>,
    },
    /// Put the model in service before the last install (or rollback) back.
    Rollback {
        #[arg(long)]
        config: Vec<PathBuf>,
    },
    /// Check a bundle (manifest, sha256, shapes) and run its golden case.
    Verify {
        /// Bundle directory; default: the built-in model.
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Vec<PathBuf>,
        /// auto | ort | tract (default: the config's)
        #[arg(long)]
        backend: Option<String>,
        /// Write the golden case's blended logits (.npy, f32).
        #[arg(long)]
        logits_out: Option<PathBuf>,
        /// Write the golden case's labels (.npy, u8).
        #[arg(long)]
        labels_out: Option<PathBuf>,
        /// Write the logits of the golden input's first patch (.npy, f32).
        #[arg(long)]
        patch_logits_out: Option<PathBuf>,
    },
}

/// The layered configuration from `--config` files, the embedded default without.
fn load_config(paths: &[PathBuf]) -> Result<Config, ExitCode> {
    if paths.is_empty() {
        return Ok(Config::embedded_default());
    }
    scanside::config::load_layers(paths).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })
}

fn verify_model(
    dir: Option<PathBuf>,
    cfg: &Config,
    out: scanside::infer::verify::Outputs,
) -> ExitCode {
    let cache = cfg
        .inference
        .engine_cache_dir
        .clone()
        .unwrap_or_else(|| cfg.storage.data_dir.join("engine-cache"));
    match scanside::infer::verify::verify(dir.as_deref(), &cfg.inference, &cache, &out) {
        Ok((v, ok)) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("the golden case does not give the manifest's label counts");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("scanside model: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn model_install(cfg: &Config, bundle: &str, signature: Option<PathBuf>) -> ExitCode {
    let fetched = if bundle.starts_with("http://") || bundle.starts_with("https://") {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        rt.block_on(scanside::ota::fetch::get_bundle(cfg, bundle))
            .map_err(|e| format!("download: {e}"))
    } else {
        let sig_path = signature.unwrap_or_else(|| PathBuf::from(format!("{bundle}.minisig")));
        std::fs::read(bundle)
            .map_err(|e| format!("{bundle}: {e}"))
            .and_then(|d| {
                std::fs::read_to_string(&sig_path)
                    .map(|s| (d, s))
                    .map_err(|e| format!("signature {}: {e}", sig_path.display()))
            })
    };
    let (data, sig) = match fetched {
        Ok(x) => x,
        Err(e) => {
            eprintln!("scanside model install: {e}");
            return ExitCode::from(1);
        }
    };
    match scanside::ota::install(cfg, &data, &sig) {
        Ok(i) => {
            println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(r) => {
            eprintln!("scanside model install: {r}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
            let source = config.clone();
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let r = rt.block_on(scanside::run(config, source));
            // A segmentation in flight is not waited for: its job is durable in
            // `gated` and resumes at the next start.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("scanside: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { files } => match load_config(&files) {
            Ok(_) => {
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                println!("{}: ok", names.join(" < "));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::ConfigSchema => {
            print!("{}", scanside::config::json_schema());
            ExitCode::SUCCESS
        }
        Command::DefaultConfig => {
            print!("{}", scanside::config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::Gate { config, paths } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match scanside::inspect::gate(&paths, &cfg.gate) {
                Ok((v, passed)) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    if passed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("scanside gate: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Model {
            command:
                ModelCommand::Verify {
                    dir,
                    config,
                    backend,
                    logits_out,
                    labels_out,
                    patch_logits_out,
                },
        } => {
            let mut cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(b) = backend {
                cfg.inference.backend = match b.as_str() {
                    "auto" => scanside::config::BackendChoice::Auto,
                    "ort" => scanside::config::BackendChoice::Ort,
                    "tract" => scanside::config::BackendChoice::Tract,
                    other => {
                        eprintln!("--backend {other}: expected auto, ort or tract");
                        return ExitCode::from(2);
                    }
                };
            }
            init_logging();
            let out = scanside::infer::verify::Outputs {
                logits: logits_out,
                labels: labels_out,
                patch_logits: patch_logits_out,
            };
            verify_model(dir, &cfg, out)
        }
        Command::Selftest { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging();
            // The model the daemon runs: the OTA one in service, else the configured one.
            let dir = scanside::ota::model_dir(&cfg);
            verify_model(dir, &cfg, Default::default())
        }
        Command::Model {
            command:
                ModelCommand::Install {
                    bundle,
                    signature,
                    config,
                },
        } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging();
            model_install(&cfg, &bundle, signature)
        }
        Command::Model {
            command: ModelCommand::Rollback { config },
        } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging();
            match scanside::ota::rollback(&cfg) {
                Ok((from, to)) => {
                    println!("{}", serde_json::json!({"from": from, "to": to}));
                    ExitCode::SUCCESS
                }
                Err(r) => {
                    eprintln!("scanside model rollback: {r}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo {
            to,
            http,
            ae_title,
            data_dir,
            timeout_s,
        } => {
            init_logging_default("warn");
            let opts = scanside::demo::DemoOptions {
                to,
                http,
                called_ae: ae_title,
                data_dir,
                timeout: std::time::Duration::from_secs(timeout_s),
            };
            match scanside::demo::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("scanside demo: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Inspect { file, decode } => match scanside::inspect::inspect(&file, decode) {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e:#}", file.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging() {
    init_logging_default("info")
}

fn init_logging_default(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SCANSIDE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: the journal and log files get plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
