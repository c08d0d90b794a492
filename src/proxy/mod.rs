//! The proxies: L7 ([`http`]) and L4 ([`tcp`]), and what they share: the error type that maps
//! each failure to exactly one status and one metric, and the tunnel relay.

pub mod body;
pub mod headers;
pub mod http;
pub mod proxy_protocol;
pub mod tcp;
pub mod tunnel;
pub mod upstream;

use ::http::{header, HeaderValue, Response, StatusCode};

use self::body::RespBody;

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
    /// The request cannot be proxied as sent.
    #[error("bad request")]
    BadRequest,
}

impl ProxyError {
    /// All reasons, for pre-resolving metric handles.
    pub const ALL: [ProxyError; 6] = [
        ProxyError::NoServer,
        ProxyError::Overloaded,
        ProxyError::Connect,
        ProxyError::Reset,
        ProxyError::Timeout,
        ProxyError::BadRequest,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::NoServer => "no_server",
            ProxyError::Overloaded => "overloaded",
            ProxyError::Connect => "connect",
            ProxyError::Reset => "reset",
            ProxyError::Timeout => "timeout",
            ProxyError::BadRequest => "bad_request",
        }
    }

    /// The one status this error maps to.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoServer | ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect | ProxyError::Reset => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    fn body(self) -> &'static str {
        match self {
            ProxyError::NoServer => {
                "503 Service Unavailable: no server is available for this request\n"
            }
            ProxyError::Overloaded => "503 Service Unavailable: all servers are busy\n",
            ProxyError::Connect => "502 Bad Gateway: could not connect to a server\n",
            ProxyError::Reset => {
                "502 Bad Gateway: the server closed the connection without responding\n"
            }
            ProxyError::Timeout => "504 Gateway Timeout: the server did not respond in time\n",
            ProxyError::BadRequest => "400 Bad Request\n",
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
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
