//! The REST API on vireod's Unix socket (`/v1/...`, JSON; see
//! `vireo_api::daemon`). Only root, the daemon's own user, and members of
//! the `vireo` group may use it: every connection's peer credentials are
//! checked before a request is served.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{self, ConnectInfo};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::UnixListener;
use vireo_api::daemon::{
    err, ApiError, AutostartRequest, DomainInfo, ErrorCode, Event, VersionInfo,
};
use vireo_api::domain_state::DomainState;

use crate::core::Daemon;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            // Unknown peers get nobody's credentials and are refused.
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

/// Who may use the API.
#[derive(Debug, Clone)]
pub struct Access {
    /// The daemon's own user (root in production; the tester otherwise).
    pub owner_uid: u32,
    /// The `vireo` group, if it exists.
    pub group: Option<u32>,
}

impl Access {
    /// root, the daemon's user, and the `vireo` group.
    pub fn default_for_this_process() -> Self {
        // SAFETY: getuid cannot fail.
        let owner_uid = unsafe { libc::getuid() };
        Access {
            owner_uid,
            group: group_id("vireo"),
        }
    }

    fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.owner_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        peer.gid == group
            || peer
                .pid
                .is_some_and(|pid| supplementary_groups(pid).contains(&group))
    }
}

/// The gid of a group by name.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// A process's supplementary groups (from /proc/PID/status).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[derive(Clone)]
struct App {
    daemon: Arc<Daemon>,
    access: Arc<Access>,
}

struct Failure(ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

type Reply<T> = Result<T, Failure>;

async fn check_peer(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if !app.access.allows(&peer) {
        log::warn!(
            "refused an API request from uid {} (pid {:?})",
            peer.uid,
            peer.pid
        );
        return Failure(err(
            ErrorCode::Forbidden,
            "only root, vireod's user and the 'vireo' group may use this socket",
        ))
        .into_response();
    }
    next.run(request).await
}

/// The API's routes.
fn router(app: App) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/domains", get(list).post(define))
        .route("/v1/domains/create", post(create))
        .route("/v1/domains/{name}", get(info).delete(undefine))
        .route("/v1/domains/{name}/xml", get(xml))
        .route("/v1/domains/{name}/autostart", put(autostart))
        .route("/v1/domains/{name}/console", get(console))
        .route("/v1/domains/{name}/{action}", post(action))
        .route("/v1/events", get(events))
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .fallback(|| async {
            Failure(err(
                ErrorCode::BadRequest,
                "no such API route (see /v1/...)",
            ))
        })
        .layer(middleware::from_fn_with_state(app.clone(), check_peer))
        .with_state(app)
}

#[utoipa::path(get, path = "/v1/version", responses((status = 200, description = "Versions", body = VersionInfo)))]
async fn version() -> impl IntoResponse {
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api: "v1".to_owned(),
    })
}

#[utoipa::path(get, path = "/v1/domains", responses((status = 200, description = "Every domain, by name", body = [DomainInfo])))]
async fn list(State(app): State<App>) -> impl IntoResponse {
    Json(app.daemon.list().await)
}

#[utoipa::path(post, path = "/v1/domains", request_body(content = String, content_type = "application/xml", description = "libvirt domain XML"), responses((status = 200, description = "Defined (or redefined)", body = DomainInfo), (status = 400, description = "The XML is refused; the message names the line and element", body = ApiError), (status = 409, description = "Another domain has this name or uuid", body = ApiError)))]
async fn define(State(app): State<App>, body: String) -> Reply<impl IntoResponse> {
    Ok(Json(app.daemon.define(&body).await?))
}

#[utoipa::path(post, path = "/v1/domains/create", request_body(content = String, content_type = "application/xml", description = "libvirt domain XML"), responses((status = 200, description = "Started as a transient domain", body = DomainInfo), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn create(State(app): State<App>, body: String) -> Reply<impl IntoResponse> {
    Ok(Json(app.daemon.create(&body).await?))
}

