//! The HTTP/1.1 client against scripted servers on loopback: each test's server reads one
//! request head (and whatever body it is told to expect) and writes exact bytes back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;

const LIMIT: Duration = Duration::from_secs(10);

/// A server that, for each request on its one connection, reads up to the end of the head
/// and answers with the next of `answers`; it then keeps the connection open until the
/// client closes it. What it received is sent on `got`.
async fn scripted(
    answers: Vec<&'static [u8]>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut have = Vec::new();
        let mut chunk = [0u8; 4096];
        for answer in answers {
            let end = loop {
                if let Some(p) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                have.extend_from_slice(&chunk[..n]);
            };
            let _ = tx.send(have.drain(..end).collect());
            s.write_all(answer).await.unwrap();
        }
        // Hold the connection until the client goes, passing on anything more it sends.
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    have.extend_from_slice(&chunk[..n]);
                    let _ = tx.send(std::mem::take(&mut have));
                }
            }
        }
    });
    (addr, rx)
}

async fn conn(addr: SocketAddr) -> Box<Conn> {
    let s = TcpStream::connect(addr).await.unwrap();
    Conn::new(Io::Tcp(s), addr, CancellationToken::new())
}

fn get(path: &str) -> Request<ReqBody> {
    Request::get(path)
        .header("host", "origin")
        .body(ReqBody::Empty)
        .unwrap()
}

/// Sends `req` on `c` and returns the response head as `send` hands it on.
async fn answered(c: Box<Conn>, req: Request<ReqBody>) -> Result<Response<RespIn>, Error> {
    tokio::time::timeout(
        LIMIT,
        send(c, &mut Outgoing::new(req, false), &Forwarding::default()),
    )
    .await
    .expect("answered")
}

/// Reads a response's whole body: its data, its trailers, and the connection if it may be
/// reused.
async fn read_whole(
    resp: Response<RespIn>,
) -> Result<(Bytes, Option<HeaderMap>, Option<Box<Conn>>), Error> {
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(LIMIT, body.frame())
        .await
        .expect("body")
    {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((Bytes::from(data), trailers, body.take_reusable()))
}

/// Sends `req` and reads the whole response: status, body, trailers, and the connection
/// if it may be reused.
async fn exchange(
    c: Box<Conn>,
    req: Request<ReqBody>,
) -> Result<(StatusCode, Bytes, Option<HeaderMap>, Option<Box<Conn>>), Error> {
    let resp = answered(c, req).await?;
    let status = resp.status();
    let (data, trailers, again) = read_whole(resp).await?;
    Ok((status, data, trailers, again))
}

#[tokio::test]
async fn a_content_length_body_is_read_exactly_and_the_connection_is_reused() {
    let (addr, mut got) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye",
    ])
    .await;
    let (status, body, _, again) = exchange(conn(addr).await, get("/a?x=1")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    let head = got.recv().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&head),
        "GET /a?x=1 HTTP/1.1\r\nhost: origin\r\n\r\n"
    );
    let mut again = again.expect("reusable");
    assert!(again.is_usable());
    let (_, body, _, _) = exchange(again, get("/b")).await.unwrap();
    assert_eq!(&body[..], b"bye");
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_is_decoded() {
    let (addr, _got) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-sum: 42\r\n\r\n",
    ])
    .await;
    let (_, body, trailers, again) = exchange(conn(addr).await, get("/")).await.unwrap();
    assert_eq!(&body[..], b"hello world");
    assert_eq!(trailers.unwrap()["x-sum"], "42");
    assert!(again.is_some(), "a chunked body ends cleanly");
}

#[tokio::test]
async fn a_body_to_the_close_ends_there_and_the_connection_is_not_reused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it")
            .await
            .unwrap();
    });
    let (_, body, _, again) = exchange(conn(addr).await, get("/")).await.unwrap();
    assert_eq!(&body[..], b"all of it");
    assert!(again.is_none());
}

