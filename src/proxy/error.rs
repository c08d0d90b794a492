//! What can go wrong with a proxied request, and whose fault it was.
//!
//! Every failure maps to exactly one status here, and to exactly one counter: failures on the
//! server's side (or of availability) count in `fulcrum_proxy_errors_total`; refusals of what
//! a client sent count in `fulcrum_requests_rejected_total`; a client that went away counts in
//! `fulcrum_client_aborts_total`; a local resource running out in
//! `fulcrum_local_errors_total`. Only [`Blame::Server`] ever reaches a server's health,
//! ejection, availability or error series (DESIGN.md rule 1).

use std::io;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::RespBody;
use crate::queue::QueueError;

/// Whose fault a failure was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The server (or no server being available).
    Server,
    /// The client: what it sent, or how slowly, or that it went away.
    Client,
    /// This process: a local resource ran out, or an operator closed the connection.
    Local,
}

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No server of the pool is eligible (all down, ejected, drained).
    #[error("no server available")]
    NoServer,
    /// Every server slot was busy and the queue was full or the wait timed out.
    #[error("all servers busy")]
    Overloaded,
    /// Could not connect to a server (after retries).
    #[error("could not connect to a server")]
    Connect,
    /// The server closed or reset the connection before a response.
    #[error("server closed the connection before responding")]
    Reset,
    /// No response head within the timeout.
    #[error("server did not respond in time")]
    Timeout,
    /// The server's response could not be parsed.
    #[error("server sent a malformed response")]
    Protocol,
    /// A local resource ran out (file descriptors, ports, buffers).
    #[error("local resources exhausted")]
    Local,
    /// An operator's drain deadline closed the server's connections mid-request.
    #[error("server drained by an operator")]
    Drained,
    /// The request cannot be proxied as sent.
    #[error("bad request")]
    BadRequest,
    /// The request body is over `max_request_body`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The request body stalled or crawled (`body_read`, `min_body_rate`).
    #[error("request body too slow")]
    BodyTimeout,
    /// CONNECT, which a reverse proxy does not serve.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A request body in a transfer coding other than chunked alone, which the proxy cannot
    /// pass on as sent (RFC 9112 §6.1: 501).
    #[error("transfer coding not implemented")]
    TransferCoding,
    /// The client aborted its request body or went away.
    #[error("client went away")]
    ClientAbort,
    /// The client's address is refused by the listener's `allow` / `deny`.
    #[error("client refused by an access rule")]
    Forbidden,
    /// The client is over the listener's rate limit; it may retry after this many seconds.
    #[error("client over the rate limit")]
    RateLimited(u64),
    /// No route matched and the listener has no default pool.
    #[error("no route for this request")]
    NoRoute,
}

impl From<QueueError> for ProxyError {
    fn from(_: QueueError) -> Self {
        ProxyError::Overloaded
    }
}

impl ProxyError {
    /// Errors that count in `fulcrum_proxy_errors_total`, for pre-resolving metric handles
    /// (indexed by [`ProxyError::server_index`]).
    pub const SERVER_SIDE: [ProxyError; 8] = [
        ProxyError::NoServer,
        ProxyError::Overloaded,
        ProxyError::Connect,
        ProxyError::Reset,
        ProxyError::Timeout,
        ProxyError::Protocol,
        ProxyError::Local,
        ProxyError::Drained,
    ];

    /// Whose fault it was.
    pub fn blame(self) -> Blame {
        match self {
            ProxyError::NoServer
            | ProxyError::Overloaded
            | ProxyError::Connect
            | ProxyError::Reset
            | ProxyError::Timeout
            | ProxyError::Protocol => Blame::Server,
            ProxyError::Local | ProxyError::Drained => Blame::Local,
            ProxyError::BadRequest
            | ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::MethodNotAllowed
            | ProxyError::TransferCoding
            | ProxyError::ClientAbort
            | ProxyError::Forbidden
            | ProxyError::RateLimited(_)
            | ProxyError::NoRoute => Blame::Client,
        }
    }

    /// Index into [`ProxyError::SERVER_SIDE`], for errors counted there.
    pub fn server_index(self) -> Option<usize> {
        Self::SERVER_SIDE.iter().position(|e| *e == self)
    }

    /// The rejection it counts as, for errors of the client's making.
    pub fn rejection(self) -> Option<Rejection> {
        match self {
            ProxyError::BadRequest => Some(Rejection::BadRequest),
            ProxyError::BodyTooLarge => Some(Rejection::BodyTooLarge),
            ProxyError::BodyTimeout => Some(Rejection::BodyTimeout),
            ProxyError::MethodNotAllowed => Some(Rejection::MethodNotAllowed),
            ProxyError::TransferCoding => Some(Rejection::TransferCoding),
            _ => None,
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::NoServer => "no_server",
            ProxyError::Overloaded => "overloaded",
            ProxyError::Connect => "connect",
            ProxyError::Reset => "reset",
            ProxyError::Timeout => "timeout",
            ProxyError::Protocol => "protocol",
            ProxyError::Local => "local",
            ProxyError::Drained => "drained",
            ProxyError::BadRequest => "bad_request",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::TransferCoding => "transfer_coding",
            ProxyError::ClientAbort => "client_abort",
            ProxyError::Forbidden => "forbidden",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::NoRoute => "no_route",
        }
    }

