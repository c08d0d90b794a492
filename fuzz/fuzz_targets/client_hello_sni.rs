//! Fuzz target: the passthrough ClientHello SNI reader must never panic, must return only
//! DNS-shaped names, and must call NotTls only what does not start like a TLS record.
#![no_main]

use fulcrum::tls::{client_hello_sni, SniError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match client_hello_sni(data) {
        Ok(Some(name)) => {
            assert!(!name.is_empty() && name.len() <= 253);
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        }
        Err(SniError::NotTls) => {
            assert!(data.first() != Some(&0x16) || data.get(1).is_some_and(|b| *b != 3));
        }
        _ => {}
    }
});
