//! `vireo`: Vireo's command line.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod img;
mod run;
mod virsh;

#[derive(Parser, Debug)]
#[command(
    name = "vireo",
    version,
    about = "Vireo: virtual machines on KVM.",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    daemon: virsh::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one VM in the foreground, without a daemon (the built-in test guest by default).
    Run(run::RunArgs),
    /// Create, inspect, convert and modify disk images (qemu-img's commands).
    Img(img::ImgArgs),
    /// Domains managed by vireod, with virsh's verbs.
    #[command(flatten)]
    Daemon(virsh::VirshCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `vireo img` reports usage errors as qemu-img does (exit 1).
            if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("img") {
                return img::usage_error(&e);
            }
            e.exit();
        }
    };
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Img(args) => return img::run(args),
        Command::Daemon(command) => return virsh::run(cli.daemon, command),
        Command::Completions { shell } => {
            return virsh::completions(shell, &mut Cli::command());
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vireo: error: {e:#}");
            ExitCode::from(vireo_api::MonitorExit::Usage.code())
        }
    }
}
