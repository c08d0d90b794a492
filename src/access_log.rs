//! The access log: one line per HTTP request (L7) or per relayed connection (L4), in a
//! combined-like text format or as JSON, to stderr or appended to a file.
//!
//! Writing it never blocks the proxy. The request path builds an [`Entry`] from values it
//! already holds (reference-counted names, the method, the URI, two header values: no
//! string formatting) and hands it to a bounded channel with `try_send`; when the channel
//! is full the line is dropped and counted in `fulcrum_access_log_dropped_total`. A
//! dedicated writer thread formats and writes in batches, so disk stalls never reach a tokio
//! worker; between batches it lingers (20 ms at most), so that under load neither side is
//! woken per line. Shutdown flushes what is queued. A reload reopens the file (for log
//! rotation).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use prometheus::IntCounter;

use crate::config::{AccessLogFormat, AccessLogSettings, AccessLogTarget};

/// Why the access log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The file could not be opened for appending.
    #[error("cannot open access log {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the access log writer: {0}")]
    Thread(io::Error),
}

/// The server that answered an upgrade (101), attached to the response for the access log;
/// other responses name their server through the guards their body carries.
#[derive(Clone, Debug)]
pub struct Upstream(pub Arc<str>);

/// The request-head values an HTTP line needs, captured before the request is forwarded.
pub struct RequestHead {
    method: Method,
    uri: Uri,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl RequestHead {
    /// Captures what the log line needs (cheap clones: the URI and header values are
    /// reference-counted bytes).
    pub fn capture<B>(req: &http::Request<B>) -> Self {
        let h = req.headers();
        RequestHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer: h.get(http::header::REFERER).cloned(),
            user_agent: h.get(http::header::USER_AGENT).cloned(),
        }
    }
}

/// One HTTP request.
pub struct HttpEntry {
    /// When the response head was sent.
    pub at: SystemTime,
    /// Response status.
    pub status: u16,
    /// Response body size, when the response declared it.
    pub bytes: Option<u64>,
    /// What the request path knew of it.
    pub line: HttpLine,
}

/// What the request path tells the access log about one request.
pub struct HttpLine {
    /// Listener name.
    pub listener: Arc<str>,
    /// The client (as admission decided it).
    pub client: SocketAddr,
    /// The request head.
    pub head: RequestHead,
    /// The pool it went to; `None` when the proxy answered without one.
    pub pool: Option<Arc<str>>,
    /// The route that served it: its name, `(default)` or `(none)`.
    pub route: Option<Arc<str>>,
    /// The server that answered; `None` when the proxy answered itself.
    pub server: Option<Arc<str>>,
    /// Its `X-Request-ID`.
    pub request_id: Option<HeaderValue>,
    /// From request head received to response head sent.
    pub duration: Duration,
}

/// One L4 connection.
pub struct TcpEntry {
    /// When the connection ended.
    pub at: SystemTime,
    /// Listener name.
    pub listener: Arc<str>,
    /// The client.
    pub client: SocketAddr,
    /// Pool name.
    pub pool: Arc<str>,
    /// The server relayed to; `None` when none could be reached.
    pub server: Option<Arc<str>>,
    /// Bytes client → server.
    pub bytes_in: u64,
    /// Bytes server → client.
    pub bytes_out: u64,
    /// Connection lifetime.
    pub duration: Duration,
    /// How it ended: "closed", "idle", "shutdown", "error", "no_server", "overloaded",
    /// "connect_failed".
    pub outcome: &'static str,
}

/// One line. Not boxed: the channel's slots are allocated once, so queuing a line
/// allocates nothing.
pub enum Entry {
    /// L7 (boxed: an HTTP line is far larger than an L4 one, and entries queue).
    Http(Box<HttpEntry>),
    /// L4.
    Tcp(TcpEntry),
}

/// A running access log: a bounded channel and the thread that drains it.
pub struct AccessLog {
    /// The settings it was opened with.
    pub settings: AccessLogSettings,
    tx: SyncSender<Msg>,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
    /// The writer thread, woken early from its linger by [`AccessLog::flush`].
    writer: std::thread::Thread,
}

