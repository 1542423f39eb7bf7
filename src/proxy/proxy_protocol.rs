//! PROXY protocol version 2 header writer.
//!
//! When a listener is configured to send a PROXY protocol header, the inbound
//! path writes one header to the backend connection before any application
//! bytes. The header tells the backend the real client address and port and,
//! through TLVs, who the verified TLS peer is, so the backend application can
//! learn its caller without ever seeing the TLS session.
//!
//! Only the encoder lives here: portcullis writes these headers, it never
//! reads them. The format is the binary version 2 of the HAProxy PROXY
//! protocol specification:
//!
//! ```text
//! signature (12) | ver/cmd (1) | family/transport (1) | length (2, BE)
//! | addresses and ports (12 for IPv4, 36 for IPv6) | TLVs
//! ```
//!
//! The TLVs written are, in ascending type order:
//!
//! * `PP2_TYPE_AUTHORITY` (0x02): the SNI host name the client sent;
//! * `PP2_TYPE_SSL` (0x20): present whenever anything at all is known about
//!   the peer (any field of [`TlsPeerInfo`] is set); client flags
//!   `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN`, verify result 0 (the client
//!   certificate was verified), then the sub-TLVs `PP2_SUBTYPE_SSL_VERSION`
//!   (0x21) and `PP2_SUBTYPE_SSL_CN` (0x22) when known;
//! * [`PP2_TYPE_PORTCULLIS_SPIFFE_ID`] (0xE0, from the spec's custom range):
//!   the peer's SPIFFE ID as UTF-8.
//!
//! With [`TlsPeerInfo::default()`] (nothing known about a peer) the header
//! carries only the addresses and no TLV at all. No `PP2_TYPE_CRC32C`
//! checksum is written.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that opens every version 2 header.
pub const PP2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2 in the high nibble, command `PROXY` (0x1) in the low nibble.
pub const PP2_VERSION_COMMAND_PROXY: u8 = 0x21;

/// Address family `AF_INET` (0x1) with transport `STREAM` (0x1).
pub const PP2_FAMILY_TCP_IPV4: u8 = 0x11;

/// Address family `AF_INET6` (0x2) with transport `STREAM` (0x1).
pub const PP2_FAMILY_TCP_IPV6: u8 = 0x21;

/// TLV type carrying the authority (host name) the client asked for; we
/// put the TLS SNI in it.
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// TLV type describing the TLS session; its value holds sub-TLVs.
pub const PP2_TYPE_SSL: u8 = 0x20;

/// Sub-TLV of [`PP2_TYPE_SSL`]: the TLS version as text, e.g. `TLSv1.3`.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;

/// Sub-TLV of [`PP2_TYPE_SSL`]: the Common Name of the client certificate's
/// subject.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;

/// Custom TLV type (spec range 0xE0..=0xEF) carrying the verified peer's
/// SPIFFE ID as UTF-8.
pub const PP2_TYPE_PORTCULLIS_SPIFFE_ID: u8 = 0xE0;

/// Client flag in [`PP2_TYPE_SSL`]: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;

/// Client flag in [`PP2_TYPE_SSL`]: the client presented a certificate on
/// this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// Length of the fixed part: signature, ver/cmd, family, length field.
const FIXED_HEADER_LEN: usize = 16;

/// Length of the address block for IPv4: two addresses and two ports.
const IPV4_ADDRESS_BLOCK_LEN: usize = 4 + 4 + 2 + 2;

/// Length of the address block for IPv6: two addresses and two ports.
const IPV6_ADDRESS_BLOCK_LEN: usize = 16 + 16 + 2 + 2;

/// Fixed part of the [`PP2_TYPE_SSL`] value: client byte and 4-byte verify.
const SSL_FIXED_LEN: usize = 1 + 4;

/// Length of a TLV's type byte plus its 2-byte length.
const TLV_HEADER_LEN: usize = 3;

