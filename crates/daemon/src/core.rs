//! The daemon's heart: the domains it knows, their lifecycle, and the
//! supervision of their monitors.
//!
//! Requests on one domain are serialised by that domain's lock; requests
//! on different domains run in parallel. Each running domain has a watcher
//! task that waits on its monitor's pidfd and, when the monitor ends,
//! records the new state and applies `on_poweroff` / `on_reboot` /
//! `on_crash`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, Mutex};
use vireo_api::control::{ControlReply, ControlRequest};
use vireo_api::domain_state::{
    CrashedReason, DomainState, PausedReason, RunningReason, ShutOffReason, ShutdownReason,
};
use vireo_api::MonitorExit;
use vireo_domain::{Domain, LifecycleAction};

use crate::launch::{self, HostSide};
use crate::monitor::{Ended, Monitor};
use crate::store::{Store, StoreError};
pub use vireo_api::daemon::{err, ApiError, DomainInfo, ErrorCode, Event};

/// Where the daemon keeps things.
#[derive(Debug, Clone)]
pub struct Config {
    /// Definitions (`/var/lib/vireo`): `domains/NAME.xml`.
    pub state_dir: PathBuf,
    /// Runtime state (`/run/vireo`): `domains/NAME/` per running domain.
    pub run_dir: PathBuf,
    /// Monitor logs (`/var/log/vireo`): `NAME.log`.
    pub log_dir: PathBuf,
    /// The `vireo-vmm` binary.
    pub vmm: PathBuf,
    /// The built-in test guest's ELF image, written to the run directory.
    pub test_guest: &'static [u8],
    /// How long `destroy` waits for an orderly stop before SIGKILL.
    pub destroy_grace: Duration,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        err(ErrorCode::Internal, chain(&e))
    }
}

/// What the daemon asked of a running domain, to interpret its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    Destroy,
    Shutdown,
    Reboot,
    /// A hard reset: the monitor is stopped and started again.
    Reset,
}

struct Live {
    monitor: Arc<Monitor>,
    /// The definition the monitor runs (the inactive one may change).
    running: Domain,
    host: HostSide,
    /// Bumped at each start, so a late watcher of an older run is ignored.
    generation: u64,
}

struct Entry {
    /// The persistent definition, or the transient one.
    def: Domain,
    persistent: bool,
    state: DomainState,
    live: Option<Live>,
    pending: Pending,
    last_exit: Option<String>,
    generation: u64,
}

/// The daemon.
pub struct Daemon {
    config: Config,
    store: Store,
    test_guest: PathBuf,
    domains: StdMutex<HashMap<String, Arc<Mutex<Entry>>>>,
    events: broadcast::Sender<Event>,
    me: Weak<Daemon>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config)
            .finish()
    }
}

