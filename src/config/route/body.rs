//! Bodies of `respond` and `error_pages`: inline text or a file read at load time, with a
//! content type given or guessed from the file's extension.

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use toml::Spanned;

use super::super::validate::Ctx;
use super::schema::{RawErrorPage, RawRespond};
use super::ConfigError;
use crate::route::Respond;

/// The largest body file: bodies live in memory for as long as the config does.
pub const MAX_BODY_FILE: u64 = 1 << 20;

const TEXT: &str = "text/plain; charset=utf-8";

pub(super) fn respond(cx: &Ctx, r: &RawRespond) -> Result<Respond, ConfigError> {
    let code = cx.int(&Some(r.status.clone()), "respond status", 200..=599, 200)?;
    let status = StatusCode::from_u16(code as u16).expect("200..=599 are valid status codes");
    let body = body(cx, &r.body, &r.file)?;
    if let (204 | 304, Some(b)) = (code, &body) {
        return Err(cx.err(b.span.clone(), format!("a {code} response has no body")));
    }
    finish(cx, status, body, &r.content_type)
}

pub(super) fn error_page(
    cx: &Ctx,
    status: StatusCode,
    p: &Spanned<RawErrorPage>,
) -> Result<Respond, ConfigError> {
    let page = p.get_ref();
    let Some(body) = body(cx, &page.body, &page.file)? else {
        return Err(cx.err(
            p.span(),
            format!("error page {} needs `body` or `file`", status.as_u16()),
        ));
    };
    finish(cx, status, Some(body), &page.content_type)
}

/// A body as given: its bytes, where it was written, and the file it came from.
struct Body {
    bytes: Bytes,
    span: Range<usize>,
    file: Option<String>,
}

fn body(
    cx: &Ctx,
    text: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
) -> Result<Option<Body>, ConfigError> {
    match (text, file) {
        (Some(_), Some(f)) => Err(cx.err(f.span(), "give `body` or `file`, not both")),
        (Some(t), None) => Ok(Some(Body {
            bytes: Bytes::from(t.get_ref().clone()),
            span: t.span(),
            file: None,
        })),
        (None, Some(f)) => Ok(Some(Body {
            bytes: read(cx, f)?,
            span: f.span(),
            file: Some(f.get_ref().clone()),
        })),
        (None, None) => Ok(None),
    }
}

fn read(cx: &Ctx, f: &Spanned<String>) -> Result<Bytes, ConfigError> {
    let name = f.get_ref();
    let path = match cx.path.parent() {
        Some(dir) if Path::new(name).is_relative() => dir.join(name),
        _ => Path::new(name).to_path_buf(),
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        cx.err(
            f.span(),
            format!("cannot read body file {}: {e}", path.display()),
        )
    })?;
    if !meta.is_file() || meta.len() > MAX_BODY_FILE {
        return Err(cx.err(
            f.span(),
            format!(
                "body file {} must be a regular file of at most {} KiB",
                path.display(),
                MAX_BODY_FILE / 1024
            ),
        ));
    }
    std::fs::read(&path).map(Bytes::from).map_err(|e| {
        cx.err(
            f.span(),
            format!("cannot read body file {}: {e}", path.display()),
        )
    })
}

fn finish(
    cx: &Ctx,
    status: StatusCode,
    body: Option<Body>,
    content_type: &Option<Spanned<String>>,
) -> Result<Respond, ConfigError> {
    let (bytes, file) = body.map_or((Bytes::new(), None), |b| (b.bytes, b.file));
    let content_type = match content_type {
        Some(ct) => Some(HeaderValue::from_str(ct.get_ref()).map_err(|_| {
            cx.err(
                ct.span(),
                format!("invalid content_type {:?}", ct.get_ref()),
            )
        })?),
        None if bytes.is_empty() && file.is_none() => None,
        None => Some(HeaderValue::from_static(guess(file.as_deref()))),
    };
    Ok(Respond {
        status,
        content_type,
        body: bytes,
    })
}

/// A content type from a file name's extension; plain text otherwise.
fn guess(file: Option<&str>) -> &'static str {
    let ext = file
        .and_then(|f| Path::new(f).extension())
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => TEXT,
    }
}
