//! The daemon API's data: what `vireod` answers on `/v1/...` and what the
//! `vireo` command line reads. JSON; errors carry a stable code.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain_state::DomainState;

/// The API's version prefix.
pub const API_PREFIX: &str = "/v1";

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// vireod's version.
    pub version: String,
    /// The API's version ("v1").
    pub api: String,
}

/// `PUT /v1/domains/{name}/autostart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AutostartRequest {
    pub enabled: bool,
}

/// Stable error codes of the daemon API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    NoDomain,
    InvalidXml,
    DomainExists,
    OperationInvalid,
    OperationFailed,
    Internal,
    /// The caller may not use the API (peer credentials).
    Forbidden,
    /// The request itself is malformed (not the XML in it).
    BadRequest,
}

/// A request failed: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// Shorthand for an error.
pub fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

/// A lifecycle event, as libvirt reports them (defined, started, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub domain: String,
    pub uuid: String,
    /// defined, undefined, started, suspended, resumed, stopped, shutdown,
    /// crashed.
    pub event: String,
    /// The state afterwards.
    pub state: DomainState,
    /// Why, for people (a monitor's exit reason, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What `list` and `dominfo` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DomainInfo {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    pub persistent: bool,
    pub autostart: bool,
    pub vcpus: u32,
    pub memory_kib: u64,
    /// CPU time the monitor used, in nanoseconds (0 when not running).
    pub cpu_time_ns: u64,
    /// The monitor's pid while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// How the last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

impl ErrorCode {
    /// The HTTP status the REST API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NoDomain => 404,
            ErrorCode::InvalidXml => 400,
            ErrorCode::DomainExists | ErrorCode::OperationInvalid => 409,
            ErrorCode::OperationFailed => 500,
            ErrorCode::Internal => 500,
            ErrorCode::Forbidden => 403,
            ErrorCode::BadRequest => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialise_with_their_stable_code() {
        let e = err(ErrorCode::NoDomain, "no domain named 'x'");
        let json = serde_json::to_string(&e).expect("serialises");
        assert_eq!(
            json,
            r#"{"code":"no-domain","message":"no domain named 'x'"}"#
        );
        assert_eq!(e.code.http_status(), 404);
    }
}
