//! PROXY protocol v2 writer: `encode_v2` with arbitrary addresses and
//! arbitrary (possibly huge) TLV strings.
//!
//! Properties: when Ok, the header starts with the v2 signature, the length
//! field equals the number of bytes after the 16-byte fixed part, the family
//! and addresses are those given, and the TLVs parse back exactly to the end
//! with the values given. Ok exactly when every value fits a TLV and the body
//! fits 65535 bytes (an independent computation of the length).
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis::proxy::proxy_protocol::{encode_v2, TlsPeerInfo, PP2_SIGNATURE};

/// A string, repeated `times` times (so values past 65535 bytes are reached
/// from small inputs).
#[derive(Arbitrary, Debug)]
struct Text {
    text: String,
    times: u16,
}

impl Text {
    fn build(&self) -> String {
        let times = if self.text.is_empty() {
            0
        } else {
            usize::from(self.times)
        };
        // Bound memory: at most ~256 KiB per value.
        let times = times.min((256 * 1024) / self.text.len().max(1));
        self.text.repeat(times.max(1))
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    source: SocketAddr,
    destination: SocketAddr,
    tls_version: Option<Text>,
    common_name: Option<Text>,
    spiffe_id: Option<Text>,
    sni: Option<Text>,
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn tlv(len: usize) -> usize {
    3 + len
}

fuzz_target!(|input: Input| {
    let tls_version = input.tls_version.as_ref().map(Text::build);
    let common_name = input.common_name.as_ref().map(Text::build);
    let spiffe_id = input.spiffe_id.as_ref().map(Text::build);
    let sni = input.sni.as_ref().map(Text::build);
    let peer = TlsPeerInfo {
        tls_version: tls_version.as_deref(),
        common_name: common_name.as_deref(),
        spiffe_id: spiffe_id.as_deref(),
        sni: sni.as_deref(),
    };

    // The expected outcome, computed from the specification.
    let v4 = input.source.is_ipv4() && input.destination.is_ipv4();
    let address_len = if v4 { 12 } else { 36 };
    let mut fits = true;
    let mut body = address_len;
    if let Some(s) = present(&sni) {
        fits &= s.len() <= 65535;
        body += tlv(s.len());
    }
    let any = [&tls_version, &common_name, &spiffe_id, &sni]
        .iter()
        .any(|v| present(v).is_some());
    if any {
        let mut ssl = 5;
        for v in [&tls_version, &common_name] {
            if let Some(s) = present(v) {
                fits &= s.len() <= 65535;
                ssl += tlv(s.len());
            }
        }
        fits &= ssl <= 65535;
        body += tlv(ssl);
    }
    if let Some(s) = present(&spiffe_id) {
        fits &= s.len() <= 65535;
        body += tlv(s.len());
    }
    fits &= body <= 65535;

    let header = match encode_v2(input.source, input.destination, &peer) {
        Ok(header) => header,
        Err(e) => {
            assert!(!fits, "refused a header that fits ({body} bytes): {e}");
            let _ = e.to_string();
            return;
        }
    };
    assert!(fits, "encoded a header that cannot fit ({body} bytes)");

    assert!(header.len() >= 16);
    assert_eq!(&header[..12], &PP2_SIGNATURE);
    assert_eq!(header[12], 0x21, "version 2, command PROXY");
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    assert_eq!(
        length,
        header.len() - 16,
        "length field vs bytes after the fixed part"
    );
    assert_eq!(length, body);

    let rest = &header[16..];
    let (family, tlvs) = if v4 {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (input.source.ip(), input.destination.ip()) else {
            unreachable!()
        };
        assert_eq!(&rest[0..4], &s.octets());
        assert_eq!(&rest[4..8], &d.octets());
        (0x11, &rest[12..])
    } else {
        let v6 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        assert_eq!(&rest[0..16], &v6(input.source.ip()).octets());
        assert_eq!(&rest[16..32], &v6(input.destination.ip()).octets());
        (0x21, &rest[36..])
    };
    assert_eq!(header[13], family);
    let ports = &rest[address_len - 4..address_len];
    assert_eq!(&ports[0..2], &input.source.port().to_be_bytes());
    assert_eq!(&ports[2..4], &input.destination.port().to_be_bytes());

    // Walk the TLVs: they must end exactly at the end of the header.
    let parsed = parse_tlvs(tlvs).expect("TLVs overrun the header");
    let mut expected: Vec<(u8, Vec<u8>)> = Vec::new();
    if let Some(s) = present(&sni) {
        expected.push((0x02, s.as_bytes().to_vec()));
    }
    if any {
        let mut ssl = vec![0x03, 0, 0, 0, 0];
        if let Some(s) = present(&tls_version) {
            ssl.push(0x21);
            ssl.extend_from_slice(&(s.len() as u16).to_be_bytes());
            ssl.extend_from_slice(s.as_bytes());
        }
        if let Some(s) = present(&common_name) {
            ssl.push(0x22);
            ssl.extend_from_slice(&(s.len() as u16).to_be_bytes());
            ssl.extend_from_slice(s.as_bytes());
        }
        expected.push((0x20, ssl));
    }
    if let Some(s) = present(&spiffe_id) {
        expected.push((0xE0, s.as_bytes().to_vec()));
    }
    assert!(parsed == expected, "TLVs differ from the values given");
});

fn parse_tlvs(mut bytes: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 3 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        let value = bytes.get(3..3 + len)?;
        out.push((bytes[0], value.to_vec()));
        bytes = &bytes[3 + len..];
    }
    Some(out)
}
