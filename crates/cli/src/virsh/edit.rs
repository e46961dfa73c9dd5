//! `edit`: the domain's inactive XML in the user's editor, then define
//! what was saved. When vireod refuses it, the error is shown and the user
//! chooses to edit again or give up, as with virsh.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

use super::{connect, DomainArg, GlobalArgs};

/// The temporary copy being edited; removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A new owner-only file in the temporary directory holding `text`.
    fn new(domain: &str, text: &str) -> anyhow::Result<Self> {
        let safe: String = domain
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let dir = std::env::temp_dir();
        let mut last = None;
        for attempt in 0..100u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let path = dir.join(format!(
                "vireo-edit-{safe}-{}-{:08x}.xml",
                std::process::id(),
                nanos.wrapping_add(attempt)
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut file) => {
                    let scratch = Scratch(path);
                    file.write_all(text.as_bytes())
                        .and_then(|()| file.sync_all())
                        .with_context(|| format!("cannot write '{}'", scratch.0.display()))?;
                    return Ok(scratch);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create '{}'", path.display()))
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
            .with_context(|| format!("cannot create a temporary file in '{}'", dir.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// $VISUAL, else $EDITOR, else vi.
fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

/// Runs the editor on `file`. Like git, the editor setting goes through the
/// shell, so `EDITOR="code --wait"` works.
fn run_editor(editor: &str, file: &Path) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file)
        .status()
        .with_context(|| format!("cannot run the editor '{editor}'"))?;
    if !status.success() {
        bail!("the editor '{editor}' failed ({status})");
    }
    Ok(())
}

/// What the user answered to "Try again?".
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Again,
    GiveUp,
}

const CHOICES_HELP: &str = "\
y - yes, edit the XML again
n - no, give up and throw the changes away
i - turn validation off: vireod always validates, so this gives up like n
f - force the definition: vireod cannot take XML it refuses, so this gives up like n
? - print this help
";

/// Asks until the answer is one of the choices; the end of the input
/// gives up.
fn ask(input: &mut impl BufRead, out: &mut impl Write) -> std::io::Result<Answer> {
    loop {
        write!(out, "Failed. Try again? [y,n,i,f,?]: ")?;
        out.flush()?;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            writeln!(out)?;
            return Ok(Answer::GiveUp);
        }
        match line.trim() {
            "y" | "Y" => return Ok(Answer::Again),
            "n" | "N" => return Ok(Answer::GiveUp),
            "i" | "I" | "f" | "F" => {
                writeln!(
                    out,
                    "vireod always validates a definition; the changes are thrown away."
                )?;
                return Ok(Answer::GiveUp);
            }
            _ => write!(out, "{CHOICES_HELP}")?,
        }
    }
}

pub fn edit(global: &GlobalArgs, args: &DomainArg) -> anyhow::Result<ExitCode> {
    let client = connect(global)?;
    let original = client.xml(&args.domain, true)?;
    let scratch = Scratch::new(&args.domain, &original)?;
    let editor = editor();
    loop {
        run_editor(&editor, &scratch.0)?;
        let edited = std::fs::read_to_string(&scratch.0)
            .with_context(|| format!("cannot read '{}'", scratch.0.display()))?;
        if edited == original {
            println!("Domain '{}' XML configuration not changed.\n", args.domain);
            return Ok(ExitCode::SUCCESS);
        }
        match client.define(&edited) {
            Ok(info) => {
                println!("Domain '{}' XML configuration edited.\n", info.name);
                return Ok(ExitCode::SUCCESS);
            }
            Err(e @ vireo_client::Error::Api(_)) => {
                eprintln!("error: {e}");
                let stdin = std::io::stdin();
                let answer = ask(&mut stdin.lock(), &mut std::io::stdout())
                    .context("cannot ask whether to edit again")?;
                if answer == Answer::GiveUp {
                    return Ok(ExitCode::FAILURE);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(input: &str) -> (Answer, String) {
        let mut out = Vec::new();
        let a = ask(&mut input.as_bytes(), &mut out).expect("asks");
        (a, String::from_utf8(out).expect("UTF-8"))
    }

    #[test]
    fn the_retry_question_takes_virshs_letters() {
        assert_eq!(answer("y\n").0, Answer::Again);
        assert_eq!(answer("n\n").0, Answer::GiveUp);
        let (a, out) = answer("i\n");
        assert_eq!(a, Answer::GiveUp);
        assert!(out.contains("always validates"));
        // Anything else shows the help and asks again; no answer gives up.
        let (a, out) = answer("?\nwhat\ny\n");
        assert_eq!(a, Answer::Again);
        assert_eq!(out.matches("Try again?").count(), 3);
        assert!(out.contains("y - yes, edit the XML again"));
        assert_eq!(answer("").0, Answer::GiveUp);
    }

    #[test]
    fn scratch_files_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Scratch::new("a/b c", "<domain/>").expect("creates");
        let path = scratch.0.clone();
        let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        assert!(name.starts_with("vireo-edit-a_b_c-"), "{name}");
        let meta = std::fs::metadata(&path).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), "<domain/>");
        drop(scratch);
        assert!(!path.exists());
    }
}
