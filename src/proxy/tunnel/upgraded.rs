//! Relaying an upgraded HTTP connection (WebSocket). The client's side comes from hyper's
//! server as `Upgraded`, a boxed stream behind a replay buffer; the server's side comes from
//! the proxy's own HTTP/1.1 client as its stream and the bytes read past the 101. Where a
//! side is TCP underneath, it is relayed by readiness, with no buffer while idle; bytes read
//! past the upgrade on either side go out first. Anything else (TLS on either side) is
//! relayed as a generic stream with lazily borrowed buffers.

use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::flow::{Flow, Stream};
use super::{run, Active, Cut, Moved, Stops};
use crate::listener::watch::{join, Watched};

/// A connection type that is a TCP stream underneath and can give it back.
pub trait TcpInside: Sized {
    /// The TCP stream, without the wrappers, and what a wrapper had already taken from it
    /// and not yet handed on (it comes after anything hyper read).
    fn into_tcp(self) -> (TcpStream, Bytes);
}

impl TcpInside for TcpStream {
    fn into_tcp(self) -> (TcpStream, Bytes) {
        (self, Bytes::new())
    }
}

impl<T: TcpInside> TcpInside for TokioIo<T> {
    fn into_tcp(self) -> (TcpStream, Bytes) {
        self.into_inner().into_tcp()
    }
}

impl<T: TcpInside, C> TcpInside for Active<T, C> {
    fn into_tcp(self) -> (TcpStream, Bytes) {
        self.io.into_tcp()
    }
}

impl<T: TcpInside> TcpInside for Watched<T> {
    fn into_tcp(self) -> (TcpStream, Bytes) {
        let (tcp, inner) = self.io.into_tcp();
        (tcp, join(self.unread, inner))
    }
}

/// The io type the listener hands hyper for a plain client connection.
pub type ClientIo = TokioIo<Watched<TcpStream>>;

/// Relays an upgraded client connection to the server connection that switched protocols
/// under the proxy's own HTTP/1.1 client; `to_client` is what was read from the server past
/// its 101, and goes out first.
pub async fn relay_upgraded_to(
    client: Upgraded,
    server: crate::proxy::h1::Io,
    to_client: Bytes,
    idle: Duration,
    stops: Stops<'_>,
) -> Result<Moved, Cut> {
    use crate::proxy::h1::Io;
    let client = unwrap::<ClientIo>(client);
    match server {
        Io::Tcp(s) => relay_sides(client, Unwrapped::Tcp(s, to_client), idle, stops).await,
        Io::Tls(mut s) => {
            let from = Flow::starting_with;
            let s = Stream(&mut *s);
            match client {
                Unwrapped::Tcp(mut c, to_server) => {
                    run(&mut c, s, from(to_server), from(to_client), idle, stops).await
                }
                Unwrapped::Other(mut c) => {
                    let c = Stream(&mut c);
                    run(c, s, Flow::default(), from(to_client), idle, stops).await
                }
            }
        }
    }
}

/// Relays an upgraded client connection to its upgraded server connection until both
/// directions end, the tunnel idles out, or one of `stops` fires; moved bytes are (client → server,
/// server → client). `C` and `S` are the io types hyper was given for each side: a side
/// whose boxed io is of that type is unwrapped to its TCP stream, any other is relayed as
/// a generic stream, so a wrong guess costs speed, never bytes.
pub async fn relay_upgraded_as<C, S>(
    client: Upgraded,
    server: Upgraded,
    idle: Duration,
    stops: Stops<'_>,
) -> Result<Moved, Cut>
where
    C: TcpInside + hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: TcpInside + hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let client = unwrap::<C>(client);
    let server = unwrap::<S>(server);
    relay_sides(client, server, idle, stops).await
}

