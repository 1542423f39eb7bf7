//! Rotation of a CA-issued identity: renew at a fraction of the lifetime
//! (with jitter, so a fleet does not renew in lockstep), retry with capped
//! exponential backoff, keep serving the current certificate while it is
//! valid, and refresh the trust bundle so a CA rotation is survived.
//!
//! Renewal authenticates with the current certificate over mTLS. A
//! certificate that expired during a long CA outage cannot renew itself, so
//! then the bootstrap token is used again; nothing deadlocks. A still-valid
//! certificate is never dropped because a renewal failed.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use super::ca_client::{fetch_bundle, request_certificate, CaClientError, Credential};
use super::pem::load_certs;
use super::{CertError, Credentials};
use crate::admin::Metrics;
use crate::config::CaIdentity;
use crate::tls::{IdentityStore, TlsMaterial};

/// Shortest pause between two renewals of a valid certificate.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// First pause after a failed renewal.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Material to hold until the CA issues our first certificate: an expired,
/// self-signed certificate that no peer trusts, so readiness stays false and
/// every handshake fails, and the trust bundle from `ca_bundle`.
pub fn placeholder_material(
    config: &CaIdentity,
    provider: &Arc<CryptoProvider>,
) -> Result<TlsMaterial, CertError> {
    let trust_bundle = load_certs(&config.ca_bundle)?;
    let invalid = |reason: String| CertError::Invalid {
        part: super::pem::Part::Chain,
        what: "placeholder certificate".into(),
        reason,
    };
    let key = KeyPair::generate().map_err(|e| invalid(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "portcullis: waiting for the CA");
    params.distinguished_name = name;
    params.not_before = time::OffsetDateTime::UNIX_EPOCH;
    params.not_after = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| invalid(e.to_string()))?;
    TlsMaterial::build(
        Credentials {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            trust_bundle,
            crls: Vec::new(),
        },
        provider,
    )
}

/// Obtain a certificate now, with the bootstrap token (used on reload, where
/// a failure must leave the running identity alone).
pub async fn first_material(
    config: &CaIdentity,
    provider: &Arc<CryptoProvider>,
) -> Result<TlsMaterial, String> {
    let credentials = request_certificate(config, None, Credential::Token)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(dir) = &config.write_dir {
        write_out(dir, &credentials).map_err(|e| format!("write_dir: {e}"))?;
    }
    TlsMaterial::build(credentials, provider).map_err(|e| e.to_string())
}

/// Keep the identity in `store` fresh until `stop` is cancelled.
pub fn spawn(
    config: CaIdentity,
    store: Arc<IdentityStore>,
    metrics: Metrics,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bundle_task = tokio::spawn(refresh_bundle(
            config.clone(),
            store.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        let mut retry = FIRST_RETRY;
        loop {
            let wait = until_renewal(&config, &store, &metrics);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            match renew(&config, &store, &metrics).await {
                Ok(()) => retry = FIRST_RETRY,
                Err(error) => {
                    let material = store.current();
                    let valid = material.leaf_is_valid(rustls_pki_types::UnixTime::now());
                    tracing::warn!(
                        %error,
                        retry_in_ms = retry.as_millis() as u64,
                        still_valid = valid,
                        not_after = material.leaf_not_after,
                        "certificate renewal failed; keeping the current certificate and retrying"
                    );
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(jittered(retry, 0.2)) => {}
                    }
                    retry = (retry * 2).min(config.retry_max);
                }
            }
        }
        bundle_task.abort();
    })
}

/// How long until the next renewal is due; zero when we hold no valid
/// certificate. Publishes the planned time as a metric.
fn until_renewal(config: &CaIdentity, store: &IdentityStore, metrics: &Metrics) -> Duration {
    let material = store.current();
    let now = unix_now();
    // CAs backdate notBefore for clock skew; the lifetime we can use
    // started when we got the certificate.
    let not_before = material.leaf_not_before.max(material.obtained_at);
    let not_after = material.leaf_not_after;
    if now >= not_after {
        return Duration::ZERO;
    }
    let lifetime = (not_after - not_before).max(1) as f64;
    // Up to 10% of the lifetime earlier than the configured point.
    let jitter = lifetime * 0.1 * random_fraction();
    let due = not_before as f64 + lifetime * config.renew_at - jitter;
    metrics
        .cert_renewal_timestamp
        .with_label_values::<&str>(&[])
        .set(due);
    // Never renew a still-valid certificate in a tight loop, whatever the
    // CA hands out (e.g. a lifetime shorter than its backdating).
    Duration::from_secs_f64((due - now as f64).max(MIN_RENEWAL_INTERVAL.as_secs_f64()))
}

