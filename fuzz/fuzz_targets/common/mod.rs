//! A real internal CA for the CA targets: `ca init` in a scratch folder, a
//! renewal certificate issued by it, the two kinds of provisioner (the CA's
//! own single-use bootstrap tokens and reusable Kubernetes service-account
//! tokens, as deploy/k8s/base/ca/ca.toml configures them) verifying
//! with the JWKS that signed the seed tokens, and the `POST /v1/sign`
//! handler (`ca::sign::Signer`) over all of it. Built once per process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use portcullis::ca::authority::Authority;
use portcullis::ca::config::ProvisionerConfig;
use portcullis::ca::files::{self, CaDir};
use portcullis::ca::log::IssuanceLog;
use portcullis::ca::provisioner::{Provisioner, Provisioners};
use portcullis::ca::revocation::Revocations;
use portcullis::ca::sign::Signer;
use rustls_pki_types::CertificateDer;

pub const TRUST_DOMAIN: &str = "example.org";
/// The identity of the renewal certificate.
pub const RENEWER: &str = "spiffe://example.org/ns/web/sa/renewer";
/// `iss` and `aud` of the CA's own bootstrap tokens.
pub const CA_ISSUER: &str = "portcullis-ca";
/// `iss` of the Kubernetes provisioner's tokens.
pub const K8S_ISSUER: &str = "https://kubernetes.default.svc";
/// The Kubernetes provisioner's identity template.
pub const K8S_TEMPLATE: &str = "spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}";
/// The public half of the key that signed the seed tokens (written by
/// examples/make_seeds.rs).
pub const JWKS: &str = include_str!("../../keys/token-jwks.json");
/// Default and longest lifetimes the signer issues.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct Ca {
    pub signer: Signer,
    /// The renewal certificate chain (leaf, intermediate) for `RENEWER`.
    pub renewal_chain: Vec<CertificateDer<'static>>,
    /// A second set of the same provisioners, for `authenticate` directly.
    pub provisioners: Provisioners,
    log_path: PathBuf,
    calls: AtomicU64,
}

impl Ca {
    /// Keep the scratch issuance log small: successful issuances append
    /// to it (and fsync) on every call.
    pub fn tick(&self) {
        if self.calls.fetch_add(1, Ordering::Relaxed) % 4096 == 0 {
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&self.log_path) {
                let _ = file.set_len(0);
            }
        }
    }
}

/// Scratch space: $PORTCULLIS_FUZZ_TMP (scripts/fuzz sets and removes it),
/// else /dev/shm (fsync is cheap there), else the temp folder.
fn scratch() -> PathBuf {
    let base = std::env::var_os("PORTCULLIS_FUZZ_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        });
    base.join(format!("portcullis-fuzz-ca-{}", std::process::id()))
}

fn provisioners(dir: &Path) -> Provisioners {
    // The CA's own tokens: the JWKS as `ca init` writes it (with "alg").
    let own = dir.join("own-jwks.json");
    std::fs::write(&own, JWKS).expect("write JWKS");
    // Kubernetes: the same key without "alg", as some issuers publish it.
    let mut set: serde_json::Value = serde_json::from_str(JWKS).expect("JWKS is JSON");
    for key in set["keys"].as_array_mut().expect("keys") {
        key.as_object_mut().expect("key").remove("alg");
    }
    let k8s = dir.join("k8s-jwks.json");
    std::fs::write(&k8s, set.to_string()).expect("write JWKS");
    let list = vec![
        Provisioner::new(&ProvisionerConfig {
            name: "bootstrap".into(),
            issuer: CA_ISSUER.into(),
            audience: CA_ISSUER.into(),
            jwks: own,
            identity: "{sub}".into(),
            single_use: true,
        })
        .expect("bootstrap provisioner"),
        Provisioner::new(&ProvisionerConfig {
            name: "k8s".into(),
            issuer: K8S_ISSUER.into(),
            audience: CA_ISSUER.into(),
            jwks: k8s,
            identity: K8S_TEMPLATE.into(),
            // As deploy/k8s/base/ca/ca.toml: service-account tokens are reused.
            single_use: false,
        })
        .expect("k8s provisioner"),
    ];
    Provisioners::new(list, TRUST_DOMAIN)
}

pub fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let root = scratch();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("scratch folder");
        let dir = root.join("ca");
        portcullis::ca::init::init(&dir, TRUST_DOMAIN).expect("ca init");
        let ca_dir = CaDir::new(&dir);
        let out = root.join("renewer");
        portcullis::ca::issue::issue(&ca_dir, RENEWER, &[], MAX_TTL, &out).expect("ca issue");
        let renewal_chain = portcullis::certs::pem::load_certs(&root.join("renewer.crt"))
            .expect("renewal certificate");
        let log_path = root.join("issuance.log");
        let signer = Signer {
            authority: Authority::load(&ca_dir).expect("load the CA"),
            provisioners: provisioners(&root),
            revocations: Revocations::new(ca_dir.file(files::REVOKED)),
            log: IssuanceLog::open(&log_path).expect("issuance log"),
            default_ttl: DEFAULT_TTL,
            max_ttl: MAX_TTL,
        };
        Ca {
            signer,
            renewal_chain,
            provisioners: provisioners(&root),
            log_path,
            calls: AtomicU64::new(0),
        }
    })
}

/// The claims of a JWT as JSON, without any check (to state properties).
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