/// What the header says about the verified TLS peer.
///
/// Every field is optional; a field that is `None` or an empty string is
/// left out of the header. As soon as one field is present, the
/// [`PP2_TYPE_SSL`] TLV is written with flags saying the client connected
/// over TLS and presented a certificate that was verified, since a header is
/// only written for such a peer. When no field is present (the `Default`
/// value), the header carries no TLV at all.
#[derive(Debug, Clone, Default)]
pub struct TlsPeerInfo<'a> {
    /// The negotiated TLS version as text, e.g. `TLSv1.3`
    /// (`PP2_SUBTYPE_SSL_VERSION`).
    pub tls_version: Option<&'a str>,
    /// The Common Name of the peer certificate's subject
    /// (`PP2_SUBTYPE_SSL_CN`).
    pub common_name: Option<&'a str>,
    /// The peer's SPIFFE ID, e.g. `spiffe://example.org/ns/prod/sa/web`
    /// ([`PP2_TYPE_PORTCULLIS_SPIFFE_ID`]).
    pub spiffe_id: Option<&'a str>,
    /// The server name the client sent in its TLS `ClientHello`
    /// (`PP2_TYPE_AUTHORITY`).
    pub sni: Option<&'a str>,
}

/// Error when a header cannot be encoded (a TLV value longer than 65535
/// bytes, or total length overflow).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A TLV (or SSL sub-TLV) value does not fit in its 16-bit length field.
    #[error("PROXY v2 TLV type {tlv_type:#04x} value is {len} bytes, more than 65535")]
    TlvTooLong {
        /// The TLV or sub-TLV type whose value is too long.
        tlv_type: u8,
        /// The length the value would have had.
        len: usize,
    },
    /// The addresses and TLVs together do not fit in the header's 16-bit
    /// length field.
    #[error("PROXY v2 header body is {len} bytes, more than 65535")]
    HeaderTooLong {
        /// The length the body (everything after the length field) would
        /// have had.
        len: usize,
    },
}

/// Encodes a PROXY protocol v2 `PROXY` header for a TCP connection from
/// `source` to `destination`, with TLVs describing the verified TLS `peer`.
///
/// If one address is IPv4 and the other IPv6, the IPv4 one is written in its
/// IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) and the IPv6 family is used.
///
/// # Errors
///
/// [`EncodeError::TlvTooLong`] when a value is longer than a TLV can carry,
/// [`EncodeError::HeaderTooLong`] when the whole header body would be longer
/// than 65535 bytes. The function never panics.
pub fn encode_v2(
    source: SocketAddr,
    destination: SocketAddr,
    peer: &TlsPeerInfo<'_>,
) -> Result<Vec<u8>, EncodeError> {
    let tlvs = encode_tlvs(peer)?;

    let (family, address_block_len) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (PP2_FAMILY_TCP_IPV4, IPV4_ADDRESS_BLOCK_LEN),
        _ => (PP2_FAMILY_TCP_IPV6, IPV6_ADDRESS_BLOCK_LEN),
    };

    let body_len = address_block_len
        .checked_add(tlvs.len())
        .ok_or(EncodeError::HeaderTooLong { len: usize::MAX })?;
    let body_len_u16 =
        u16::try_from(body_len).map_err(|_| EncodeError::HeaderTooLong { len: body_len })?;

    let mut out = Vec::with_capacity(FIXED_HEADER_LEN.saturating_add(body_len));
    out.extend_from_slice(&PP2_SIGNATURE);
    out.push(PP2_VERSION_COMMAND_PROXY);
    out.push(family);
    out.extend_from_slice(&body_len_u16.to_be_bytes());

    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            out.extend_from_slice(&as_ipv6(src).octets());
            out.extend_from_slice(&as_ipv6(dst).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out.extend_from_slice(&tlvs);
    Ok(out)
}