async fn renew(
    config: &CaIdentity,
    store: &Arc<IdentityStore>,
    metrics: &Metrics,
) -> Result<(), CaClientError> {
    let now = rustls_pki_types::UnixTime::now();
    let current = store.current();
    // Renew with the current certificate while it is valid; after a long
    // outage it is not, and the bootstrap token starts over.
    let credential = if current.leaf_is_valid(now) {
        Credential::CurrentCert
    } else {
        Credential::Token
    };
    let result = request_certificate(config, Some(store), credential).await;
    let credentials = match result {
        Ok(c) => c,
        Err(CaClientError::Refused { .. }) if credential == Credential::CurrentCert => {
            // Renewal refused (revoked? CA rotated?): fall back to the token.
            tracing::warn!(
                "renewal with the current certificate was refused; trying the bootstrap token"
            );
            match request_certificate(config, Some(store), Credential::Token).await {
                Ok(c) => c,
                Err(e) => {
                    metrics.cert_rotations.with_label_values(&["failure"]).inc();
                    return Err(e);
                }
            }
        }
        Err(e) => {
            metrics.cert_rotations.with_label_values(&["failure"]).inc();
            return Err(e);
        }
    };
    if let Some(dir) = &config.write_dir {
        if let Err(error) = write_out(dir, &credentials) {
            tracing::warn!(dir = %dir.display(), %error, "cannot write the certificate to write_dir");
        }
    }
    match store.install(credentials) {
        Ok(material) => {
            metrics.cert_rotations.with_label_values(&["success"]).inc();
            metrics.set_own_certs(&material.certified_key.cert, &material.trust_bundle);
            let serial = material
                .certified_key
                .cert
                .first()
                .and_then(|c| crate::inspect::summarize_der(c).ok())
                .map(|s| s.serial)
                .unwrap_or_default();
            tracing::info!(
                credential = credential.as_str(),
                serial,
                not_after = material.leaf_not_after,
                "new certificate from the CA in force for new handshakes"
            );
            Ok(())
        }
        Err(error) => {
            metrics.cert_rotations.with_label_values(&["failure"]).inc();
            Err(CaClientError::BadAnswer(error.to_string()))
        }
    }
}

/// Periodically replace the trust bundle with the CA's, keeping our
/// certificate; a CA that added a new root is trusted from then on.
async fn refresh_bundle(
    config: CaIdentity,
    store: Arc<IdentityStore>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(jittered(config.bundle_refresh, 0.1)) => {}
        }
        match fetch_bundle(&config, Some(&store)).await {
            Ok(bundle) => {
                let current = store.current();
                if current.trust_bundle == bundle {
                    continue;
                }
                match store.replace_trust_bundle(bundle) {
                    Ok(material) => {
                        metrics.set_own_certs(&material.certified_key.cert, &material.trust_bundle);
                        tracing::info!(
                            anchors = material.trust_bundle.len(),
                            "trust bundle refreshed from the CA"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the CA's trust bundle cannot be used; keeping the current one")
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "cannot refresh the trust bundle"),
        }
    }
}

/// Write cert.pem, key.pem (0600) and bundle.pem atomically into `dir`.
fn write_out(dir: &Path, credentials: &Credentials) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let encode = |label: &str, ders: &mut dyn Iterator<Item = &[u8]>| -> String {
        ders.map(|der| pem::encode(&pem::Pem::new(label, der.to_vec())))
            .collect()
    };
    let chain = encode(
        "CERTIFICATE",
        &mut credentials.chain.iter().map(|c| c.as_ref()),
    );
    let bundle = encode(
        "CERTIFICATE",
        &mut credentials.trust_bundle.iter().map(|c| c.as_ref()),
    );
    let key = encode(
        "PRIVATE KEY",
        &mut std::iter::once(credentials.key.secret_der()),
    );
    write_atomic(&dir.join("key.pem"), &key, 0o600)?;
    write_atomic(&dir.join("cert.pem"), &chain, 0o644)?;
    write_atomic(&dir.join("bundle.pem"), &bundle, 0o644)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A number in [0, 1) that differs between processes and calls.
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` shortened by up to `spread` of itself, at random.
fn jittered(base: Duration, spread: f64) -> Duration {
    base.mul_f64(1.0 - spread * random_fraction())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
            let d = jittered(Duration::from_secs(100), 0.2);
            assert!(d <= Duration::from_secs(100) && d >= Duration::from_secs(80));
        }
    }
}
