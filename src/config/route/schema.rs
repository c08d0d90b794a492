//! The TOML shape of routes, split keys and error pages (`deny_unknown_fields`, spans kept
//! for errors). Defaults and units are documented per key, as in `config/fulcrum.toml`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `[[listener.route]]`: tried in order; the first match wins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique in the listener; used in metrics, logs and the admin API.
    pub name: Spanned<String>,
    /// Host names, exact (`api.example.com`) or leading wildcard (`*.example.com`); matched
    /// case-insensitively, ignoring the port. Default: any host.
    pub host: Option<Spanned<Vec<Spanned<String>>>>,
    /// This exact path (without the query).
    pub path: Option<Spanned<String>>,
    /// Paths starting with this (a plain string prefix).
    pub path_prefix: Option<Spanned<String>>,
    /// Paths this regex matches (unanchored unless written with ^ and $).
    pub path_regex: Option<Spanned<String>>,
    /// Methods accepted, e.g. ["GET", "POST"]. Default: any.
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Header conditions: "name" = "value" (equal), true (present) or false (absent).
    pub headers: Option<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
    /// Action: forward to this pool.
    pub pool: Option<Spanned<String>>,
    /// Action: forward to one of these pools by weight (1..=10000 each).
    pub split: Option<Spanned<Vec<RawSplit>>>,
    /// Action: answer with a redirect.
    pub redirect: Option<Spanned<RawRedirect>>,
    /// Action: answer with a fixed response.
    pub respond: Option<Spanned<RawRespond>>,
    /// Forwarding routes: remove this prefix from the path before sending. Default: none.
    pub strip_prefix: Option<Spanned<String>>,
    /// Forwarding routes: request header edits (removes first, then sets).
    pub request_headers: Option<Spanned<RawHeaderEdits>>,
    /// Any route: response header edits (removes first, then sets).
    pub response_headers: Option<Spanned<RawHeaderEdits>>,
    /// Forwarding routes: send Host as the chosen server's name (its address unless
    /// named). Default false.
    pub host_rewrite: Option<Spanned<bool>>,
}

/// One side of `split = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    /// Pool name.
    pub pool: Spanned<String>,
    /// Relative weight, 1..=10000.
    pub weight: Spanned<i64>,
}

/// `redirect = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// "http" or "https". Default: the client's own.
    pub scheme: Option<Spanned<String>>,
    /// Target host. Default: the request's (without its port).
    pub host: Option<Spanned<String>>,
    /// Target port. Default: none (the scheme's default).
    pub port: Option<Spanned<i64>>,
    /// Replace the whole path with this.
    pub path: Option<Spanned<String>>,
    /// Replace the route's path_prefix with this.
    pub prefix: Option<Spanned<String>>,
    /// 301, 302, 303, 307 or 308. Default 302.
    pub status: Option<Spanned<i64>>,
    /// Leave the query string out. Default false (the query is kept).
    pub drop_query: Option<bool>,
}

/// `respond = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    /// Status, 200..=599.
    pub status: Spanned<i64>,
    /// Body text. Default: empty.
    pub body: Option<Spanned<String>>,
    /// Or a file whose contents are the body (read at load; relative to the config file).
    pub file: Option<Spanned<String>>,
    /// Content-Type. Default "text/plain; charset=utf-8", or by a file's extension.
    pub content_type: Option<Spanned<String>>,
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    /// Set these headers, replacing any values present.
    pub set: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// Remove these headers.
    pub remove: Option<Vec<Spanned<String>>>,
}

/// `error_pages = { 503 = { file = "..." }, 502 = { body = "..." } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErrorPages {
    /// No server answered usefully.
    #[serde(rename = "502")]
    pub bad_gateway: Option<Spanned<RawErrorPage>>,
    /// No server available, or the queue was full or timed out.
    #[serde(rename = "503")]
    pub service_unavailable: Option<Spanned<RawErrorPage>>,
    /// The server did not answer in time.
    #[serde(rename = "504")]
    pub gateway_timeout: Option<Spanned<RawErrorPage>>,
}

/// One error page: `body` or `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErrorPage {
    /// Body text.
    pub body: Option<Spanned<String>>,
    /// Or a file (read at load; relative to the config file).
    pub file: Option<Spanned<String>>,
    /// Content-Type. Default "text/plain; charset=utf-8", or by a file's extension.
    pub content_type: Option<Spanned<String>>,
}
