//! A domain's state and the reason for it, as libvirt reports them
//! (`virsh domstate --reason`: "shut off (destroyed)"), with libvirt's
//! numbers, which its RPC protocol carries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a domain is doing, with why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", content = "reason", rename_all = "kebab-case")]
pub enum DomainState {
    Running(RunningReason),
    Paused(PausedReason),
    /// Shutting down (the guest was asked to power off).
    Shutdown(ShutdownReason),
    ShutOff(ShutOffReason),
    Crashed(CrashedReason),
}

impl DomainState {
    /// libvirt's `virDomainState` number.
    pub fn code(self) -> u8 {
        match self {
            Self::Running(_) => 1,
            Self::Paused(_) => 3,
            Self::Shutdown(_) => 4,
            Self::ShutOff(_) => 5,
            Self::Crashed(_) => 6,
        }
    }

    /// libvirt's number for the reason within its state.
    pub fn reason_code(self) -> u8 {
        match self {
            Self::Running(r) => r as u8,
            Self::Paused(r) => r as u8,
            Self::Shutdown(r) => r as u8,
            Self::ShutOff(r) => r as u8,
            Self::Crashed(r) => r as u8,
        }
    }

    /// Whether a monitor process exists for the domain.
    pub fn is_active(self) -> bool {
        !matches!(self, Self::ShutOff(_) | Self::Crashed(_))
    }

    /// The state as virsh names it ("running", "shut off", ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Running(_) => "running",
            Self::Paused(_) => "paused",
            Self::Shutdown(_) => "in shutdown",
            Self::ShutOff(_) => "shut off",
            Self::Crashed(_) => "crashed",
        }
    }

    /// The reason as virsh names it ("booted", "destroyed", ...).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Running(r) => r.name(),
            Self::Paused(r) => r.name(),
            Self::Shutdown(r) => r.name(),
            Self::ShutOff(r) => r.name(),
            Self::Crashed(r) => r.name(),
        }
    }
}

impl fmt::Display for DomainState {
    /// "shut off (destroyed)", as `virsh domstate --reason` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.reason())
    }
}

macro_rules! reasons {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "kebab-case")]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $code,)*
        }

        impl $name {
            /// The reason as virsh prints it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }
    };
}

reasons! {
    /// Why a domain runs.
    RunningReason {
        Unknown = 0, "unknown";
        /// Started from shut off.
        Booted = 1, "booted";
        /// Resumed after a pause.
        Unpaused = 5, "unpaused";
        /// Came back after a crash (on_crash=restart).
        Crashed = 9, "crashed";
    }
}

reasons! {
    /// Why a domain is paused.
    PausedReason {
        Unknown = 0, "unknown";
        /// `suspend` asked for it.
        User = 1, "user";
        /// The guest crashed and on_crash=preserve keeps it.
        Crashed = 10, "crashed";
    }
}

reasons! {
    /// Why a domain is shutting down.
    ShutdownReason {
        Unknown = 0, "unknown";
        /// `shutdown` asked the guest.
        User = 1, "user";
    }
}

reasons! {
    /// Why a domain is shut off.
    ShutOffReason {
        Unknown = 0, "unknown";
        /// The guest powered off.
        Shutdown = 1, "shutdown";
        /// `destroy` stopped it.
        Destroyed = 2, "destroyed";
        /// The guest crashed (on_crash=destroy).
        Crashed = 3, "crashed";
        /// The monitor could not start it.
        Failed = 6, "failed";
        /// The daemon stopped it (for example at host shutdown).
        Daemon = 8, "daemon";
    }
}

reasons! {
    /// Why a domain is crashed.
    CrashedReason {
        Unknown = 0, "unknown";
        /// The guest kernel panicked (reported through the pvpanic device).
        Panicked = 1, "panicked";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_print_and_number_like_libvirt() {
        let s = DomainState::ShutOff(ShutOffReason::Destroyed);
        assert_eq!(s.to_string(), "shut off (destroyed)");
        assert_eq!((s.code(), s.reason_code()), (5, 2));
        let r = DomainState::Running(RunningReason::Booted);
        assert_eq!(r.to_string(), "running (booted)");
        assert_eq!((r.code(), r.reason_code()), (1, 1));
        assert_eq!(DomainState::Paused(PausedReason::User).code(), 3);
        assert_eq!(
            DomainState::Crashed(CrashedReason::Panicked).to_string(),
            "crashed (panicked)"
        );
        assert!(r.is_active() && !s.is_active());
    }

    #[test]
    fn states_serialise_as_tagged_json() {
        let s = DomainState::ShutOff(ShutOffReason::Crashed);
        let json = serde_json::to_string(&s).expect("serialises");
        assert_eq!(json, r#"{"state":"shut-off","reason":"crashed"}"#);
        let back: DomainState = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, s);
    }
}
