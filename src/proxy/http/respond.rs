//! The last step of a request: repair the server's response head, attach the guards that
//! must live as long as its body, or complete an upgrade into a tunnel.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Incoming};

use super::{ConnCtx, HttpRoute, Target};
use crate::access_log::Upstream;
use crate::backend::{LoadGuard, Selection};
use crate::pool::{PoolLoad, Server};
use crate::proxy::body::{BodyState, Finish, RespBody};
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::tunnel;
use crate::proxy::upstream::Lease;

/// Turns the server's response into the client's.
#[allow(clippy::too_many_arguments)]
pub(super) fn respond(
    mut resp: Response<Incoming>,
    lease: Lease,
    (load, pool_load): (LoadGuard, PoolLoad),
    server: &Server,
    why: Selection,
    (route, target): (&HttpRoute, &Target),
    cx: &ConnCtx,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    request_body: Option<Arc<BodyState>>,
) -> Response<RespBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            return tunnel_upgrade(resp, client_up, load, pool_load, route, cx);
        }
    }
    let h = resp.headers_mut();
    if h.contains_key(header::TRANSFER_ENCODING) {
        // RFC 9112 §6.3: with both, Transfer-Encoding decides the framing and
        // Content-Length must be ignored; passing it on would frame the body wrongly.
        h.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(h);
    if let (Some(cookies), false) = (&target.sticky_set_cookie, why == Selection::Sticky) {
        h.append(header::SET_COOKIE, cookies[server.idx.get()].clone());
    }
    let (parts, inner) = resp.into_parts();
    let mut finish = Finish {
        lease: Some(lease),
        load,
        pool: pool_load,
        request: request_body,
        read_idle: target.pool.settings.timeouts.upstream_read_idle,
    };
    if inner.is_end_stream() {
        // hyper will not poll an empty body, so give the connection back now.
        finish.release_connection();
    }
    Response::from_parts(parts, RespBody::upstream(inner, finish))
}

/// Completes a WebSocket-style upgrade: the 101 goes to the client, and once both sides
/// have switched, a tunnel task relays bytes until either closes or the tunnel idles out.
fn tunnel_upgrade(
    mut resp: Response<Incoming>,
    client_up: hyper::upgrade::OnUpgrade,
    load: LoadGuard,
    pool_load: PoolLoad,
    route: &HttpRoute,
    cx: &ConnCtx,
) -> Response<RespBody> {
    let server_up = hyper::upgrade::on(&mut resp);
    if route.access_log.is_some() {
        // The 101's body carries no guards to name the server by; tell the access log here.
        resp.extensions_mut()
            .insert(Upstream(load.state().name.clone()));
    }
    let idle = route.listener.timeouts.tunnel_idle;
    let stop = cx.hard_stop.clone();
    let sever = load.state().sever_token();
    cx.tracker.spawn(async move {
        let _hold = (load, pool_load);
        let (client, server) = match tokio::try_join!(client_up, server_up) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        tokio::select! {
            r = tunnel::relay_upgraded(client, server, idle, &stop) => match r {
                Ok((up, down)) => tracing::trace!(up, down, "upgraded tunnel done"),
                Err(cut) => tracing::debug!(error = ?cut.end, up = cut.moved.0, down = cut.moved.1, "upgraded tunnel ended"),
            },
            _ = crate::proxy::cancel::cancelled(&sever) => tracing::debug!("upgraded tunnel severed at a drain deadline"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    // The server's framing headers do not describe the (empty) 101 body we send.
    parts.headers.remove(header::CONTENT_LENGTH);
    if !parts.headers.contains_key(header::CONNECTION) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Response::from_parts(parts, RespBody::empty())
}
