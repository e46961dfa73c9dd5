//! Verbs that describe domains: `list`, `dominfo`, `domstate`, `domstats`.
//! The renderers are pure functions of the daemon's answers.

use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Map, Value};
use vireo_api::daemon::DomainInfo;
use vireo_api::DomainState;

use super::{connect, DomainArg, GlobalArgs};

#[derive(Args, Debug, Default)]
pub struct ListArgs {
    /// Running and shut-off domains alike.
    #[arg(long)]
    pub all: bool,
    /// Only domains that are not running.
    #[arg(long)]
    pub inactive: bool,
    /// Only domains with a persistent definition.
    #[arg(long)]
    pub persistent: bool,
    /// Only transient domains.
    #[arg(long)]
    pub transient: bool,
    /// Only domains the daemon starts with itself.
    #[arg(long)]
    pub autostart: bool,
    /// Only domains the daemon does not start with itself.
    #[arg(long)]
    pub no_autostart: bool,
    /// Only running domains (with the other --state-* flags: any of them).
    #[arg(long)]
    pub state_running: bool,
    /// Only paused domains.
    #[arg(long)]
    pub state_paused: bool,
    /// Only shut-off domains.
    #[arg(long)]
    pub state_shutoff: bool,
    /// Only domains in another state (shutting down, crashed).
    #[arg(long)]
    pub state_other: bool,
    /// Print only names, one per line.
    #[arg(long)]
    pub name: bool,
    /// Print only UUIDs, one per line (with --name: UUID and name).
    #[arg(long)]
    pub uuid: bool,
}

/// Which domains a verb is about.
#[derive(Debug, Default, Clone, Copy)]
struct Filter {
    active: bool,
    inactive: bool,
    persistent: bool,
    transient: bool,
    autostart: bool,
    no_autostart: bool,
    running: bool,
    paused: bool,
    shutoff: bool,
    other: bool,
}

impl Filter {
    /// Each group of flags left empty accepts everything; within a group,
    /// a domain needs to match one flag.
    fn accepts(&self, d: &DomainInfo) -> bool {
        let active = d.state.is_active();
        let activity = (!self.active && !self.inactive)
            || (self.active && active)
            || (self.inactive && !active);
        let persistence = (!self.persistent && !self.transient)
            || (self.persistent && d.persistent)
            || (self.transient && !d.persistent);
        let autostart = (!self.autostart && !self.no_autostart)
            || (self.autostart && d.autostart)
            || (self.no_autostart && !d.autostart);
        let any_state = self.running || self.paused || self.shutoff || self.other;
        let state = !any_state
            || match d.state {
                DomainState::Running(_) => self.running,
                DomainState::Paused(_) => self.paused,
                DomainState::ShutOff(_) => self.shutoff,
                DomainState::Shutdown(_) | DomainState::Crashed(_) => self.other,
            };
        activity && persistence && autostart && state
    }
}

impl ListArgs {
    fn filter(&self) -> Filter {
        let any_state =
            self.state_running || self.state_paused || self.state_shutoff || self.state_other;
        // Without --all, --inactive or a state flag, only running domains.
        let (active, inactive) = if self.all || any_state {
            (false, false)
        } else if self.inactive {
            (false, true)
        } else {
            (true, false)
        };
        Filter {
            active,
            inactive,
            persistent: self.persistent,
            transient: self.transient,
            autostart: self.autostart,
            no_autostart: self.no_autostart,
            running: self.state_running,
            paused: self.state_paused,
            shutoff: self.state_shutoff,
            other: self.state_other,
        }
    }
}

/// The `Id` column: the monitor's pid while there is one.
fn id(d: &DomainInfo) -> String {
    match d.pid {
        Some(pid) if d.state.is_active() => pid.to_string(),
        _ => "-".to_owned(),
    }
}

/// The domains `list` shows, in its order: running ones first, then the
/// others, each by name.
fn listed<'a>(domains: &'a [DomainInfo], args: &ListArgs) -> Vec<&'a DomainInfo> {
    let filter = args.filter();
    let mut shown: Vec<&DomainInfo> = domains.iter().filter(|d| filter.accepts(d)).collect();
    shown.sort_by(|a, b| {
        b.state
            .is_active()
            .cmp(&a.state.is_active())
            .then_with(|| a.name.cmp(&b.name))
    });
    shown
}

