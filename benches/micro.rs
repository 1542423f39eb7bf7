//! Criterion micro-benchmarks of the per-connection work portcullis does:
//! policy evaluation, identity extraction, glob matching, and a full mTLS
//! handshake in memory with the real inbound server config.
//!
//! Run: `cargo bench --bench micro` (one group: `cargo bench --bench micro -- handshake`).
//! See docs/benchmarks.md for what the numbers mean.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::Resumption;
use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use time::{Duration as TimeDuration, OffsetDateTime};

use portcullis::certs::Credentials;
use portcullis::config::TlsVersion;
use portcullis::identity::glob::Glob;
use portcullis::identity::{Authorizer, PeerIdentity, Policy, RuleSpec};
use portcullis::tls::{default_provider, inbound_server_config, IdentityStore, TlsMaterial};

const CLIENT_ID: &str = "spiffe://example.org/ns/web/sa/frontend";

/// One ECDSA P-256 chain: a root, a server leaf and a client leaf.
struct Pki {
    root: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    client: (CertificateDer<'static>, PrivateKeyDer<'static>),
    /// A client leaf with another identity, for the non-matching cases.
    stranger: CertificateDer<'static>,
}

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    sans: Vec<SanType>,
    cn: &str,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name.push(DnType::OrganizationName, "Example");
    name.push(DnType::OrganizationalUnitName, "web");
    params.distinguished_name = name;
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = OffsetDateTime::now_utc() - TimeDuration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + TimeDuration::days(1);
    let cert = params.signed_by(&key, issuer).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

fn pki() -> Pki {
    let root_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "bench root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - TimeDuration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + TimeDuration::days(30);
    let root = params.self_signed(&root_key).unwrap();
    let issuer = Issuer::from_params(&params, &root_key);
    let san = |uri: &str, dns: &[&str]| {
        let mut sans = vec![SanType::URI(uri.try_into().unwrap())];
        sans.extend(
            dns.iter()
                .map(|d| SanType::DnsName((*d).try_into().unwrap())),
        );
        sans
    };
    Pki {
        root: root.der().clone(),
        server: leaf(
            &issuer,
            san("spiffe://example.org/ns/api/sa/server", &["localhost"]),
            "server",
        ),
        client: leaf(
            &issuer,
            san(
                CLIENT_ID,
                &["frontend.web.svc.cluster.local", "frontend.web.svc"],
            ),
            "frontend",
        ),
        stranger: leaf(
            &issuer,
            san(
                "spiffe://example.org/ns/evil/sa/intruder",
                &["intruder.evil.svc"],
            ),
            "intruder",
        )
        .0,
    }
}

/// ~20 rules of mixed kinds; only the last admits `CLIENT_ID`, so the
/// matching case walks every rule, as does the non-matching one.
fn policy() -> Policy {
    let mut rules = Vec::new();
    for i in 0..10 {
        rules.push(RuleSpec {
            spiffe_id: Some(format!("spiffe://example.org/ns/team{i}/sa/*")),
            ..RuleSpec::default()
        });
    }
    for i in 0..5 {
        rules.push(RuleSpec {
            dns: Some(format!("*.team{i}.svc.cluster.local")),
            ou: Some("sre".into()),
            ..RuleSpec::default()
        });
    }
    for i in 0..3 {
        rules.push(RuleSpec {
            cn: Some(format!("worker-{i}")),
            o: Some("Example".into()),
            ..RuleSpec::default()
        });
    }
    rules.push(RuleSpec {
        spiffe_id: Some("spiffe://example.org/ns/web/sa/api".into()),
        ..RuleSpec::default()
    });
    rules.push(RuleSpec {
        spiffe_id: Some(CLIENT_ID.into()),
        ..RuleSpec::default()
    });
    Policy::compile(&rules, false).unwrap()
}

fn bench_policy(c: &mut Criterion) {
    let pki = pki();
    let policy = policy();
    let allowed = PeerIdentity::from_der(&pki.client.0, &[]).unwrap();
    let denied = PeerIdentity::from_der(&pki.stranger, &[]).unwrap();
    assert!(policy.evaluate(&allowed).is_allowed());
    assert!(!policy.evaluate(&denied).is_allowed());
    let mut group = c.benchmark_group("policy_20_rules");
    group.bench_function("matching", |b| {
        b.iter(|| black_box(policy.evaluate(black_box(&allowed))))
    });
    group.bench_function("non_matching", |b| {
        b.iter(|| black_box(policy.evaluate(black_box(&denied))))
    });
    group.finish();
}

