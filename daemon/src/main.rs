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
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file: prints every error with its key path.
    CheckConfig { file: PathBuf },
    /// Print the JSON schema of the configuration.
    ConfigSchema,
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Run the series gate over the DICOM files of one series (a folder or files).
    Gate {
        #[arg(long)]
        config: Option<PathBuf>,
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
        config: Option<PathBuf>,
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
    /// Check a bundle (manifest, sha256, shapes) and run its golden case.
    Verify {
        /// Bundle directory; default: the built-in model.
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
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

fn load_config(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    match path.map(|p| Config::load(&p)).transpose() {
        Ok(c) => Ok(c.unwrap_or_else(Config::embedded_default)),
        Err(e) => {
            eprint!("{e}");
            Err(ExitCode::from(2))
        }
    }
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
            let source = config.clone();
            let config = match config {
                Some(p) => match Config::load(&p) {
                    Ok(c) => c,
                    Err(e) => {
                        eprint!("{e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::embedded_default(),
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
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
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
            let cfg = match config.map(|p| Config::load(&p)).transpose() {
                Ok(c) => c.unwrap_or_else(Config::embedded_default),
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
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
            let mut cfg = match load_config(config) {
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
            let cfg = match load_config(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging();
            let dir = cfg.inference.model_dir.clone();
            verify_model(dir, &cfg, Default::default())
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
