//! Turns the raw schema into typed settings, applying defaults and checking everything that
//! one value cannot check alone: unique names and binds, pool references, key combinations.
//! The first problem found is reported, at its own line and column.

use std::cell::RefCell;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::schema::*;
use super::types::Dur;
use super::*;

mod discovery;
mod health;
mod listener;
mod no_effect;
mod pool;
mod pool_users;
mod process;

pub(crate) use health::unescape;
pub(crate) use pool::parse_hash_key;

/// What every check needs: the text for positions, the path for messages, and the
/// warnings found so far.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    warnings: RefCell<Vec<ConfigWarning>>,
}

impl Ctx<'_> {
    /// A warning at byte span `span`.
    pub(super) fn warn(&self, span: Range<usize>, msg: impl Into<String>) {
        self.warnings.borrow_mut().push(ConfigWarning {
            path: self.path.to_path_buf(),
            location: Location::of_offset(self.text, span.start),
            message: msg.into(),
        });
    }

    pub(super) fn err(&self, span: Range<usize>, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, self.text, span, msg)
    }

    /// A duration that must not be zero, or its default.
    pub(super) fn dur(
        &self,
        v: &Option<Spanned<Dur>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if s.get_ref().0.is_zero() => {
                Err(self.err(s.span(), format!("{key} must be greater than zero")))
            }
            Some(s) => Ok(s.get_ref().0),
        }
    }

    /// An integer within `range`, or its default.
    pub(super) fn int(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if !range.contains(s.get_ref()) => Err(self.err(
                s.span(),
                format!(
                    "{key} must be between {} and {}, got {}",
                    range.start(),
                    range.end(),
                    s.get_ref()
                ),
            )),
            Some(s) => Ok(*s.get_ref()),
        }
    }

    /// A string that must be one of `choices`.
    pub(super) fn choice<'s>(
        &self,
        v: &'s Option<Spanned<String>>,
        key: &str,
        choices: &[&str],
    ) -> Result<Option<&'s str>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s) if choices.contains(&s.get_ref().as_str()) => Ok(Some(s.get_ref().as_str())),
            Some(s) => Err(self.err(
                s.span(),
                format!(
                    "unknown {key} {:?}, expected one of {}",
                    s.get_ref(),
                    choices
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    pub(super) fn name(&self, v: &Spanned<String>, what: &str) -> Result<Arc<str>, ConfigError> {
        let n = v.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if ok {
            Ok(Arc::from(n.as_str()))
        } else {
            Err(self.err(
                v.span(),
                format!("{what} name {n:?} is invalid; expected 1 to 64 characters of A-Z a-z 0-9 - _ . :"),
            ))
        }
    }
}

pub(super) fn validate(raw: RawConfig, text: &str, path: &Path) -> Result<Config, ConfigError> {
    validate_with(raw, text, path, crate::tls::SERVED)
}

/// `served`: the TLS features this build's listeners and proxies serve; a config that sets
/// one that is validated but not served yet is refused, never accepted and ignored.
pub(super) fn validate_with(
    raw: RawConfig,
    text: &str,
    path: &Path,
    served: crate::tls::Served,
) -> Result<Config, ConfigError> {
    let cx = Ctx {
        text,
        path,
        warnings: RefCell::new(Vec::new()),
    };
    let runtime = process::runtime(&cx, &raw.runtime)?;
    let admin = process::admin(&cx, &raw.admin)?;
    let access_log = process::access_log(&cx, &raw.access_log)?;
    // Pools first, so listeners can be checked against them.
    let pools = pool::pools(&cx, &raw.pool, served)?;
    let listeners = listener::listeners(&cx, &raw, admin.as_ref(), served)?;
    pool_users::check(&cx, &raw.pool, &listeners)?;

    discovery::refuse_unused_resolver(&cx, &raw.runtime.dns, &pools)?;
    Ok(Config {
        source: path.to_path_buf(),
        runtime,
        admin,
        access_log,
        listeners,
        pools,
        warnings: {
            let mut w = cx.warnings.into_inner();
            w.sort_by_key(|w| (w.location.line, w.location.column));
            w
        },
    })
}
