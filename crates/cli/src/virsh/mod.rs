//! virsh's verbs (`vireo list`, `vireo start vm1`, `vireo dominfo vm1`, ...)
//! against vireod's REST API, through `vireo_client`.
//!
//! The verbs, flags, messages and layouts follow virsh's, so that muscle
//! memory and scripts that read its output carry over: messages such as
//! `Domain 'vm1' started` followed by an empty line, the `list` table, the
//! aligned `dominfo` fields, `domstats`' `key=value` lines. Failures print
//! one line, `error: <message>` (the daemon's message, which names what was
//! wrong and suggests a near name), and exit 1. `--json` makes `list`,
//! `dominfo`, `domstate`, `domstats`, `event` and `version` print JSON
//! instead.
//!
//! Where Vireo differs: a domain has no small integer id, so the `Id`
//! column and field show a running domain's monitor pid (`-` when it is not
//! running), and the daemon is reached through a socket path (`--connect
//! PATH`, `VIREO_SOCKET`) rather than a libvirt URI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use vireo_client::Client;

mod console;
mod edit;
mod event;
mod lifecycle;
mod show;

/// The daemon verbs' options, accepted anywhere on the command line.
#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// vireod's API socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "VIREO_SOCKET",
        default_value = vireo_client::DEFAULT_SOCKET
    )]
    pub connect: PathBuf,
    /// Print JSON for scripts (list, dominfo, domstate, domstats, event, version).
    #[arg(long, global = true)]
    pub json: bool,
}

/// A domain named on the command line (its name; vireod may also accept
/// its UUID).
#[derive(Args, Debug)]
pub struct DomainArg {
    /// The domain's name.
    #[arg(value_name = "DOMAIN")]
    pub domain: String,
}

/// The verbs that talk to vireod.
#[derive(Subcommand, Debug)]
pub enum VirshCommand {
    /// List domains: the running ones, or every one with --all.
    List(show::ListArgs),
    /// Define a persistent domain from an XML file (or redefine it).
    Define(lifecycle::FileArgs),
    /// Remove a domain's persistent definition (a running domain keeps running).
    Undefine(DomainArg),
    /// Create and start a transient domain from an XML file.
    Create(lifecycle::CreateArgs),
    /// Start a defined domain.
    Start(lifecycle::StartArgs),
    /// Ask a domain's guest to power off (ACPI power button).
    Shutdown(DomainArg),
    /// Ask a domain's guest to reboot.
    Reboot(DomainArg),
    /// Reset a domain at once, like the reset button.
    Reset(DomainArg),
    /// Stop a domain at once, like pulling the plug.
    Destroy(DomainArg),
    /// Pause a domain's virtual CPUs.
    Suspend(DomainArg),
    /// Resume a paused domain.
    Resume(DomainArg),
    /// Show a domain's basic facts.
    Dominfo(DomainArg),
    /// Show a domain's state.
    Domstate(show::DomstateArgs),
    /// Print a domain's XML definition.
    Dumpxml(lifecycle::DumpxmlArgs),
    /// Edit a domain's XML definition in $VISUAL or $EDITOR, then redefine it.
    Edit(DomainArg),
    /// Start a domain with vireod, or stop doing so (--disable).
    Autostart(lifecycle::AutostartArgs),
    /// Show domains' statistics as key=value lines.
    Domstats(show::DomstatsArgs),
    /// Wait for lifecycle events and print them.
    Event(event::EventArgs),
    /// Show the versions of vireo and of the daemon.
    Version,
    /// Attach to a running domain's console (Ctrl-] leaves).
    Console(DomainArg),
}

/// Runs one daemon verb; errors are printed here.
pub fn run(global: GlobalArgs, command: VirshCommand) -> ExitCode {
    // End quietly when the reader of our output goes away (`vireo list | head`).
    // SAFETY: restoring the default disposition of a signal; no handler
    // is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match dispatch(&global, command) {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    Ok(Client::connect(&global.connect)?)
}

fn dispatch(global: &GlobalArgs, command: VirshCommand) -> anyhow::Result<ExitCode> {
    use lifecycle::Action;
    match command {
        VirshCommand::List(a) => show::list(global, &a),
        VirshCommand::Define(a) => lifecycle::define(global, &a),
        VirshCommand::Undefine(a) => lifecycle::undefine(global, &a),
        VirshCommand::Create(a) => lifecycle::create(global, &a),
        VirshCommand::Start(a) => lifecycle::start(global, &a),
        VirshCommand::Shutdown(a) => lifecycle::action(global, &a, Action::Shutdown),
        VirshCommand::Reboot(a) => lifecycle::action(global, &a, Action::Reboot),
        VirshCommand::Reset(a) => lifecycle::action(global, &a, Action::Reset),
        VirshCommand::Destroy(a) => lifecycle::action(global, &a, Action::Destroy),
        VirshCommand::Suspend(a) => lifecycle::action(global, &a, Action::Suspend),
        VirshCommand::Resume(a) => lifecycle::action(global, &a, Action::Resume),
        VirshCommand::Dominfo(a) => show::dominfo(global, &a),
        VirshCommand::Domstate(a) => show::domstate(global, &a),
        VirshCommand::Dumpxml(a) => lifecycle::dumpxml(global, &a),
        VirshCommand::Edit(a) => edit::edit(global, &a),
        VirshCommand::Console(a) => console::console(global, &a),
        VirshCommand::Autostart(a) => lifecycle::autostart(global, &a),
        VirshCommand::Domstats(a) => show::domstats(global, &a),
        VirshCommand::Event(a) => event::event(global, &a),
        VirshCommand::Version => lifecycle::version(global),
    }
}

/// Prints a shell completion script for `command` (the whole `vireo`).
pub fn completions(shell: clap_complete::Shell, command: &mut clap::Command) -> ExitCode {
    // SAFETY: as in `run`.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, command, name, &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Reads a definition file (`-`: standard input).
fn read_xml(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the XML from standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))
}