#[tokio::test]
async fn head_204_304_and_interim_responses_frame_as_the_rfc_says() {
    let (addr, _got) = scripted(vec![
        // A HEAD response's Content-Length describes a body that is not sent.
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let head = Request::head("/").body(ReqBody::Empty).unwrap();
    let (status, body, _, c) = exchange(conn(addr).await, head).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    let (status, _, _, c) = exchange(c.unwrap(), get("/")).await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body, _, c) = exchange(c.unwrap(), get("/")).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let (_, body, _, _) = exchange(c.expect("still in step"), get("/")).await.unwrap();
    assert_eq!(&body[..], b"ok", "the connection stayed in step");
}

#[tokio::test]
async fn ambiguous_or_broken_responses_are_protocol_errors() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/9.9 200 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        // Bytes a header value may not hold (values are taken unchecked from httparse).
        b"HTTP/1.1 200 OK\r\nx-a: a\x01b\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: a\x7fb\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 0\r\n\r\n",
        // Obsolete line folding.
        b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 0\r\n\r\n",
        // A body framed by more than `chunked` alone: its coding would be lost on the way
        // to the client (Transfer-Encoding is hop-by-hop), or a layer of chunks left in it.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ] {
        let (addr, _got) = scripted(vec![answer]).await;
        let r = exchange(conn(addr).await, get("/")).await;
        assert!(
            matches!(r, Err(Error::Protocol(_))),
            "{:?}: {:?}",
            String::from_utf8_lossy(answer),
            r.map(|r| r.0)
        );
    }
}

#[tokio::test]
async fn header_values_come_through_byte_for_byte_with_tabs_and_obs_text() {
    let (addr, _got) = scripted(vec![
        b"HTTP/1.1 200 OK\r\nx-a: one\ttwo\r\nx-b: caf\xc3\xa9 \xff\r\nx-c:\r\ncontent-length: 0\r\n\r\n",
    ])
    .await;
    let resp = answered(conn(addr).await, get("/")).await.unwrap();
    let h = resp.headers();
    assert_eq!(h["x-a"].as_bytes(), b"one\ttwo");
    assert_eq!(h["x-b"].as_bytes(), b"caf\xc3\xa9 \xff");
    assert!(h["x-b"].to_str().is_err(), "not visible ASCII");
    assert_eq!(h["x-c"].as_bytes(), b"");
}

/// The response head as `send` hands it on.
async fn head_of(answer: &'static [u8], req: Request<ReqBody>) -> Response<RespIn> {
    let (addr, _got) = scripted(vec![answer]).await;
    answered(conn(addr).await, req).await.unwrap()
}

fn names(resp: &Response<RespIn>) -> Vec<&str> {
    resp.headers().keys().map(|k| k.as_str()).collect()
}

#[tokio::test]
async fn hop_by_hop_fields_are_acted_on_and_not_handed_on() {
    // Keep-alive with a Keep-Alive field, as nginx and Apache answer.
    let r = head_of(
        b"HTTP/1.1 200 OK\r\nServer: o\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\ncontent-length: 0\r\n\r\n",
        get("/"),
    )
    .await;
    assert_eq!(names(&r), ["server", "content-length"]);
    // Connection naming another field, over two Connection fields; Transfer-Encoding with a
    // Content-Length, which must not frame the client's copy.
    let r = head_of(
        b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nx-hop: 1\r\nx-end: 1\r\ncontent-length: 9\r\nConnection: keep-alive, X-Other\r\nx-other: 2\r\nTransfer-Encoding: chunked\r\nProxy-Connection: x\r\n\r\n0\r\n\r\n",
        get("/"),
    )
    .await;
    assert_eq!(names(&r), ["x-end"]);
    // A 101 keeps them: they are the upgrade's.
    let mut up = get("/ws");
    up.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    up.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let r = head_of(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        up,
    )
    .await;
    assert_eq!(names(&r), ["connection", "upgrade"]);
}

