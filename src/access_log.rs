//! The access log: one line per HTTP request (L7) or per relayed connection (L4), in a
//! combined-like text format or as JSON, to stderr or appended to a file.
//!
//! Writing it never blocks the proxy. The thread that served the request formats its line
//! straight into a buffer of its own (one per worker thread, behind a mutex that only the
//! writer ever contends for, and only to swap the buffer out); a line that would overfill
//! the buffer is dropped and counted in `fulcrum_access_log_dropped_total`. A dedicated
//! writer thread takes the buffers whole and writes them, so disk stalls never reach a
//! tokio worker; under load it lingers between batches (20 ms at most), so that neither
//! side is woken per line, and when traffic stops it sleeps until the next line. Shutdown
//! flushes what is buffered. A reload reopens the file (for log rotation).
//!
//! The writer takes the buffers one after another, so lines formatted on different threads
//! within one batch may be written out of order. `fulcrum run` serves each connection on one
//! worker thread from start to end (see `workers`), so a connection's lines keep their
//! order; a proxy run in-process on a work-stealing runtime (as the integration tests do)
//! may move a connection between threads and loses even that. Each line carries its own
//! timestamp; keeping one global order would need a lock or a sequence number shared by
//! every worker.
//!
//! Formatting where the request was served, rather than handing the writer a record of
//! it, keeps the request's values on the thread that owns them: no reference counts shared
//! with the writer, no allocation freed on another thread, and the request head's bytes
//! are released as soon as the response is sent (a queued record would pin the connection's
//! read buffer, and hyper would allocate a new one for the next request).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use prometheus::IntCounter;

use crate::config::{AccessLogFormat, AccessLogSettings, AccessLogTarget};
use crate::proxy::headers::write_ip;

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
        // One walk over the fields finds both: a request has a dozen at most as a rule, and
        // comparing a standard name is one integer compare, where each `get` hashes.
        let (mut referer, mut user_agent) = (None, None);
        for (name, value) in req.headers() {
            if referer.is_none() && name == http::header::REFERER {
                referer = Some(value.clone());
            } else if user_agent.is_none() && name == http::header::USER_AGENT {
                user_agent = Some(value.clone());
            }
        }
        RequestHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer,
            user_agent,
        }
    }
}

/// What the request path tells the access log about one HTTP request.
pub struct HttpLine<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// The client (as admission decided it).
    pub client: SocketAddr,
    /// The request head.
    pub head: &'a RequestHead,
    /// The pool it went to; `None` when the proxy answered without one.
    pub pool: Option<&'a str>,
    /// The route that served it: its name, `(default)` or `(none)`.
    pub route: &'a str,
    /// The server that answered; `None` when the proxy answered itself (or, for an
    /// upgrade, found from the response).
    pub server: Option<&'a str>,
    /// Its `X-Request-ID`.
    pub request_id: Option<&'a [u8]>,
    /// From request head received to response head sent.
    pub duration: Duration,
}

/// One HTTP request as it is written: the line and what the response adds.
struct HttpRecord<'a> {
    line: &'a HttpLine<'a>,
    server: Option<&'a str>,
    status: u16,
    /// Response body size, when the response declared it.
    bytes: Option<u64>,
}

/// One L4 connection.
pub struct TcpLine<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// The client.
    pub client: SocketAddr,
    /// Pool name.
    pub pool: &'a str,
    /// The server relayed to; `None` when none could be reached.
    pub server: Option<&'a str>,
    /// Bytes client → server.
    pub bytes_in: u64,
    /// Bytes server → client.
    pub bytes_out: u64,
    /// Connection lifetime.
    pub duration: Duration,
    /// How it ended: "closed", "idle", "shutdown", "drained" (at an operator's drain
    /// deadline), "error", or, before any relay, "no_client_hello", "no_route",
    /// "no_server", "overloaded", "local_error", "connect_failed".
    pub outcome: &'static str,
}

