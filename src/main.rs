//! The `fulcrum` command: parse arguments, set up logging, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use fulcrum::config::{self, Config, ConfigError};
use fulcrum::runtime::Fulcrum;

#[derive(Parser)]
#[command(
    name = "fulcrum",
    version,
    about = "A Layer-4/7 reverse-proxy load balancer"
)]
struct Cli {
    /// Log level or filter (overrides RUST_LOG), e.g. "info" or "fulcrum=debug".
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground.
    Run {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print a summary.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the proxy in front of three built-in origins on loopback.
    Demo {
        /// Port of the http listener (the tcp listener takes the next one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port of the admin listener.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
}

fn init_logging(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

fn runtime(cfg: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    // available_parallelism honours the CPU affinity mask and cgroup quota, so a proxy pinned
    // to one core runs one worker.
    let workers = cfg
        .runtime
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(workers, "starting runtime");
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                print!("{}", fulcrum::summary(&cfg));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            init_logging(cli.log_level.as_deref(), cli.log_format);
            let rt = match runtime(&cfg) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fulcrum: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async {
                let f = match Fulcrum::start(cfg).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start");
                        eprintln!("fulcrum: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                match fulcrum::daemon::run(f).await {
                    Ok(0) => ExitCode::SUCCESS,
                    Ok(c) => ExitCode::from(c as u8),
                    Err(e) => {
                        eprintln!("fulcrum: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Demo { port, admin_port } => {
            init_logging(cli.log_level.as_deref(), cli.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fulcrum: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async {
                match fulcrum::run_demo(port, admin_port).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("fulcrum demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