#[tokio::test]
async fn a_close_before_the_whole_response_is_an_error_and_keep_alive_rules_hold() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: Chunked \r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ] {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(answer).await.unwrap();
        }
    });
    assert!(matches!(
        exchange(conn(addr).await, get("/")).await,
        Err(Error::Closed)
    ));
    let (_, body, _, again) = exchange(conn(addr).await, get("/")).await.unwrap();
    assert_eq!(
        (&body[..], again.is_some()),
        (&b"ok"[..], false),
        "connection: close"
    );
    let (_, body, _, again) = exchange(conn(addr).await, get("/")).await.unwrap();
    assert_eq!(
        (&body[..], again.is_some()),
        (&b"ok"[..], false),
        "HTTP/1.0 without keep-alive"
    );
    // Transfer-Encoding in HTTP/1.0 is faulty framing: the body is read (`chunked` in any
    // case, padded), and the connection goes even though the server said keep-alive.
    let (_, body, _, again) = exchange(conn(addr).await, get("/")).await.unwrap();
    assert_eq!(
        (&body[..], again.is_some()),
        (&b"ok"[..], false),
        "HTTP/1.0 with Transfer-Encoding"
    );
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_or_wrote_to_is_not_usable() {
    let (addr, _got) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"]).await;
    let (_, body, _, again) = exchange(conn(addr).await, get("/")).await.unwrap();
    assert_eq!(&body[..], b"ok");
    assert!(again.is_none(), "bytes past the response: out of step");

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        drop(s);
        let _ = closed_tx.send(());
    });
    let (_, _, _, again) = exchange(conn(addr).await, get("/")).await.unwrap();
    let mut again = again.expect("reusable when it ended");
    closed_rx.await.unwrap();
    // The FIN may take a moment to be seen on loopback; it is seen without a request.
    let mut usable = true;
    for _ in 0..100 {
        usable = again.is_usable();
        if !usable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!usable, "a connection the server closed is not taken");
}

#[tokio::test]
async fn a_streamed_chunked_upload_is_framed_and_a_server_that_answers_first_still_gets_it_all() {
    // The server answers as soon as it has the head, then echoes the body as it arrives
    // (as a streaming service does), so the upload must go on after the response head.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut have = Vec::new();
        let mut chunk = [0u8; 1024];
        while !have.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            have.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        while !have.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF inside the upload");
            have.extend_from_slice(&chunk[..n]);
            s.write_all(format!("{:x}\r\n", n).as_bytes())
                .await
                .unwrap();
            s.write_all(&chunk[..n]).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let _ = seen_tx.send(have);
    });
    // A body of unknown length from a channel: a real client body, fed piece by piece.
    let (mut feed, incoming) = hyper_body_pair().await;
    let body = client_body(incoming);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/up")
        .header("host", "origin")
        .header("transfer-encoding", "chunked")
        .body(body)
        .unwrap();
    let c = conn(addr).await;
    let resp = tokio::time::timeout(
        LIMIT,
        send(c, &mut Outgoing::new(req, false), &Forwarding::default()),
    )
    .await
    .unwrap()
    .ok()
    .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "answered before the upload ended"
    );
    let feeder = tokio::spawn(async move {
        for piece in ["one,", "two,", "three"] {
            feed.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        feed.write_all(b"0\r\n\r\n").await.unwrap();
        feed
    });
    let body = tokio::time::timeout(LIMIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    // The server echoes what it read off the wire: the upload, chunk framing and all.
    assert_eq!(
        String::from_utf8_lossy(&body),
        "4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n",
        "the whole upload went out after the response head came back"
    );
    let seen = seen_rx.await.unwrap();
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.starts_with("POST /up HTTP/1.1\r\n")
            && seen.contains("transfer-encoding: chunked\r\n"),
        "{seen}"
    );
    drop(feeder.await.unwrap());
}

/// A real hyper `Incoming` body fed from the returned socket: a hyper server on loopback
/// hands over the body of the one request the socket sends.
async fn hyper_body_pair() -> (TcpStream, hyper::body::Incoming) {
    let (addr, body) = body_server(false).await;
    let mut feed = TcpStream::connect(addr).await.unwrap();
    feed.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    (feed, body.await.unwrap())
}

