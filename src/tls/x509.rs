//! The few X.509 facts fulcrum needs from a certificate: names (SAN, else CN), serial,
//! validity, subject; and the one-line description of a verified client certificate that an
//! http listener forwards upstream. Parsing only: no verification happens here (rustls and
//! webpki verify), and nothing here reads files.

use std::fmt::Write as _;
use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Facts about one certificate.
#[derive(Clone, Debug)]
pub(crate) struct Facts {
    /// DNS names from the SAN extension, lower-case; the CN when there is no DNS SAN.
    pub dns_names: Vec<String>,
    /// Serial number, lower-case hex without separators.
    pub serial: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Subject, RFC 4514-like ("CN=a.example, O=Example").
    pub subject: String,
}

/// Parses `der`; the error is the parser's own words.
pub(crate) fn facts(der: &[u8]) -> Result<Facts, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if !d.is_empty() && !dns_names.contains(&d) {
                    dns_names.push(d);
                }
            }
        }
    }
    if dns_names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            dns_names.push(cn.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    Ok(Facts {
        dns_names,
        serial: hex(cert.tbs_certificate.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        subject: cert.subject().to_string(),
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A verified client certificate as one header-safe line, in the style of Envoy's
/// `x-forwarded-client-cert`: `Subject="CN=alice,O=Example";DNS=alice.example;URI=spiffe://x`
/// (`DNS`, `URI`, `IP`, `Email` repeat once per SAN entry). Only visible ASCII is kept: other
/// bytes become `\xNN`, and `"` and `\` inside the subject are escaped with `\`, so the value
/// is always a valid header value and cannot be confused with the separators.
pub(crate) fn describe_client(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut out = String::with_capacity(128);
    out.push_str("Subject=\"");
    for c in cert.subject().to_string().chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            let (key, value) = match n {
                GeneralName::DNSName(d) => ("DNS", d.to_string()),
                GeneralName::URI(u) => ("URI", u.to_string()),
                GeneralName::RFC822Name(e) => ("Email", e.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => (
                        "IP",
                        IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string(),
                    ),
                    16 => (
                        "IP",
                        IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string(),
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            out.push(';');
            out.push_str(key);
            out.push('=');
            for c in value.chars() {
                match c {
                    // The separators of this format, and anything not visible ASCII.
                    ';' | ',' | '"' | '\\' => push_escaped(&mut out, c),
                    '!'..='~' => out.push(c),
                    _ => push_escaped(&mut out, c),
                }
            }
        }
    }
    Some(out)
}

fn push_escaped(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        let _ = write!(out, "\\x{b:02x}");
    }
}

/// RFC 3339 for Unix seconds (clamped to the representable range).
pub(crate) fn rfc3339(secs: i64) -> String {
    let t = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
    } else {
        std::time::UNIX_EPOCH
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_keep_the_value_a_valid_header() {
        let mut s = String::new();
        push_escaped(&mut s, 'é');
        assert_eq!(s, "\\xc3\\xa9");
        assert!(http::HeaderValue::from_str(&s).is_ok());
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(facts(b"not der").is_err());
        assert!(describe_client(b"\x30\x03\x02\x01\x01").is_none());
    }
}
