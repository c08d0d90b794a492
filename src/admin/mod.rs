//! The admin listener: `/` (the status page, see `page`), `/healthz`, `/metrics`
//! (Prometheus text), `/status` (JSON), the runtime API
//! (`POST /servers/{pool}/{server}/{drain|enable|disable|weight|reset}`, `POST /reload`) and
//! `POST /preview` (what a reload to the posted config would change).
//!
//! It binds to loopback unless configured otherwise, and it is never on the request path:
//! gauges that mirror live server state are computed here at scrape time (`collector`),
//! and runtime changes are written to the servers' atomics and published like a health
//! change. Who may change state is decided in `auth`.

mod api;
mod auth;
pub mod client;
mod collector;
mod history;
mod page;
mod state;
mod status;
mod timed;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AdminSettings;

pub use auth::{Auth, AuthError};
pub(crate) use collector::register_collectors;
pub(crate) use history::ConfigHistory;
pub(crate) use state::{Control, ReloadResult, Shared};
use status::status;

/// How long an admin connection may take to send its request head.
const HEADER_READ: Duration = Duration::from_secs(10);
/// Largest request body accepted (a config posted to `/preview`).
const MAX_BODY: usize = 1 << 20;

/// A running admin listener.
pub(crate) struct AdminServer {
    /// Settings in force.
    pub settings: AdminSettings,
    /// Bound address.
    pub local_addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    /// Serves the admin API on `socket`; `control` carries out reloads asked for there.
    pub fn start(
        settings: AdminSettings,
        listener: TcpListener,
        shared: Arc<Shared>,
        control: Arc<dyn Control>,
    ) -> Self {
        // A socket bound by this process always has an address; 0 would only mislabel logs.
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed; backing off");
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        }
                    }
                };
                let shared = shared.clone();
                let control = control.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| handle(req, shared.clone(), control.clone(), peer));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = token.cancelled() => conn.as_mut().graceful_shutdown(),
                    }
                    // A request being answered (a reload, say) still gets its answer.
                    let _ = tokio::time::timeout(HEADER_READ, conn).await;
                });
            }
        });
        tracing::info!(addr = %local_addr, "admin listening");
        AdminServer {
            settings,
            local_addr,
            stop,
        }
    }

    /// Stops accepting; open admin connections finish their current request.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// An admin response.
pub(crate) type AdminResponse = Response<Full<Bytes>>;

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, v: &serde_json::Value) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Why an admin call failed; each maps to exactly one status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// No such route, pool or server.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, but not for this method.
    #[error("method not allowed; this endpoint takes {0}")]
    MethodNotAllowed(&'static str),
    /// The caller may not change state.
    #[error("forbidden: {}", .0.as_str())]
    Forbidden(auth::Denied),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A reload was tried and failed; the previous config stays in force.
    #[error("reload failed; the previous configuration stays in force: {0}")]
    ReloadFailed(String),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::ReloadFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn response(&self) -> AdminResponse {
        let mut r = json(
            self.status(),
            &serde_json::json!({ "error": self.to_string() }),
        );
        if let AdminError::MethodNotAllowed(m) = self {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(m));
        }
        r
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    control: Arc<dyn Control>,
    peer: SocketAddr,
) -> Result<AdminResponse, Infallible> {
    let r = route(req, &shared, &*control, peer).await;
    Ok(r.unwrap_or_else(|e| e.response()))
}

async fn route(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    control: &dyn Control,
    peer: SocketAddr,
) -> Result<AdminResponse, AdminError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match segs.as_slice() {
        ["healthz"] if get => Ok(text(StatusCode::OK, "ok\n")),
        ["metrics"] if get => {
            authorize_read(shared, &req, peer)?;
            let mut r = text(StatusCode::OK, shared.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(r)
        }
        ["status"] if get => {
            authorize_read(shared, &req, peer)?;
            Ok(json(StatusCode::OK, &status(shared)))
        }
        [""] if get => {
            // The page shows what /status does: the same read access.
            authorize_read(shared, &req, peer)?;
            Ok(page::page(&status(shared)))
        }
        ["ui", file] if get => {
            page::asset(file).ok_or_else(|| AdminError::NotFound(format!("no asset {path}")))
        }
        ["healthz" | "metrics" | "status" | ""] | ["ui", _] => {
            Err(AdminError::MethodNotAllowed("GET"))
        }
        ["preview"] if post => {
            // It parses up to 1 MiB and samples every hashing pool: as costly as a change.
            authorize(shared, &req, peer, "preview")?;
            let (parts, body) = req.into_parts();
            let body = read_body(body).await?;
            api::preview(shared, &parts, &body)
        }
        ["reload"] if post => {
            authorize(shared, &req, peer, "reload")?;
            api::reload(shared, control, peer).await
        }
        ["servers", pool, server, action] if post => {
            authorize(shared, &req, peer, action)?;
            let query = req.uri().query().map(str::to_string);
            let (pool, server, action) = (pool.to_string(), server.to_string(), *action);
            let body = read_body(req.into_body()).await?;
            api::server_action(shared, &pool, &server, action, query.as_deref(), &body, peer)
        }
        ["routes", listener, route, action] if post => {
            authorize(shared, &req, peer, action)?;
            let query = req.uri().query().map(str::to_string);
            let (listener, route, action) = (listener.to_string(), route.to_string(), *action);
            let body = read_body(req.into_body()).await?;
            api::split_action(shared, &listener, &route, action, query.as_deref(), &body, peer)
        }
        ["preview" | "reload"] | ["servers", _, _, _] | ["routes", _, _, _] => {
            Err(AdminError::MethodNotAllowed("POST"))
        }
        _ => Err(AdminError::NotFound(format!(
            "no admin endpoint {path}; try GET / (the status page), /healthz, /metrics, /status or POST /servers/POOL/SERVER/(drain|enable|disable|weight|reset), /routes/LISTENER/ROUTE/(split|reset), /reload, /preview"
        ))),
    }
}

fn authorize(
    shared: &Shared,
    req: &Request<Incoming>,
    peer: SocketAddr,
    action: &str,
) -> Result<(), AdminError> {
    shared.admin_auth.load().check(req.headers()).map_err(|d| {
        tracing::warn!(client = %peer, action, reason = d.as_str(), "admin call refused");
        AdminError::Forbidden(d)
    })
}

/// `/status` and `/metrics` with `admin.read_auth = true`. Refusals are logged at debug:
/// a scraper with a stale token would otherwise flood the log.
fn authorize_read(
    shared: &Shared,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<(), AdminError> {
    shared.admin_auth.load().check_read(req.headers()).map_err(|d| {
        tracing::debug!(client = %peer, path = req.uri().path(), reason = d.as_str(), "admin read refused");
        AdminError::Forbidden(d)
    })
}

async fn read_body(body: Incoming) -> Result<Bytes, AdminError> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| AdminError::BadRequest(format!("cannot read the request body: {e}")))
}