/// A hyper server on loopback (HTTP/1.1, or h2 with `h2`) for one connection: the body of
/// its first request is sent on the receiver; the request is never answered.
async fn body_server(
    h2: bool,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Receiver<hyper::body::Incoming>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let tx = std::sync::Mutex::new(Some(tx));
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(req.into_body());
            }
            async {
                // Never answers: the body is being read elsewhere.
                std::future::pending::<
                    Result<http::Response<http_body_util::Empty<Bytes>>, std::convert::Infallible>,
                >()
                .await
            }
        });
        let io = hyper_util::rt::TokioIo::new(s);
        let _ = if h2 {
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        } else {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
        };
    });
    (addr, rx)
}

#[test]
fn header_names_are_kept_per_connection_as_spelt() {
    let mut names = NameCache::default();
    assert_eq!(names.name(b"x-origin").unwrap(), "x-origin");
    assert_eq!(names.name(b"x-origin").unwrap(), "x-origin");
    // Another spelling is the same name, kept as a spelling of its own.
    assert_eq!(names.name(b"X-Origin").unwrap(), "x-origin");
    assert_eq!(
        names.name(b"Content-Length").unwrap(),
        header::CONTENT_LENGTH
    );
    assert_eq!(
        names.name(b"Content-Length").unwrap(),
        header::CONTENT_LENGTH
    );
    assert_eq!(names.0.len(), 3);
    assert!(names.name(b"bad name").is_err());
    // Past the cap, names are still made, just not kept.
    for i in 0..40 {
        let n = format!("x-n{i}");
        assert_eq!(names.name(n.as_bytes()).unwrap(), n.as_str());
    }
    assert_eq!(names.0.len(), NameCache::MAX);
}

#[tokio::test]
async fn a_sever_reaches_whichever_task_waits_on_the_connection_now() {
    // The first request is answered in one task; a second, in another task, gets a head
    // and a body that stalls (or no head at all). Cancelling the server's token must end
    // the second at once, in its own task, though the connection's sever wait was set up
    // by the first.
    for stall_in_body in [true, false] {
        let answers: Vec<&'static [u8]> = if stall_in_body {
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe",
            ]
        } else {
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        };
        let (addr, mut got) = scripted(answers).await;
        let server = CancellationToken::new();
        let c = Conn::new(
            Io::Tcp(TcpStream::connect(addr).await.unwrap()),
            addr,
            server.child_token(),
        );
        let (status, body, _, again) = tokio::spawn(exchange(c, get("/1"))).await.unwrap().unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        let again = again.expect("reusable");
        let second = tokio::spawn(async move {
            let resp = send(
                again,
                &mut Outgoing::new(get("/2"), false),
                &Forwarding::default(),
            )
            .await?;
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<(), Error>(())
        });
        got.recv().await.expect("first head");
        got.recv().await.expect("second head");
        server.cancel();
        let r = tokio::time::timeout(LIMIT, second)
            .await
            .expect("the sever woke the waiting task")
            .unwrap();
        assert!(
            matches!(r, Err(Error::Severed)),
            "stall in body {stall_in_body}: {r:?}"
        );
    }
}

/// A response head of `fields` fields of 200-byte values, and a 4-byte body.
fn long_head(fields: usize) -> &'static [u8] {
    let mut h = String::from("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n");
    for i in 0..fields {
        h.push_str(&format!("x-field-{i}: {}\r\n", "v".repeat(200)));
    }
    h.push_str("\r\nlong");
    Box::leak(h.into_bytes().into_boxed_slice())
}

/// Sends a GET on `c`; returns the response's `x-field-*` values, its body, and the
/// connection if it may be reused.
async fn fields_of(c: Box<Conn>) -> (Vec<String>, Bytes, Option<Box<Conn>>) {
    let resp = answered(c, get("/")).await.unwrap();
    let fields = resp
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-field-"))
        .map(|(_, v)| v.to_str().unwrap().to_owned())
        .collect();
    let (data, _, again) = read_whole(resp).await.unwrap();
    (fields, data, again)
}