/// virsh's table: a header, a line of dashes, the rows (columns padded to
/// the widest cell and three spaces apart), then an empty line.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            out.push(' ');
            out.push_str(cell);
            if i + 1 < widths.len() {
                let pad = width - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    let dashes = widths.iter().sum::<usize>() + 3 * widths.len();
    out.extend(std::iter::repeat_n('-', dashes));
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out.push('\n');
    out
}

/// `list`'s text output.
pub fn render_list(domains: &[DomainInfo], args: &ListArgs) -> String {
    let shown = listed(domains, args);
    if args.name || args.uuid {
        let mut out = String::new();
        for d in &shown {
            match (args.uuid, args.name) {
                (true, true) => out.push_str(&format!("{}  {}\n", d.uuid, d.name)),
                (true, false) => out.push_str(&format!("{}\n", d.uuid)),
                _ => out.push_str(&format!("{}\n", d.name)),
            }
        }
        out.push('\n');
        return out;
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|d| vec![id(d), d.name.clone(), d.state.name().to_owned()])
        .collect();
    table(&["Id", "Name", "State"], &rows)
}

pub fn list(global: &GlobalArgs, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let domains = connect(global)?.list()?;
    if global.json {
        let shown = listed(&domains, args);
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        print!("{}", render_list(&domains, args));
    }
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `dominfo`'s text output: virsh's labels, values from column 16.
pub fn render_dominfo(d: &DomainInfo) -> String {
    let mut fields: Vec<(&str, String)> = vec![
        ("Id:", id(d)),
        ("Name:", d.name.clone()),
        ("UUID:", d.uuid.clone()),
        ("OS Type:", "hvm".to_owned()),
        ("State:", d.state.name().to_owned()),
        ("CPU(s):", d.vcpus.to_string()),
    ];
    if d.cpu_time_ns != 0 {
        fields.push(("CPU time:", format!("{:.1}s", d.cpu_time_ns as f64 / 1e9)));
    }
    fields.extend([
        ("Max memory:", format!("{} KiB", d.memory_kib)),
        ("Used memory:", format!("{} KiB", d.memory_kib)),
        ("Persistent:", yes_no(d.persistent).to_owned()),
        (
            "Autostart:",
            if d.autostart { "enable" } else { "disable" }.to_owned(),
        ),
    ]);
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{label:<15} {value}\n"));
    }
    out.push('\n');
    out
}

pub fn dominfo(global: &GlobalArgs, args: &DomainArg) -> anyhow::Result<ExitCode> {
    let info = connect(global)?.info(&args.domain)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", render_dominfo(&info));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct DomstateArgs {
    #[command(flatten)]
    pub domain: DomainArg,
    /// Also say why the domain is in that state.
    #[arg(long)]
    pub reason: bool,
}

pub fn domstate(global: &GlobalArgs, args: &DomstateArgs) -> anyhow::Result<ExitCode> {
    let info = connect(global)?.info(&args.domain.domain)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&info.state)?);
    } else if args.reason {
        println!("{}\n", info.state);
    } else {
        println!("{}\n", info.state.name());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug, Default)]
pub struct DomstatsArgs {
    /// The domains (default: every domain).
    #[arg(value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// The state group: state.state, state.reason (libvirt's numbers).
    #[arg(long)]
    pub state: bool,
    /// The CPU group: cpu.time (nanoseconds, running domains).
    #[arg(long)]
    pub cpu_total: bool,
    /// The memory group: balloon.current, balloon.maximum (KiB).
    #[arg(long)]
    pub balloon: bool,
    /// The vCPU group: vcpu.current, vcpu.maximum.
    #[arg(long)]
    pub vcpu: bool,
    /// Only running, paused or shutting-down domains.
    #[arg(long, conflicts_with = "domains")]
    pub list_active: bool,
    /// Only domains that are not running.
    #[arg(long, conflicts_with = "domains")]
    pub list_inactive: bool,
    /// Only domains with a persistent definition.
    #[arg(long, conflicts_with = "domains")]
    pub list_persistent: bool,
    /// Only transient domains.
    #[arg(long, conflicts_with = "domains")]
    pub list_transient: bool,
    /// Only running domains.
    #[arg(long, conflicts_with = "domains")]
    pub list_running: bool,
    /// Only paused domains.
    #[arg(long, conflicts_with = "domains")]
    pub list_paused: bool,
    /// Only shut-off domains.
    #[arg(long, conflicts_with = "domains")]
    pub list_shutoff: bool,
    /// Only domains in another state (shutting down, crashed).
    #[arg(long, conflicts_with = "domains")]
    pub list_other: bool,
}