fn bench_identity(c: &mut Criterion) {
    let pki = pki();
    c.bench_function("identity/from_der_spiffe_and_dns", |b| {
        b.iter(|| black_box(PeerIdentity::from_der(black_box(&pki.client.0), &[]).unwrap()))
    });
}

fn bench_glob(c: &mut Criterion) {
    let mut group = c.benchmark_group("glob");
    let cases = [
        (
            "literal",
            "spiffe://example.org/ns/web/sa/frontend",
            Some('/'),
            false,
            CLIENT_ID,
        ),
        (
            "trailing_star",
            "spiffe://example.org/ns/web/*",
            Some('/'),
            false,
            CLIENT_ID,
        ),
        (
            "segment_star",
            "spiffe://example.org/ns/*/sa/frontend",
            Some('/'),
            false,
            CLIENT_ID,
        ),
        (
            "dns_wildcard_ci",
            "*.web.svc.cluster.local",
            Some('.'),
            true,
            "Frontend.WEB.svc.cluster.local",
        ),
        (
            "double_star_miss",
            "spiffe://**/sa/backend",
            Some('/'),
            false,
            CLIENT_ID,
        ),
    ];
    for (name, pattern, separator, ci, value) in cases {
        let glob = Glob::new(pattern, separator, ci).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| black_box(glob.matches(black_box(value))))
        });
    }
    group.finish();
}

fn client_config(pki: &Pki) -> Arc<ClientConfig> {
    // What the load generator offers: TLS 1.3, AES-128-GCM, X25519.
    let provider = CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![kx_group::X25519],
        ..rustls::crypto::ring::default_provider()
    };
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![pki.client.0.clone()], pki.client.1.clone_key())
        .unwrap();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The server config of a portcullis inbound listener, built the way
/// `runtime::prepare` builds it.
fn portcullis_server_config(pki: &Pki) -> Arc<ServerConfig> {
    let provider = default_provider();
    let credentials = Credentials {
        chain: vec![pki.server.0.clone()],
        key: pki.server.1.clone_key(),
        trust_bundle: vec![pki.root.clone()],
        crls: vec![],
    };
    let material = TlsMaterial::build(credentials, &provider).unwrap();
    let store = Arc::new(IdentityStore::new(material, provider));
    inbound_server_config(
        &store,
        Arc::new(Authorizer::enforcing(policy())),
        TlsVersion::Tls13,
        &[],
    )
    .unwrap()
}

/// rustls alone: same chain check (webpki), no identity extraction, no policy.
fn plain_rustls_server_config(pki: &Pki) -> Arc<ServerConfig> {
    let provider = default_provider();
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .unwrap();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// One full handshake pumped in memory; returns the time spent in the
/// server's calls.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Duration {
    let t = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut server_time = t.elapsed();
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut to_server = Vec::with_capacity(8192);
    let mut to_client = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        to_server.clear();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let t = Instant::now();
        let mut input = &to_server[..];
        while !input.is_empty() {
            s.read_tls(&mut input).unwrap();
            s.process_new_packets().unwrap();
        }
        to_client.clear();
        while s.wants_write() {
            s.write_tls(&mut to_client).unwrap();
        }
        server_time += t.elapsed();
        let mut input = &to_client[..];
        while !input.is_empty() {
            c.read_tls(&mut input).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    server_time
}

fn bench_handshake(c: &mut Criterion) {
    let pki = pki();
    let client = client_config(&pki);
    let portcullis = portcullis_server_config(&pki);
    let plain = plain_rustls_server_config(&pki);
    handshake(&portcullis, &client);
    let mut group = c.benchmark_group("handshake_mtls_in_memory");
    group.bench_function("portcullis_both_sides", |b| {
        b.iter(|| black_box(handshake(&portcullis, &client)))
    });
    group.bench_function("portcullis_server_side", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| handshake(&portcullis, &client)).sum())
    });
    group.bench_function("plain_rustls_server_side", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| handshake(&plain, &client)).sum())
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_policy,
    bench_identity,
    bench_glob,
    bench_handshake
);
criterion_main!(benches);