/// A running access log: the threads' buffers and the thread that drains them.
pub struct AccessLog {
    /// The settings it was opened with.
    pub settings: AccessLogSettings,
    shared: Arc<Shared>,
    /// The writer thread, woken early by [`AccessLog::flush`], by a line after a quiet
    /// spell, and by a buffer half full.
    writer: std::thread::Thread,
}

/// What the proxy's threads and the writer share.
struct Shared {
    /// A buffer per thread (threads beyond the count share them): a power of two long.
    shards: Box<[Shard]>,
    format: AccessLogFormat,
    /// Lines a buffer holds before new ones are dropped.
    max_lines: usize,
    /// Bytes a buffer holds before new lines are dropped (long URIs make long lines).
    max_bytes: usize,
    dropped: IntCounter,
    /// The writer found every buffer empty and waits for a line.
    sleeping: AtomicBool,
    reopen: AtomicBool,
    /// Every handle is gone: write what is left and end.
    closed: AtomicBool,
    /// Flushes waiting for the writer's next pass.
    flushes: Mutex<Vec<SyncSender<()>>>,
}

/// A thread's buffer, on a cache line of its own.
#[repr(align(128))]
struct Shard(Mutex<Pending>);

/// Lines formatted and not yet taken by the writer.
struct Pending {
    buf: Vec<u8>,
    lines: usize,
    clock: Clock,
}

/// The shard index a thread writes to, handed out in turn as threads first log.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    SLOT.with(|s| *s)
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // A panic while formatting leaves at worst a partial line; the buffer stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes a buffer may hold per line it may hold: lines are 200 to 400 bytes as a rule.
const BYTES_PER_LINE: usize = 512;

impl AccessLog {
    /// Opens the destination and starts the writer thread. The thread ends (after writing
    /// what is buffered) once every handle to this log is dropped.
    pub fn open(
        settings: &AccessLogSettings,
        dropped: IntCounter,
    ) -> Result<Arc<AccessLog>, AccessLogError> {
        let out = Output::open(&settings.target)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = (0..threads.clamp(1, 64).next_power_of_two())
            .map(|_| {
                Shard(Mutex::new(Pending {
                    buf: Vec::new(),
                    lines: 0,
                    clock: Clock::new(),
                }))
            })
            .collect();
        let max_lines = settings.buffer.max(1);
        let shared = Arc::new(Shared {
            shards,
            format: settings.format,
            max_lines,
            max_bytes: max_lines.saturating_mul(BYTES_PER_LINE),
            dropped,
            sleeping: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            flushes: Mutex::new(Vec::new()),
        });
        let writer = Writer {
            out,
            target: settings.target.clone(),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fulcrum-access-log".into())
            .spawn(move || writer.run())
            .map_err(AccessLogError::Thread)?;
        Ok(Arc::new(AccessLog {
            settings: settings.clone(),
            shared,
            writer: thread.thread().clone(),
        }))
    }

    /// Writes every line logged so far, waiting `wait` at most; false if that was not enough
    /// (the disk is stalled, say). Blocks: call it off the runtime's workers, at shutdown.
    pub fn flush(&self, wait: Duration) -> bool {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        self.shared
            .flushes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ack);
        self.writer.unpark();
        done.recv_timeout(wait).is_ok()
    }

    /// Logs an HTTP response about to be sent.
    pub fn response<B>(&self, line: &HttpLine<'_>, resp: &http::Response<B>) {
        let bytes = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let upgraded = resp.extensions().get::<Upstream>();
        let rec = HttpRecord {
            line,
            server: line.server.or(upgraded.map(|u| &*u.0)),
            status: resp.status().as_u16(),
            bytes,
        };
        let (format, at) = (self.shared.format, SystemTime::now());
        self.append(|out, clock| match format {
            AccessLogFormat::Combined => http_combined(out, clock, at, &rec),
            AccessLogFormat::Json => http_json(out, clock, at, &rec),
        });
    }