/// One side of an upgraded connection, taken apart as far as its type allows.
enum Unwrapped {
    /// The TCP stream, and what hyper had read from it past the upgrade.
    Tcp(TcpStream, Bytes),
    /// A stream of another type; its read-ahead is still inside.
    Other(TokioIo<Upgraded>),
}

fn unwrap<T>(up: Upgraded) -> Unwrapped
where
    T: TcpInside + hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    match up.downcast::<T>() {
        Ok(parts) => {
            let (tcp, unread) = parts.io.into_tcp();
            Unwrapped::Tcp(tcp, join(parts.read_buf, unread))
        }
        // A failed downcast hands back the `Upgraded` whole, replay buffer included.
        Err(up) => Unwrapped::Other(TokioIo::new(up)),
    }
}

/// Relays the two sides: by readiness where both are TCP, generically otherwise. What hyper
/// read from one side past the upgrade is bound for the other and goes out first.
async fn relay_sides(
    client: Unwrapped,
    server: Unwrapped,
    idle: Duration,
    stops: Stops<'_>,
) -> Result<Moved, Cut> {
    use Unwrapped::{Other, Tcp};
    let from = Flow::starting_with;
    match (client, server) {
        (Tcp(mut c, to_server), Tcp(mut s, to_client)) => {
            run(
                &mut c,
                &mut s,
                from(to_server),
                from(to_client),
                idle,
                stops,
            )
            .await
        }
        (Tcp(mut c, to_server), Other(mut s)) => {
            let s = Stream(&mut s);
            run(&mut c, s, from(to_server), Flow::default(), idle, stops).await
        }
        (Other(mut c), Tcp(mut s, to_client)) => {
            let c = Stream(&mut c);
            run(c, &mut s, Flow::default(), from(to_client), idle, stops).await
        }
        (Other(mut c), Other(mut s)) => {
            let (c, s) = (Stream(&mut c), Stream(&mut s));
            run(c, s, Flow::default(), Flow::default(), idle, stops).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{header, Request, Response, StatusCode};
    use http_body_util::Empty;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;

    /// A hyper client's io for a plain server connection (the tests' upstream side).
    type ServerIo = TokioIo<TcpStream>;

    const IDLE: Duration = Duration::from_secs(30);
    const LIMIT: Duration = Duration::from_secs(10);

    /// An origin that answers one upgrade with a 101 followed at once by `HELLO` (in the
    /// same write, so hyper's client reads past the 101), then echoes until EOF.
    async fn origin() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            let end = loop {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "origin: EOF inside the request head");
                got.extend_from_slice(&chunk[..n]);
                if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
            };
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nHELLO")
                .await
                .unwrap();
            s.write_all(&got[end..]).await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        addr
    }

    /// A hyper server on io of type [`ClientIo`] that forwards one upgrade to `origin`
    /// through a hyper client on [`ServerIo`], and relays the two upgraded sides with
    /// `relay_sides` after unwrapping them as `C` and `S`. Reports what hyper had read past
    /// the upgrade on each side that came out as TCP (`None`: not unwrapped), then the
    /// relay's result.
    async fn proxy<C, S>(
        origin: std::net::SocketAddr,
    ) -> (
        std::net::SocketAddr,
        oneshot::Receiver<(Option<Bytes>, Option<Bytes>, Result<Moved, Cut>)>,
    )
    where
        C: TcpInside + hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: TcpInside + hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = l.accept().await.unwrap();
            let io: ClientIo = TokioIo::new(Watched::new(
                stream,
                std::sync::Arc::new(crate::listener::watch::ConnWatch::new(true)),
            ));
            let tx = std::sync::Mutex::new(Some(tx));
            let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let tx = tx.lock().unwrap().take();
                async move {
                    let up = TcpStream::connect(origin).await.unwrap();
                    let (mut send, conn) = hyper::client::conn::http1::handshake::<
                        ServerIo,
                        Empty<Bytes>,
                    >(TokioIo::new(up))
                    .await
                    .unwrap();
                    tokio::spawn(conn.with_upgrades());
                    let fwd = Request::get("/")
                        .header(header::HOST, "origin")
                        .header(header::CONNECTION, "upgrade")
                        .header(header::UPGRADE, "echo")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let mut resp = send.send_request(fwd).await.unwrap();
                    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
                    let client_up = hyper::upgrade::on(&mut req);
                    let server_up = hyper::upgrade::on(&mut resp);
                    tokio::spawn(async move {
                        let (c, s) = tokio::try_join!(client_up, server_up).unwrap();
                        let (c, s) = (unwrap::<C>(c), unwrap::<S>(s));
                        let ahead = |u: &Unwrapped| match u {
                            Unwrapped::Tcp(_, b) => Some(b.clone()),
                            Unwrapped::Other(_) => None,
                        };
                        let (ca, sa) = (ahead(&c), ahead(&s));
                        let never = crate::proxy::tunnel::NeverStops::default();
                        let r = relay_sides(c, s, IDLE, never.stops()).await;
                        let _ = tx.unwrap().send((ca, sa, r));
                    });
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header(header::CONNECTION, "upgrade")
                            .header(header::UPGRADE, "echo")
                            .body(Empty::<Bytes>::new())
                            .unwrap(),
                    )
                }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades()
                .await
                .unwrap();
        });
        (addr, rx)
    }

    /// Sends an upgrade with `EARLY` right behind it (so hyper's server reads past the head),
    /// then `MORE`, then EOF; returns everything received after the 101's head.
    async fn client(proxy: std::net::SocketAddr) -> Vec<u8> {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: proxy\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nEARLY",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        // HELLO and the echoed EARLY, then MORE's echo after it is sent.
        while !got.ends_with(b"HELLOEARLY") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client: EOF before HELLOEARLY: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"MORE").await.unwrap();
        s.shutdown().await.unwrap();
        s.read_to_end(&mut got).await.unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        got.split_off(head_end)
    }

    type Seen = (Option<Bytes>, Option<Bytes>, Result<Moved, Cut>, Vec<u8>);

    async fn round_trip<C, S>() -> Seen
    where
        C: TcpInside + hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: TcpInside + hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (addr, done) = proxy::<C, S>(origin().await).await;
        let got = tokio::time::timeout(LIMIT, client(addr))
            .await
            .expect("the upgraded exchange completes");
        let (c, s, r) = tokio::time::timeout(LIMIT, done)
            .await
            .expect("the relay ends after both EOFs")
            .unwrap();
        (c, s, r, got)
    }

    #[tokio::test]
    async fn todays_io_types_unwrap_to_tcp_and_read_ahead_bytes_go_first() {
        let (c, s, r, got) = round_trip::<ClientIo, ServerIo>().await;
        // One write each, so hyper read these past the heads: the relay must send them first.
        assert_eq!(
            c.as_deref(),
            Some(&b"EARLY"[..]),
            "client side: TCP, EARLY read ahead"
        );
        assert_eq!(
            s.as_deref(),
            Some(&b"HELLO"[..]),
            "server side: TCP, HELLO read ahead"
        );
        assert_eq!(got, b"HELLOEARLYMORE", "bytes after the 101, in order");
        // client -> server: EARLY MORE; server -> client: HELLO EARLY MORE.
        assert_eq!(r.unwrap(), (9, 14), "bytes moved each way");
    }

    #[tokio::test]
    async fn other_io_types_fall_back_to_the_generic_relay_with_the_same_bytes() {
        // Each side named with the other's type: neither downcast matches.
        let (c, s, r, got) = round_trip::<ServerIo, ClientIo>().await;
        assert!(
            c.is_none() && s.is_none(),
            "neither side unwrapped: {c:?} {s:?}"
        );
        assert_eq!(got, b"HELLOEARLYMORE", "bytes after the 101, in order");
        assert_eq!(r.unwrap(), (9, 14), "bytes moved each way");
    }
}