impl DomstatsArgs {
    fn filter(&self) -> Filter {
        Filter {
            active: self.list_active,
            inactive: self.list_inactive,
            persistent: self.list_persistent,
            transient: self.list_transient,
            autostart: false,
            no_autostart: false,
            running: self.list_running,
            paused: self.list_paused,
            shutoff: self.list_shutoff,
            other: self.list_other,
        }
    }
}

/// One domain's statistics, in virsh's order and naming.
pub fn stats(d: &DomainInfo, args: &DomstatsArgs) -> Vec<(&'static str, u64)> {
    let all = !(args.state || args.cpu_total || args.balloon || args.vcpu);
    let mut out = Vec::new();
    if all || args.state {
        out.push(("state.state", u64::from(d.state.code())));
        out.push(("state.reason", u64::from(d.state.reason_code())));
    }
    if (all || args.cpu_total) && d.state.is_active() {
        out.push(("cpu.time", d.cpu_time_ns));
    }
    if all || args.balloon {
        out.push(("balloon.current", d.memory_kib));
        out.push(("balloon.maximum", d.memory_kib));
    }
    if all || args.vcpu {
        out.push(("vcpu.current", u64::from(d.vcpus)));
        out.push(("vcpu.maximum", u64::from(d.vcpus)));
    }
    out
}

/// `domstats`' text output: per domain, `Domain: 'NAME'`, indented
/// `key=value` lines and an empty line.
pub fn render_domstats(domains: &[DomainInfo], args: &DomstatsArgs) -> String {
    let mut out = String::new();
    for d in domains {
        out.push_str(&format!("Domain: '{}'\n", d.name));
        for (key, value) in stats(d, args) {
            out.push_str(&format!("  {key}={value}\n"));
        }
        out.push('\n');
    }
    out
}

