//! `vireo`: Vireo's command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod run;

#[derive(Parser, Debug)]
#[command(
    name = "vireo",
    version,
    about = "Vireo: virtual machines on KVM.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one VM in the foreground, without a daemon (the built-in test guest by default).
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vireo: error: {e:#}");
            ExitCode::from(vireo_api::MonitorExit::Usage.code())
        }
    }
}
