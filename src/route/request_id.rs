//! `X-Request-ID` values: 32 lower-case hex digits, a per-process random prefix followed by
//! a counter. The prefix makes ids from different processes (and restarts) distinct, and
//! ids from one process easy to group. Whether an inbound id is trusted is the caller's
//! decision.
//!
//! The counter is handed out in blocks: each thread takes [`BLOCK`] numbers at a time from
//! the process's counter and counts through them on its own, so generating an id is a
//! thread-local add and a few shifts. One counter bumped by every request would be a cache
//! line that each worker takes from the other's core on every request it serves. Ids stay
//! unique within the process; across threads they are no longer in the order they were
//! made.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

/// The header name.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The per-process prefix, already in hex.
static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Numbers a thread takes from [`COUNTER`] at a time.
const BLOCK: u64 = 1 << 12;

thread_local! {
    /// This thread's next number and the end of its block (`next == end`: none left).
    static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The next number of this thread's block, taking a new block when it is used up.
fn number() -> u64 {
    NEXT.try_with(|c| {
        let (next, end) = c.get();
        if next < end {
            c.set((next + 1, end));
            next
        } else {
            let start = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
            c.set((start + 1, start + BLOCK));
            start
        }
    })
    // A thread whose locals are gone (only while it exits) takes a block for one id.
    .unwrap_or_else(|_| COUNTER.fetch_add(BLOCK, Ordering::Relaxed))
}

/// A generated request id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 32]);

impl RequestId {
    /// The next id of this process.
    pub fn next() -> RequestId {
        let prefix = PREFIX.get_or_init(|| {
            let mut p = [0u8; 16];
            hex(fastrand::u64(..), &mut p);
            p
        });
        let n = number();
        let mut digits = [0u8; 16];
        hex(n, &mut digits);
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(prefix);
        out[16..].copy_from_slice(&digits);
        RequestId(out)
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }

    /// As a header value. Its bytes are owned by one shared allocation, so the copies that
    /// go to the server and back to the client cost a reference count each.
    pub fn to_header_value(&self) -> HeaderValue {
        let bytes = bytes::Bytes::from_owner(self.0);
        // SAFETY: only hex digits are ever written (`next`), and they are visible ASCII,
        // which a header value may hold.
        unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `v` as 16 hex digits into `out`, most significant first.
fn hex(v: u64, out: &mut [u8; 16]) {
    // Truncation intended: the high and the low half.
    out[..8].copy_from_slice(&hex8((v >> 32) as u32));
    out[8..].copy_from_slice(&hex8(v as u32));
}

/// `x` as 8 hex digits: each nibble is spread to a byte of its own, then all eight bytes
/// become digits at once (a dozen arithmetic instructions, no table).
fn hex8(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries it into bit 4).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    let gap = u64::from(b'a' - b'0' - 10);
    (x + 0x3030_3030_3030_3030 + letters * gap).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_hex_with_one_prefix() {
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::next()).collect();
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.as_str().len(), 32);
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(
                id.as_str()[..16],
                ids[0].as_str()[..16],
                "one prefix per process"
            );
        }
        assert_eq!(ids[0].to_header_value(), ids[0].as_str());
    }

    #[test]
    fn hex_digits_match_the_formatter() {
        let mut values = vec![
            0,
            1,
            9,
            10,
            15,
            16,
            u64::MAX,
            0x0123_4567_89ab_cdef,
            1 << 63,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x);
        }
        for v in values {
            let mut out = [0u8; 16];
            hex(v, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{v:016x}"));
        }
    }

    #[test]
    fn ids_are_unique_across_threads() {
        // Each thread uses up two blocks and starts a third, so blocks are taken while the
        // other threads count through theirs.
        let per_thread = 2 * BLOCK as usize + 7;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|_| RequestId::next())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 4 * per_thread);
    }
}
