//! `vireo img`: the disk image tool, with qemu-img's subcommands, flags and
//! output formats, so that muscle memory and scripts carry over.
//!
//! Each subcommand parses its flags, calls `vireo_disk::image` (the
//! format-independent algorithms live in `vireo_disk::image::tools`) and
//! prints. Errors print as one line, `vireo img: <message>`, with their
//! causes, and exit 1; `check` has qemu-img's exit codes.

use std::process::ExitCode;

use clap::{Args, Subcommand};

mod check;
mod commit;
mod common;
mod convert;
mod create;
mod info;
mod json;
mod map;
mod progress;
mod rebase;
mod resize;
mod size;
mod snapshot;

#[derive(Args, Debug)]
pub struct ImgArgs {
    #[command(subcommand)]
    command: ImgCommand,
}

#[derive(Subcommand, Debug)]
enum ImgCommand {
    /// Create a raw or qcow2 image.
    #[command(infer_long_args = true)]
    Create(create::CreateArgs),
    /// Describe an image: sizes, format, backing file, snapshots.
    #[command(infer_long_args = true)]
    Info(info::InfoArgs),
    /// Copy images (joined) into an image of any format, sparse.
    #[command(infer_long_args = true)]
    Convert(convert::ConvertArgs),
    /// Change the virtual size.
    #[command(infer_long_args = true)]
    Resize(resize::ResizeArgs),
    /// List, create, apply or delete internal snapshots (qcow2).
    #[command(infer_long_args = true)]
    Snapshot(snapshot::SnapshotArgs),
    /// Check a qcow2 image's metadata (and repair it).
    #[command(infer_long_args = true)]
    Check(check::CheckArgs),
    /// Change the backing file of a qcow2 image.
    #[command(infer_long_args = true)]
    Rebase(rebase::RebaseArgs),
    /// Write an overlay's data into its backing file.
    #[command(infer_long_args = true)]
    Commit(commit::CommitArgs),
    /// Show where each range of the virtual disk is stored.
    #[command(infer_long_args = true)]
    Map(map::MapArgs),
}

/// Runs one `vireo img` command; errors are printed here.
pub fn run(args: ImgArgs) -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`vireo img map x | head`) instead of failing to print.
    // SAFETY: restoring the default disposition of a signal; no handler
    // is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let result = match args.command {
        ImgCommand::Create(a) => create::run(a),
        ImgCommand::Info(a) => info::run(a),
        ImgCommand::Convert(a) => convert::run(a),
        ImgCommand::Resize(a) => resize::run(a),
        ImgCommand::Snapshot(a) => snapshot::run(a),
        ImgCommand::Check(a) => check::run(a),
        ImgCommand::Rebase(a) => rebase::run(a),
        ImgCommand::Commit(a) => commit::run(a),
        ImgCommand::Map(a) => map::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            eprintln!("vireo img: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A command line `vireo img` could not parse: qemu-img's two lines and
/// exit status 1.
pub fn usage_error(err: &clap::Error) -> ExitCode {
    if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // `vireo img` alone: the list of commands.
        let _ = err.print();
        return ExitCode::from(1);
    }
    let text = err.to_string();
    // The message is the text before the usage block, on one line.
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("vireo img: {message}");
    eprintln!("Try 'vireo img --help' for more information.");
    ExitCode::from(1)
}
