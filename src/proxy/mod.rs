//! The proxies: L7 (`http`) and L4 (`tcp`), and what they share: the error type that maps
//! each failure to exactly one status, one metric and one side to blame (`error`), and the
//! tunnel relay.

pub(crate) mod attempts;
pub(crate) mod body;
pub(crate) mod cancel;
pub(crate) mod error;
pub(crate) mod h1;
pub(crate) mod headers;
pub(crate) mod http;
pub mod proxy_protocol;
pub(crate) mod sock;
pub(crate) mod tcp;
pub mod tunnel;
pub(crate) mod upstream;

pub use error::{local_error_kind, Blame, ProxyError, Rejection};

/// Whether nothing has become readable on `s` since a read last found it drained: its read
/// readiness is empty. One load, no system call and no lock (a read poll that finds nothing
/// takes the socket's waiter lock to register a waker).
///
/// What it rests on: only an event from the reactor sets the readiness, and the same event
/// takes and wakes the waker a read poll registered; only a read that finds the socket
/// drained (a short read, or `EAGAIN`) clears it. So, for a socket read by one owner:
/// - empty since that owner's last read means no byte and no FIN has arrived since;
/// - empty since its last Pending read poll means the waker that poll registered is still
///   there, and will be woken.
///
/// Anyone else reading the socket in between (clearing the readiness) breaks both.
pub(crate) fn read_readiness_empty(s: &tokio::net::TcpStream) -> bool {
    s.try_io(tokio::io::Interest::READABLE, || Ok(())).is_err()
}

/// Acknowledges at once everything read so far on the TCP socket `fd` (`TCP_QUICKACK`),
/// and leaves the kernel's delayed-ACK turn-taking mode until the next write on it.
///
/// Why: on a connection whose two ends take turns (any keep-alive connection), the kernel
/// holds back the ACK of what it received, for data to carry it, until its delayed-ACK
/// timer fires (40 ms). A peer that leaves Nagle's algorithm on and writes a message in two
/// small pieces (a head, then a body) sends the second only once the first is
/// acknowledged: each such message would take 40 ms. Call this when a message came in part
/// and the rest is awaited. Best effort: a failure only means the ACK comes when the
/// kernel would have sent it anyway.
pub(crate) fn quick_ack(fd: std::os::fd::RawFd) {
    #[cfg(target_os = "linux")]
    set_tcp_option(fd, libc::TCP_QUICKACK, 1);
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// Sets the integer TCP-level socket option `opt` of `fd` to `value`, best effort: what
/// socket2 has no setter for (`TCP_QUICKACK` on a tokio stream's fd, `TCP_DEFER_ACCEPT`).
/// A failure (an fd that is not a TCP socket, an option the kernel lacks) is ignored.
#[cfg(target_os = "linux")]
pub(crate) fn set_tcp_option(fd: std::os::fd::RawFd, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt(2) reads `size_of::<c_int>()` bytes from a c_int on the stack for
    // the duration of the call; on an fd that is not a TCP socket it fails, harmlessly.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
