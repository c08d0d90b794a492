//! The `fulcrum` command: parse arguments, set up logging, call the library.

use std::alloc::{GlobalAlloc, Layout};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use libmimalloc_sys as mi;

use fulcrum::admin::client;
use fulcrum::config::{self, Config, ConfigError};
use fulcrum::runtime::Fulcrum;

/// mimalloc: its thread-local free lists cost less than glibc malloc for the many small,
/// short-lived allocations of an HTTP proxy (header maps, buffers). Built with `no_thp`:
/// otherwise it asks for transparent huge pages on its heap, and under the kernel's common
/// `madvise` setting the first touch of each 2 MiB region faults in all of it (an idle
/// fulcrum held 9 MiB of heap where it uses 1.5).
#[global_allocator]
static GLOBAL: Mi = Mi;

/// mimalloc, asked for alignment only when a layout needs more than every block has.
///
/// The `mimalloc` crate's allocator passes every layout to `mi_malloc_aligned`, whose fast
/// path covers only blocks of up to 1 KiB: anything larger takes its over-allocating path,
/// even at alignment 1. That is every read buffer of a connection (hyper's 8 KiB among
/// them), at about 150 instructions more per allocation than `mi_malloc`. mimalloc's blocks are all
/// multiples of the word size, so every block is word-aligned and a layout aligned to at
/// most that goes to the plain calls.
struct Mi;

impl Mi {
    /// Whether every mimalloc block already meets `l`'s alignment.
    #[inline]
    fn plain(l: &Layout) -> bool {
        l.align() <= std::mem::size_of::<usize>()
    }
}