/// What the writer thread receives.
enum Msg {
    Line(Entry),
    /// Write everything queued before this now, then answer.
    Flush(SyncSender<()>),
}

impl AccessLog {
    /// Opens the destination and starts the writer thread. The thread ends (after writing
    /// what is queued) once every handle to this log is dropped.
    pub fn open(
        settings: &AccessLogSettings,
        dropped: IntCounter,
    ) -> Result<Arc<AccessLog>, AccessLogError> {
        let out = Output::open(&settings.target)?;
        let capacity = settings.buffer;
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            out,
            target: settings.target.clone(),
            format: settings.format,
            reopen: reopen.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fulcrum-access-log".into())
            .spawn(move || writer.run(rx, capacity))
            .map_err(AccessLogError::Thread)?;
        Ok(Arc::new(AccessLog {
            settings: settings.clone(),
            tx,
            dropped,
            reopen,
            writer: thread.thread().clone(),
        }))
    }

    /// Writes every line queued so far, waiting `wait` at most; false if that was not enough
    /// (the disk is stalled, say). Blocks: call it off the runtime's workers, at shutdown.
    pub fn flush(&self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    self.writer.unpark();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.writer.unpark();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        done.recv_timeout(left).is_ok()
    }

    /// Queues a line; drops and counts it when the writer has fallen behind.
    #[inline]
    pub fn log(&self, e: Entry) {
        match self.tx.try_send(Msg::Line(e)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Logs an HTTP response about to be sent; `server` is the one that answered, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn response<B>(&self, mut line: HttpLine, resp: &http::Response<B>) {
        let bytes = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if line.server.is_none() {
            line.server = resp.extensions().get::<Upstream>().map(|u| u.0.clone());
        }
        self.log(Entry::Http(Box::new(HttpEntry {
            at: SystemTime::now(),
            status: resp.status().as_u16(),
            bytes,
            line,
        })));
    }

    /// Asks the writer to reopen its file before the next line (after log rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

enum Output {
    Stderr,
    File(BufWriter<File>),
}

impl Output {
    fn open(target: &AccessLogTarget) -> Result<Output, AccessLogError> {
        match target {
            AccessLogTarget::Stderr => Ok(Output::Stderr),
            AccessLogTarget::File(p) => Ok(Output::File(BufWriter::with_capacity(
                64 * 1024,
                open_append(p)?,
            ))),
        }
    }
}

fn open_append(p: &Path) -> Result<File, AccessLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|source| AccessLogError::Open {
            path: p.to_path_buf(),
            source,
        })
}

/// The longest the writer waits between two batches while lines keep coming: the most a line
/// can sit in the channel under load.
const MAX_LINGER: Duration = Duration::from_millis(20);

/// The wait before the next batch, from the last one: `taken` lines out of a channel of
/// `capacity`. A batch that filled a quarter of the channel halves the wait (so a burst
/// cannot fill the channel while the writer sleeps); a small one lets it grow back.
fn next_linger(linger: Duration, taken: usize, capacity: usize) -> Duration {
    if taken.saturating_mul(4) >= capacity {
        (linger / 2).max(Duration::from_micros(100))
    } else if taken.saturating_mul(16) < capacity {
        (linger * 2).min(MAX_LINGER)
    } else {
        linger
    }
}

struct Writer {
    out: Output,
    target: AccessLogTarget,
    format: AccessLogFormat,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>, capacity: usize) {
        let mut line = String::with_capacity(512);
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut linger = MAX_LINGER;
        // Blocks for the first line of a batch, then takes whatever else is queued and writes
        // the batch in one go. A line after a quiet spell is written at once; after each
        // batch the writer lingers (20 ms at most), so that under load lines gather in the
        // channel and the next batch holds many: without that, a writer faster than the proxy
        // is woken for every line (a futex wake on the request path) and writes each in its
        // own system call.
        while let Ok(first) = rx.recv() {
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
            let mut taken = 0usize;
            let mut flushed = Vec::new();
            let mut next = Some(first);
            while let Some(m) = next {
                match m {
                    Msg::Line(e) => {
                        taken += 1;
                        line.clear();
                        format_entry(&mut line, &e, self.format);
                        batch.extend_from_slice(line.as_bytes());
                        if batch.len() >= 60 * 1024 {
                            self.write_batch(&batch);
                            batch.clear();
                        }
                    }
                    Msg::Flush(ack) => flushed.push(ack),
                }
                next = if flushed.is_empty() {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.write_batch(&batch);
                batch.clear();
            }
            linger = next_linger(linger, taken, capacity);
            if flushed.is_empty() {
                // Woken early by a flush.
                std::thread::park_timeout(linger);
            }
            for ack in flushed {
                let _ = ack.try_send(());
            }
        }
    }

    fn write_batch(&mut self, batch: &[u8]) {
        if let Err(e) = self.write(batch) {
            // Reported once per failed batch, never per line; the proxy goes on.
            tracing::warn!(error = %e, "access log write failed");
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Output::Stderr => {
                let mut e = io::stderr().lock();
                e.write_all(bytes)?;
                e.flush()
            }
            Output::File(f) => {
                f.write_all(bytes)?;
                f.flush()
            }
        }
    }

    fn reopen_file(&mut self) {
        if let AccessLogTarget::File(p) = &self.target {
            match open_append(p) {
                Ok(f) => self.out = Output::File(BufWriter::with_capacity(64 * 1024, f)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reopen the access log; keeping the old file")
                }
            }
        }
    }
}

/// Appends one formatted line (with its newline) to `out`.
pub fn format_entry(out: &mut String, e: &Entry, format: AccessLogFormat) {
    match (e, format) {
        (Entry::Http(h), AccessLogFormat::Combined) => http_combined(out, h),
        (Entry::Http(h), AccessLogFormat::Json) => http_json(out, h),
        (Entry::Tcp(t), AccessLogFormat::Combined) => tcp_combined(out, t),
        (Entry::Tcp(t), AccessLogFormat::Json) => tcp_json(out, t),
    }
    out.push('\n');
}

use std::fmt::Write as _;

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// `client - - [time] "METHOD URI VERSION" status bytes "referer" "user-agent"` (the combined
/// log format), then `listener=... upstream=pool/server duration=seconds`.
fn http_combined(out: &mut String, e: &HttpEntry) {
    let h = &e.line;
    let _ = write!(out, "{} - - [", h.client.ip());
    clf_time(out, e.at);
    out.push_str("] \"");
    quoted_text(out, h.head.method.as_str().as_bytes());
    out.push(' ');
    quoted_text(out, uri_str(&h.head.uri).as_bytes());
    let _ = write!(out, " {}\" {} ", version_str(h.head.version), e.status);
    match e.bytes {
        Some(b) => {
            let _ = write!(out, "{b}");
        }
        None => out.push('-'),
    }
    out.push_str(" \"");
    quoted_text(out, h.head.referer.as_ref().map_or(b"-", |v| v.as_bytes()));
    out.push_str("\" \"");
    quoted_text(
        out,
        h.head.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()),
    );
    let _ = write!(
        out,
        "\" listener={} route={} upstream={}/{} duration={:.6} request_id=",
        h.listener,
        h.route.as_deref().unwrap_or("-"),
        h.pool.as_deref().unwrap_or("-"),
        h.server.as_deref().unwrap_or("-"),
        h.duration.as_secs_f64()
    );
    quoted_text(out, h.request_id.as_ref().map_or(b"-", |v| v.as_bytes()));
}

