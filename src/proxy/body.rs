//! Body types of the L7 proxy: no boxing, no buffering.
//!
//! [`ReqBody`] is what goes upstream: the client's streaming body, or nothing (a replayed
//! request, a probe). [`RespBody`] is what goes to the client: the server's streaming body,
//! carrying the guards that must live exactly as long as the response (in-flight counts,
//! the upstream connection to give back to the pool), or a short text the proxy wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::upstream::Lease;
use crate::backend::LoadGuard;
use crate::pool::PoolLoad;

/// A request body sent upstream.
pub enum ReqBody {
    /// The client's body, streamed.
    Client(Incoming),
    /// No body.
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Client(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What must be released when a proxied response ends.
pub struct Finish {
    /// The upstream connection, returned to its pool if the body ends cleanly.
    pub lease: Option<Lease>,
    /// The server's in-flight count.
    pub load: LoadGuard,
    /// The pool's in-flight count.
    pub pool: PoolLoad,
}

impl Finish {
    /// The response ended cleanly: the connection may carry another request.
    pub fn release_connection(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

/// Releases `finish` after a clean end of the response.
fn finish_clean(finish: &mut Option<Finish>) {
    if let Some(mut f) = finish.take() {
        f.release_connection();
    }
}

/// A response body sent to the client.
pub enum RespBody {
    /// The server's body, streamed; `finish` is released at its end.
    Upstream {
        /// The body.
        inner: Incoming,
        /// Released at end of stream or when dropped.
        finish: Option<Finish>,
    },
    /// A short body written by the proxy.
    Local(Option<Bytes>),
}

impl RespBody {
    /// A body of static text.
    pub fn text(s: &'static str) -> Self {
        RespBody::Local(Some(Bytes::from_static(s.as_bytes())))
    }

    /// An empty body.
    pub fn empty() -> Self {
        RespBody::Local(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Upstream { inner, finish } => {
                let r = Pin::new(&mut *inner).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => finish_clean(finish),
                    Poll::Ready(Some(Err(_))) => {
                        // Broken mid-body: never reuse that connection.
                        finish.take();
                    }
                    _ => {
                        if inner.is_end_stream() {
                            finish_clean(finish);
                        }
                    }
                }
                r
            }
            RespBody::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream { inner, .. } => inner.is_end_stream(),
            RespBody::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream { inner, .. } => inner.size_hint(),
            RespBody::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Local(None) => SizeHint::with_exact(0),
        }
    }
}