    /// Logs one finished L4 connection.
    pub fn connection(&self, line: &TcpLine<'_>) {
        let (format, at) = (self.shared.format, SystemTime::now());
        self.append(|out, clock| match format {
            AccessLogFormat::Combined => tcp_combined(out, clock, at, line),
            AccessLogFormat::Json => tcp_json(out, clock, at, line),
        });
    }

    /// Formats a line into this thread's buffer, or drops and counts it when the buffer is
    /// full (the writer has fallen behind).
    #[inline]
    fn append(&self, write: impl FnOnce(&mut Vec<u8>, &mut Clock)) {
        let sh = &*self.shared;
        let shard = &sh.shards[thread_slot() & (sh.shards.len() - 1)];
        let mut p = lock(&shard.0);
        if p.lines >= sh.max_lines || p.buf.len() >= sh.max_bytes {
            drop(p);
            sh.dropped.inc();
            return;
        }
        let Pending { buf, lines, clock } = &mut *p;
        write(buf, clock);
        buf.push(b'\n');
        *lines += 1;
        let (first, half) = (*lines == 1, *lines == sh.max_lines / 2);
        drop(p);
        if half || (first && sh.sleeping.load(Ordering::Acquire)) {
            // After a quiet spell, or before the buffer fills while the writer lingers.
            sh.sleeping.store(false, Ordering::Release);
            self.writer.unpark();
        }
    }

    /// Asks the writer to reopen its file before the next line (after log rotation).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.writer.unpark();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.writer.unpark();
    }
}

enum Output {
    Stderr,
    File(File),
}