impl Daemon {
    /// Loads the definitions, finds the monitors still running (a daemon
    /// restart leaves them alone) and starts the autostart domains.
    pub async fn open(config: Config) -> Result<Arc<Self>, ApiError> {
        let store = Store::open(config.state_dir.join("domains"))?;
        for dir in [config.run_dir.join("domains"), config.log_dir.clone()] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                err(
                    ErrorCode::Internal,
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
        }
        // Replaced atomically and only when it changed: a monitor that is
        // starting may be reading the old one.
        let test_guest = config.run_dir.join("test-guest.elf");
        if std::fs::read(&test_guest).ok().as_deref() != Some(config.test_guest) {
            let temp = config.run_dir.join(".test-guest.elf.tmp");
            crate::store::write_atomically(&test_guest, &temp, config.test_guest).map_err(
                |(what, path, e)| {
                    err(
                        ErrorCode::Internal,
                        format!("{what} {}: {e}", path.display()),
                    )
                },
            )?;
        }
        let (events, _) = broadcast::channel(1024);
        let daemon = Arc::new_cyclic(|me| Daemon {
            config,
            store,
            test_guest,
            domains: StdMutex::new(HashMap::new()),
            events,
            me: me.clone(),
        });
        daemon.load().await?;
        Ok(daemon)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Entry>>>> {
        self.domains.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run_dir_of(&self, name: &str) -> PathBuf {
        self.config.run_dir.join("domains").join(name)
    }

    async fn load(&self) -> Result<(), ApiError> {
        let mut autostart = Vec::new();
        for name in self.store.names()? {
            let text = self.store.get(&name)?;
            let def = match Domain::from_xml(&text) {
                Ok(d) => d,
                Err(e) => {
                    log::error!("skipping the stored definition of '{name}': {e}");
                    continue;
                }
            };
            if self.store.autostart(&name)? {
                autostart.push(name.clone());
            }
            self.insert(def, true);
        }
        // Transient domains live only in the run directory.
        if let Ok(dirs) = std::fs::read_dir(self.config.run_dir.join("domains")) {
            for dir in dirs.flatten() {
                let name = dir.file_name().to_string_lossy().into_owned();
                let xml = dir.path().join("domain.xml");
                if self.map().contains_key(&name) || !xml.exists() {
                    continue;
                }
                if let Ok(def) = std::fs::read_to_string(&xml)
                    .map_err(|e| e.to_string())
                    .and_then(|t| Domain::from_xml(&t).map_err(|e| e.to_string()))
                {
                    self.insert(def, false);
                }
            }
        }
        let names: Vec<String> = self.map().keys().cloned().collect();
        for name in names {
            self.reattach(&name).await;
        }
        for name in autostart {
            let running = self.entry(&name)?.lock().await.live.is_some();
            if !running {
                if let Err(e) = self.start(&name).await {
                    log::error!("autostart of '{name}' failed: {e}");
                }
            }
        }
        Ok(())
    }

    fn insert(&self, def: Domain, persistent: bool) -> Arc<Mutex<Entry>> {
        let entry = Arc::new(Mutex::new(Entry {
            def: def.clone(),
            persistent,
            state: DomainState::ShutOff(ShutOffReason::Unknown),
            live: None,
            pending: Pending::None,
            last_exit: None,
            generation: 0,
        }));
        self.map().insert(def.name.clone(), entry.clone());
        entry
    }

    async fn reattach(&self, name: &str) {
        let Ok(entry) = self.entry(name) else { return };
        let mut e = entry.lock().await;
        let dir = self.run_dir_of(name);
        match Monitor::attach(&dir) {
            Ok(Some(monitor)) => {
                let running = std::fs::read_to_string(dir.join("domain.xml"))
                    .ok()
                    .and_then(|t| Domain::from_xml(&t).ok())
                    .unwrap_or_else(|| e.def.clone());
                let host = self.host_side(&running);
                log::info!(
                    "'{name}' is still running (pid {}): managing it again",
                    monitor.record.pid
                );
                e.state = DomainState::Running(RunningReason::Unknown);
                e.generation += 1;
                let monitor = Arc::new(monitor);
                e.live = Some(Live {
                    monitor: monitor.clone(),
                    running,
                    host,
                    generation: e.generation,
                });
                self.watch(name.to_owned(), monitor, e.generation);
            }
            Ok(None) => {}
            Err(err) => log::warn!("'{name}': {}", chain(&err)),
        }
    }

    fn entry(&self, name: &str) -> Result<Arc<Mutex<Entry>>, ApiError> {
        let map = self.map();
        map.get(name).cloned().ok_or_else(|| {
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            let hint = names
                .iter()
                .min_by_key(|n| edit_distance(n, name))
                .filter(|n| edit_distance(n, name) <= 2.max(name.len() / 3))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            err(
                ErrorCode::NoDomain,
                format!("no domain named '{name}'{hint}"),
            )
        })
    }

    fn emit(&self, e: &Entry, event: &str, detail: Option<String>) {
        let _ = self.events.send(Event {
            domain: e.def.name.clone(),
            uuid: e.def.uuid.to_string(),
            event: event.to_owned(),
            state: e.state,
            detail,
        });
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Every domain, sorted by name.
    pub async fn list(&self) -> Vec<DomainInfo> {
        let entries: Vec<Arc<Mutex<Entry>>> = self.map().values().cloned().collect();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let e = entry.lock().await;
            out.push(self.info_of(&e));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn info_of(&self, e: &Entry) -> DomainInfo {
        let (pid, cpu) = match &e.live {
            Some(l) => (
                Some(l.monitor.record.pid),
                cpu_time_ns(l.monitor.record.pid),
            ),
            None => (None, 0),
        };
        let d = e.live.as_ref().map_or(&e.def, |l| &l.running);
        DomainInfo {
            name: d.name.clone(),
            uuid: d.uuid.to_string(),
            state: e.state,
            persistent: e.persistent,
            autostart: e.persistent && self.store.autostart(&d.name).unwrap_or(false),
            vcpus: d.vcpus,
            memory_kib: d.memory.kib,
            cpu_time_ns: cpu,
            pid,
            last_exit: e.last_exit.clone(),
        }
    }

    /// One domain's facts.
    pub async fn info(&self, name: &str) -> Result<DomainInfo, ApiError> {
        let entry = self.entry(name)?;
        let e = entry.lock().await;
        Ok(self.info_of(&e))
    }

    /// The definition as XML: the running one, or with `inactive` the one
    /// the next start will use.
    pub async fn xml(&self, name: &str, inactive: bool) -> Result<String, ApiError> {
        let entry = self.entry(name)?;
        let e = entry.lock().await;
        Ok(match (&e.live, inactive) {
            (Some(l), false) => l.running.to_xml(),
            _ => e.def.to_xml(),
        })
    }

    /// Defines (or redefines) a persistent domain from XML.
    pub async fn define(&self, xml: &str) -> Result<DomainInfo, ApiError> {
        let def = Domain::from_xml(xml).map_err(|e| err(ErrorCode::InvalidXml, e.to_string()))?;
        let existing = self.map().get(&def.name).cloned();
        let uuid_owner = self.find_uuid(&def).await;
        if let Some(owner) = uuid_owner.filter(|o| *o != def.name) {
            return Err(err(
                ErrorCode::DomainExists,
                format!("domain '{owner}' already has uuid {}", def.uuid),
            ));
        }
        let entry = match existing {
            Some(entry) => entry,
            None => self.insert(def.clone(), true),
        };
        let mut e = entry.lock().await;
        if e.def.uuid != def.uuid && (e.persistent || e.live.is_some()) {
            return Err(err(
                ErrorCode::DomainExists,
                format!(
                    "domain '{}' already exists with uuid {}",
                    def.name, e.def.uuid
                ),
            ));
        }
        self.store.put(&def.name, &def.to_xml())?;
        e.def = def;
        e.persistent = true;
        self.emit(&e, "defined", None);
        Ok(self.info_of(&e))
    }

    async fn find_uuid(&self, def: &Domain) -> Option<String> {
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, entry) in entries {
            if entry.lock().await.def.uuid == def.uuid {
                return Some(name);
            }
        }
        None
    }

    /// Removes a persistent definition (a running domain keeps running,
    /// transient, as in libvirt).
    pub async fn undefine(&self, name: &str) -> Result<(), ApiError> {
        let entry = self.entry(name)?;
        let mut e = entry.lock().await;
        if !e.persistent {
            return Err(err(
                ErrorCode::OperationInvalid,
                format!("domain '{name}' is transient: it has no definition to remove"),
            ));
        }
        self.store.remove(name)?;
        e.persistent = false;
        self.emit(&e, "undefined", None);
        if e.live.is_none() {
            self.map().remove(name);
        }
        Ok(())
    }

    /// Starts a transient domain from XML (gone when it stops).
    pub async fn create(&self, xml: &str) -> Result<DomainInfo, ApiError> {
        let def = Domain::from_xml(xml).map_err(|e| err(ErrorCode::InvalidXml, e.to_string()))?;
        if self.map().contains_key(&def.name) {
            return Err(err(
                ErrorCode::DomainExists,
                format!("a domain named '{}' already exists", def.name),
            ));
        }
        if let Some(owner) = self.find_uuid(&def).await {
            return Err(err(
                ErrorCode::DomainExists,
                format!("domain '{owner}' already has uuid {}", def.uuid),
            ));
        }
        let name = def.name.clone();
        self.insert(def, false);
        match self.start(&name).await {
            Ok(info) => Ok(info),
            Err(e) => {
                self.map().remove(&name);
                Err(e)
            }
        }
    }

    fn host_side(&self, def: &Domain) -> HostSide {
        let taps = def
            .devices
            .interfaces
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                nic.target
                    .clone()
                    .unwrap_or_else(|| format!("vn-{}-{i}", &def.uuid.simple().to_string()[..6]))
            })
            .collect();
        HostSide {
            run_dir: self.run_dir_of(&def.name),
            test_guest: self.test_guest.clone(),
            taps,
        }
    }

    /// Starts a defined domain.
    pub async fn start(&self, name: &str) -> Result<DomainInfo, ApiError> {
        let entry = self.entry(name)?;
        let mut e = entry.lock().await;
        if e.live.is_some() {
            return Err(err(
                ErrorCode::OperationInvalid,
                format!("domain '{name}' is already running"),
            ));
        }
        self.start_locked(&mut e, RunningReason::Booted)?;
        Ok(self.info_of(&e))
    }

    fn start_locked(&self, e: &mut Entry, reason: RunningReason) -> Result<(), ApiError> {
        let def = e.def.clone();
        let host = self.host_side(&def);
        let plan = launch::plan(&def, &host)
            .map_err(|x| err(ErrorCode::OperationFailed, x.to_string()))?;
        let run_dir = host.run_dir.clone();
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .and_then(|()| std::fs::write(run_dir.join("domain.xml"), def.to_xml()))
            .map_err(|x| {
                err(
                    ErrorCode::Internal,
                    format!("cannot prepare {}: {x}", run_dir.display()),
                )
            })?;
        let taps = crate::net::prepare(&def, &host.taps).map_err(|x| {
            err(
                ErrorCode::OperationFailed,
                format!("domain '{}': {x}", def.name),
            )
        })?;
        // Recorded so a restarted daemon can remove them too.
        let _ = std::fs::write(run_dir.join("taps"), taps.join("\n"));
        let log = self.config.log_dir.join(format!("{}.log", def.name));
        let monitor = match Monitor::spawn(
            &self.config.vmm,
            &plan,
            &run_dir,
            &log,
            &def.uuid.to_string(),
        ) {
            Ok(m) => m,
            Err(x) => {
                crate::net::remove(&taps);
                return Err(err(ErrorCode::OperationFailed, chain(&x)));
            }
        };
        log::info!(
            "'{}' started: pid {} ({})",
            def.name,
            monitor.record.pid,
            launch::display(&plan.args)
        );
        e.generation += 1;
        let monitor = Arc::new(monitor);
        e.live = Some(Live {
            monitor: monitor.clone(),
            running: def.clone(),
            host,
            generation: e.generation,
        });
        e.state = DomainState::Running(reason);
        e.pending = Pending::None;
        self.watch(def.name.clone(), monitor, e.generation);
        self.emit(e, "started", None);
        Ok(())
    }

    fn watch(&self, name: String, monitor: Arc<Monitor>, generation: u64) {
        let me = self.me.clone();
        tokio::spawn(async move {
            let ended = match tokio::task::spawn_blocking(move || monitor.wait()).await {
                Ok(ended) => ended,
                Err(_) => Ended::Unknown,
            };
            if let Some(daemon) = me.upgrade() {
                daemon.ended(&name, generation, ended).await;
            }
        });
    }

    /// A monitor ended: record why, then apply the lifecycle actions.
    async fn ended(&self, name: &str, generation: u64, ended: Ended) {
        let Ok(entry) = self.entry(name) else { return };
        let mut e = entry.lock().await;
        if e.live.as_ref().map(|l| l.generation) != Some(generation) {
            return;
        }
        let pending = e.pending;
        e.pending = Pending::None;
        let live = e.live.take();
        if let Some(l) = &live {
            if let Ok(list) = std::fs::read_to_string(l.host.run_dir.join("taps")) {
                let taps: Vec<String> = list
                    .lines()
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
                crate::net::remove(&taps);
            }
            let _ = std::fs::remove_dir_all(&l.host.run_dir);
        }
        let lifecycle = live
            .as_ref()
            .map_or(e.def.lifecycle, |l| l.running.lifecycle);
        e.last_exit = Some(ended.to_string());
        let detail = Some(ended.to_string());
        if pending == Pending::Reset && self.start_locked(&mut e, RunningReason::Booted).is_ok() {
            return;
        }
        let crashed = match ended {
            Ended::Exit(MonitorExit::Ok) => {
                let restart =
                    pending == Pending::Reboot || lifecycle.on_poweroff == LifecycleAction::Restart;
                if restart && self.start_locked(&mut e, RunningReason::Booted).is_ok() {
                    return;
                }
                e.state = DomainState::ShutOff(ShutOffReason::Shutdown);
                self.emit(&e, "stopped", detail.clone());
                false
            }
            Ended::Exit(MonitorExit::Reset) => {
                e.state = DomainState::ShutOff(ShutOffReason::Shutdown);
                self.emit(&e, "stopped", detail.clone());
                false
            }
            Ended::Exit(MonitorExit::Usage) => {
                e.state = DomainState::ShutOff(ShutOffReason::Failed);
                self.emit(&e, "stopped", detail.clone());
                false
            }
            _ if pending == Pending::Destroy => {
                e.state = DomainState::ShutOff(ShutOffReason::Destroyed);
                self.emit(&e, "stopped", detail.clone());
                false
            }
            Ended::Exit(MonitorExit::Terminated) => {
                e.state = DomainState::ShutOff(ShutOffReason::Destroyed);
                self.emit(&e, "stopped", detail.clone());
                false
            }
            _ => true,
        };
        if crashed {
            log::warn!("'{name}' crashed: {ended}");
            match lifecycle.on_crash {
                LifecycleAction::Restart => {
                    e.state = DomainState::Crashed(CrashedReason::Unknown);
                    self.emit(&e, "crashed", detail.clone());
                    if self.start_locked(&mut e, RunningReason::Crashed).is_ok() {
                        return;
                    }
                    e.state = DomainState::ShutOff(ShutOffReason::Crashed);
                }
                LifecycleAction::Preserve => {
                    e.state = DomainState::Crashed(CrashedReason::Unknown);
                    self.emit(&e, "crashed", detail.clone());
                }
                LifecycleAction::Destroy => {
                    e.state = DomainState::ShutOff(ShutOffReason::Crashed);
                    self.emit(&e, "crashed", detail.clone());
                }
            }
        }
        if !e.persistent && e.live.is_none() {
            // Still under the entry's lock, so nobody sees the stopped
            // transient domain in between (the map lock is never held
            // while waiting for an entry's).
            self.map().remove(name);
        }
    }

    async fn control(
        &self,
        name: &str,
        e: &Entry,
        request: ControlRequest,
    ) -> Result<ControlReply, ApiError> {
        let Some(live) = &e.live else {
            return Err(err(
                ErrorCode::OperationInvalid,
                format!("domain '{name}' is not running"),
            ));
        };
        let path = live.host.control_socket();
        let failed = |x: std::io::Error| {
            err(
                ErrorCode::OperationFailed,
                format!(
                    "domain '{name}': its monitor's control socket {}: {x}",
                    path.display()
                ),
            )
        };
        let exchange = async {
            let stream = UnixStream::connect(&path).await.map_err(failed)?;
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_string(&request)
                .map_err(|x| err(ErrorCode::Internal, x.to_string()))?;
            line.push('\n');
            write.write_all(line.as_bytes()).await.map_err(failed)?;
            let mut reply = String::new();
            BufReader::new(read)
                .read_line(&mut reply)
                .await
                .map_err(failed)?;
            serde_json::from_str::<ControlReply>(&reply).map_err(|x| {
                err(
                    ErrorCode::OperationFailed,
                    format!("domain '{name}': bad reply from its monitor: {x}"),
                )
            })
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(r) => r,
            Err(_) => Err(err(
                ErrorCode::OperationFailed,
                format!("domain '{name}': its monitor does not answer"),
            )),
        }
    }

    async fn simple_control(
        &self,
        name: &str,
        request: ControlRequest,
        then: DomainState,
        event: &str,
    ) -> Result<DomainInfo, ApiError> {
        let entry = self.entry(name)?;
        let mut e = entry.lock().await;
        let reply = self.control(name, &e, request).await?;
        if !reply.ok {
            return Err(err(
                ErrorCode::OperationFailed,
                reply.message.unwrap_or_else(|| "refused".into()),
            ));
        }
        e.state = then;
        self.emit(&e, event, None);
        Ok(self.info_of(&e))
    }

    /// Pauses the vCPUs.
    pub async fn suspend(&self, name: &str) -> Result<DomainInfo, ApiError> {
        self.simple_control(
            name,
            ControlRequest::Pause,
            DomainState::Paused(PausedReason::User),
            "suspended",
        )
        .await
    }

    /// Lets them run again.
    pub async fn resume(&self, name: &str) -> Result<DomainInfo, ApiError> {
        self.simple_control(
            name,
            ControlRequest::Resume,
            DomainState::Running(RunningReason::Unpaused),
            "resumed",
        )
        .await
    }

    /// Asks the guest to power off (ACPI power button).
    pub async fn shutdown(&self, name: &str) -> Result<DomainInfo, ApiError> {
        self.press(name, Pending::Shutdown).await
    }

    /// Asks the guest to power off, then starts it again.
    pub async fn reboot(&self, name: &str) -> Result<DomainInfo, ApiError> {
        self.press(name, Pending::Reboot).await
    }

    async fn press(&self, name: &str, pending: Pending) -> Result<DomainInfo, ApiError> {
        let entry = self.entry(name)?;
        let mut e = entry.lock().await;
        let reply = self.control(name, &e, ControlRequest::PowerButton).await?;
        if !reply.ok {
            return Err(err(
                ErrorCode::OperationFailed,
                reply.message.unwrap_or_else(|| "refused".into()),
            ));
        }
        if reply.guest_listening == Some(false) {
            return Err(err(
                ErrorCode::OperationFailed,
                format!("domain '{name}': the guest does not listen to the ACPI power button"),
            ));
        }
        e.pending = pending;
        if pending == Pending::Shutdown {
            e.state = DomainState::Shutdown(ShutdownReason::User);
            self.emit(&e, "shutdown", None);
        }
        Ok(self.info_of(&e))
    }

    /// Stops the domain now (SIGTERM, then SIGKILL after the grace time).
    pub async fn destroy(&self, name: &str) -> Result<DomainInfo, ApiError> {
        self.stop(name, Pending::Destroy).await
    }

    /// Resets the domain at once, as a reset button does (the guest gets no
    /// say): its monitor is stopped and started again.
    pub async fn reset(&self, name: &str) -> Result<DomainInfo, ApiError> {
        self.stop(name, Pending::Reset).await
    }

    async fn stop(&self, name: &str, pending: Pending) -> Result<DomainInfo, ApiError> {
        let entry = self.entry(name)?;
        let monitor = {
            let mut e = entry.lock().await;
            let Some(live) = &e.live else {
                return Err(err(
                    ErrorCode::OperationInvalid,
                    format!("domain '{name}' is not running"),
                ));
            };
            let monitor = live.monitor.clone();
            e.pending = pending;
            let _ = monitor.signal(libc::SIGTERM);
            monitor
        };
        let deadline = tokio::time::Instant::now() + self.config.destroy_grace;
        while !monitor.has_exited() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !monitor.has_exited() {
            let _ = monitor.signal(libc::SIGKILL);
        }
        // Wait for the watcher to record the end.
        for _ in 0..500 {
            {
                let e = entry.lock().await;
                if e.live
                    .as_ref()
                    .is_none_or(|l| !Arc::ptr_eq(&l.monitor, &monitor))
                {
                    return Ok(self.info_of(&e));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(err(
            ErrorCode::OperationFailed,
            format!("domain '{name}': its monitor did not end"),
        ))
    }

    /// Marks a persistent domain to start with the daemon, or not.
    pub async fn set_autostart(&self, name: &str, on: bool) -> Result<(), ApiError> {
        let entry = self.entry(name)?;
        let e = entry.lock().await;
        if !e.persistent {
            return Err(err(
                ErrorCode::OperationInvalid,
                format!("domain '{name}' is transient: it cannot autostart"),
            ));
        }
        self.store.set_autostart(name, on)?;
        Ok(())
    }

    /// The console socket of a running domain whose console the daemon
    /// provides (`<serial type='pty'>` / `<console type='pty'>`).
    pub async fn console_socket(&self, name: &str) -> Result<PathBuf, ApiError> {
        let entry = self.entry(name)?;
        let e = entry.lock().await;
        let Some(live) = &e.live else {
            return Err(err(
                ErrorCode::OperationInvalid,
                format!("domain '{name}' is not running"),
            ));
        };
        match live.running.console_sink() {
            Some(vireo_domain::CharSource::Pty) => Ok(live.host.console_socket()),
            Some(other) => Err(err(
                ErrorCode::OperationInvalid,
                format!(
                    "domain '{name}' has its console on a {} sink, not one the daemon provides (use <serial type='pty'>)",
                    other.type_str()
                ),
            )),
            None => Err(err(ErrorCode::OperationInvalid, format!("domain '{name}' has no console"))),
        }
    }

    /// The run directory of a domain (for tests and the console relay).
    pub fn runtime_dir(&self, name: &str) -> PathBuf {
        self.run_dir_of(name)
    }

    /// Where a domain's monitor log goes.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.config.log_dir.join(format!("{name}.log"))
    }

    /// The definition store's directory.
    pub fn store_dir(&self) -> &Path {
        self.store.dir()
    }
}

/// CPU time a process used (user + system), in nanoseconds.
fn cpu_time_ns(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * (1_000_000_000 / hz)
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
