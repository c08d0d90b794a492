//! `X-Request-ID` values: 32 lower-case hex digits, a per-process random prefix followed by
//! a counter. Generating one is a relaxed `fetch_add` and a few shifts, with no lock; the
//! prefix makes ids from different processes (and restarts) distinct, and ids from one
//! process easy to group. Whether an inbound id is trusted is the caller's decision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

/// The header name.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The per-process prefix, already in hex.
static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

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
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
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
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(self.0))
            .expect("hex digits are a valid header value")
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

/// `v` as 16 hex digits into `out`, a byte (two digits) at a time.
fn hex(v: u64, out: &mut [u8; 16]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
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
    fn ids_are_unique_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..500).map(|_| RequestId::next()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
    }
}