fn http_json(out: &mut String, e: &HttpEntry) {
    let h = &e.line;
    let v = serde_json::json!({
        "time": rfc3339(e.at),
        "type": "http",
        "listener": &*h.listener,
        "client": h.client.to_string(),
        "method": h.head.method.as_str(),
        "uri": uri_str(&h.head.uri),
        "version": version_str(h.head.version),
        "status": e.status,
        "bytes": e.bytes,
        "referer": h.head.referer.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes())),
        "user_agent": h.head.user_agent.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes())),
        "pool": h.pool.as_deref(),
        "route": h.route.as_deref(),
        "server": h.server.as_deref(),
        "request_id": h.request_id.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes())),
        "duration_seconds": h.duration.as_secs_f64(),
    });
    let _ = write!(out, "{v}");
}

fn tcp_combined(out: &mut String, t: &TcpEntry) {
    let _ = write!(out, "{} - - [", t.client.ip());
    clf_time(out, t.at);
    let _ = write!(
        out,
        "] \"TCP\" {} listener={} upstream={}/{} bytes_in={} bytes_out={} duration={:.6}",
        t.outcome,
        t.listener,
        t.pool,
        t.server.as_deref().unwrap_or("-"),
        t.bytes_in,
        t.bytes_out,
        t.duration.as_secs_f64()
    );
}

