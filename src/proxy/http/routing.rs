//! The route step of a request: find the listener's route for it, then either answer here
//! (a redirect, a fixed response, 404 when nothing matches and there is no default pool) or
//! choose the pool to forward to (a split picks one by weight, stable per key when the
//! listener has a `split_key`) and apply the route's request rewrites (`strip_prefix`, then
//! header removes, then sets). Nothing here allocates unless a rewrite or an answer does.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;

use super::{HttpRoute, Target};
use crate::proxy::body::RespBody;
use crate::proxy::ProxyError;
use crate::route::{Action, Match, Redirect, RequestView, Respond, Rewrites};

/// Where a request goes once routed.
pub(super) enum Routed<'r> {
    /// Forward to this pool; the route's rewrites apply (`None`: the default pool, none).
    Forward(&'r Target, Option<&'r Rewrites>),
    /// Answered without a pool (boxed: rare, and far larger than a forward).
    Answer(Box<Response<RespBody>>),
}

/// Routes `req`; `label` learns the route's name for metrics and the access log.
pub(super) fn route<'r>(
    req: &mut Request<Incoming>,
    client_ip: IpAddr,
    route: &'r HttpRoute,
    label: &mut &'r str,
) -> Result<Routed<'r>, ProxyError> {
    let matched = {
        let view = RequestView {
            host: route
                .table
                .uses_host()
                .then(|| req.headers().get(header::HOST))
                .flatten()
                .and_then(|h| h.to_str().ok()),
            path: req.uri().path(),
            method: req.method(),
            headers: req.headers(),
        };
        route.table.find(&view)
    };
    route.routes.count(&matched);
    *label = match &matched {
        Match::Route(r) => r.name(),
        Match::Default(_) => "(default)",
        Match::NotFound => "(none)",
    };
    let (target, rewrites) = match matched {
        Match::NotFound => return Err(ProxyError::NoRoute),
        Match::Default(id) => (&route.targets[id.index()], None),
        Match::Route(r) => match r.action() {
            Action::Pool(id) => (&route.targets[id.index()], Some(r.rewrites())),
            Action::Split(split) => {
                let key = route
                    .listener
                    .split_key
                    .as_ref()
                    .and_then(|k| k.hash(client_ip, req.headers()));
                let id = split.pick(key, || fastrand::u64(..));
                (&route.targets[id.index()], Some(r.rewrites()))
            }
            Action::Redirect(to) => {
                return redirect(req, to, r.rewrites()).map(|a| Routed::Answer(Box::new(a)))
            }
            Action::Respond(fixed) => {
                return Ok(Routed::Answer(Box::new(respond(fixed, r.rewrites()))))
            }
        },
    };
    if let Some(rw) = rewrites {
        if let Some(pq) = rw.rewrite_path(req.uri().path(), req.uri().query()) {
            set_path(req, pq);
        }
        rw.edit_request(req.headers_mut());
    }
    Ok(Routed::Forward(target, rewrites))
}

/// Replaces the request's path and query, keeping its scheme and authority (h2).
fn set_path(req: &mut Request<Incoming>, pq: PathAndQuery) {
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(u) = Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
}

fn redirect(
    req: &Request<Incoming>,
    to: &Redirect,
    rw: &Rewrites,
) -> Result<Response<RespBody>, ProxyError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let location = to
        .location(host, req.uri().path(), req.uri().query())
        .map_err(|_| ProxyError::BadRequest)?;
    let mut r = Response::new(RespBody::empty());
    *r.status_mut() = to.status;
    r.headers_mut().insert(header::LOCATION, location);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    rw.edit_response(r.headers_mut());
    Ok(r)
}

fn respond(fixed: &Respond, rw: &Rewrites) -> Response<RespBody> {
    let mut r = Response::new(RespBody::bytes(fixed.body.clone()));
    *r.status_mut() = fixed.status;
    if let Some(ct) = &fixed.content_type {
        r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    rw.edit_response(r.headers_mut());
    r
}

/// The listener's own page for one of the proxy's 502, 503 or 504 answers, if it has one.
pub(super) fn error_page(route: &HttpRoute, e: ProxyError) -> Option<Response<RespBody>> {
    let page = route.listener.error_pages.get(e.status())?;
    let mut r = e.response();
    *r.body_mut() = RespBody::bytes(page.body.clone());
    let h = r.headers_mut();
    match &page.content_type {
        Some(ct) => {
            h.insert(header::CONTENT_TYPE, ct.clone());
        }
        None => {
            h.remove(header::CONTENT_TYPE);
        }
    }
    Some(r)
}
