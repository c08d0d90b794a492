//! A tiny blocking HTTP/1.1 client for the command line's talks with a running fulcrum's
//! admin listener (`fulcrum probe`, `fulcrum check --against http://...`). No async runtime,
//! no dependencies: one request per connection, `Connection: close`, the whole answer read.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An admin endpoint: `HOST:PORT`, `http://HOST:PORT` (any path after it is ignored).
pub fn parse_target(s: &str) -> io::Result<(SocketAddr, String)> {
    let rest = s.strip_prefix("http://").unwrap_or(s);
    if s.starts_with("https://") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the admin listener speaks plain HTTP; use http://HOST:PORT",
        ));
    }
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr = hostport.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{hostport}: no address"))
    })?;
    Ok((addr, hostport.to_string()))
}

/// A response: status and body.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body, lossily decoded.
    pub body: String,
}

/// Sends one request and reads the whole response.
pub fn request(
    target: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Answer> {
    let (addr, host) = parse_target(target)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&buf[end + 4..]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("http://127.0.0.1:9901/status").unwrap().0,
            "127.0.0.1:9901".parse().unwrap()
        );
        assert_eq!(
            parse_target("127.0.0.1:9").unwrap().1,
            "127.0.0.1:9".to_string()
        );
        assert!(parse_target("https://127.0.0.1:9").is_err());
    }
}