fn tcp_json(out: &mut String, t: &TcpEntry) {
    let v = serde_json::json!({
        "time": rfc3339(t.at),
        "type": "tcp",
        "listener": &*t.listener,
        "client": t.client.to_string(),
        "pool": &*t.pool,
        "server": t.server.as_deref(),
        "bytes_in": t.bytes_in,
        "bytes_out": t.bytes_out,
        "duration_seconds": t.duration.as_secs_f64(),
        "outcome": t.outcome,
    });
    let _ = write!(out, "{v}");
}

fn uri_str(u: &Uri) -> &str {
    // The path and query, also for h2 requests (whose URI carries scheme and authority);
    // the authority for CONNECT.
    match (u.path_and_query(), u.authority()) {
        (Some(pq), _) => pq.as_str(),
        (None, Some(a)) => a.as_str(),
        (None, None) => "/",
    }
}

/// Writes bytes for inside a quoted field: `"` and `\` escaped, control and non-ASCII bytes
/// as `\xHH`, so a hostile header cannot forge a line.
fn quoted_text(out: &mut String, b: &[u8]) {
    for &c in b {
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(c as char),
            _ => {
                let _ = write!(out, "\\x{c:02X}");
            }
        }
    }
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn split_time(t: SystemTime) -> (i64, u32, u32, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    (y, m, day, secs % 86_400, d.subsec_millis())
}

/// `10/Oct/2000:13:55:36 +0000` (UTC).
fn clf_time(out: &mut String, t: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, s, _) = split_time(t);
    let _ = write!(
        out,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    );
}