pub fn domstats(global: &GlobalArgs, args: &DomstatsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(global)?;
    let domains: Vec<DomainInfo> = if args.domains.is_empty() {
        let filter = args.filter();
        client
            .list()?
            .into_iter()
            .filter(|d| filter.accepts(d))
            .collect()
    } else {
        args.domains
            .iter()
            .map(|name| client.info(name))
            .collect::<Result<_, _>>()?
    };
    if global.json {
        let list: Vec<Value> = domains
            .iter()
            .map(|d| {
                let stats: Map<String, Value> = stats(d, args)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::from(v)))
                    .collect();
                json!({ "name": d.name, "stats": stats })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render_domstats(&domains, args));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_api::domain_state::{PausedReason, RunningReason, ShutOffReason, ShutdownReason};

    fn domain(name: &str, state: DomainState) -> DomainInfo {
        DomainInfo {
            name: name.to_owned(),
            uuid: format!("00000000-0000-0000-0000-0000000000{:02}", name.len()),
            state,
            persistent: true,
            autostart: false,
            vcpus: 2,
            memory_kib: 1048576,
            cpu_time_ns: 0,
            pid: state.is_active().then_some(4242),
            last_exit: None,
        }
    }

    fn sample() -> Vec<DomainInfo> {
        vec![
            domain("alpha", DomainState::ShutOff(ShutOffReason::Destroyed)),
            domain("b", DomainState::Running(RunningReason::Booted)),
            domain("fedora-server", DomainState::Paused(PausedReason::User)),
            DomainInfo {
                persistent: false,
                autostart: true,
                ..domain("t", DomainState::Shutdown(ShutdownReason::User))
            },
        ]
    }

    #[test]
    fn list_prints_virshs_table_running_domains_first() {
        let text = render_list(&sample(), &ListArgs::default());
        assert_eq!(
            text,
            " Id     Name            State\n\
             -------------------------------------\n \
             4242   b               running\n \
             4242   fedora-server   paused\n \
             4242   t               in shutdown\n\n"
        );
        let all = render_list(
            &sample(),
            &ListArgs {
                all: true,
                ..Default::default()
            },
        );
        assert!(
            all.ends_with(" -      alpha           shut off\n\n"),
            "{all}"
        );
    }

    #[test]
    fn an_empty_list_is_the_header_alone() {
        assert_eq!(
            render_list(&[], &ListArgs::default()),
            " Id   Name   State\n--------------------\n\n"
        );
    }

    #[test]
    fn list_filters_combine_like_virshs() {
        let names = |args: ListArgs| -> Vec<String> {
            listed(&sample(), &args)
                .iter()
                .map(|d| d.name.clone())
                .collect()
        };
        assert_eq!(
            names(ListArgs {
                inactive: true,
                ..Default::default()
            }),
            ["alpha"]
        );
        assert_eq!(
            names(ListArgs {
                state_shutoff: true,
                state_paused: true,
                ..Default::default()
            }),
            ["fedora-server", "alpha"]
        );
        assert_eq!(
            names(ListArgs {
                all: true,
                transient: true,
                ..Default::default()
            }),
            ["t"]
        );
        assert_eq!(
            names(ListArgs {
                all: true,
                no_autostart: true,
                state_other: true,
                ..Default::default()
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn list_names_and_uuids_are_one_per_line() {
        let args = ListArgs {
            all: true,
            name: true,
            ..Default::default()
        };
        assert_eq!(
            render_list(&sample(), &args),
            "b\nfedora-server\nt\nalpha\n\n"
        );
        let args = ListArgs {
            uuid: true,
            name: true,
            ..Default::default()
        };
        assert_eq!(
            render_list(&sample()[..2], &args),
            "00000000-0000-0000-0000-000000000001  b\n\n"
        );
    }

    #[test]
    fn dominfo_aligns_virshs_fields() {
        let mut d = domain("vm1", DomainState::Running(RunningReason::Booted));
        d.cpu_time_ns = 12_345_000_000;
        d.autostart = true;
        assert_eq!(
            render_dominfo(&d),
            "Id:             4242\n\
             Name:           vm1\n\
             UUID:           00000000-0000-0000-0000-000000000003\n\
             OS Type:        hvm\n\
             State:          running\n\
             CPU(s):         2\n\
             CPU time:       12.3s\n\
             Max memory:     1048576 KiB\n\
             Used memory:    1048576 KiB\n\
             Persistent:     yes\n\
             Autostart:      enable\n\n"
        );
        let off = render_dominfo(&domain(
            "vm1",
            DomainState::ShutOff(ShutOffReason::Shutdown),
        ));
        assert!(off.starts_with("Id:             -\n"));
        assert!(!off.contains("CPU time"));
    }

    #[test]
    fn domstats_prints_key_value_groups() {
        let mut running = domain("vm1", DomainState::Running(RunningReason::Booted));
        running.cpu_time_ns = 987;
        let off = domain("vm2", DomainState::ShutOff(ShutOffReason::Destroyed));
        assert_eq!(
            render_domstats(&[running.clone(), off], &DomstatsArgs::default()),
            "Domain: 'vm1'\n  state.state=1\n  state.reason=1\n  cpu.time=987\n  \
             balloon.current=1048576\n  balloon.maximum=1048576\n  vcpu.current=2\n  \
             vcpu.maximum=2\n\n\
             Domain: 'vm2'\n  state.state=5\n  state.reason=2\n  \
             balloon.current=1048576\n  balloon.maximum=1048576\n  vcpu.current=2\n  \
             vcpu.maximum=2\n\n"
        );
        let only = DomstatsArgs {
            cpu_total: true,
            vcpu: true,
            ..Default::default()
        };
        assert_eq!(
            render_domstats(&[running], &only),
            "Domain: 'vm1'\n  cpu.time=987\n  vcpu.current=2\n  vcpu.maximum=2\n\n"
        );
    }
}
