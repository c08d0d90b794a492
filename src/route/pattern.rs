//! The predicates a route matches on besides the host, as validated values: path matches,
//! method sets and header conditions. Config validation builds them (so a bad one fails at
//! its line); the table indexes paths and calls the rest per candidate route. Nothing here
//! allocates while matching.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// What a route requires of the path (without the query).
#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// `path = "/exact"`: this path only.
    Exact(Box<str>),
    /// `path_prefix = "/v1/"`: paths starting with these bytes (a plain string prefix: end
    /// it with `/` to match whole segments only).
    Prefix(Box<str>),
    /// `path_regex = "^/u/[0-9]+$"`: paths the regex matches somewhere (anchor it to match
    /// the whole path).
    Regex(PathRegex),
}

impl PathMatch {
    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Prefix(p) => path.starts_with(&**p),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Whether every path this matches is also matched by `other` (conservative: `false`
    /// when it cannot tell, as between two different regexes).
    pub fn within(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (_, PathMatch::Any) => true,
            (PathMatch::Exact(a), _) => other.matches(a),
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a.starts_with(&**b),
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            PathMatch::Any => f.write_str("any path"),
            PathMatch::Exact(p) => write!(f, "path {p}"),
            PathMatch::Prefix(p) => write!(f, "path_prefix {p}"),
            PathMatch::Regex(r) => write!(f, "path_regex {}", r.as_str()),
        }
    }
}

/// A path regex, compiled once; two are equal when their sources are.
#[derive(Clone, Debug)]
pub struct PathRegex {
    regex: regex::Regex,
    /// The literal every match starts with, for a regex anchored at `^` (see
    /// `literal_prefix`).
    prefix: Option<Box<str>>,
}

impl PathRegex {
    /// Compiles `source` (the `regex` crate's syntax; matching is linear in the path).
    pub fn new(source: &str) -> Result<PathRegex, regex::Error> {
        let regex = regex::RegexBuilder::new(source)
            .size_limit(1 << 20)
            .build()?;
        Ok(PathRegex {
            prefix: anchored_literal(source).map(Into::into),
            regex,
        })
    }

    /// Whether it matches somewhere in `path`.
    #[inline]
    pub fn is_match(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }

    /// The source.
    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }

    /// A non-empty literal that every path this regex matches starts with, when the source
    /// says so plainly: `^` then plain characters (`^/u/[0-9]+$` → `/u/`). `None` when it
    /// cannot be sure (no `^`, flags, or `|` anywhere in the source).
    pub fn literal_prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }
}

/// See [`PathRegex::literal_prefix`]. Conservative by construction: any `|` (which could
/// make the `^` apply to one branch only) or leading flag gives `None`, a character
/// followed by a quantifier is left out, and the literal stops at the first other
/// metacharacter.
fn anchored_literal(source: &str) -> Option<String> {
    let rest = source.strip_prefix('^')?;
    if source.contains('|') {
        return None;
    }
    let mut lit = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if "\\.+*?()[]{}^$|#".contains(c) || c.is_whitespace() {
            break;
        }
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        lit.push(c);
    }
    (!lit.is_empty()).then_some(lit)
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// The methods a route accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodSet {
    /// Standard methods, one bit each (see `bit`).
    bits: u16,
    /// Extension methods, compared by name.
    other: Box<[Method]>,
    /// As written, for display.
    listed: Box<[Method]>,
}

/// The bit of a standard method, `None` for an extension method.
fn bit(m: &Method) -> Option<u16> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    STANDARD.iter().position(|s| s == m).map(|i| 1 << i)
}

impl MethodSet {
    /// The set of `methods`.
    pub fn new(methods: impl IntoIterator<Item = Method>) -> MethodSet {
        let listed: Vec<Method> = methods.into_iter().collect();
        let mut bits = 0;
        let mut other = Vec::new();
        for m in &listed {
            match bit(m) {
                Some(b) => bits |= b,
                None if !other.contains(m) => other.push(m.clone()),
                None => {}
            }
        }
        MethodSet {
            bits,
            other: other.into(),
            listed: listed.into(),
        }
    }

    /// Whether `m` is in the set.
    #[inline]
    pub fn contains(&self, m: &Method) -> bool {
        match bit(m) {
            Some(b) => self.bits & b != 0,
            None => self.other.contains(m),
        }
    }

    /// Whether every method of `self` is in `other`.
    pub fn within(&self, other: &MethodSet) -> bool {
        self.bits & !other.bits == 0 && self.other.iter().all(|m| other.other.contains(m))
    }

    /// The methods as written.
    pub fn methods(&self) -> &[Method] {
        &self.listed
    }
}

/// What a route requires of one request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderCond {
    /// `"x-debug" = true`: present, any value.
    Present,
    /// `"x-bot" = false`: absent.
    Absent,
    /// `"x-canary" = "1"`: some value of the header is exactly this (case-sensitive).
    Equals(HeaderValue),
}