/// A head is read into a small room that grows for a longer head and is taken back to its
/// start between responses. On one connection: a 6 KiB head, then forty short responses
/// (together several times the room), then a 16 KiB head, each read whole and the
/// connection reused throughout.
#[tokio::test]
async fn long_heads_and_many_short_ones_on_one_connection_are_read_whole() {
    let short: &'static [u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-pad: 0123456789abcdef0123456789abcdef0123456789abcdef\r\n\r\nshort";
    let mut answers = vec![long_head(30)];
    answers.extend(std::iter::repeat_n(short, 40));
    answers.push(long_head(80));
    let (addr, _got) = scripted(answers).await;

    let (fields, body, c) = fields_of(conn(addr).await).await;
    assert_eq!(fields, vec!["v".repeat(200); 30]);
    assert_eq!(&body[..], b"long");
    let mut c = c.expect("reusable after the long head");
    for i in 0..40 {
        let (_, body, again) = fields_of(c).await;
        assert_eq!(&body[..], b"short", "response {i}");
        c = again.unwrap_or_else(|| panic!("reusable after response {i}"));
    }
    let (fields, body, _) = fields_of(c).await;
    assert_eq!(fields, vec!["v".repeat(200); 80]);
    assert_eq!(&body[..], b"long");
}

/// The short response every test below answers with.
const SHORT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nshort";

/// Reads `n` short responses on `c`, and checks after each that the room left from where
/// the next read lands is at most the 2 KiB reserved for a head (no growth; 8 KiB reserved
/// for heads, or a buffer kept from a body, would leave more).
async fn shorts_leave_the_buffer_small(mut c: Box<Conn>, n: usize) {
    for i in 0..n {
        let (_, body, again) = fields_of(c).await;
        assert_eq!(&body[..], b"short", "short response {i}");
        c = again.unwrap_or_else(|| panic!("reusable after short response {i}"));
        assert!(
            c.rd.capacity() <= 2 * MIN_READ,
            "after short response {i} the read buffer holds {} bytes",
            c.rd.capacity()
        );
    }
}

/// A connection that only ever gets short responses keeps a read buffer of about 2 KiB
/// (`MIN_READ`), not the 8 KiB a body read reserves: the buffer stays with the connection,
/// idle in the pool included.
#[tokio::test]
async fn short_responses_keep_the_read_buffer_small() {
    let (addr, _got) = scripted(vec![SHORT; 60]).await;
    shorts_leave_the_buffer_small(conn(addr).await, 60).await;
}

/// A response with a 16 KiB body grows the read buffer; the connection gives that back
/// when the body ends, so the short responses after it read into 2 KiB again instead of
/// walking through the large buffer (which an idle connection in the pool would also hold).
#[tokio::test]
async fn a_large_body_leaves_no_large_buffer_behind() {
    let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 16384\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 16384));
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    let mut answers = vec![big];
    answers.extend(std::iter::repeat_n(SHORT, 5));
    let (addr, _got) = scripted(answers).await;
    let (_, body, again) = fields_of(conn(addr).await).await;
    assert_eq!(body.len(), 16384);
    shorts_leave_the_buffer_small(again.expect("reusable after the large body"), 5).await;
}

