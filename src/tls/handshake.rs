//! The two handshakes the proxy performs: [`accept`] a client (server side) and [`connect`] to
//! a server (client side), each bounded by a deadline, and what a failed one is called.
//!
//! Nothing here logs. A failed accept returns a [`HandshakeError`] whose
//! [`reason`](HandshakeError::reason) is one of [`HandshakeReason::ALL`], a bounded set meant
//! as the `reason` label of `fulcrum_tls_handshake_errors_total`; the caller counts it and
//! logs at debug, so a flood of bad clients floods neither the log nor the metric registry.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, PeerIncompatible, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{client, LazyConfigAcceptor, TlsConnector};

use super::x509;

/// The application protocol agreed by ALPN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`: serve HTTP/2 only on this connection.
    H2,
    /// `http/1.1`: serve HTTP/1.1 only.
    Http11,
    /// No ALPN (the client offered none, or the listener has none): HTTP/1.1.
    Absent,
    /// Another protocol (tcp listeners with their own `alpn` list).
    Other(String),
}

/// What a successful handshake settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// ALPN result.
    pub alpn: Alpn,
    /// The SNI the client sent, lower-case.
    pub sni: Option<String>,
    /// The verified client certificate as a header value
    /// (`Subject="CN=alice";DNS=alice.example;URI=...`), when the client sent one.
    pub client_cert: Option<String>,
    /// "TLSv1.3" or "TLSv1.2".
    pub version: &'static str,
    /// The session was resumed (ticket or cache), not a full handshake.
    pub resumed: bool,
}

/// Why a handshake failed: a bounded set, for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeReason {
    /// Not finished within the deadline.
    Timeout,
    /// The peer closed or reset the connection mid-handshake.
    Eof,
    /// The first bytes are not a TLS record (plain HTTP to a TLS port, say).
    NotTls,
    /// No TLS version in common (TLS 1.1 and older, or 1.2 against `min_version = "1.3"`).
    ProtocolVersion,
    /// No cipher suite, key-exchange group or signature scheme in common.
    NoSharedCipher,
    /// The client offered ALPN protocols, none of which the listener speaks.
    NoAlpn,
    /// A certificate was presented and failed verification.
    BadCertificate,
    /// `client_auth` mode "require", and the client sent no certificate.
    NoClientCertificate,
    /// `sni_strict`, and the SNI was missing or matched no certificate.
    UnknownSni,
    /// The peer aborted with an alert (often: it does not trust our certificate).
    PeerAlert,
    /// The peer broke the protocol (malformed or unexpected messages).
    Malformed,
    /// Anything else (local I/O errors included).
    Other,
}

impl HandshakeReason {
    /// Every reason, in label form, to pre-create metric series.
    pub const ALL: [HandshakeReason; 12] = [
        HandshakeReason::Timeout,
        HandshakeReason::Eof,
        HandshakeReason::NotTls,
        HandshakeReason::ProtocolVersion,
        HandshakeReason::NoSharedCipher,
        HandshakeReason::NoAlpn,
        HandshakeReason::BadCertificate,
        HandshakeReason::NoClientCertificate,
        HandshakeReason::UnknownSni,
        HandshakeReason::PeerAlert,
        HandshakeReason::Malformed,
        HandshakeReason::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeReason::Timeout => "timeout",
            HandshakeReason::Eof => "eof",
            HandshakeReason::NotTls => "not_tls",
            HandshakeReason::ProtocolVersion => "protocol_version",
            HandshakeReason::NoSharedCipher => "no_shared_cipher",
            HandshakeReason::NoAlpn => "no_alpn",
            HandshakeReason::BadCertificate => "bad_certificate",
            HandshakeReason::NoClientCertificate => "no_client_certificate",
            HandshakeReason::UnknownSni => "unknown_sni",
            HandshakeReason::PeerAlert => "peer_alert",
            HandshakeReason::Malformed => "malformed",
            HandshakeReason::Other => "other",
        }
    }

    /// The reason behind an I/O error from a handshake (client or server side); useful for
    /// upstream [`connect`] failures too.
    pub fn of_io(e: &io::Error) -> HandshakeReason {
        classify(e, false)
    }
}

/// A failed [`accept`].
#[derive(Debug)]
pub struct HandshakeError {
    reason: HandshakeReason,
    sni: Option<String>,
    source: Option<io::Error>,
}

impl HandshakeError {
    /// The metric label (one of [`HandshakeReason::ALL`]).
    pub fn reason(&self) -> &'static str {
        self.reason.as_str()
    }

    /// The reason as a value.
    pub fn kind(&self) -> HandshakeReason {
        self.reason
    }

    /// The SNI the client sent, when it got that far (for the debug log).
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed ({})", self.reason.as_str())?;
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A fatal `unrecognized_name` alert (RFC 6066 §3), sent in the clear before any key exists.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Performs the server side of a TLS handshake on an accepted connection within `timeout`.
pub async fn accept(
    stream: TcpStream,
    cfg: &Arc<ServerConfig>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, Negotiated), HandshakeError> {
    match tokio::time::timeout(timeout, handshake(stream, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError {
            reason: HandshakeReason::Timeout,
            sni: None,
            source: None,
        }),
    }
}

