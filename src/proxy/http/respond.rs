//! The last step of a request: repair the server's response head, attach the guards that
//! must live as long as its body, or complete an upgrade into a tunnel.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Body;

use super::{ConnCtx, HttpRoute, Target};
use crate::access_log::Upstream;
use crate::backend::{LoadGuard, Selection};
use crate::pool::{PoolLoad, Server};
use crate::proxy::body::{BodyState, Finish, IdleSince, RespBody};
use crate::proxy::headers::{any_hop_by_hop, strip_hop_by_hop};
use crate::proxy::tunnel;
use crate::proxy::upstream::{Lease, UpBody};

/// Turns the server's response into the client's.
#[allow(clippy::too_many_arguments)]
pub(super) fn respond(
    mut resp: Response<UpBody>,
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
    // The HTTP/1.1 codec leaves a server's hop-by-hop fields out of the response, except
    // on a 101 (kept for an upgrade, which did not happen if we are here); h2 forbids most
    // of them, and TE or HTTP2-Settings could still come. So only those two are scanned.
    let scan = match resp.body() {
        UpBody::H1(_) => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
        UpBody::H2(_) => true,
    };
    let h = resp.headers_mut();
    // Transfer-Encoding is hop-by-hop: most responses have none of those names.
    if scan && any_hop_by_hop(h) {
        if h.contains_key(header::TRANSFER_ENCODING) {
            // RFC 9112 §6.3: with both, Transfer-Encoding decides the framing and
            // Content-Length must be ignored; passing it on would frame the body wrongly.
            h.remove(header::CONTENT_LENGTH);
        }
        strip_hop_by_hop(h);
    }
    if let (Some(cookies), false) = (&target.sticky_set_cookie, why == Selection::Sticky) {
        h.append(header::SET_COOKIE, cookies[server.idx.get()].clone());
    }
    let (mut parts, mut inner) = resp.into_parts();
    let idle_since = parts.extensions.remove::<IdleSince>();
    let mut finish = Finish {
        lease: Some(lease),
        load,
        pool: pool_load,
        request: request_body,
        read_idle: target.pool.settings.timeouts.upstream_read_idle,
    };
    if inner.is_end_stream() {
        // hyper will not poll an empty body, so give the connection back now.
        finish.release_connection(&mut inner);
    }
    let mut body = RespBody::upstream(inner, finish);
    if let Some(IdleSince(since)) = idle_since {
        body.idle_since(since);
    }
    Response::from_parts(parts, body)
}

/// Completes a WebSocket-style upgrade: the 101 goes to the client, and once both sides
/// have switched, a tunnel task relays bytes until either closes or the tunnel idles out.
fn tunnel_upgrade(
    mut resp: Response<UpBody>,
    client_up: hyper::upgrade::OnUpgrade,
    load: LoadGuard,
    pool_load: PoolLoad,
    route: &HttpRoute,
    cx: &ConnCtx,
) -> Response<RespBody> {
    let server_conn = match resp.body_mut() {
        UpBody::H1(b) => b.take_upgraded(),
        UpBody::H2(_) => None,
    };
    if route.access_log.is_some() {
        // The 101's body carries no guards to name the server by; tell the access log here.
        resp.extensions_mut()
            .insert(Upstream(load.state().name.clone()));
    }
    let idle = route.listener.timeouts.tunnel_idle;
    let ctl = cx.ctl.clone();
    let sever = load.state().sever_token();
    cx.ctl.tracker.spawn(async move {
        let _hold = (load, pool_load);
        let Some(server) = server_conn else {
            tracing::debug!("upgrade failed: the server's connection cannot switch protocols");
            return;
        };
        let client = match client_up.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (server, to_client) = (*server).into_parts();
        let stops = tunnel::Stops {
            shutdown: &ctl.hard_stop,
            drain: &sever,
        };
        match tunnel::relay_upgraded_to(client, server, to_client, idle, stops).await {
            Ok((up, down)) => tracing::trace!(up, down, "upgraded tunnel done"),
            Err(cut) => tracing::debug!(error = ?cut.end, up = cut.moved.0, down = cut.moved.1, "upgraded tunnel ended"),
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