/// One header condition of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Header name (lower case).
    pub name: HeaderName,
    /// What it must be.
    pub cond: HeaderCond,
}

impl HeaderMatch {
    /// Whether `headers` satisfy the condition.
    #[inline]
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        match &self.cond {
            HeaderCond::Present => headers.contains_key(&self.name),
            HeaderCond::Absent => !headers.contains_key(&self.name),
            HeaderCond::Equals(v) => headers.get_all(&self.name).iter().any(|h| h == v),
        }
    }

    /// Whether a request meeting `self` always meets `other` (same header name).
    pub fn implies(&self, other: &HeaderMatch) -> bool {
        self.name == other.name
            && match (&self.cond, &other.cond) {
                (a, b) if a == b => true,
                (HeaderCond::Equals(_), HeaderCond::Present) => true,
                _ => false,
            }
    }
}

impl fmt::Display for HeaderMatch {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.cond {
            HeaderCond::Present => write!(f, "{} present", self.name),
            HeaderCond::Absent => write!(f, "{} absent", self.name),
            HeaderCond::Equals(v) => write!(f, "{}={}", self.name, v.to_str().unwrap_or("?")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_matches_and_containment() {
        let exact = PathMatch::Exact("/a".into());
        let prefix = PathMatch::Prefix("/a".into());
        let re = PathMatch::Regex(PathRegex::new("^/u/[0-9]+$").unwrap());
        assert!(exact.matches("/a") && !exact.matches("/a/"));
        assert!(prefix.matches("/ab") && prefix.matches("/a") && !prefix.matches("/b"));
        assert!(re.matches("/u/12") && !re.matches("/u/x"));
        assert!(exact.within(&prefix));
        assert!(PathMatch::Prefix("/a/b".into()).within(&prefix));
        assert!(!prefix.within(&exact));
        assert!(
            !re.within(&prefix),
            "a regex is never assumed inside a prefix"
        );
        assert!(re.within(&PathMatch::Regex(PathRegex::new("^/u/[0-9]+$").unwrap())));
        assert!(PathMatch::Exact("/u/7".into()).within(&re));
        assert!(re.within(&PathMatch::Any));
    }

    #[test]
    fn anchored_literal_prefixes() {
        let p = |s| {
            PathRegex::new(s)
                .unwrap()
                .literal_prefix()
                .map(str::to_string)
        };
        assert_eq!(p("^/u/[0-9]+$").as_deref(), Some("/u/"));
        assert_eq!(p("^/static/.+").as_deref(), Some("/static/"));
        assert_eq!(
            p("^/ab?c").as_deref(),
            Some("/a"),
            "an optional char is left out"
        );
        assert_eq!(p("^/a*").as_deref(), Some("/"));
        assert_eq!(p("^/a{0,2}").as_deref(), Some("/"));
        assert_eq!(p("^a*"), None, "nothing is certain");
        assert_eq!(p("/u/[0-9]+"), None, "unanchored");
        assert_eq!(p("^/a|/b"), None, "| may unanchor a branch");
        assert_eq!(p("(?i)^/a"), None);
        assert_eq!(p("^\\.well-known"), None, "an escape ends the literal");
        assert_eq!(p("^(/a)"), None);
    }

    #[test]
    fn method_sets() {
        let ext = Method::from_bytes(b"PURGE").unwrap();
        let s = MethodSet::new([Method::GET, Method::POST, ext.clone()]);
        assert!(s.contains(&Method::GET) && s.contains(&ext));
        assert!(!s.contains(&Method::PUT));
        assert!(!s.contains(&Method::from_bytes(b"BAN").unwrap()));
        assert!(MethodSet::new([Method::GET]).within(&s));
        assert!(!s.within(&MethodSet::new([Method::GET, Method::POST])));
    }

    #[test]
    fn header_conditions() {
        let mut h = HeaderMap::new();
        h.append("x-canary", HeaderValue::from_static("0"));
        h.append("x-canary", HeaderValue::from_static("1"));
        let m = |cond| HeaderMatch {
            name: HeaderName::from_static("x-canary"),
            cond,
        };
        assert!(m(HeaderCond::Present).matches(&h));
        assert!(!m(HeaderCond::Absent).matches(&h));
        assert!(m(HeaderCond::Equals(HeaderValue::from_static("1"))).matches(&h));
        assert!(!m(HeaderCond::Equals(HeaderValue::from_static("2"))).matches(&h));
        assert!(m(HeaderCond::Absent).matches(&HeaderMap::new()));
        assert!(
            m(HeaderCond::Equals(HeaderValue::from_static("1"))).implies(&m(HeaderCond::Present))
        );
        assert!(!m(HeaderCond::Present).implies(&m(HeaderCond::Absent)));
    }
}
