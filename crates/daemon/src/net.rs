//! Host networking for domains: TAP devices the daemon creates for
//! `<interface type='bridge'>` and adds to the named bridge (with
//! iproute2's `ip`), removed again when the domain stops.
//!
//! `type='ethernet'` interfaces need nothing here: the monitor opens (or
//! creates) the TAP named in `<target dev>` and the host configures it.

use std::path::Path;
use std::process::Command;

use vireo_domain::{Domain, InterfaceKind};

/// Setting up a domain's network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface {index}: bridge '{bridge}' does not exist on this host")]
    NoBridge { index: usize, bridge: String },
    #[error("interface {index}: 'ip {args}' failed: {output}")]
    Ip {
        index: usize,
        args: String,
        output: String,
    },
}

fn ip(index: usize, args: &[&str]) -> Result<(), NetError> {
    let failed = |output: String| NetError::Ip {
        index,
        args: args.join(" "),
        output,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| failed(format!("cannot run ip (install iproute2): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Creates and attaches the TAPs of `def`'s bridge interfaces (names from
/// `taps`, one per interface); returns the TAPs created, for [`remove`].
/// On failure, what was created is removed again.
pub fn prepare(def: &Domain, taps: &[String]) -> Result<Vec<String>, NetError> {
    let mut created = Vec::new();
    for (index, (nic, tap)) in def.devices.interfaces.iter().zip(taps).enumerate() {
        let InterfaceKind::Bridge { bridge } = &nic.kind else {
            continue;
        };
        let result = (|| {
            if !Path::new("/sys/class/net")
                .join(bridge)
                .join("bridge")
                .exists()
            {
                return Err(NetError::NoBridge {
                    index,
                    bridge: bridge.clone(),
                });
            }
            let mut add = vec!["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"];
            if nic.queues.unwrap_or(1) > 1 {
                add.push("multi_queue");
            }
            ip(index, &add)?;
            created.push(tap.clone());
            ip(index, &["link", "set", "dev", tap, "master", bridge])?;
            ip(index, &["link", "set", "dev", tap, "up"])
        })();
        if let Err(e) = result {
            remove(&created);
            return Err(e);
        }
    }
    Ok(created)
}

/// Removes TAPs [`prepare`] created (errors are logged: the device may
/// already be gone).
pub fn remove(taps: &[String]) {
    for tap in taps {
        if let Err(e) = ip(0, &["link", "del", "dev", tap]) {
            log::warn!("removing TAP {tap}: {e}");
        }
    }
}