#[utoipa::path(get, path = "/v1/domains/{name}", params(("name" = String, Path, description = "The domain's name")), responses((status = 200, body = DomainInfo), (status = 404, description = "No such domain", body = ApiError)))]
async fn info(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Reply<impl IntoResponse> {
    Ok(Json(app.daemon.info(&name).await?))
}

#[utoipa::path(delete, path = "/v1/domains/{name}", params(("name" = String, Path, description = "The domain's name")), responses((status = 204, description = "The persistent definition is gone"), (status = 404, description = "No such domain", body = ApiError), (status = 409, body = ApiError)))]
async fn undefine(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Reply<StatusCode> {
    app.daemon.undefine(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct XmlQuery {
    #[serde(default)]
    inactive: bool,
}

#[utoipa::path(get, path = "/v1/domains/{name}/xml", params(("name" = String, Path, description = "The domain's name"), ("inactive" = Option<bool>, Query, description = "The definition the next start uses, not the running one")), responses((status = 200, description = "Normalised domain XML", body = String, content_type = "application/xml"), (status = 404, description = "No such domain", body = ApiError)))]
async fn xml(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<XmlQuery>,
) -> Reply<impl IntoResponse> {
    let text = app.daemon.xml(&name, q.inactive).await?;
    Ok(([(header::CONTENT_TYPE, "application/xml")], text))
}

#[utoipa::path(put, path = "/v1/domains/{name}/autostart", params(("name" = String, Path, description = "The domain's name")), request_body = AutostartRequest, responses((status = 204, description = "Done"), (status = 404, description = "No such domain", body = ApiError), (status = 409, body = ApiError)))]
async fn autostart(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<AutostartRequest>,
) -> Reply<StatusCode> {
    app.daemon.set_autostart(&name, body.enabled).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/domains/{name}/{action}", params(("name" = String, Path, description = "The domain's name"), ("action" = String, Path, description = "start, shutdown, reboot, reset, destroy, suspend or resume")), responses((status = 200, description = "The domain afterwards", body = DomainInfo), (status = 404, body = ApiError), (status = 409, description = "Not possible in this state", body = ApiError), (status = 500, description = "The monitor failed", body = ApiError)))]
async fn action(
    State(app): State<App>,
    UrlPath((name, action)): UrlPath<(String, String)>,
) -> Reply<impl IntoResponse> {
    let d = &app.daemon;
    let info = match action.as_str() {
        "start" => d.start(&name).await?,
        "shutdown" => d.shutdown(&name).await?,
        "reboot" => d.reboot(&name).await?,
        "reset" => d.reset(&name).await?,
        "destroy" => d.destroy(&name).await?,
        "suspend" => d.suspend(&name).await?,
        "resume" => d.resume(&name).await?,
        other => {
            return Err(Failure(err(
                ErrorCode::BadRequest,
                format!(
                    "unknown action '{other}' (start, shutdown, reboot, reset, destroy, suspend, resume)"
                ),
            )))
        }
    };
    Ok(Json(info))
}

/// The console as a WebSocket: binary messages both ways, bytes as the
/// guest's serial port (or virtio console) sends and receives them.
#[utoipa::path(get, path = "/v1/domains/{name}/console", params(("name" = String, Path, description = "The domain's name")), responses((status = 101, description = "WebSocket: binary messages carry the guest console's bytes both ways"), (status = 404, description = "No such domain", body = ApiError), (status = 409, description = "Not running, or its console is not the daemon's", body = ApiError)))]
async fn console(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    ws: WebSocketUpgrade,
) -> Reply<Response> {
    let path = app.daemon.console_socket(&name).await?;
    // A monitor that has just started may not listen yet.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let stream = loop {
        match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => break s,
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(Failure(err(
                    ErrorCode::OperationFailed,
                    format!(
                        "domain '{name}': cannot reach its console at {}: {e}",
                        path.display()
                    ),
                )))
            }
        }
    };
    Ok(ws.on_upgrade(move |socket| relay(socket, stream)))
}

async fn relay(mut socket: WebSocket, stream: tokio::net::UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_vm, mut to_vm) = stream.into_split();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            read = from_vm.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if socket.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => {
                    if to_vm.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if to_vm.write_all(text.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

#[utoipa::path(get, path = "/v1/events", responses((status = 200, description = "Lifecycle events, one JSON Event per line, as they happen", body = Event, content_type = "application/x-ndjson")))]
async fn events(State(app): State<App>) -> impl IntoResponse {
    let rx = app.daemon.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let mut line = serde_json::to_vec(&event).unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok::<Bytes, Infallible>(Bytes::from(line)), rx));
                }
                // A slow reader missed some: go on with the next.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
}

/// Binds the socket (replacing a stale one), owner and group read-write
/// only, and serves until `shutdown` resolves.
pub async fn serve(
    daemon: Arc<Daemon>,
    socket: &Path,
    access: Access,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = access.group {
        let path = std::ffi::CString::new(socket.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: chown on a NUL-terminated path; -1 keeps the owner.
        unsafe { libc::chown(path.as_ptr(), u32::MAX, gid) };
    }
    let app = App {
        daemon,
        access: Arc::new(access),
    };
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The API's OpenAPI document, generated from the handlers and the
/// `vireo_api::daemon` types (checked in as docs/openapi.json; a test
/// fails when they drift apart).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "vireod",
        description = "Vireo's daemon API on /run/vireo/vireod.sock (root, vireod's user and the 'vireo' group). Errors are ApiError with a stable code.",
        license(name = "Apache-2.0")
    ),
    paths(
        version, list, define, create, info, undefine, xml, autostart, action, console, events
    ),
    components(schemas(
        DomainInfo,
        DomainState,
        Event,
        ApiError,
        ErrorCode,
        VersionInfo,
        AutostartRequest
    ))
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    doc.info.version = "v1".to_owned();
    doc.to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_checked_in_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = super::openapi_json() + "\n";
        if std::env::var_os("VIREO_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("writing docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is out of date: regenerate it with VIREO_BLESS=1 cargo test -p vireo-daemon openapi"
        );
    }
}