    /// The one status this error maps to.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoServer
            | ProxyError::Overloaded
            | ProxyError::Local
            | ProxyError::Drained => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect | ProxyError::Reset | ProxyError::Protocol => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest | ProxyError::ClientAbort => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
        }
    }

    /// Whether the client connection must close after this answer: the rest of a request
    /// body the proxy stopped reading cannot be skipped safely (nor one in a transfer coding
    /// it does not read).
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ProxyError::BodyTooLarge
                | ProxyError::BodyTimeout
                | ProxyError::ClientAbort
                | ProxyError::TransferCoding
        )
    }

    fn body(self) -> &'static str {
        match self {
            ProxyError::NoServer => {
                "503 Service Unavailable: no server is available for this request\n"
            }
            ProxyError::Overloaded => "503 Service Unavailable: all servers are busy\n",
            ProxyError::Local => "503 Service Unavailable: the proxy is out of resources\n",
            ProxyError::Drained => "503 Service Unavailable: the server was taken out of service\n",
            ProxyError::Connect => "502 Bad Gateway: could not connect to a server\n",
            ProxyError::Reset => {
                "502 Bad Gateway: the server closed the connection without responding\n"
            }
            ProxyError::Protocol => "502 Bad Gateway: the server sent a malformed response\n",
            ProxyError::Timeout => "504 Gateway Timeout: the server did not respond in time\n",
            ProxyError::BadRequest | ProxyError::ClientAbort => "400 Bad Request\n",
            ProxyError::BodyTooLarge => "413 Content Too Large: the request body is too large\n",
            ProxyError::BodyTimeout => "408 Request Timeout: the request body was too slow\n",
            ProxyError::MethodNotAllowed => {
                "405 Method Not Allowed: CONNECT is not served by this proxy\n"
            }
            ProxyError::TransferCoding => {
                "501 Not Implemented: a request body's transfer coding must be chunked alone\n"
            }
            ProxyError::Forbidden => "403 Forbidden\n",
            ProxyError::RateLimited(_) => "429 Too Many Requests: slow down\n",
            ProxyError::NoRoute => "404 Not Found: no route for this request\n",
        }
    }

    /// The response sent to the client.
    pub fn response(self) -> Response<RespBody> {
        let mut r = Response::new(RespBody::text(self.body()));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
                h.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"),
                );
            }
            StatusCode::TOO_MANY_REQUESTS => {
                if let ProxyError::RateLimited(secs) = self {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
            }
            _ => {}
        }
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// Why the proxy refused something a client sent (`fulcrum_requests_rejected_total`), at
/// any layer: hyper's own parser, the connection watchdog, or the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Unparseable request (400), including a duplicate Host.
    BadRequest,
    /// Request head over `max_header_bytes` or `max_headers` (431).
    HeaderTooLarge,
    /// Request head not complete within `header_read` (connection closed).
    HeaderTimeout,
    /// Nothing sent within `first_byte` of connecting (connection closed).
    FirstByteTimeout,
    /// Body over `max_request_body` (413).
    BodyTooLarge,
    /// Body stalled for `body_read` or slower than `min_body_rate` (408).
    BodyTimeout,
    /// CONNECT (405).
    MethodNotAllowed,
    /// A transfer coding other than chunked alone (501).
    TransferCoding,
    /// The client stopped reading its response for `send_stall` (connection closed).
    SendStall,
    /// Over `max_connections_per_client` (connection closed at accept).
    ClientConnections,
}

impl Rejection {
    /// Every reason, for pre-resolving metric handles (indexed by `as usize`).
    pub const ALL: [Rejection; 10] = [
        Rejection::BadRequest,
        Rejection::HeaderTooLarge,
        Rejection::HeaderTimeout,
        Rejection::FirstByteTimeout,
        Rejection::BodyTooLarge,
        Rejection::BodyTimeout,
        Rejection::MethodNotAllowed,
        Rejection::TransferCoding,
        Rejection::SendStall,
        Rejection::ClientConnections,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::FirstByteTimeout => "first_byte_timeout",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::TransferCoding => "transfer_coding",
            Rejection::SendStall => "send_stall",
            Rejection::ClientConnections => "client_connections",
        }
    }
}

/// A local resource error (`fulcrum_local_errors_total{kind}`): the label, when `e` is one.
/// These are this host's limits (descriptors, ephemeral ports, kernel buffers), never a
/// server's fault.
pub fn local_error_kind(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EMFILE => Some("emfile"),
        libc::ENFILE => Some("enfile"),
        libc::EADDRNOTAVAIL => Some("eaddrnotavail"),
        libc::ENOBUFS => Some("enobufs"),
        libc::ENOMEM => Some("enomem"),
        _ => None,
    }
}

/// Every label [`local_error_kind`] returns.
pub const LOCAL_ERROR_KINDS: [&str; 5] = ["emfile", "enfile", "eaddrnotavail", "enobufs", "enomem"];