/// The address as IPv6, mapping an IPv4 address to `::ffff:a.b.c.d`.
fn as_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Encodes every TLV for `peer`, in ascending type order.
fn encode_tlvs(peer: &TlsPeerInfo<'_>) -> Result<Vec<u8>, EncodeError> {
    let mut tlvs = Vec::new();

    if let Some(sni) = present(peer.sni) {
        push_tlv(&mut tlvs, PP2_TYPE_AUTHORITY, sni.as_bytes())?;
    }

    let any_present = [peer.tls_version, peer.common_name, peer.spiffe_id, peer.sni]
        .into_iter()
        .any(|field| present(field).is_some());
    if any_present {
        let mut ssl = Vec::with_capacity(SSL_FIXED_LEN);
        ssl.push(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN);
        // verify: 0 means the client certificate was presented and verified.
        ssl.extend_from_slice(&0u32.to_be_bytes());
        if let Some(version) = present(peer.tls_version) {
            push_tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, version.as_bytes())?;
        }
        if let Some(cn) = present(peer.common_name) {
            push_tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes())?;
        }
        push_tlv(&mut tlvs, PP2_TYPE_SSL, &ssl)?;
    }

    if let Some(spiffe_id) = present(peer.spiffe_id) {
        push_tlv(
            &mut tlvs,
            PP2_TYPE_PORTCULLIS_SPIFFE_ID,
            spiffe_id.as_bytes(),
        )?;
    }

    Ok(tlvs)
}

