//! Arbitrary bytes as a peer certificate: `PeerIdentity::from_der` (with
//! custom extension OIDs asked for) and `cert inspect` (`summarize_pem`,
//! `summarize_der`, `render_text`), both on the raw bytes and on the bytes
//! wrapped in a PEM CERTIFICATE block, must never panic.
#![no_main]

use std::path::Path;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use portcullis::identity::{PeerIdentity, SpiffeId};
use portcullis::inspect;

fn oids() -> Vec<String> {
    vec![
        "1.3.6.1.4.1.99999.1".to_string(),
        "1.3.6.1.4.1.99999.2".to_string(),
        // SAN and basic constraints: standard extensions read as custom ones.
        "2.5.29.17".to_string(),
        "2.5.29.19".to_string(),
    ]
}

fuzz_target!(|data: &[u8]| {
    let oids = oids();
    if let Ok(id) = PeerIdentity::from_der(data, &oids) {
        // X.509-SVID rule: a SPIFFE ID only from exactly one URI SAN.
        if let Some(spiffe) = &id.spiffe_id {
            assert_eq!(id.uris.len(), 1, "{id:?}");
            assert_eq!(spiffe.as_str(), id.uris[0]);
            assert_eq!(SpiffeId::parse(&id.uris[0]).as_ref(), Ok(spiffe));
        }
        assert!(id.serial.chars().all(|c| c.is_ascii_hexdigit()));
        for (oid, values) in &id.extensions {
            assert!(oids.contains(oid));
            assert!(!values.is_empty());
        }
        let _ = id.display_name();
        let _ = id.to_string();
    }

    let path = Path::new("fuzz.pem");
    if let Ok(summaries) = inspect::summarize_pem(data, path) {
        let _ = inspect::render_text(&summaries, 1_700_000_000);
    }
    if let Ok(summary) = inspect::summarize_der(data) {
        let _ = inspect::render_text(&[summary.clone()], summary.not_after);
        let _ = inspect::render_text(&[summary], i64::MIN);
    }
    // Most inputs are DER: also feed them through the PEM path.
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    match inspect::summarize_pem(pem.as_bytes(), path) {
        Ok(summaries) => {
            assert_eq!(summaries.len(), 1);
            let _ = inspect::render_text(&summaries, i64::MAX);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