// SAFETY: each call forwards to mimalloc with the layout's size, and with its alignment
// whenever that exceeds the word alignment every mimalloc block has; `mi_free` and
// `mi_realloc*` accept any pointer mimalloc returned, aligned or not.
unsafe impl GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if Mi::plain(&l) {
            mi::mi_malloc(l.size()).cast()
        } else {
            mi::mi_malloc_aligned(l.size(), l.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if Mi::plain(&l) {
            mi::mi_zalloc(l.size()).cast()
        } else {
            mi::mi_zalloc_aligned(l.size(), l.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        mi::mi_free(p.cast());
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        if Mi::plain(&l) {
            mi::mi_realloc(p.cast(), size).cast()
        } else {
            mi::mi_realloc_aligned(p.cast(), size, l.align()).cast()
        }
    }
}

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
    /// Validate a config file and print a summary; with --against, preview what reloading
    /// to it would change.
    Check {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// The config in force: a file, or a running fulcrum's admin address
        /// (http://127.0.0.1:9901). Prints listeners and servers added, removed and
        /// reweighted, each server's share of traffic before and after, and for hashing
        /// pools the share of keys that would move.
        #[arg(long, value_name = "RUNNING_CONFIG|http://ADMIN")]
        against: Option<String>,
        /// Treat DNS names that do not resolve and etcd prefixes that cannot be read as
        /// errors (exit 1), not warnings.
        #[arg(long)]
        strict: bool,
        /// With --against http://ADMIN: the file holding the admin bearer token
        /// (`POST /preview` needs it like every other admin call that costs).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Ask a running fulcrum's admin listener whether it is healthy (exit 0) or not (exit 1);
    /// for container health checks, without curl.
    Probe {
        /// Admin address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Path to request.
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run one built-in origin server (the demo's and the tests' backend) in the foreground:
    /// for benchmarks and failover drills that need a backend process to kill.
    Origin {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        /// Its name (in every response body and the X-Origin header).
        #[arg(long, default_value = "origin")]
        name: String,
        /// Worker threads (default 1).
        #[arg(long, default_value_t = 1)]
        workers: usize,
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
        // Colour only for a person at a terminal: in a file or the journal the escape codes
        // are noise that breaks grep.
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
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
    tracing::info!(workers, "starting worker threads");
    fulcrum::workers::start(workers)?;
    // The main thread's runtime runs the control plane: admin API, health checks,
    // discovery, reloads. Connections are served on the workers.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

/// Loads the config's certificates as a start would: a file that would fail the reload
/// fails the check (exit 2); one expiring within 14 days is a warning.
fn tls_preflight(cfg: &Config) -> Result<(), ExitCode> {
    match fulcrum::tls::preflight(cfg) {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("{}: warning: {w}", cfg.source.display());
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Prints a config's warnings (`PATH:LINE:COL: warning: ...`) on stderr; they do not change
/// the exit status.
fn print_warnings(cfg: &Config) {
    for w in &cfg.warnings {
        eprintln!("{w}");
    }
}

/// `check --config NEW --against RUNNING`: the reload preview, against a file or, through
/// its admin API, against a running fulcrum (whose own file may already hold the new text).
fn check_against(
    new_path: &std::path::Path,
    against: &str,
    token_file: Option<&std::path::Path>,
) -> ExitCode {
    let new = match config::load(new_path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if let Err(code) = tls_preflight(&new) {
        return code;
    }
    println!("{}: configuration is valid", new.source.display());
    print_warnings(&new);
    let live = against.starts_with("http://") || against.parse::<std::net::SocketAddr>().is_ok();
    if !live {
        return match config::load(std::path::Path::new(against)) {
            Ok(old) => {
                print!("{}", fulcrum::preview::preview(&old, &new));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        };
    }
    let text = match std::fs::read(new_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", new_path.display());
            return ExitCode::from(2);
        }
    };
    let path_header = new_path.display().to_string();
    let auth = match token_file.map(std::fs::read_to_string).transpose() {
        Ok(t) => t.map(|t| format!("Bearer {}", t.trim())),
        Err(e) => {
            eprintln!("fulcrum check: cannot read --token-file: {e}");
            return ExitCode::from(2);
        }
    };
    let mut headers = vec![("X-Config-Path", path_header.as_str())];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let answer = client::request(
        against,
        "POST",
        "/preview",
        &headers,
        &text,
        std::time::Duration::from_secs(30),
    );
    match answer {
        Ok(a) if a.status == 200 => {
            print!("{}", a.body);
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!(
                "fulcrum check: {against} answered {}: {}",
                a.status,
                a.body.trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fulcrum check: cannot reach the admin API at {against}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check`: resolves the config's DNS names and reads its etcd prefixes once, prints what
/// they give, and warns (or, with `--strict`, fails) for those that give nothing.
fn check_discovery(cfg: &Config, strict: bool) -> ExitCode {
    if cfg.pools.iter().all(|p| p.discovery.is_none()) {
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fulcrum check: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let findings = rt.block_on(fulcrum::discovery::check::check(cfg));
    let (report, warnings) = fulcrum::discovery_report(&findings);
    print!("{report}");
    let word = if strict { "error" } else { "warning" };
    for w in &warnings {
        eprintln!("{word}: {w}");
    }
    if strict && !warnings.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            against: None,
            strict,
            ..
        } => match config::load(&config) {
            Ok(cfg) => match tls_preflight(&cfg) {
                Ok(()) => {
                    print!("{}", fulcrum::summary(&cfg));
                    print_warnings(&cfg);
                    check_discovery(&cfg, strict)
                }
                Err(code) => code,
            },
            Err(e) => config_error(&e),
        },
        Command::Check {
            config,
            against: Some(against),
            token_file,
            ..
        } => check_against(&config, &against, token_file.as_deref()),
        Command::Probe {
            admin,
            path,
            timeout,
        } => match client::request(&admin, "GET", &path, &[], b"", timeout) {
            Ok(a) if (200..300).contains(&a.status) => ExitCode::SUCCESS,
            Ok(a) => {
                eprintln!("fulcrum probe: {admin}{path} answered {}", a.status);
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("fulcrum probe: {admin}{path}: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            // Logging first, so that the config's warnings, which loading logs, are seen.
            init_logging(cli.log_level.as_deref(), cli.log_format);
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
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
        Command::Origin {
            listen,
            name,
            workers,
        } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(1))
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
                let o = match fulcrum::demo::Origin::start(&name, listen).await {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("fulcrum origin: cannot listen on {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!("origin {} listening on {}", o.name, o.addr);
                let _ = tokio::signal::ctrl_c().await;
                ExitCode::SUCCESS
            })
        }
        Command::Demo { port, admin_port } => {
            init_logging(cli.log_level.as_deref(), cli.log_format);
            // The demo serves the way `run` does: on worker threads, the control plane (and
            // the demo's origins) on this thread's runtime.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            let rt = match fulcrum::workers::start(workers).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            }) {
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
