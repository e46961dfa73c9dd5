//! vireod's core (the library the daemon binary will serve) driving real `vireo-vmm` monitors running the test
//! guest: define, start, suspend, resume, shutdown through the guest,
//! destroy, a monitor killed with SIGKILL, and a daemon restart while a
//! VM runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vireo_api::domain_state::{DomainState, PausedReason, RunningReason, ShutOffReason};
use vireo_daemon::core::{Config, Daemon, ErrorCode};

fn setup(tag: &str) -> Option<(PathBuf, Config)> {
    if !vireo_e2e::kvm_or_skip(tag) {
        return None;
    }
    let root = std::env::temp_dir().join(format!("vireod-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let config = Config {
        state_dir: root.join("state"),
        run_dir: root.join("run"),
        log_dir: root.join("log"),
        vmm: vireo_e2e::bin("vireo-vmm"),
        test_guest: vireo_test_guest::ELF,
        destroy_grace: Duration::from_secs(5),
    };
    Some((root, config))
}

fn domain(name: &str, extra: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><cmdline>scenario=powerbutton timeout_ms=600000</cmdline></os>\
         {extra}<devices><serial type='null'><target port='0'/></serial></devices></domain>"
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn wait_state(d: &Daemon, name: &str, want: DomainState) {
    for _ in 0..1000 {
        if d.info(name).await.expect("info").state == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never reached {want}: {:?}", d.info(name).await);
}

#[test]
fn lifecycle_through_the_daemon() {
    let Some((root, config)) = setup("life") else {
        return;
    };
    rt().block_on(async {
        let d = Daemon::open(config).await.expect("open");
        let mut events = d.subscribe();
        d.define(&domain("vm1", "")).await.expect("define");
        assert_eq!(
            d.info("vm1").await.expect("info").state,
            DomainState::ShutOff(ShutOffReason::Unknown)
        );
        let err = d.info("vm2").await.expect_err("no such domain");
        assert_eq!(err.code, ErrorCode::NoDomain);
        assert!(
            err.message.contains("did you mean 'vm1'"),
            "{}",
            err.message
        );

        let info = d.start("vm1").await.expect("start");
        assert_eq!(info.state, DomainState::Running(RunningReason::Booted));
        assert!(info.pid.is_some());
        assert_eq!(
            d.start("vm1").await.expect_err("twice").code,
            ErrorCode::OperationInvalid
        );
        // The guest enables the power button early; give it time to boot.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            d.suspend("vm1").await.expect("suspend").state,
            DomainState::Paused(PausedReason::User)
        );
        assert_eq!(
            d.resume("vm1").await.expect("resume").state,
            DomainState::Running(RunningReason::Unpaused)
        );
        d.shutdown("vm1").await.expect("shutdown");
        wait_state(&d, "vm1", DomainState::ShutOff(ShutOffReason::Shutdown)).await;

        let before = d.start("vm1").await.expect("start again").pid;
        let info = d.reset("vm1").await.expect("reset");
        assert_eq!(info.state, DomainState::Running(RunningReason::Booted));
        assert!(
            info.pid.is_some() && info.pid != before,
            "reset did not restart the monitor"
        );
        let info = d.destroy("vm1").await.expect("destroy");
        assert_eq!(info.state, DomainState::ShutOff(ShutOffReason::Destroyed));

        // A monitor killed behind the daemon's back: crashed, on_crash=destroy.
        let pid = d.start("vm1").await.expect("start").pid.expect("pid");
        // SAFETY: kill(2) on the monitor this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_state(&d, "vm1", DomainState::ShutOff(ShutOffReason::Crashed)).await;
        let info = d.info("vm1").await.expect("info");
        assert_eq!(info.last_exit.as_deref(), Some("killed by signal 9"));

        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e.event);
        }
        for want in [
            "defined",
            "started",
            "suspended",
            "resumed",
            "shutdown",
            "stopped",
            "crashed",
        ] {
            assert!(
                seen.iter().any(|e| e == want),
                "no {want} event in {seen:?}"
            );
        }
        d.undefine("vm1").await.expect("undefine");
        assert!(d.list().await.is_empty());
    });
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn running_vms_survive_a_daemon_restart_and_are_managed_again() {
    let Some((root, config)) = setup("restart") else {
        return;
    };
    let first = rt();
    let pid = first.block_on(async {
        let d = Daemon::open(config.clone()).await.expect("open");
        d.define(&domain("keep", "")).await.expect("define");
        d.create(&domain("transient", "")).await.expect("create");
        d.start("keep").await.expect("start").pid.expect("pid")
    });
    // The daemon goes away (its tasks with it); the monitors stay.
    first.shutdown_background();
    // SAFETY: signal 0 only checks the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(alive, "the monitor died with the daemon");
    rt().block_on(async {
        let d: Arc<Daemon> = Daemon::open(config).await.expect("reopen");
        let info = d.info("keep").await.expect("info");
        assert_eq!(info.pid, Some(pid));
        assert!(matches!(info.state, DomainState::Running(_)));
        assert!(matches!(
            d.info("transient").await.expect("transient").state,
            DomainState::Running(_)
        ));
        assert_eq!(
            d.destroy("keep").await.expect("destroy").state,
            DomainState::ShutOff(ShutOffReason::Destroyed)
        );
        d.destroy("transient").await.expect("destroy transient");
        // A transient domain is gone once it stops.
        assert_eq!(
            d.info("transient").await.expect_err("gone").code,
            ErrorCode::NoDomain
        );
    });
    let _ = std::fs::remove_dir_all(&root);
}
