//! Writes the generated seed inputs of the fuzz targets: DER and PEM
//! certificates (cert_identity), CSRs and `POST /v1/sign` bodies (ca_csr),
//! bootstrap JWTs and the JWKS that verifies them (ca_token).
//!
//! Run from fuzz/: `cargo run --example make_seeds` (fuzz/make-seeds also
//! adds RSA inputs with openssl and the hand-written seeds). Each run uses
//! fresh keys, so the files differ from run to run; their shapes do not.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};

fn write(dir: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = Path::new("corpus").join(dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn leaf(spiffe: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "frontend");
    dn.push(DnType::OrganizationName, "Example");
    dn.push(DnType::OrganizationalUnitName, "sre");
    params.distinguished_name = dn;
    if let Some(id) = spiffe {
        params
            .subject_alt_names
            .push(SanType::URI(id.try_into().unwrap()));
    }
    params.serial_number = Some(SerialNumber::from_slice(&[0x7f, 0x3a, 0x00, 0x12, 0x9c]));
    params
}

fn main() {
    // --- cert_identity: certificates as the proxy sees them -------------
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Example Ops CA");
    dn.push(DnType::OrganizationName, "Example");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    write("cert_identity", "ca.der", ca_cert.der());
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate().unwrap();
    let mut everything = leaf(Some("spiffe://example.org/ns/web/sa/frontend"));
    everything.subject_alt_names.extend([
        SanType::DnsName("web.example.org".try_into().unwrap()),
        SanType::IpAddress("10.20.1.2".parse().unwrap()),
        SanType::IpAddress("fd00::1".parse().unwrap()),
        SanType::Rfc822Name("ops@example.org".try_into().unwrap()),
    ]);
    everything.custom_extensions = vec![
        // A UTF8String role and a SEQUENCE of team names.
        CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x0c, 0x05, b'a', b'd', b'm', b'i', b'n'],
        ),
        CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 2],
            vec![0x30, 0x08, 0x0c, 0x02, b'c', b'i', 0x0c, 0x02, b'o', b'p'],
        ),
    ];
    let cert = everything.signed_by(&key, &issuer).unwrap();
    write("cert_identity", "leaf-all-fields.der", cert.der());
    write(
        "cert_identity",
        "chain.pem",
        format!("{}{}", cert.pem(), ca_cert.pem()),
    );
    write(
        "cert_identity",
        "cert-and-key.pem",
        format!("{}{}", cert.pem(), key.serialize_pem()),
    );

    let two_uris = {
        let mut p = leaf(Some("spiffe://example.org/a"));
        p.subject_alt_names
            .push(SanType::URI("spiffe://example.org/b".try_into().unwrap()));
        p
    };
    let bad_spiffe = leaf(Some("spiffe://Example.org/a/../b"));
    let no_san = leaf(None);
    let dns_only = {
        let mut p = CertificateParams::new(vec!["*.ops.example.org".into()]).unwrap();
        p.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x01]));
        p
    };
    for (name, params, alg) in [
        ("two-uri-sans.der", two_uris, &PKCS_ECDSA_P256_SHA256),
        ("bad-spiffe-uri.der", bad_spiffe, &PKCS_ECDSA_P256_SHA256),
        ("no-san-p384.der", no_san, &PKCS_ECDSA_P384_SHA384),
        ("dns-only-ed25519.der", dns_only, &PKCS_ED25519),
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        write(
            "cert_identity",
            name,
            params.self_signed(&key).unwrap().der(),
        );
    }

    // --- ca_csr: CSRs and sign request bodies ------------------------------
    for (name, alg) in [
        ("p256", &PKCS_ECDSA_P256_SHA256),
        ("p384", &PKCS_ECDSA_P384_SHA384),
        ("ed25519", &PKCS_ED25519),
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = CertificateParams::new(vec!["asks-for-this.example".into()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let pem = csr.pem().unwrap();
        write("ca_csr", &format!("csr-{name}.pem"), &pem);
        let body = serde_json::json!({ "csr": pem, "ttl_seconds": 3600 });
        write("ca_csr", &format!("sign-{name}.json"), body.to_string());
        let body = serde_json::json!({ "csr": pem });
        write(
            "ca_csr",
            &format!("sign-{name}-no-ttl.json"),
            body.to_string(),
        );
        if name == "p256" {
            // A tampered request: a flipped bit, signature no longer verifies.
            let mut der = csr.der().to_vec();
            let middle = der.len() / 2;
            der[middle] ^= 1;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
            let tampered = format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
            );
            write("ca_csr", "csr-tampered.pem", &tampered);
            write(
                "ca_csr",
                "sign-tampered.json",
                serde_json::json!({ "csr": tampered }).to_string(),
            );
            write(
                "ca_csr",
                "sign-unknown-field.json",
                serde_json::json!({ "csr": pem, "spiffe_id": "spiffe://example.org/admin" })
                    .to_string(),
            );
            write("ca_csr", "csr-p256.der", csr.der());
        }
    }

    // --- ca_token: bootstrap JWTs and the JWKS ---------------------------
    let token_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = token_key.public_key_raw();
    let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let kid: String = raw[1..9].iter().map(|b| format!("{b:02x}")).collect();
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
    }]});
    fs::create_dir_all("keys").unwrap();
    fs::write(
        "keys/token-jwks.json",
        serde_json::to_string_pretty(&jwks).unwrap() + "\n",
    )
    .unwrap();
    let encoding = EncodingKey::from_ec_pem(token_key.serialize_pem().as_bytes()).unwrap();
    let sign = |claims: &serde_json::Value, kid: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &encoding).unwrap()
    };
    let good = serde_json::json!({
        "iss": "portcullis-ca", "aud": "portcullis-ca",
        "sub": "spiffe://example.org/ns/web/sa/frontend",
        "iat": 1_764_000_000u64, "exp": 4_102_444_800u64,
        "jti": "3f2a9c0d5e6b7a8190a1b2c3d4e5f607",
    });
    let good_token = sign(&good, Some(&kid));
    write("ca_token", "good.jwt", &good_token);
    write(
        "ca_token",
        "bearer-good.txt",
        format!("Bearer {good_token}"),
    );
    let mut no_jti = good.clone();
    no_jti.as_object_mut().unwrap().remove("jti");
    write("ca_token", "no-jti.jwt", sign(&no_jti, Some(&kid)));
    let mut other_domain = good.clone();
    other_domain["sub"] = "spiffe://evil.example/ns/web/sa/frontend".into();
    write(
        "ca_token",
        "other-trust-domain.jwt",
        sign(&other_domain, Some(&kid)),
    );
    let mut not_yet = good.clone();
    not_yet["nbf"] = 4_000_000_000u64.into();
    write("ca_token", "not-yet-valid.jwt", sign(&not_yet, Some(&kid)));
    write("ca_token", "no-kid.jwt", sign(&good, None));
    write(
        "ca_token",
        "unknown-kid.jwt",
        sign(&good, Some("0011223344556677")),
    );
    let mut k8s = good.clone();
    k8s["iss"] = "https://kubernetes.default.svc".into();
    k8s["sub"] = "system:serviceaccount:web:frontend".into();
    k8s["kubernetes.io"] = serde_json::json!({
        "namespace": "web", "serviceaccount": { "name": "frontend", "uid": "1234" }
    });
    let k8s_token = sign(&k8s, Some(&kid));
    write("ca_token", "kubernetes.jwt", &k8s_token);
    write(
        "ca_token",
        "bearer-kubernetes.txt",
        format!("Bearer {k8s_token}"),
    );
    write("ca_token", "kubernetes-no-kid.jwt", sign(&k8s, None));
    // Kubernetes service-account tokens carry no jti; that provisioner
    // accepts them again and again (single_use = false).
    let mut k8s_no_jti = k8s.clone();
    k8s_no_jti.as_object_mut().unwrap().remove("jti");
    let k8s_no_jti = sign(&k8s_no_jti, Some(&kid));
    write("ca_token", "kubernetes-no-jti.jwt", &k8s_no_jti);
    write(
        "ca_token",
        "bearer-kubernetes-no-jti.txt",
        format!("Bearer {k8s_no_jti}"),
    );
    let mut k8s_slash = k8s.clone();
    k8s_slash["kubernetes.io"]["namespace"] = "web/sa/admin".into();
    write(
        "ca_token",
        "kubernetes-slash.jwt",
        sign(&k8s_slash, Some(&kid)),
    );
    let mut other_aud = good.clone();
    other_aud["aud"] = "someone-else".into();
    write("ca_token", "wrong-aud.jwt", sign(&other_aud, Some(&kid)));
    let mut expired = good.clone();
    expired["exp"] = 1_000u64.into();
    write("ca_token", "expired.jwt", sign(&expired, Some(&kid)));
    let mut bad_sub = good.clone();
    bad_sub["sub"] = "spiffe://example.org/../admin".into();
    write("ca_token", "bad-sub.jwt", sign(&bad_sub, Some(&kid)));
    // alg=none and HS256 keyed with the public JWK: must never verify.
    let body = b64url(good.to_string().as_bytes());
    let none_header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    write("ca_token", "alg-none.jwt", format!("{none_header}.{body}."));
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some(kid.clone()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(jwks.to_string().as_bytes()),
    )
    .unwrap();
    write("ca_token", "hs256-confusion.jwt", hs);
    println!("seeds written under corpus/ and keys/token-jwks.json");
}