impl Output {
    fn open(target: &AccessLogTarget) -> Result<Output, AccessLogError> {
        match target {
            AccessLogTarget::Stderr => Ok(Output::Stderr),
            AccessLogTarget::File(p) => Ok(Output::File(open_append(p)?)),
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
/// can sit in its buffer under load.
const MAX_LINGER: Duration = Duration::from_millis(20);

/// The wait before the next batch, from the last one: `taken` lines from buffers of
/// `capacity`. A batch that filled a quarter of a buffer halves the wait (so a burst
/// cannot fill the buffer while the writer sleeps); a small one lets it grow back.
fn next_linger(linger: Duration, taken: usize, capacity: usize) -> Duration {
    if taken.saturating_mul(4) >= capacity {
        (linger / 2).max(Duration::from_micros(100))
    } else if taken.saturating_mul(16) < capacity {
        (linger * 2).min(MAX_LINGER)
    } else {
        linger
    }
}

/// A buffer that grew past this during a burst, and held less than a quarter of it in its
/// last batch, is let go once written, so one burst does not hold its memory for good. A
/// buffer in steady use is kept: growing one anew for every batch costs copies and page
/// faults.
const KEEP_BUFFER: usize = 1024 * 1024;

struct Writer {
    out: Output,
    target: AccessLogTarget,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self) {
        let sh = self.shared.clone();
        // The writer's side of each buffer: swapped with the thread's when taken.
        let mut spare: Vec<Vec<u8>> = sh.shards.iter().map(|_| Vec::new()).collect();
        let mut linger = MAX_LINGER;
        loop {
            if sh.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
            // Read before taking the lines: a flush answered below covers every line logged
            // before it asked, and the last pass after the close takes every line.
            let closing = sh.closed.load(Ordering::Acquire);
            let acks =
                std::mem::take(&mut *sh.flushes.lock().unwrap_or_else(PoisonError::into_inner));
            let mut taken = 0usize;
            let mut most = 0usize;
            for (shard, mine) in sh.shards.iter().zip(spare.iter_mut()) {
                {
                    let mut p = lock(&shard.0);
                    if p.lines == 0 {
                        continue;
                    }
                    std::mem::swap(&mut p.buf, mine);
                    taken += p.lines;
                    most = most.max(p.lines);
                    p.lines = 0;
                }
                self.write_batch(mine);
                if mine.capacity() > KEEP_BUFFER && mine.len() < mine.capacity() / 4 {
                    *mine = Vec::new();
                } else {
                    mine.clear();
                }
            }
            for ack in acks {
                let _ = ack.try_send(());
            }
            if closing {
                return;
            }
            if taken > 0 {
                // Lines are coming: let the next ones gather.
                linger = next_linger(linger, most, sh.max_lines);
                std::thread::park_timeout(linger);
                continue;
            }
            // Nothing came during the last linger: sleep until a line does. A thread that
            // logs into an empty buffer checks `sleeping` after releasing the buffer's lock,
            // and this pass looks at every buffer after setting it, so one of the two sees
            // the other.
            linger = MAX_LINGER;
            sh.sleeping.store(true, Ordering::Release);
            let idle = sh.shards.iter().all(|s| lock(&s.0).lines == 0)
                && !sh.closed.load(Ordering::Acquire)
                && !sh.reopen.load(Ordering::Acquire)
                && sh.flushes.lock().map_or(true, |f| f.is_empty());
            if idle {
                std::thread::park();
            }
            sh.sleeping.store(false, Ordering::Release);
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
            Output::Stderr => io::stderr().lock().write_all(bytes),
            Output::File(f) => f.write_all(bytes),
        }
    }

    fn reopen_file(&mut self) {
        if let AccessLogTarget::File(p) = &self.target {
            match open_append(p) {
                Ok(f) => self.out = Output::File(f),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reopen the access log; keeping the old file")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Formatting: straight into the buffer, without core::fmt (whose machinery cost more than
// the rest of a line's work together).

/// The wall clock's current second, formatted once for every line within it.
struct Clock {
    secs: u64,
    /// `10/Oct/2000:13:55:36 +0000`
    clf: Vec<u8>,
    /// `2000-10-10T13:55:36`
    iso: Vec<u8>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            secs: u64::MAX,
            clf: Vec::with_capacity(32),
            iso: Vec::with_capacity(32),
        }
    }

    /// Sets the clock to `t`; returns its milliseconds.
    fn set(&mut self, t: SystemTime) -> u32 {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        if secs != self.secs {
            self.secs = secs;
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let (y, m, day) = civil_from_days((secs / 86_400) as i64);
            let s = secs % 86_400;
            let (hh, mm, ss) = (s / 3600, s / 60 % 60, s % 60);
            self.clf.clear();
            let _ = write!(
                self.clf,
                "{day:02}/{}/{y}:{hh:02}:{mm:02}:{ss:02} +0000",
                MONTHS[(m - 1) as usize]
            );
            self.iso.clear();
            let _ = write!(self.iso, "{y:04}-{m:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}");
        }
        d.subsec_millis()
    }
}

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

fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Seconds with six decimals (microseconds, rounded).
fn seconds6(out: &mut Vec<u8>, d: Duration) {
    // In u64 and u32: `as_nanos` is a u128, whose division is a library call.
    let mut secs = d.as_secs();
    let mut us = (d.subsec_nanos() + 500) / 1000;
    if us == 1_000_000 {
        secs += 1;
        us = 0;
    }
    num(out, secs);
    out.push(b'.');
    let mut digits = [b'0'; 6];
    let mut f = us;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (f % 10) as u8;
        f /= 10;
    }
    out.extend_from_slice(&digits);
}

/// `client - - [time] "METHOD URI VERSION" status bytes "referer" "user-agent"` (the combined
/// log format), then `listener=... route=... upstream=pool/server duration=seconds
/// request_id=...`.
fn http_combined(out: &mut Vec<u8>, clock: &mut Clock, at: SystemTime, r: &HttpRecord<'_>) {
    let h = r.line;
    clock.set(at);
    write_ip(out, h.client.ip());
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(&clock.clf);
    out.extend_from_slice(b"] \"");
    quoted_text(out, h.head.method.as_str().as_bytes());
    out.push(b' ');
    quoted_text(out, uri_str(&h.head.uri).as_bytes());
    out.push(b' ');
    out.extend_from_slice(version_str(h.head.version).as_bytes());
    out.extend_from_slice(b"\" ");
    num(out, r.status.into());
    out.push(b' ');
    match r.bytes {
        Some(b) => num(out, b),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    quoted_text(out, h.head.referer.as_ref().map_or(b"-", |v| v.as_bytes()));
    out.extend_from_slice(b"\" \"");
    quoted_text(
        out,
        h.head.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()),
    );
    out.extend_from_slice(b"\" listener=");
    out.extend_from_slice(h.listener.as_bytes());
    out.extend_from_slice(b" route=");
    out.extend_from_slice(h.route.as_bytes());
    out.extend_from_slice(b" upstream=");
    out.extend_from_slice(h.pool.unwrap_or("-").as_bytes());
    out.push(b'/');
    out.extend_from_slice(r.server.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" duration=");
    seconds6(out, h.duration);
    out.extend_from_slice(b" request_id=");
    quoted_text(out, h.request_id.unwrap_or(b"-"));
}

fn http_json(out: &mut Vec<u8>, clock: &mut Clock, at: SystemTime, r: &HttpRecord<'_>) {
    let h = r.line;
    json_time(out, clock, at);
    out.extend_from_slice(b",\"type\":\"http\",\"listener\":");
    json_str(out, h.listener.as_bytes());
    out.extend_from_slice(b",\"client\":\"");
    let _ = write!(out, "{}", h.client);
    out.extend_from_slice(b"\",\"method\":");
    json_str(out, h.head.method.as_str().as_bytes());
    out.extend_from_slice(b",\"uri\":");
    json_str(out, uri_str(&h.head.uri).as_bytes());
    out.extend_from_slice(b",\"version\":\"");
    out.extend_from_slice(version_str(h.head.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    num(out, r.status.into());
    out.extend_from_slice(b",\"bytes\":");
    match r.bytes {
        Some(b) => num(out, b),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"referer\":");
    json_opt(out, h.head.referer.as_ref().map(|v| v.as_bytes()));
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(out, h.head.user_agent.as_ref().map(|v| v.as_bytes()));
    out.extend_from_slice(b",\"pool\":");
    json_opt(out, h.pool.map(str::as_bytes));
    out.extend_from_slice(b",\"route\":");
    json_str(out, h.route.as_bytes());
    out.extend_from_slice(b",\"server\":");
    json_opt(out, r.server.map(str::as_bytes));
    out.extend_from_slice(b",\"request_id\":");
    json_opt(out, h.request_id);
    out.extend_from_slice(b",\"duration_seconds\":");
    json_f64(out, h.duration.as_secs_f64());
    out.push(b'}');
}

fn tcp_combined(out: &mut Vec<u8>, clock: &mut Clock, at: SystemTime, t: &TcpLine<'_>) {
    clock.set(at);
    write_ip(out, t.client.ip());
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(&clock.clf);
    out.extend_from_slice(b"] \"TCP\" ");
    out.extend_from_slice(t.outcome.as_bytes());
    out.extend_from_slice(b" listener=");
    out.extend_from_slice(t.listener.as_bytes());
    out.extend_from_slice(b" upstream=");
    out.extend_from_slice(t.pool.as_bytes());
    out.push(b'/');
    out.extend_from_slice(t.server.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" bytes_in=");
    num(out, t.bytes_in);
    out.extend_from_slice(b" bytes_out=");
    num(out, t.bytes_out);
    out.extend_from_slice(b" duration=");
    seconds6(out, t.duration);
}

fn tcp_json(out: &mut Vec<u8>, clock: &mut Clock, at: SystemTime, t: &TcpLine<'_>) {
    json_time(out, clock, at);
    out.extend_from_slice(b",\"type\":\"tcp\",\"listener\":");
    json_str(out, t.listener.as_bytes());
    out.extend_from_slice(b",\"client\":\"");
    let _ = write!(out, "{}", t.client);
    out.extend_from_slice(b"\",\"pool\":");
    json_str(out, t.pool.as_bytes());
    out.extend_from_slice(b",\"server\":");
    json_opt(out, t.server.map(str::as_bytes));
    out.extend_from_slice(b",\"bytes_in\":");
    num(out, t.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    num(out, t.bytes_out);
    out.extend_from_slice(b",\"duration_seconds\":");
    json_f64(out, t.duration.as_secs_f64());
    out.extend_from_slice(b",\"outcome\":");
    json_str(out, t.outcome.as_bytes());
    out.push(b'}');
}

/// `{"time":"2000-10-10T13:55:36.123Z"`: the object's opening and first field.
fn json_time(out: &mut Vec<u8>, clock: &mut Clock, at: SystemTime) {
    let ms = clock.set(at);
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(&clock.iso);
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
        b'"',
    ]);
}

/// A JSON string of `b`, read as UTF-8 (invalid sequences become U+FFFD).
fn json_str(out: &mut Vec<u8>, b: &[u8]) {
    if all_plain(b) {
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, &*String::from_utf8_lossy(b));
    }
}

fn json_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => json_str(out, b),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_f64(out: &mut Vec<u8>, x: f64) {
    let _ = serde_json::to_writer(&mut *out, &x);
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

/// Whether `c` is written as it is inside a quoted field: printable ASCII but `"` and `\`.
const fn plain(c: u8) -> bool {
    // `&`, not `&&`: no branches, so that `all_plain` vectorises.
    (c.wrapping_sub(0x20) < 0x5f) & (c != b'"') & (c != b'\\')
}

/// [`plain`] for every byte, for the scan of a field that needs escaping.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = plain(c as u8);
        c += 1;
    }
    t
};

/// Whether every byte of `b` is [`plain`]: over the whole slice with no early exit, which
/// the compiler turns into vector compares, a few instructions per 16 bytes rather than a
/// load and a branch per byte.
fn all_plain(b: &[u8]) -> bool {
    b.iter().fold(true, |ok, &c| ok & plain(c))
}

/// Writes bytes for inside a quoted field: `"` and `\` escaped, control and non-ASCII bytes
/// as `\xHH`, so a hostile header cannot forge a line.
fn quoted_text(out: &mut Vec<u8>, mut b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if all_plain(b) {
        // The common case, checked without a branch per byte.
        out.extend_from_slice(b);
        return;
    }
    while !b.is_empty() {
        let plain = b
            .iter()
            .position(|&c| !PLAIN[c as usize])
            .unwrap_or(b.len());
        out.extend_from_slice(&b[..plain]);
        let Some((&c, rest)) = b[plain..].split_first() else {
            return;
        };
        match c {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]),
        }
        b = rest;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123)
    }

    fn head() -> RequestHead {
        let req = http::Request::get("/a/b?c=1")
            .header("user-agent", "curl/8 \"x\"")
            .body(())
            .unwrap();
        RequestHead::capture(&req)
    }

    fn line(head: &RequestHead) -> HttpLine<'_> {
        HttpLine {
            listener: "web",
            client: "10.0.0.1:5555".parse().unwrap(),
            head,
            pool: Some("app"),
            route: "api",
            server: Some("o1"),
            request_id: Some(b"abc123"),
            duration: Duration::from_micros(2500),
        }
    }

    fn response() -> http::Response<()> {
        http::Response::builder()
            .header("content-length", "12")
            .body(())
            .unwrap()
    }

    fn http_text(format: AccessLogFormat, line: &HttpLine<'_>) -> String {
        let rec = HttpRecord {
            line,
            server: line.server,
            status: 200,
            bytes: Some(12),
        };
        let mut out = Vec::new();
        let mut clock = Clock::new();
        match format {
            AccessLogFormat::Combined => http_combined(&mut out, &mut clock, at(971_186_136), &rec),
            AccessLogFormat::Json => http_json(&mut out, &mut clock, at(971_186_136), &rec),
        }
        String::from_utf8(out).unwrap()
    }

    /// A log writing `format` to `path`, each thread holding `buffer` lines, with its
    /// dropped-lines counter.
    fn open_at(
        path: &Path,
        format: AccessLogFormat,
        buffer: usize,
    ) -> (Arc<AccessLog>, IntCounter) {
        let counter = IntCounter::new("dropped_total", "x").unwrap();
        let settings = AccessLogSettings {
            target: AccessLogTarget::File(path.to_path_buf()),
            format,
            buffer,
        };
        (
            AccessLog::open(&settings, counter.clone()).unwrap(),
            counter,
        )
    }

    #[test]
    fn flush_writes_every_line_logged_in_bursts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flush.log");
        let (log, counter) = open_at(&path, AccessLogFormat::Json, 4096);
        let (h, resp) = (head(), response());
        // Lines in three bursts: the writer lingers between batches, and a flush must not
        // wait for the linger to end.
        let mut n = 0;
        for _ in 0..3 {
            for _ in 0..1000 {
                log.response(&line(&h), &resp);
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(log.flush(Duration::from_secs(20)), "flushed in time");
        assert_eq!(counter.get(), 0, "nothing dropped");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), n, "every line written by the flush");
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["request_id"], "abc123");
        }
        // Still logging after a flush, and after a quiet spell (the writer sleeps).
        std::thread::sleep(Duration::from_millis(50));
        log.response(&line(&h), &resp);
        assert!(log.flush(Duration::from_secs(20)));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            n + 1
        );
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quiet.log");
        let (log, _) = open_at(&path, AccessLogFormat::Combined, 64);
        let (h, resp) = (head(), response());
        for want in 1..=3 {
            // Long enough for the writer to find nothing and go to sleep.
            std::thread::sleep(Duration::from_millis(60));
            log.response(&line(&h), &resp);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let got = std::fs::read_to_string(&path).unwrap().lines().count();
                if got == want {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "line {want} written");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn lines_from_many_threads_are_all_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("threads.log");
        let (log, counter) = open_at(&path, AccessLogFormat::Combined, 100_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let (h, resp) = (head(), response());
                    for _ in 0..2000 {
                        log.response(&line(&h), &resp);
                    }
                });
            }
        });
        assert!(log.flush(Duration::from_secs(20)));
        assert_eq!(counter.get(), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 8000);
        let want = http_text(AccessLogFormat::Combined, &line(&head()));
        let tail = &want[want.find(']').unwrap()..];
        assert!(
            text.lines().all(|l| l.ends_with(tail)),
            "no line torn or interleaved"
        );
    }

    #[test]
    fn linger_shrinks_under_pressure_and_grows_back() {
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

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let mut c = Clock::new();
        assert_eq!(c.set(at(971_186_136)), 123);
        assert_eq!(c.clf, b"10/Oct/2000:13:55:36 +0000");
        assert_eq!(c.iso, b"2000-10-10T13:55:36");
        // The next second is formatted anew; the same second is not.
        c.set(at(971_186_137));
        assert_eq!(c.clf, b"10/Oct/2000:13:55:37 +0000");
        let mut out = Vec::new();
        json_time(
            &mut out,
            &mut c,
            UNIX_EPOCH + Duration::from_millis(971_186_137_005),
        );
        assert_eq!(out, b"{\"time\":\"2000-10-10T13:55:37.005Z\"");
    }

    #[test]
    fn numbers_addresses_and_plain_bytes() {
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        for (d, want) in [
            (Duration::ZERO, "0.000000"),
            (Duration::from_nanos(499), "0.000000"),
            (Duration::from_nanos(500), "0.000001"),
            (Duration::new(3, 999_999_499), "3.999999"),
            // Rounding up carries into the seconds.
            (Duration::new(3, 999_999_500), "4.000000"),
            (Duration::new(86_400, 20_000), "86400.000020"),
        ] {
            assert_eq!(text(&|o| seconds6(o, d)), want, "{d:?}");
        }
        for a in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "127.0.0.1"] {
            assert_eq!(text(&|o| write_ip(o, a.parse().unwrap())), a);
        }
        assert_eq!(text(&|o| write_ip(o, "::1".parse().unwrap())), "::1");
        // The vectorised test agrees with the table for every byte, alone and among others.
        for c in 0..=255u8 {
            assert_eq!(all_plain(&[c]), PLAIN[c as usize], "byte {c:#x}");
            let mut long = [b'a'; 40];
            long[c as usize % 40] = c;
            assert_eq!(all_plain(&long), PLAIN[c as usize], "byte {c:#x} in 40");
        }
        assert!(all_plain(b""));
    }

    #[test]
    fn combined_line() {
        assert_eq!(
            http_text(AccessLogFormat::Combined, &line(&head())),
            "10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /a/b?c=1 HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"x\\\"\" listener=web route=api upstream=app/o1 duration=0.002500 request_id=abc123"
        );
    }

    #[test]
    fn hostile_bytes_are_escaped_and_v6_clients_written_whole() {
        let req = http::Request::get("/x")
            .header(
                "user-agent",
                HeaderValue::from_bytes(b"a\\b\xff\tc").unwrap(),
            )
            .body(())
            .unwrap();
        let h = RequestHead::capture(&req);
        let mut l = line(&h);
        l.client = "[2001:db8::1]:443".parse().unwrap();
        l.duration = Duration::from_nanos(1_234_567_499);
        l.request_id = Some(b"\"\n");
        let text = http_text(AccessLogFormat::Combined, &l);
        assert!(text.starts_with("2001:db8::1 - - ["), "{text}");
        assert!(text.contains("\"a\\\\b\\xFF\\x09c\""), "{text}");
        assert!(text.contains("duration=1.234567 "), "{text}");
        assert!(text.ends_with("request_id=\\\"\\x0A"), "{text}");
        let v: serde_json::Value =
            serde_json::from_str(&http_text(AccessLogFormat::Json, &l)).unwrap();
        assert_eq!(v["user_agent"], "a\\b\u{fffd}\tc");
        assert_eq!(v["request_id"], "\"\n");
        assert_eq!(v["client"], "[2001:db8::1]:443");
    }

    #[test]
    fn json_line() {
        let text = http_text(AccessLogFormat::Json, &line(&head()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "http");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["uri"], "/a/b?c=1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["server"], "o1");
        assert_eq!(v["pool"], "app");
        assert_eq!(v["route"], "api");
        assert_eq!(v["listener"], "web");
        assert_eq!(v["client"], "10.0.0.1:5555");
        assert_eq!(v["request_id"], "abc123");
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["time"], "2000-10-10T13:55:36.123Z");
        assert_eq!(v["duration_seconds"], 0.0025);
    }

    fn tcp_line() -> TcpLine<'static> {
        TcpLine {
            listener: "db",
            client: "127.0.0.1:1".parse().unwrap(),
            pool: "pg",
            server: None,
            bytes_in: 1,
            bytes_out: 2,
            duration: Duration::from_secs(1),
            outcome: "no_server",
        }
    }

    #[test]
    fn tcp_lines() {
        let mut out = Vec::new();
        tcp_combined(&mut out, &mut Clock::new(), at(0), &tcp_line());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"TCP\" no_server listener=db upstream=pg/- bytes_in=1 bytes_out=2 duration=1.000000"
        );
        let mut out = Vec::new();
        tcp_json(&mut out, &mut Clock::new(), at(0), &tcp_line());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "tcp");
        assert_eq!(v["server"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 2);
        assert_eq!(v["outcome"], "no_server");
        assert_eq!(v["time"], "1970-01-01T00:00:00.123Z");
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
        let (log, counter) = open_at(&path, AccessLogFormat::Json, 16);
        let n = 5000u64;
        for _ in 0..n {
            log.connection(&tcp_line());
        }
        // At most a pipe buffer (64 KiB), what the writer took when it stalled and a
        // buffer of 16 lines can be held by a stalled writer: far fewer than 5000 lines of
        // about 200 bytes.
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
