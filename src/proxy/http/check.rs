//! The first step of a request: refuse what cannot be proxied, settle its authority, and
//! (once a server is chosen) rewrite its head for that server.
//!
//! Framing is decided here, once: CONNECT is refused; a duplicate Host is refused; the
//! target's authority wins over Host; a declared body over the limit is refused before any
//! server is contacted; only the listener's `upgrades` are tunnelled; hop-by-hop and inbound
//! forwarding headers never reach a server.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Uri, Version};
use hyper::body::{Body, Incoming};

use super::{ConnCtx, HttpRoute};
use crate::admission::{ClientAddr, ForwardChain};
use crate::config::{ListenerLimits, UpstreamProtocol};
use crate::pool::Pool;
use crate::proxy::headers::{
    asks_trailers, chunked_alone, strip_fixed_hop_by_hop, strip_hop_by_hop,
    strip_inbound_forwarding, Forwarding, HeadScan,
};
use crate::proxy::ProxyError;
use crate::route::X_REQUEST_ID;

/// Refuses a request that cannot be proxied as sent, and makes Host the request's authority.
pub(super) fn check(
    req: &mut Request<Incoming>,
    limits: &ListenerLimits,
) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        // A reverse proxy has no tunnel to offer (RFC 9110 §9.3.6).
        return Err(ProxyError::MethodNotAllowed);
    }
    // A scan of the few names a head carries, where a lookup would hash Host and
    // Transfer-Encoding.
    let (mut hosts, mut te_fields, mut other_coding) = (0, 0, false);
    for (k, v) in req.headers() {
        if k == header::HOST {
            hosts += 1;
        } else if k == header::TRANSFER_ENCODING {
            // hyper took the body as chunked (its last coding is), and takes no other
            // coding off: one under it would reach the server as the body's bytes, under a
            // head that no longer says so. Only `chunked` alone, as nginx allows.
            te_fields += 1;
            other_coding |= !chunked_alone(v);
        }
    }
    if hosts > 1 {
        // RFC 9112 §3.2: more than one Host field is a bad request, never guessed at.
        return Err(ProxyError::BadRequest);
    }
    if te_fields > 1 || other_coding {
        // RFC 9112 §6.1: a transfer coding the recipient does not understand is a 501.
        return Err(ProxyError::TransferCoding);
    }
    if let Some(authority) = req.uri().authority() {
        // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host; in h2 the
        // :authority pseudo-header is authoritative the same way (RFC 9113 §8.3.1).
        let v = HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadRequest)?;
        if req.headers().get(header::HOST) != Some(&v) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    if let Some(len) = req.body().size_hint().exact() {
        if len > limits.max_request_body {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    Ok(())
}

/// The `Upgrade` value to tunnel, when the request asks for one (an Upgrade field, and
/// `upgrade` in Connection: the head's scan read both) that the listener allows.
pub(super) fn upgrade_of(
    req: &Request<Incoming>,
    scan: &HeadScan,
    allowed: &[Box<str>],
) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !(scan.upgrade && scan.connection_upgrade) {
        return None;
    }
    let v = req.headers().get(header::UPGRADE)?;
    // The first protocol offered, without its version ("websocket", "foo/2").
    let first = v.to_str().ok()?.split(',').next()?.trim();
    let name = first.split('/').next().unwrap_or(first).trim();
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(name) && !name.eq_ignore_ascii_case("h2c"))
        .then(|| v.clone())
}

/// How the request's body goes upstream, for framing the head.
pub(super) struct BodyShape {
    /// A body of unknown length follows (chunked on HTTP/1.1).
    pub chunked: bool,
}

impl BodyShape {
    pub(super) fn of(body: &Incoming) -> Self {
        BodyShape {
            chunked: !body.is_end_stream() && body.size_hint().exact().is_none(),
        }
    }
}

/// Rewrites the request head for the server: hop-by-hop and inbound forwarding headers
/// out, the upgrade (if allowed) re-added, and the target in the form the upstream protocol
/// needs. `scan` says what the head holds ([`HeadScan`]); `request_id` is an X-Request-ID
/// the proxy made, which replaces any the request carries. The headers to add are
/// returned for HTTP/1.1, whose encoder writes them after the request's own (see
/// [`Forwarding`]); for h2 they are already in the map.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare<'a>(
    parts: &mut Parts,
    route: &HttpRoute,
    pool: &Pool,
    cx: &'a ConnCtx,
    (_, chain): &(ClientAddr, ForwardChain),
    upgrade: Option<&HeaderValue>,
    body: BodyShape,
    scan: HeadScan,
    request_id: Option<&'a HeaderValue>,
) -> Forwarding<'a> {
    let trailers = scan.te && asks_trailers(&parts.headers);
    let h1 = pool.settings.upstream_protocol == UpstreamProtocol::Http1;
    // A chunked body going on to an HTTP/1.1 server goes chunked: the client's
    // `Transfer-Encoding: chunked` (checked to be that alone) stays, rather than taken out
    // and put back.
    let keep_te = h1 && body.chunked && scan.transfer_encoding && !scan.connection_names;
    // Most heads with a hop-by-hop name carry only `Connection: keep-alive` or `close`: the
    // scan read that field already, so the names go without reading it again.
    if scan.connection_names {
        strip_hop_by_hop(&mut parts.headers);
    } else if scan.hop {
        strip_fixed_hop_by_hop(&mut parts.headers, keep_te);
    }
    if scan.forwarding {
        strip_inbound_forwarding(&mut parts.headers);
    }
    if scan.request_id && request_id.is_some() {
        // The one the proxy made replaces the client's.
        parts.headers.remove(X_REQUEST_ID);
    }
    if let Some(u) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.clone());
    }
    if let Some(name) = route.client_cert_header() {
        // Only the handshake may say who the client is: a copy the client sent is dropped.
        parts.headers.remove(name);
        if let Some(v) = &cx.client_cert {
            parts.headers.insert(name.clone(), v.clone());
        }
    }
    if trailers {
        // The client accepts trailers; say so upstream (gRPC needs this on h2).
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // A trusted sender's chain goes on, with the sender appended; anyone else's was removed.
    // Connection may have listed Host itself (then it is gone).
    let host = if scan.connection_names {
        parts.headers.get(header::HOST).cloned()
    } else {
        scan.host
    };
    let forwarding = Forwarding::new(
        host,
        route.listener.forwarded,
        chain,
        &cx.sender,
        request_id,
    );
    match pool.settings.upstream_protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                let pq = parts.uri.path_and_query().cloned();
                parts.uri = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
            }
            if body.chunked && !keep_te {
                // The upstream codec frames a body chunked only when a Transfer-Encoding
                // field says so; a body of unknown length whose field is not here (an h2
                // client's, or one taken out with the fields Connection names) would
                // otherwise go as no body at all.
                parts.headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        }
        UpstreamProtocol::H2 => {
            parts.version = Version::HTTP_2;
            forwarding.insert_into(&mut parts.headers);
            return Forwarding::default();
        }
    }
    forwarding
}