/// `Some` only for a non-empty value.
fn present(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// Appends one TLV (type, 16-bit big-endian length, value) to `out`.
fn push_tlv(out: &mut Vec<u8>, tlv_type: u8, value: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(value.len()).map_err(|_| EncodeError::TlvTooLong {
        tlv_type,
        len: value.len(),
    })?;
    out.reserve(TLV_HEADER_LEN.saturating_add(value.len()));
    out.push(tlv_type);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The encoder is checked against a small decoder written here from the
    //! specification, independently of the encoder's code and constants.

    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

    /// A list of (type, value) pairs, in wire order.
    type TlvList = Vec<(u8, Vec<u8>)>;

    /// A decoded header, as the decoder understood it.
    #[derive(Debug, PartialEq, Eq)]
    struct Decoded {
        family: u8,
        source: SocketAddr,
        destination: SocketAddr,
        /// Top-level TLVs in wire order.
        tlvs: TlvList,
        /// The SSL TLV, if any: client byte, verify, sub-TLVs in order.
        ssl: Option<(u8, u32, TlvList)>,
    }

    impl Decoded {
        fn tlv(&self, tlv_type: u8) -> Option<&[u8]> {
            self.tlvs
                .iter()
                .find(|(t, _)| *t == tlv_type)
                .map(|(_, v)| v.as_slice())
        }

        fn ssl_sub(&self, sub_type: u8) -> Option<&[u8]> {
            self.ssl.as_ref().and_then(|(_, _, subs)| {
                subs.iter()
                    .find(|(t, _)| *t == sub_type)
                    .map(|(_, v)| v.as_slice())
            })
        }
    }

    /// Reads `n` bytes at `*pos`, advancing it.
    fn take<'b>(buf: &'b [u8], pos: &mut usize, n: usize) -> Result<&'b [u8], String> {
        let end = pos
            .checked_add(n)
            .ok_or_else(|| "offset overflow".to_string())?;
        let slice = buf
            .get(*pos..end)
            .ok_or_else(|| format!("truncated: want {n} bytes at {pos}, have {}", buf.len()))?;
        *pos = end;
        Ok(slice)
    }

    fn take_u16(buf: &[u8], pos: &mut usize) -> Result<u16, String> {
        let b = take(buf, pos, 2)?;
        Ok((u16::from(b[0]) << 8) | u16::from(b[1]))
    }

    /// Walks a TLV sequence that must exactly fill `buf`.
    fn walk_tlvs(buf: &[u8]) -> Result<TlvList, String> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < buf.len() {
            let t = take(buf, &mut pos, 1)?[0];
            let len = usize::from(take_u16(buf, &mut pos)?);
            let value = take(buf, &mut pos, len)?.to_vec();
            out.push((t, value));
        }
        Ok(out)
    }

    /// Decodes exactly one v2 PROXY header that must fill `buf`.
    fn decode(buf: &[u8]) -> Result<Decoded, String> {
        let mut pos = 0;
        let sig = take(buf, &mut pos, 12)?;
        if sig
            != [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            ]
        {
            return Err(format!("bad signature {sig:02x?}"));
        }
        let ver_cmd = take(buf, &mut pos, 1)?[0];
        if ver_cmd >> 4 != 2 {
            return Err(format!("bad version {ver_cmd:#04x}"));
        }
        if ver_cmd & 0x0F != 1 {
            return Err(format!("not a PROXY command {ver_cmd:#04x}"));
        }
        let family = take(buf, &mut pos, 1)?[0];
        let len = usize::from(take_u16(buf, &mut pos)?);
        if buf.len() - pos != len {
            return Err(format!(
                "length field {len} but {} bytes follow",
                buf.len() - pos
            ));
        }
        let body = &buf[pos..];
        let mut pos = 0;
        let (source, destination) = match family {
            0x11 => {
                let s = take(body, &mut pos, 4)?;
                let src = Ipv4Addr::new(s[0], s[1], s[2], s[3]);
                let d = take(body, &mut pos, 4)?;
                let dst = Ipv4Addr::new(d[0], d[1], d[2], d[3]);
                let sp = take_u16(body, &mut pos)?;
                let dp = take_u16(body, &mut pos)?;
                (
                    SocketAddr::V4(SocketAddrV4::new(src, sp)),
                    SocketAddr::V4(SocketAddrV4::new(dst, dp)),
                )
            }
            0x21 => {
                let mut s = [0u8; 16];
                s.copy_from_slice(take(body, &mut pos, 16)?);
                let mut d = [0u8; 16];
                d.copy_from_slice(take(body, &mut pos, 16)?);
                let sp = take_u16(body, &mut pos)?;
                let dp = take_u16(body, &mut pos)?;
                (
                    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(s), sp, 0, 0)),
                    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(d), dp, 0, 0)),
                )
            }
            other => return Err(format!("unexpected family/transport {other:#04x}")),
        };
        let tlvs = walk_tlvs(&body[pos..])?;
        let mut ssl = None;
        for (t, v) in &tlvs {
            if *t == 0x20 {
                if ssl.is_some() {
                    return Err("two SSL TLVs".to_string());
                }
                let mut p = 0;
                let client = take(v, &mut p, 1)?[0];
                let vb = take(v, &mut p, 4)?;
                let verify = u32::from_be_bytes([vb[0], vb[1], vb[2], vb[3]]);
                let subs = walk_tlvs(&v[p..])?;
                ssl = Some((client, verify, subs));
            }
        }
        Ok(Decoded {
            family,
            source,
            destination,
            tlvs,
            ssl,
        })
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(
            s.parse().expect("test address"),
            port,
            0,
            0,
        ))
    }

    fn full_peer() -> TlsPeerInfo<'static> {
        TlsPeerInfo {
            tls_version: Some("TLSv1.3"),
            common_name: Some("web"),
            spiffe_id: Some("spiffe://example.org/ns/prod/sa/web"),
            sni: Some("api.internal"),
        }
    }

    fn encode_decode(src: SocketAddr, dst: SocketAddr, peer: &TlsPeerInfo<'_>) -> Decoded {
        let bytes = encode_v2(src, dst, peer).expect("encodes");
        decode(&bytes).expect("decodes")
    }

    #[test]
    fn ipv4_round_trip() {
        let src = v4([10, 1, 2, 3], 51234);
        let dst = v4([127, 0, 0, 1], 8080);
        let d = encode_decode(src, dst, &full_peer());
        assert_eq!(d.family, 0x11);
        assert_eq!(d.source, src);
        assert_eq!(d.destination, dst);
    }

    #[test]
    fn ipv6_round_trip() {
        let src = v6("2001:db8::1", 443);
        let dst = v6("fd00::2:3", 65535);
        let d = encode_decode(src, dst, &full_peer());
        assert_eq!(d.family, 0x21);
        assert_eq!(d.source, src);
        assert_eq!(d.destination, dst);
    }

    #[test]
    fn mixed_families_map_ipv4_source_to_ipv6() {
        let src = v4([192, 0, 2, 7], 40000);
        let dst = v6("2001:db8::5", 9000);
        let d = encode_decode(src, dst, &TlsPeerInfo::default());
        assert_eq!(d.family, 0x21);
        assert_eq!(d.source, v6("::ffff:192.0.2.7", 40000));
        assert_eq!(d.destination, dst);
    }

    #[test]
    fn mixed_families_map_ipv4_destination_to_ipv6() {
        let src = v6("2001:db8::9", 1);
        let dst = v4([127, 0, 0, 1], 0);
        let d = encode_decode(src, dst, &TlsPeerInfo::default());
        assert_eq!(d.family, 0x21);
        assert_eq!(d.source, src);
        assert_eq!(d.destination, v6("::ffff:127.0.0.1", 0));
    }

    #[test]
    fn all_tlvs_present_with_values() {
        let d = encode_decode(
            v4([10, 0, 0, 1], 1000),
            v4([10, 0, 0, 2], 2000),
            &full_peer(),
        );
        let types: Vec<u8> = d.tlvs.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![0x02, 0x20, 0xE0]);
        assert_eq!(d.tlv(0x02), Some(&b"api.internal"[..]));
        assert_eq!(
            d.tlv(0xE0),
            Some(&b"spiffe://example.org/ns/prod/sa/web"[..])
        );
        let (client, verify, subs) = d.ssl.as_ref().expect("SSL TLV");
        assert_eq!(*client, 0x03);
        assert_eq!(*verify, 0);
        let sub_types: Vec<u8> = subs.iter().map(|(t, _)| *t).collect();
        assert_eq!(sub_types, vec![0x21, 0x22]);
        assert_eq!(d.ssl_sub(0x21), Some(&b"TLSv1.3"[..]));
        assert_eq!(d.ssl_sub(0x22), Some(&b"web"[..]));
    }

    #[test]
    fn default_peer_gives_no_tlvs() {
        let d = encode_decode(
            v4([10, 0, 0, 1], 1000),
            v4([10, 0, 0, 2], 2000),
            &TlsPeerInfo::default(),
        );
        assert_eq!(d.tlvs, Vec::new());
        assert_eq!(d.ssl, None);
    }

    #[test]
    fn any_single_field_brings_a_bare_ssl_tlv() {
        let d = encode_decode(
            v6("::1", 1),
            v6("::2", 2),
            &TlsPeerInfo {
                spiffe_id: Some("spiffe://td/x"),
                ..TlsPeerInfo::default()
            },
        );
        assert_eq!(d.ssl, Some((0x03, 0, Vec::new())));
        assert_eq!(
            d.tlvs,
            vec![
                (0x20, vec![0x03, 0, 0, 0, 0]),
                (0xE0, b"spiffe://td/x".to_vec()),
            ]
        );
    }

    #[test]
    fn each_optional_field_controls_only_its_own_tlv() {
        let src = v4([10, 0, 0, 1], 1000);
        let dst = v4([10, 0, 0, 2], 2000);

        let d = encode_decode(
            src,
            dst,
            &TlsPeerInfo {
                sni: Some("a.example"),
                ..TlsPeerInfo::default()
            },
        );
        assert_eq!(d.tlv(0x02), Some(&b"a.example"[..]));
        assert!(d.ssl.is_some());
        assert_eq!(d.tlv(0xE0), None);
        assert_eq!(d.ssl_sub(0x21), None);
        assert_eq!(d.ssl_sub(0x22), None);

        let d = encode_decode(
            src,
            dst,
            &TlsPeerInfo {
                spiffe_id: Some("spiffe://td/x"),
                ..TlsPeerInfo::default()
            },
        );
        assert_eq!(d.tlv(0x02), None);
        assert_eq!(d.tlv(0xE0), Some(&b"spiffe://td/x"[..]));
        assert_eq!(d.ssl_sub(0x21), None);
        assert_eq!(d.ssl_sub(0x22), None);

        let d = encode_decode(
            src,
            dst,
            &TlsPeerInfo {
                tls_version: Some("TLSv1.2"),
                ..TlsPeerInfo::default()
            },
        );
        assert_eq!(d.tlv(0x02), None);
        assert_eq!(d.tlv(0xE0), None);
        assert_eq!(d.ssl_sub(0x21), Some(&b"TLSv1.2"[..]));
        assert_eq!(d.ssl_sub(0x22), None);

        let d = encode_decode(
            src,
            dst,
            &TlsPeerInfo {
                common_name: Some("Zoë ☃"),
                ..TlsPeerInfo::default()
            },
        );
        assert_eq!(d.tlv(0x02), None);
        assert_eq!(d.tlv(0xE0), None);
        assert_eq!(d.ssl_sub(0x21), None);
        assert_eq!(d.ssl_sub(0x22), Some("Zoë ☃".as_bytes()));
    }

    #[test]
    fn empty_strings_are_left_out() {
        let d = encode_decode(
            v4([10, 0, 0, 1], 1000),
            v4([10, 0, 0, 2], 2000),
            &TlsPeerInfo {
                tls_version: Some(""),
                common_name: Some(""),
                spiffe_id: Some(""),
                sni: Some(""),
            },
        );
        assert_eq!(d.tlvs, Vec::new());
    }

    /// A known header, built by hand from the specification.
    #[test]
    fn exact_bytes_of_simple_ipv4_header() {
        let bytes = encode_v2(
            v4([192, 168, 1, 10], 0x1234),
            v4([10, 0, 0, 1], 443),
            &TlsPeerInfo::default(),
        )
        .expect("encodes");
        let expected: [u8; 28] = [
            // signature \r\n\r\n\0\r\nQUIT\n
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            // version 2 / command PROXY, AF_INET / STREAM, length 12
            0x21, 0x11, 0x00, 0x0C, // source 192.168.1.10, destination 10.0.0.1
            0xC0, 0xA8, 0x01, 0x0A, 0x0A, 0x00, 0x00, 0x01,
            // source port 0x1234, destination port 443
            0x12, 0x34, 0x01, 0xBB,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn exact_bytes_of_simple_ipv6_header() {
        let bytes = encode_v2(v6("::1", 1), v6("2001:db8::2", 2), &TlsPeerInfo::default())
            .expect("encodes");
        let mut want = Vec::new();
        want.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
        want.extend_from_slice(&[0x21, 0x21, 0x00, 36]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(&[0, 1, 0, 2]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn exact_bytes_of_ssl_and_spiffe_tlvs() {
        let bytes = encode_v2(
            v4([1, 2, 3, 4], 5),
            v4([6, 7, 8, 9], 10),
            &TlsPeerInfo {
                tls_version: Some("TLSv1.3"),
                common_name: Some("cn"),
                spiffe_id: Some("spiffe://t/a"),
                sni: None,
            },
        )
        .expect("encodes");
        let mut tail = Vec::new();
        // SSL: 5 fixed + (3 + 7) version + (3 + 2) CN = 20 = 0x14
        tail.extend_from_slice(&[0x20, 0x00, 0x14, 0x03, 0, 0, 0, 0]);
        tail.extend_from_slice(&[0x21, 0x00, 0x07]);
        tail.extend_from_slice(b"TLSv1.3");
        tail.extend_from_slice(&[0x22, 0x00, 0x02]);
        tail.extend_from_slice(b"cn");
        tail.extend_from_slice(&[0xE0, 0x00, 0x0C]);
        tail.extend_from_slice(b"spiffe://t/a");
        assert_eq!(&bytes[16 + 12..], tail.as_slice());
        // 12 address bytes + 23 SSL TLV + 15 SPIFFE TLV = 50
        assert_eq!(&bytes[14..16], &[0x00, 50]);
    }

    #[test]
    fn length_field_equals_remainder() {
        let peers = [TlsPeerInfo::default(), full_peer()];
        let addrs = [
            (v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2)),
            (v6("::1", 3), v6("fe80::1", 4)),
            (v4([1, 1, 1, 1], 1), v6("::2", 2)),
        ];
        for peer in &peers {
            for (src, dst) in addrs {
                let bytes = encode_v2(src, dst, peer).expect("encodes");
                let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
                assert_eq!(len, bytes.len() - 16, "{src} -> {dst} {peer:?}");
            }
        }
    }

    #[test]
    fn largest_tlv_value_fits_when_header_fits() {
        // 65535 - 12 (addresses) - 8 (bare SSL TLV) - 3 (SPIFFE TLV header)
        let spiffe = "s".repeat(65535 - 12 - 8 - 3);
        let peer = TlsPeerInfo {
            spiffe_id: Some(&spiffe),
            ..TlsPeerInfo::default()
        };
        let d = encode_decode(v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2), &peer);
        assert_eq!(d.tlv(0xE0).map(<[u8]>::len), Some(spiffe.len()));

        let spiffe = "s".repeat(65535 - 12 - 8 - 3 + 1);
        let peer = TlsPeerInfo {
            spiffe_id: Some(&spiffe),
            ..TlsPeerInfo::default()
        };
        let err = encode_v2(v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2), &peer);
        assert!(
            matches!(err, Err(EncodeError::HeaderTooLong { len: 65536 })),
            "{err:?}"
        );
    }

    #[test]
    fn overlong_tlv_value_is_an_error() {
        let long = "x".repeat(65536);
        let src = v4([1, 1, 1, 1], 1);
        let dst = v4([2, 2, 2, 2], 2);

        let cases: [(TlsPeerInfo<'_>, u8); 4] = [
            (
                TlsPeerInfo {
                    sni: Some(&long),
                    ..TlsPeerInfo::default()
                },
                0x02,
            ),
            (
                TlsPeerInfo {
                    spiffe_id: Some(&long),
                    ..TlsPeerInfo::default()
                },
                0xE0,
            ),
            (
                TlsPeerInfo {
                    common_name: Some(&long),
                    ..TlsPeerInfo::default()
                },
                0x22,
            ),
            (
                TlsPeerInfo {
                    tls_version: Some(&long),
                    ..TlsPeerInfo::default()
                },
                0x21,
            ),
        ];
        for (peer, want_type) in &cases {
            match encode_v2(src, dst, peer) {
                Err(EncodeError::TlvTooLong { tlv_type, len }) => {
                    assert_eq!(tlv_type, *want_type);
                    assert_eq!(len, 65536);
                }
                other => panic!("expected TlvTooLong for {want_type:#04x}, got {other:?}"),
            }
        }
    }

    #[test]
    fn ssl_tlv_overflow_from_sub_tlvs_is_an_error() {
        // Each sub-TLV fits on its own, but together they overflow the SSL
        // TLV's 16-bit length.
        let half = "y".repeat(40000);
        let peer = TlsPeerInfo {
            tls_version: Some(&half),
            common_name: Some(&half),
            ..TlsPeerInfo::default()
        };
        let err = encode_v2(v6("::1", 1), v6("::2", 2), &peer);
        assert!(
            matches!(err, Err(EncodeError::TlvTooLong { tlv_type: 0x20, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn header_overflow_from_several_tlvs_is_an_error() {
        // Each TLV fits on its own, but the total body does not.
        let big = "z".repeat(30000);
        let peer = TlsPeerInfo {
            sni: Some(&big),
            spiffe_id: Some(&big),
            common_name: Some(&big),
            ..TlsPeerInfo::default()
        };
        let err = encode_v2(v6("::1", 1), v6("::2", 2), &peer);
        assert!(
            matches!(err, Err(EncodeError::HeaderTooLong { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn errors_display_the_offending_sizes() {
        let e = EncodeError::TlvTooLong {
            tlv_type: 0xE0,
            len: 70000,
        };
        assert!(e.to_string().contains("0xe0"), "{e}");
        assert!(e.to_string().contains("70000"), "{e}");
        let e = EncodeError::HeaderTooLong { len: 65536 };
        assert!(e.to_string().contains("65536"), "{e}");
    }

    #[test]
    fn decoder_rejects_what_it_should() {
        // Keeps the test decoder honest: it must not accept anything.
        let good =
            encode_v2(v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2), &full_peer()).expect("encodes");
        assert!(decode(&good).is_ok());

        let mut bad_sig = good.clone();
        bad_sig[11] = b'X';
        assert!(decode(&bad_sig).is_err());

        let mut bad_len = good.clone();
        bad_len[15] = bad_len[15].wrapping_add(1);
        assert!(decode(&bad_len).is_err());

        let truncated = &good[..good.len() - 1];
        assert!(decode(truncated).is_err());

        let mut bad_version = good.clone();
        bad_version[12] = 0x11;
        assert!(decode(&bad_version).is_err());
    }
}