/// A server on this host that writes a response's head and body apart, with Nagle's
/// algorithm on, sends the body only once the head is acknowledged. The connection
/// acknowledges the head when it needs the rest, and on loopback reads the body in the same
/// poll: the ACK reached the server, and the body came back, inside the `setsockopt` call.
/// Read through the runtime instead, the body would only be seen after another turn of the
/// event loop (a second wake-up of the task for every such response).
#[tokio::test]
async fn a_local_servers_body_held_for_an_ack_is_read_in_the_same_poll() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (written_tx, written) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let (mut have, mut chunk) = (Vec::new(), [0u8; 4096]);
        loop {
            while let Some(p) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                have.drain(..p + 4);
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
                    .unwrap();
                s.write_all(b"hello").unwrap();
                let _ = written_tx.send(());
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => have.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let mut c = conn(addr).await;
    let (mut split, mut at_once) = (0, 0);
    for _ in 0..20 {
        let resp = answered(c, get("/")).await.unwrap();
        // Both pieces written: the body waits in the server's socket for the head's ACK.
        // Nothing acknowledges the head meanwhile: this thread blocks (no poll, no turn of
        // the runtime), and the kernel's delayed ACK is 40 ms away.
        written.recv_timeout(LIMIT).expect("the server answered");
        let mut body = resp.into_body();
        if body.short_rest_pending(1024) {
            split += 1;
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            at_once += usize::from(body.poll_short_rest(&mut cx).is_ready());
        }
        let mut data = Vec::new();
        while let Some(frame) = tokio::time::timeout(LIMIT, body.frame()).await.unwrap() {
            data.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(data, b"hello");
        c = body.take_reusable().expect("reusable");
    }
    drop(c);
    server.join().unwrap();
    // The first heads may be acknowledged at once by the kernel itself (it starts a
    // connection in its quick-ACK mode), their bodies then following unheld.
    assert!(
        split >= 10,
        "only {split} of 20 bodies came apart from their heads"
    );
    assert!(
        at_once * 2 >= split,
        "{at_once} of {split} held-back bodies read in the poll that acknowledged the head"
    );
}

#[tokio::test]
async fn a_body_sent_with_the_head_goes_whole_to_the_next_server_when_the_first_write_fails() {
    // The body's frames are here before its first write fails: its first frame only (the
    // failing write's look ahead takes what follows), or all of them read ahead to its end
    // (as a first attempt that saw the end leaves them). The next server must get all of
    // them, framed as before, not the first frame then the end; and read as a body (as
    // an h2 server's exchange reads it), the kept frames come first, in order.
    for (to_end, next) in [
        (false, Next::Server),
        (true, Next::Server),
        (true, Next::Body),
    ] {
        // HTTP/1: one chunk to a Content-Length; three chunks sent on chunked.
        let (mut feed, incoming) = hyper_body_pair().await;
        feed.write_all(b"5\r\nhello\r\n0\r\n\r\n").await.unwrap();
        retried_whole(client_body(incoming), to_end, next, Some(5), b"hello").await;
        let (mut feed, incoming) = hyper_body_pair().await;
        feed.write_all(b"5\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\n\r\n")
            .await
            .unwrap();
        retried_whole(client_body(incoming), to_end, next, None, b"hello, world").await;
        // h2: 3,000 bytes in ten DATA frames, with a content-length (the body ends when its
        // last frame is taken) and without (it ends with the stream).
        for length in [Some(3000), None] {
            let whole: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
            let (h2, incoming) = h2_body(&whole, 300, length).await;
            retried_whole(client_body(incoming), to_end, next, length, &whole).await;
            drop(h2);
        }
    }
}

/// Where [`retried_whole`] sends a request whose first write failed.
#[derive(Clone, Copy, Debug)]
enum Next {
    /// To an HTTP/1.1 server, through [`send`].
    Server,
    /// Its body read to the end as an `http_body::Body`.
    Body,
}

/// A request body read through [`ClientBody`], with generous limits.
fn client_body(incoming: hyper::body::Incoming) -> ReqBody {
    ReqBody::Client(Box::new(super::super::body::ClientBody::new(
        incoming,
        super::super::body::BodyLimits {
            max: 1 << 20,
            read_idle: LIMIT,
            min_rate: 0,
        },
        std::sync::Arc::new(super::super::body::BodyState::default()),
        None,
    )))
}

/// An h2 client's request body as a hyper server hands it over: `whole` posted in DATA
/// frames of `frame` bytes (with a content-length of `length`, if any). The returned client
/// keeps the stream open.
async fn h2_body(
    whole: &[u8],
    frame: usize,
    length: Option<usize>,
) -> (impl Sized, hyper::body::Incoming) {
    let (addr, body) = body_server(true).await;
    let (client, h2c) = h2::client::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    tokio::spawn(h2c);
    let mut client = client.ready().await.unwrap();
    let mut head = Request::post("http://t/up");
    if let Some(n) = length {
        head = head.header("content-length", n);
    }
    let (response, mut stream) = client.send_request(head.body(()).unwrap(), false).unwrap();
    let pieces: Vec<&[u8]> = whole.chunks(frame).collect();
    for (k, piece) in pieces.iter().enumerate() {
        let d = Bytes::copy_from_slice(piece);
        stream.send_data(d, k + 1 == pieces.len()).unwrap();
    }
    let incoming = tokio::time::timeout(LIMIT, body).await.unwrap().unwrap();
    ((client, response, stream), incoming)
}

/// Reads `body`'s first frame (`to_end`: all of it) ahead, fails its first write (a server
/// that reset the connection), then sends the request on (`next`) and checks that the body
/// got there whole: `length` its Content-Length, else chunked.
async fn retried_whole(
    mut body: ReqBody,
    to_end: bool,
    next: Next,
    length: Option<usize>,
    whole: &[u8],
) {
    let (mut frames, mut seen) = (0, 0);
    loop {
        let peek = std::future::poll_fn(|cx| body.poll_peek(frames, cx));
        match tokio::time::timeout(LIMIT, peek).await.unwrap() {
            Peek::Data(d) => (frames, seen) = (frames + 1, seen + d.len()),
            Peek::End => break,
            Peek::Other => panic!("a frame other than data"),
        }
        if !to_end {
            break;
        }
    }
    if to_end {
        assert_eq!(seen, whole.len(), "the whole body read ahead");
    }
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/up")
        .header("host", "origin");
    req = match length {
        Some(n) => req.header("content-length", n),
        None => req.header("transfer-encoding", "chunked"),
    };
    let req = req.body(body).unwrap();
    // A server connection reset before the request: the first write fails, nothing sent.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (peer, _) = l.accept().await.unwrap();
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    let mut b = [0u8; 1];
    assert!(
        !matches!(s.read(&mut b).await, Ok(n) if n > 0),
        "the reset reached the client side"
    );
    let mut out = Outgoing::new(req, false);
    let c = Conn::new(Io::Tcp(s), addr, CancellationToken::new());
    let r = tokio::time::timeout(LIMIT, send(c, &mut out, &Forwarding::default()))
        .await
        .unwrap();
    assert!(r.is_err(), "a write to a reset connection fails");
    let req = out
        .take_unsent()
        .expect("nothing was written: the request may go elsewhere");
    if let Next::Body = next {
        let rest = tokio::time::timeout(LIMIT, req.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(rest, whole, "the body read on ({length:?})");
        return;
    }
    // The next server reads the request whole (by its framing), then answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let body = &got[at + 4..];
                let whole = match length {
                    Some(n) => body.len() >= n,
                    None => body.ends_with(b"0\r\n\r\n"),
                };
                if whole {
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    return got.split_off(at + 4);
                }
            }
            match s.read(&mut chunk).await.unwrap() {
                0 => return got,
                n => got.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let resp = answered(conn(addr).await, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    let got = match length {
        Some(_) => got,
        None => dechunk(&got),
    };
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(whole),
        "the body the next server got ({length:?}, read ahead to its end: {to_end})"
    );
}

/// A chunked body's data (extensions and trailers are not expected here).
fn dechunk(mut wire: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line = wire
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a size line");
        let size = usize::from_str_radix(std::str::from_utf8(&wire[..line]).unwrap(), 16)
            .expect("a hex size");
        wire = &wire[line + 2..];
        if size == 0 {
            assert_eq!(wire, b"\r\n", "the last chunk ends the body");
            return data;
        }
        data.extend_from_slice(&wire[..size]);
        assert_eq!(&wire[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        wire = &wire[size + 2..];
    }
}

#[test]
fn one_write_gathers_at_most_gather_frames_body_frames_however_small() {
    // A client sending 1-byte chunks: each is a frame, and the frames looked at before the
    // first write are kept (and dropped one by one after it), so their number per write is
    // bounded, not only their bytes. Unbounded, 30,000 such chunks took the proxy 1.3 s.
    let mut out = Out::new(ReqFraming::Chunked);
    let (mut wr, mut segs) = (Vec::new(), Vec::new());
    let mut gathered = 1;
    while out.add(&mut wr, &mut segs, Bytes::from_static(b"x")) {
        gathered += 1;
        assert!(gathered <= 1000, "no bound on the frames in one write");
    }
    assert_eq!(gathered, GATHER_FRAMES as usize);
    assert!(segs.is_empty(), "short frames are copied");
    assert_eq!(
        wr,
        b"1\r\nx\r\n".repeat(GATHER_FRAMES as usize),
        "each chunk framed"
    );
}

/// What the write of `out`'s gathered frames puts on the wire when the socket takes at
/// most `step` bytes a call, as `Out::poll_send` writes it.
fn written(out: &mut Out, wr: &[u8], segs: &mut [(usize, Bytes)], step: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    while out.at < wr.len() || out.seg < segs.len() {
        let mut bufs = [IoSlice::new(&[]); 2 * GATHER_SEGS + 1];
        let k = iovecs(&mut bufs, wr, out.at, &segs[out.seg..]);
        let before = wire.len();
        for b in &bufs[..k] {
            let room = step - (wire.len() - before);
            wire.extend_from_slice(&b[..b.len().min(room)]);
        }
        let n = wire.len() - before;
        assert!(n > 0, "nothing left to write, yet the write goes on");
        out.wrote(wr, segs, n);
    }
    wire
}

#[test]
fn gathered_frames_go_out_in_order_from_where_they_are_whatever_each_write_takes() {
    // Long frames are written from where they are, short ones copied after the head, and
    // past `GATHER_SEGS` long ones the rest are copied too. Whatever a write takes (a full
    // socket takes part of one), the bytes follow in order, each frame once.
    let sizes = [1, 5000, 100, COPY_UNDER, COPY_UNDER - 1, 4096, 3];
    let many = [1500; GATHER_SEGS + 3];
    for (framing, frames) in [
        (ReqFraming::Chunked, &sizes[..]),
        (ReqFraming::Raw, &sizes[..]),
        (ReqFraming::Chunked, &many[..]),
    ] {
        for step in [1, 7, 1000, 4096, usize::MAX / 2] {
            let mut out = Out::new(framing);
            let (mut wr, mut segs) = (b"POST / HTTP/1.1\r\n\r\n".to_vec(), Vec::new());
            let mut want = wr.clone();
            for (i, &len) in frames.iter().enumerate() {
                let d = Bytes::from(vec![b'a' + (i % 26) as u8; len]);
                if framing == ReqFraming::Chunked {
                    want.extend_from_slice(format!("{len:x}\r\n").as_bytes());
                }
                want.extend_from_slice(&d);
                if framing == ReqFraming::Chunked {
                    want.extend_from_slice(b"\r\n");
                }
                out.add(&mut wr, &mut segs, d);
            }
            out.seal(&mut wr);
            if framing == ReqFraming::Chunked {
                want.extend_from_slice(b"0\r\n\r\n");
            }
            let long = frames.iter().filter(|&&l| l >= COPY_UNDER).count();
            assert_eq!(segs.len(), long.min(GATHER_SEGS), "long frames not copied");
            let wire = written(&mut out, &wr, &mut segs, step);
            let chunked = framing == ReqFraming::Chunked;
            assert!(
                wire == want,
                "chunked {chunked}, {step} bytes a write: wire differs"
            );
        }
    }
}
