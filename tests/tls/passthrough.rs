//! `tls::peek_sni` on real sockets: the name is read while every byte stays for the relay,
//! also when the ClientHello arrives in pieces; and the ways it ends without a name.

use super::*;
use fulcrum::tls::{peek_sni, PeekError, SniError};

/// A real ClientHello for `sni`, as the first flight of a rustls client.
fn hello(sni: &str) -> Vec<u8> {
    let c = insecure_client(&["h2"]);
    let mut conn = rustls::ClientConnection::new(Arc::new(c), name(sni)).expect("client starts");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("to a Vec");
    }
    out
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    c.set_nodelay(true).unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

#[tokio::test]
async fn the_name_is_read_and_the_bytes_stay_in_the_socket() {
    let (mut c, mut s) = pair().await;
    let h = hello("a.example");
    c.write_all(&h).await.unwrap();
    let got = peek_sni(&s, 16 * 1024, T).await.expect("a name");
    assert_eq!(got.as_deref(), Some("a.example"));
    let mut relayed = vec![0; h.len()];
    s.read_exact(&mut relayed).await.unwrap();
    assert_eq!(relayed, h, "the relay gets the ClientHello untouched");
}

#[tokio::test]
async fn a_hello_in_two_segments_waits_for_the_second() {
    let (mut c, mut s) = pair().await;
    let h = hello("svc.b.example");
    c.write_all(&h[..40]).await.unwrap();
    let got = {
        let mut peek = Box::pin(peek_sni(&s, 16 * 1024, T));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), peek.as_mut())
                .await
                .is_err(),
            "an incomplete ClientHello keeps it waiting"
        );
        c.write_all(&h[40..]).await.unwrap();
        peek.await
    };
    assert_eq!(got.expect("a name").as_deref(), Some("svc.b.example"));
    let mut all = vec![0; h.len()];
    s.read_exact(&mut all).await.unwrap();
    assert_eq!(all, h);
}

#[tokio::test]
async fn no_name_plain_text_closed_and_timeout() {
    // Plain HTTP.
    let (mut c, s) = pair().await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(matches!(
        peek_sni(&s, 4096, T).await,
        Err(PeekError::Sni(SniError::NotTls))
    ));

    // A client that closes half-way.
    let (mut c, s) = pair().await;
    c.write_all(&hello("a.example")[..30]).await.unwrap();
    drop(c);
    assert!(matches!(
        peek_sni(&s, 4096, T).await,
        Err(PeekError::Closed)
    ));

    // A client that stalls half-way.
    let (mut c, s) = pair().await;
    c.write_all(&hello("a.example")[..30]).await.unwrap();
    let r = peek_sni(&s, 4096, Duration::from_millis(100)).await;
    assert!(matches!(r, Err(PeekError::Timeout)), "{r:?}");
    drop(c);

    // A hello larger than the cap.
    let (mut c, s) = pair().await;
    let h = hello("a.example");
    c.write_all(&h).await.unwrap();
    let r = peek_sni(&s, 64, T).await;
    assert!(
        matches!(r, Err(PeekError::Sni(SniError::TooLarge))),
        "{r:?}"
    );

    // No SNI: connecting by IP.
    let (mut c, s) = pair().await;
    c.write_all(&hello("127.0.0.1")).await.unwrap();
    assert_eq!(peek_sni(&s, 16 * 1024, T).await.expect("a hello"), None);
}
