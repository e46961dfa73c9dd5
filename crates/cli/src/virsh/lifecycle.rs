//! Verbs that change a domain (define, undefine, create, start, shutdown,
//! reboot, reset, destroy, suspend, resume, autostart), `dumpxml` and
//! `version`. Each prints virsh's one-line message and an empty line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vireo_api::daemon::DomainInfo;

use super::{connect, read_xml, DomainArg, GlobalArgs};

#[derive(Args, Debug)]
pub struct FileArgs {
    /// The domain XML file (`-`: standard input).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Attach to the console once started (Ctrl-] leaves).
    #[arg(long)]
    pub console: bool,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub domain: DomainArg,
    /// Attach to the console once started (Ctrl-] leaves).
    #[arg(long)]
    pub console: bool,
}

#[derive(Args, Debug)]
pub struct DumpxmlArgs {
    #[command(flatten)]
    pub domain: DomainArg,
    /// The definition the next start will use, not the running one.
    #[arg(long)]
    pub inactive: bool,
}

#[derive(Args, Debug)]
pub struct AutostartArgs {
    #[command(flatten)]
    pub domain: DomainArg,
    /// Stop starting the domain with the daemon.
    #[arg(long)]
    pub disable: bool,
}

/// The verbs that are one POST on a domain.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Shutdown,
    Reboot,
    Reset,
    Destroy,
    Suspend,
    Resume,
}

impl Action {
    /// What virsh says once it is done.
    fn done(self) -> &'static str {
        match self {
            Action::Shutdown => "is being shutdown",
            Action::Reboot => "is being rebooted",
            Action::Reset => "was reset",
            Action::Destroy => "destroyed",
            Action::Suspend => "suspended",
            Action::Resume => "resumed",
        }
    }
}

/// Prints `Domain 'NAME' WHAT` and virsh's empty line.
fn say(name: &str, what: &str) {
    println!("Domain '{name}' {what}\n");
}

pub fn define(global: &GlobalArgs, args: &FileArgs) -> anyhow::Result<ExitCode> {
    let xml = read_xml(&args.file)?;
    let info = connect(global)?.define(&xml)?;
    say(&info.name, &format!("defined from {}", args.file.display()));
    Ok(ExitCode::SUCCESS)
}

pub fn create(global: &GlobalArgs, args: &CreateArgs) -> anyhow::Result<ExitCode> {
    let xml = read_xml(&args.file.file)?;
    let client = connect(global)?;
    let info = client.create(&xml)?;
    say(
        &info.name,
        &format!("created from {}", args.file.file.display()),
    );
    if args.console {
        return super::console::attach(&client, &info.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn undefine(global: &GlobalArgs, args: &DomainArg) -> anyhow::Result<ExitCode> {
    connect(global)?.undefine(&args.domain)?;
    say(&args.domain, "has been undefined");
    Ok(ExitCode::SUCCESS)
}

pub fn start(global: &GlobalArgs, args: &StartArgs) -> anyhow::Result<ExitCode> {
    let client = connect(global)?;
    let info = client.start(&args.domain.domain)?;
    say(&info.name, "started");
    if args.console {
        return super::console::attach(&client, &info.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn action(global: &GlobalArgs, args: &DomainArg, action: Action) -> anyhow::Result<ExitCode> {
    let client = connect(global)?;
    let name = &args.domain;
    let info: DomainInfo = match action {
        Action::Shutdown => client.shutdown(name)?,
        Action::Reboot => client.reboot(name)?,
        Action::Reset => client.reset(name)?,
        Action::Destroy => client.destroy(name)?,
        Action::Suspend => client.suspend(name)?,
        Action::Resume => client.resume(name)?,
    };
    say(&info.name, action.done());
    Ok(ExitCode::SUCCESS)
}

pub fn autostart(global: &GlobalArgs, args: &AutostartArgs) -> anyhow::Result<ExitCode> {
    let name = &args.domain.domain;
    connect(global)?.set_autostart(name, !args.disable)?;
    if args.disable {
        say(name, "unmarked as autostarted");
    } else {
        say(name, "marked as autostarted");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dumpxml(global: &GlobalArgs, args: &DumpxmlArgs) -> anyhow::Result<ExitCode> {
    let xml = connect(global)?.xml(&args.domain.domain, args.inactive)?;
    print!("{xml}");
    if !xml.ends_with('\n') {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn version(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let daemon = connect(global)?.version()?;
    let client = env!("CARGO_PKG_VERSION");
    if global.json {
        let json = serde_json::json!({
            "client": client,
            "daemon": daemon.version,
            "api": daemon.api,
        });
        println!("{json:#}");
    } else {
        println!("Compiled against library: vireo {client}");
        println!("Using API: vireod {}", daemon.api);
        println!("Running daemon: vireod {}\n", daemon.version);
    }
    Ok(ExitCode::SUCCESS)
}
