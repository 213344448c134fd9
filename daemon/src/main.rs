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
    /// Read a DICOM file as the daemon does; with --decode also decode its pixel data.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        decode: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
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
            match rt.block_on(scanside::run(config)) {
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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SCANSIDE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
