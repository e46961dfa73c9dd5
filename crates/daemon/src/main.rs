//! `vireod`: Vireo's management daemon.
//!
//! Keeps domain definitions, runs one `vireo-vmm` per running domain and
//! serves the REST API on a Unix socket. Stopping or restarting it leaves
//! running VMs alone; the next start manages them again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vireo_daemon::core::{Config, Daemon};
use vireo_daemon::server::{self, Access};

#[derive(Parser, Debug)]
#[command(name = "vireod", version, about = "Vireo's management daemon.")]
struct Args {
    /// Where definitions are kept.
    #[arg(long, default_value = "/var/lib/vireo", env = "VIREO_STATE_DIR")]
    state_dir: PathBuf,
    /// Runtime state: sockets and records of running domains.
    #[arg(long, default_value = "/run/vireo", env = "VIREO_RUN_DIR")]
    run_dir: PathBuf,
    /// Monitor logs, one per domain.
    #[arg(long, default_value = "/var/log/vireo", env = "VIREO_LOG_DIR")]
    log_dir: PathBuf,
    /// The API socket (default: vireod.sock in the run directory).
    #[arg(long, env = "VIREO_SOCKET")]
    socket: Option<PathBuf>,
    /// The monitor binary (default: vireo-vmm next to vireod, else on PATH).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Seconds `destroy` waits for an orderly stop before killing.
    #[arg(long, default_value_t = 10)]
    destroy_grace: u64,
    /// Log level: error, warn, info, debug, trace (also VIREO_LOG).
    #[arg(long, default_value = "info", env = "VIREO_LOG")]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    // Monitors get these paths on their command lines: make them absolute.
    for dir in [&mut args.state_dir, &mut args.run_dir, &mut args.log_dir] {
        if let Ok(abs) = std::path::absolute(&*dir) {
            *dir = abs;
        }
    }
    if let Some(socket) = &mut args.socket {
        if let Ok(abs) = std::path::absolute(&*socket) {
            *socket = abs;
        }
    }
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format_timestamp_millis()
        .init();
    let vmm = args.vmm.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("vireo-vmm")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("vireo-vmm"))
    });
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.run_dir.join("vireod.sock"));
    let config = Config {
        state_dir: args.state_dir.clone(),
        run_dir: args.run_dir.clone(),
        log_dir: args.log_dir.clone(),
        vmm,
        test_guest: vireo_test_guest::ELF,
        destroy_grace: Duration::from_secs(args.destroy_grace),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("vireod")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vireod: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let daemon = Daemon::open(config).await.map_err(|e| e.to_string())?;
        log::info!("serving the API on {}", socket.display());
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            log::info!("stopping; running VMs keep running");
        };
        server::serve(
            daemon,
            &socket,
            Access::default_for_this_process(),
            shutdown,
        )
        .await
        .map_err(|e| format!("cannot serve on {}: {e}", socket.display()))
    });
    // Watchers blocked on monitors must not hold the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vireod: {e}");
            ExitCode::FAILURE
        }
    }
}