/// `2000-10-10T13:55:36.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let (y, m, d, s, ms) = split_time(t);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn flush_writes_every_queued_line_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flush.log");
        let counter = IntCounter::new("dropped_total", "x").unwrap();
        let settings = AccessLogSettings {
            target: AccessLogTarget::File(path.clone()),
            format: AccessLogFormat::Json,
            buffer: 4096,
        };
        let log = AccessLog::open(&settings, counter.clone()).unwrap();
        // Lines in three bursts: the writer lingers between batches, and a flush must not
        // wait for the linger to end.
        let mut n = 0;
        for _ in 0..3 {
            for _ in 0..1000 {
                log.log(http_entry());
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(log.flush(Duration::from_secs(20)), "flushed in time");
        assert_eq!(counter.get(), 0, "nothing dropped");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), n, "every line written by the flush");
        // Still logging after a flush.
        log.log(http_entry());
        assert!(log.flush(Duration::from_secs(20)));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            n + 1
        );
    }

    #[test]
    fn linger_shrinks_under_pressure_and_grows_back() {
        use super::{next_linger, MAX_LINGER};
        use std::time::Duration;
        let mut l = MAX_LINGER;
        l = next_linger(l, 2000, 4096);
        assert_eq!(l, MAX_LINGER / 2);
        for _ in 0..20 {
            l = next_linger(l, 4096, 4096);
        }
        assert_eq!(l, Duration::from_micros(100));
        for _ in 0..20 {
            l = next_linger(l, 1, 4096);
        }
        assert_eq!(l, MAX_LINGER);
        // In between, it holds.
        assert_eq!(
            next_linger(Duration::from_millis(5), 500, 4096),
            Duration::from_millis(5)
        );
    }

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123)
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(rfc3339(at(971_186_136)), "2000-10-10T13:55:36.123Z");
        let mut s = String::new();
        clf_time(&mut s, at(971_186_136));
        assert_eq!(s, "10/Oct/2000:13:55:36 +0000");
    }

    fn http_entry() -> Entry {
        let req = http::Request::get("/a/b?c=1")
            .header("user-agent", "curl/8 \"x\"")
            .body(())
            .unwrap();
        Entry::Http(Box::new(HttpEntry {
            at: at(971_186_136),
            status: 200,
            bytes: Some(12),
            line: HttpLine {
                listener: "web".into(),
                client: "10.0.0.1:5555".parse().unwrap(),
                head: RequestHead::capture(&req),
                pool: Some("app".into()),
                route: Some("api".into()),
                server: Some("o1".into()),
                request_id: Some(HeaderValue::from_static("abc123")),
                duration: Duration::from_micros(2500),
            },
        }))
    }

    #[test]
    fn combined_line() {
        let mut s = String::new();
        format_entry(&mut s, &http_entry(), AccessLogFormat::Combined);
        assert_eq!(
            s,
            "10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a/b?c=1 HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"x\\\"\" listener=web route=api upstream=app/o1 duration=0.002500 request_id=abc123\n"
        );
    }

    #[test]
    fn json_line() {
        let mut s = String::new();
        format_entry(&mut s, &http_entry(), AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["uri"], "/a/b?c=1");
        assert_eq!(v["server"], "o1");
        assert_eq!(v["route"], "api");
        assert_eq!(v["request_id"], "abc123");
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
        assert_eq!(v["time"], "2000-10-10T13:55:36.123Z");
    }

    #[test]
    fn tcp_line() {
        let e = Entry::Tcp(TcpEntry {
            at: at(0),
            listener: "db".into(),
            client: "127.0.0.1:1".parse().unwrap(),
            pool: "pg".into(),
            server: None,
            bytes_in: 1,
            bytes_out: 2,
            duration: Duration::from_secs(1),
            outcome: "no_server",
        });
        let mut s = String::new();
        format_entry(&mut s, &e, AccessLogFormat::Combined);
        assert_eq!(s, "127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"TCP\" no_server listener=db upstream=pg/- bytes_in=1 bytes_out=2 duration=1.000000\n");
    }

    #[test]
    fn a_stalled_writer_drops_and_counts_instead_of_blocking() {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO nobody reads from stalls the writer once the pipe buffer is full, like a
        // hung disk; the proxy side must keep going, dropping and counting lines.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stalled.log");
        let ok = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo works");
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(0o4000) // O_NONBLOCK: opening the read end must not wait
            .open(&path)
            .unwrap();
        let counter = IntCounter::new("dropped_total", "x").unwrap();
        let settings = AccessLogSettings {
            target: AccessLogTarget::File(path.clone()),
            format: AccessLogFormat::Json,
            buffer: 16,
        };
        let log = AccessLog::open(&settings, counter.clone()).unwrap();
        let n = 5000u64;
        for _ in 0..n {
            log.log(http_entry());
        }
        // At most a pipe buffer (64 KiB), one batch (60 KiB) and the channel can be taken
        // by a stalled writer: far fewer than 5000 lines of about 300 bytes.
        assert!(
            counter.get() > n / 2,
            "lines dropped while stalled: {}",
            counter.get()
        );
        drop(log);
        // Unstall: read until the writer, done with what it took, closes the pipe.
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "writer finished");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        let written = got.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        assert_eq!(written + counter.get(), n, "every line written or counted");
    }
}