async fn handshake(
    stream: TcpStream,
    cfg: &Arc<ServerConfig>,
) -> Result<(TlsStream<TcpStream>, Negotiated), HandshakeError> {
    // Read the ClientHello first: it tells plain HTTP from TLS, and lets a strict listener
    // refuse an unknown name with the right alert before any work is spent.
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
        .await
        .map_err(|e| HandshakeError {
            reason: classify(&e, true),
            sni: None,
            source: Some(e),
        })?;
    let hello = start.client_hello();
    let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
    let legacy_only = !hello
        .cipher_suites()
        .iter()
        .any(|s| modern_suite(u16::from(*s)));
    if cfg.cert_resolver.resolve(hello).is_none() {
        let mut io = start.io;
        // Best effort: the client may be gone already.
        let _ = io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
        return Err(HandshakeError {
            reason: HandshakeReason::UnknownSni,
            sni,
            source: None,
        });
    }
    let tls = match start.into_stream(cfg.clone()).await {
        Ok(tls) => tls,
        Err(e) => {
            let reason = match classify(&e, false) {
                // A client that offers only pre-TLS 1.2 suites (CBC, RC4...) is an old client:
                // rustls compares suites before versions, but the version is what is missing.
                HandshakeReason::NoSharedCipher if legacy_only => HandshakeReason::ProtocolVersion,
                r => r,
            };
            return Err(HandshakeError {
                reason,
                sni,
                source: Some(e),
            });
        }
    };
    let conn = tls.get_ref().1;
    let alpn = match conn.alpn_protocol() {
        None => Alpn::Absent,
        Some(b"h2") => Alpn::H2,
        Some(b"http/1.1") => Alpn::Http11,
        Some(other) => Alpn::Other(String::from_utf8_lossy(other).into_owned()),
    };
    let negotiated = Negotiated {
        alpn,
        sni,
        client_cert: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| x509::describe_client(der)),
        version: match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLSv1.3",
        },
        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
    };
    Ok((tls, negotiated))
}

/// Performs the client side of a TLS handshake with a server within `timeout`. A failure is
/// an `io::Error` (`TimedOut` on the deadline); [`HandshakeReason::of_io`] names it.
pub async fn connect(
    stream: TcpStream,
    cfg: &Arc<ClientConfig>,
    server_name: ServerName<'static>,
    timeout: Duration,
) -> io::Result<client::TlsStream<TcpStream>> {
    let connector = TlsConnector::from(cfg.clone());
    match tokio::time::timeout(timeout, connector.connect(server_name, stream)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake with the server timed out",
        )),
    }
}

/// Cipher suites that exist only in TLS 1.2 and later: the TLS 1.3 suites and the AEAD
/// (GCM, CCM, ChaCha20-Poly1305) suites of TLS 1.2 (IANA TLS cipher suite registry).
fn modern_suite(id: u16) -> bool {
    matches!(id, 0x1301..=0x1305 | 0x009c..=0x00a7 | 0xc02b..=0xc032 | 0xc09c..=0xc0af | 0xcca8..=0xccae)
}

/// `in_hello`: the error came while reading the first flight, where garbage means "not TLS".
fn classify(e: &io::Error, in_hello: bool) -> HandshakeReason {
    use rustls::Error as E;
    use rustls::InvalidMessage as M;
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeReason::Eof,
            io::ErrorKind::TimedOut => HandshakeReason::Timeout,
            _ => HandshakeReason::Other,
        };
    };
    match err {
        E::InvalidMessage(M::InvalidContentType | M::UnknownProtocolVersion) if in_hello => {
            HandshakeReason::NotTls
        }
        E::InvalidMessage(_)
        | E::PeerMisbehaved(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::DecryptError
        | E::PeerSentOversizedRecord => HandshakeReason::Malformed,
        E::PeerIncompatible(p) => match p {
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            // signature_algorithms is a TLS 1.2 extension (RFC 5246 §7.4.1.4.1): a ClientHello
            // without it comes from a TLS 1.0/1.1 client.
            | PeerIncompatible::SignatureAlgorithmsExtensionRequired => {
                HandshakeReason::ProtocolVersion
            }
            PeerIncompatible::NoCipherSuitesInCommon
            | PeerIncompatible::NoKxGroupsInCommon
            | PeerIncompatible::NoSignatureSchemesInCommon
            | PeerIncompatible::NoEcPointFormatsInCommon
            | PeerIncompatible::UncompressedEcPointsRequired
            | PeerIncompatible::NullCompressionRequired
            | PeerIncompatible::KeyShareExtensionRequired
            | PeerIncompatible::NamedGroupsExtensionRequired
            | PeerIncompatible::EcPointsExtensionRequired => HandshakeReason::NoSharedCipher,
            _ => HandshakeReason::Other,
        },
        E::NoApplicationProtocol => HandshakeReason::NoAlpn,
        E::NoCertificatesPresented => HandshakeReason::NoClientCertificate,
        E::InvalidCertificate(_) => HandshakeReason::BadCertificate,
        E::AlertReceived(_) => HandshakeReason::PeerAlert,
        _ => HandshakeReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(HandshakeReason::of_io(&eof), HandshakeReason::Eof);
        let plain = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(classify(&plain, true), HandshakeReason::NotTls);
        assert_eq!(classify(&plain, false), HandshakeReason::Malformed);
        let alpn = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoApplicationProtocol,
        );
        assert_eq!(HandshakeReason::of_io(&alpn), HandshakeReason::NoAlpn);
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = HandshakeReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), HandshakeReason::ALL.len());
    }
}
