//! The monitor's control protocol: one JSON object per line over the Unix
//! socket given by `vireo-vmm --control PATH`.
//!
//! ```text
//! -> {"cmd":"pause"}
//! <- {"ok":true}
//! -> {"cmd":"power-button"}
//! <- {"ok":true,"guest_listening":true}
//! -> {"cmd":"frobnicate"}
//! <- {"ok":false,"code":"bad-request","message":"..."}
//! ```

use serde::{Deserialize, Serialize};

/// Longest request line the monitor reads; longer lines are refused.
pub const MAX_REQUEST_LINE: usize = 4096;

/// A request to the monitor. (The monitor also refuses unknown fields.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Is the monitor there? Always answers ok.
    Ping,
    /// Park all vCPUs.
    Pause,
    /// Let them run again.
    Resume,
    /// Press the ACPI power button: a graceful shutdown request to the guest.
    PowerButton,
    /// Stop the VM now, in order (as SIGTERM does).
    Stop,
}

/// Stable error codes of the control protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlErrorCode {
    /// The line was not a valid request.
    BadRequest,
    /// The VM cannot do that now (e.g. it is not running).
    Failed,
}

/// The monitor's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// For `power-button`: whether the guest had enabled the button's event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_listening: Option<bool>,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ControlErrorCode>,
    /// For people, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ControlReply {
    /// Success with nothing to add.
    pub fn ok() -> ControlReply {
        ControlReply {
            ok: true,
            guest_listening: None,
            code: None,
            message: None,
        }
    }

    /// A failure.
    pub fn error(code: ControlErrorCode, message: impl Into<String>) -> ControlReply {
        ControlReply {
            ok: false,
            guest_listening: None,
            code: Some(code),
            message: Some(message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r: ControlRequest = serde_json::from_str(r#"{"cmd":"power-button"}"#).expect("parses");
        assert_eq!(r, ControlRequest::PowerButton);
        assert_eq!(
            serde_json::to_string(&ControlRequest::Pause).expect("json"),
            r#"{"cmd":"pause"}"#
        );
        assert_eq!(
            serde_json::to_string(&ControlReply::ok()).expect("json"),
            r#"{"ok":true}"#
        );
        let e = ControlReply::error(ControlErrorCode::BadRequest, "no");
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"ok":false,"code":"bad-request","message":"no"}"#
        );
        for bad in [r#"{"cmd":"frobnicate"}"#, "{}", "pause", ""] {
            assert!(
                serde_json::from_str::<ControlRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
