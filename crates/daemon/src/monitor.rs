//! Monitor processes: starting `vireo-vmm` so that it outlives the daemon,
//! finding it again after a daemon restart, and learning how it ended.
//!
//! Each running domain has a runtime directory (`/run/vireo/domains/NAME`)
//! holding `monitor.json` (pid, the process's start time, the domain's
//! uuid), the control and console sockets. The monitor runs in a session
//! of its own (setsid), so signals for the daemon's process group do not
//! reach it and it keeps running when the daemon stops or is upgraded. The
//! daemon watches it through a pidfd, which stays right even if the pid is
//! reused; the recorded start time guards the re-attach after a restart.
//!
//! How it ended: a monitor this daemon started is its child, so `waitpid`
//! gives the exit status ([`MonitorExit`] or a signal). One found again
//! after a restart is not, and a vanished one is reported as ended with its
//! status unknown.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use vireo_api::MonitorExit;

use crate::launch::LaunchPlan;

/// What `monitor.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot): with the pid,
    /// it names one process for good.
    pub start_time: u64,
    pub uuid: String,
}

/// Starting or finding a monitor failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid monitor record", path.display())]
    BadRecord { path: PathBuf },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> MonitorError + 'a {
    move |source| MonitorError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// How a monitor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with one of its documented codes.
    Exit(MonitorExit),
    /// It exited with a code it does not document.
    OtherCode(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is gone and was not this daemon's child (found after a restart).
    Unknown,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exit(e) => write!(f, "{} (exit code {})", e.describe(), e.code()),
            Ended::OtherCode(c) => write!(f, "exit code {c}"),
            Ended::Signal(s) => write!(f, "killed by signal {s}"),
            Ended::Unknown => f.write_str("the monitor is gone; its exit status is unknown"),
        }
    }
}

/// A running monitor.
#[derive(Debug)]
pub struct Monitor {
    pub record: Record,
    pidfd: OwnedFd,
    /// Started by this daemon (so `waitpid` works).
    child: bool,
    pub run_dir: PathBuf,
}

impl Monitor {
    /// Starts `program` with `plan`, in its own session, output appended to
    /// `log`, and records it in `run_dir`.
    pub fn spawn(
        program: &Path,
        plan: &LaunchPlan,
        run_dir: &Path,
        log: &Path,
        uuid: &str,
    ) -> Result<Self, MonitorError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .map_err(io_err("cannot create", run_dir))?;
        for path in &plan.truncate {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(io_err("cannot empty", path))?;
        }
        let out = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(log)
            .map_err(io_err("cannot open", log))?;
        let err = out.try_clone().map_err(io_err("cannot open", log))?;
        let mut command = Command::new(program);
        command
            .args(&plan.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: setsid is async-signal-safe and touches no memory of the
        // parent; it runs in the child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| MonitorError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let pid = child.id() as i32;
        // The Child handle is dropped without waiting: the daemon reaps it
        // through `wait` below (std never reaps on drop).
        drop(child);
        let pidfd = pidfd_open(pid).map_err(io_err("cannot watch", program))?;
        let start_time = start_time(pid).unwrap_or(0);
        let record = Record {
            pid,
            start_time,
            uuid: uuid.to_owned(),
        };
        write_record(run_dir, &record)?;
        Ok(Self {
            record,
            pidfd,
            child: true,
            run_dir: run_dir.to_owned(),
        })
    }

    /// Finds the monitor recorded in `run_dir` after a daemon restart:
    /// `None` if there is no record or the process is gone (or the pid now
    /// belongs to another process).
    pub fn attach(run_dir: &Path) -> Result<Option<Self>, MonitorError> {
        let path = run_dir.join("monitor.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        let record: Record = serde_json::from_str(&text)
            .map_err(|_| MonitorError::BadRecord { path: path.clone() })?;
        if record.pid <= 1 {
            return Err(MonitorError::BadRecord { path });
        }
        let Ok(pidfd) = pidfd_open(record.pid) else {
            return Ok(None);
        };
        // Opened first, checked second: if the start time still matches, the
        // pidfd is the recorded process.
        if start_time(record.pid) != Some(record.start_time) {
            return Ok(None);
        }
        Ok(Some(Self {
            record,
            pidfd,
            child: false,
            run_dir: run_dir.to_owned(),
        }))
    }

    /// Readable once the monitor has exited (for the daemon's event loop).
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }

    /// Whether it has exited, without waiting.
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    /// Waits for the monitor to end and says how; removes its record.
    /// Call it once.
    pub fn wait(&self) -> Ended {
        let ended = if self.child {
            let mut status = 0;
            let ret = loop {
                // SAFETY: waits for our own child; `status` is a valid
                // out-pointer.
                let r = unsafe { libc::waitpid(self.record.pid, &mut status, 0) };
                if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break r;
                }
            };
            if ret < 0 {
                Ended::Unknown
            } else if libc::WIFEXITED(status) {
                let code = libc::WEXITSTATUS(status);
                MonitorExit::from_code(code).map_or(Ended::OtherCode(code), Ended::Exit)
            } else if libc::WIFSIGNALED(status) {
                Ended::Signal(libc::WTERMSIG(status))
            } else {
                Ended::Unknown
            }
        } else {
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd; blocks until the process exits.
                let r = unsafe { libc::poll(&mut pfd, 1, -1) };
                if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            Ended::Unknown
        };
        let _ = fs::remove_file(self.run_dir.join("monitor.json"));
        ended
    }

    /// Sends a signal (SIGTERM asks for an orderly stop, SIGKILL for none)
    /// through the pidfd, so it cannot hit a process that reused the pid.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Field 22 of /proc/PID/stat, the process's start time.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

fn write_record(run_dir: &Path, record: &Record) -> Result<(), MonitorError> {
    let path = run_dir.join("monitor.json");
    let temp = run_dir.join(".monitor.json.tmp");
    let text = serde_json::to_string(record)
        .map_err(|_| MonitorError::BadRecord { path: path.clone() })?;
    crate::store::write_atomically(&path, &temp, text.as_bytes())
        .map_err(|(what, path, source)| MonitorError::Io { what, path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-monitor-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn plan(args: &[&str]) -> LaunchPlan {
        LaunchPlan {
            args: args.iter().map(Into::into).collect(),
            truncate: Vec::new(),
        }
    }

    #[test]
    fn exit_codes_and_signals_are_reported() {
        let d = dir("exit");
        let log = d.join("log");
        fs::create_dir_all(&d).expect("dir");
        let m = Monitor::spawn(
            Path::new("/bin/sh"),
            &plan(&["-c", "exit 7"]),
            &d,
            &log,
            "u",
        )
        .expect("spawn");
        assert!(d.join("monitor.json").exists());
        assert_eq!(m.wait(), Ended::Exit(MonitorExit::Terminated));
        assert!(!d.join("monitor.json").exists());
        let m =
            Monitor::spawn(Path::new("/bin/sleep"), &plan(&["30"]), &d, &log, "u").expect("spawn");
        m.signal(libc::SIGKILL).expect("kill");
        assert_eq!(m.wait(), Ended::Signal(libc::SIGKILL));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_monitor_is_found_again_in_its_own_session_and_not_after_it_ends() {
        let d = dir("attach");
        let log = d.join("log");
        let m = Monitor::spawn(Path::new("/bin/sleep"), &plan(&["30"]), &d, &log, "uuid-1")
            .expect("spawn");
        // Its own session: the session id is its pid.
        // SAFETY: getsid only reads the process table.
        assert_eq!(unsafe { libc::getsid(m.record.pid) }, m.record.pid);
        // What a restarted daemon does: find it from the record.
        let found = Monitor::attach(&d).expect("attach").expect("still running");
        assert_eq!(found.record, m.record);
        assert!(!found.has_exited());
        found.signal(libc::SIGKILL).expect("kill");
        // The real parent reaps it; the re-attached handle sees it end.
        assert_eq!(m.wait(), Ended::Signal(libc::SIGKILL));
        assert!(found.has_exited());
        assert_eq!(found.wait(), Ended::Unknown);
        assert!(Monitor::attach(&d).expect("attach").is_none());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_reused_pid_is_not_mistaken_for_the_monitor() {
        let d = dir("reuse");
        fs::create_dir_all(&d).expect("dir");
        // A record naming this very test process with a wrong start time.
        let record = Record {
            pid: std::process::id() as i32,
            start_time: 1,
            uuid: "u".into(),
        };
        write_record(&d, &record).expect("record");
        assert!(Monitor::attach(&d).expect("attach").is_none());
        let _ = fs::remove_dir_all(&d);
    }
}
