//! The `files` identity source: PEM files written by cert-manager, Vault
//! agent, a SPIFFE helper or an operator, reloaded when they change.
//!
//! The folders holding the files are watched (not the files), so atomic
//! renames and the Kubernetes `..data` symlink swap are seen. Changes are
//! debounced, and a periodic re-read catches file systems that send no
//! events. A set of files that does not load (half-written, key not matching
//! the certificate, ...) is logged and counted; the old identity stays in
//! force until a good set appears.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use rustls::crypto::CryptoProvider;

use super::pem::{check_key_permissions, load_certs, load_crls, load_key, Part};
use super::{CertError, Credentials, SourceError};
use crate::admin::Metrics;
use crate::config::FilesIdentity;
use crate::tls::store::parse_crls;
use crate::tls::{IdentityStore, TlsMaterial};

/// How long to wait after a change event for the writer to finish.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// How often the files are re-read even without change events.
const POLL_INTERVAL: Duration = Duration::from_secs(30);

fn at(key: impl Into<String>) -> impl FnOnce(CertError) -> SourceError {
    let key = key.into();
    move |error| SourceError {
        key,
        message: error.to_string(),
    }
}

/// Load the files named by a `files` identity config and build the TLS
/// material from them; every error names the config key and the file.
pub fn load_material(
    config: &FilesIdentity,
    provider: &Arc<CryptoProvider>,
) -> Result<TlsMaterial, SourceError> {
    let chain = load_certs(&config.cert).map_err(at("identity.cert"))?;
    let key = load_key(&config.key).map_err(at("identity.key"))?;
    if !config.insecure_key_permissions {
        check_key_permissions(&config.key).map_err(at("identity.key"))?;
    }
    let trust_bundle = load_certs(&config.trust_bundle).map_err(at("identity.trust_bundle"))?;
    let mut crls = Vec::new();
    for (index, path) in config.crls.iter().enumerate() {
        let key = format!("identity.crls[{index}]");
        let file_crls = load_crls(path).map_err(at(key.clone()))?;
        parse_crls(&file_crls).map_err(|e| SourceError {
            key,
            message: format!("{}: {}", path.display(), reason_of(&e)),
        })?;
        crls.extend(file_crls);
    }
    let credentials = Credentials {
        chain,
        key,
        trust_bundle,
        crls,
    };
    TlsMaterial::build(credentials, provider).map_err(|error| match &error {
        CertError::Invalid { part, what, reason } => match part {
            Part::Key => SourceError {
                key: "identity.key".into(),
                message: format!(
                    "{} does not match the certificate in {}: use the key the certificate was issued for",
                    config.key.display(),
                    config.cert.display()
                ),
            },
            Part::Chain => SourceError {
                key: "identity.cert".into(),
                message: format!("{}: {what}: {reason}", config.cert.display()),
            },
            Part::TrustBundle => SourceError {
                key: "identity.trust_bundle".into(),
                message: format!("{}: {what}: {reason}", config.trust_bundle.display()),
            },
            Part::Crls => SourceError {
                key: "identity.crls".into(),
                message: format!("{what}: {reason}"),
            },
        },
        other => SourceError {
            key: "identity".into(),
            message: other.to_string(),
        },
    })
}

fn reason_of(error: &CertError) -> String {
    match error {
        CertError::Invalid { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// A fingerprint of the files' bytes, to skip reloads when nothing changed.
fn fingerprint(config: &FilesIdentity) -> u64 {
    let mut hasher = DefaultHasher::new();
    let paths = [&config.cert, &config.key, &config.trust_bundle]
        .into_iter()
        .chain(config.crls.iter());
    for path in paths {
        std::fs::read(path).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// Watch the files and install every good new set into `store` until
/// `shutdown` is cancelled.
pub fn spawn_watcher(
    config: FilesIdentity,
    store: Arc<IdentityStore>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    for dir in watched_dirs(&config) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    let mut last = fingerprint(&config);
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped; keep it alive with the task.
        let _watcher = watcher;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
            }
            let now = fingerprint(&config);
            if now == last {
                continue;
            }
            last = now;
            reload(&config, &store, &metrics);
        }
    }))
}

fn reload(config: &FilesIdentity, store: &IdentityStore, metrics: &Metrics) {
    match load_material(config, store.provider()).map(|material| store.install_material(material)) {
        Ok(material) => {
            metrics.cert_rotations.with_label_values(&["success"]).inc();
            metrics.set_own_certs(&material.certified_key.cert, &material.trust_bundle);
            tracing::info!(
                cert = %config.cert.display(),
                not_after = material.leaf_not_after,
                "identity files changed: new certificate in force for new handshakes"
            );
        }
        Err(error) => {
            metrics.cert_rotations.with_label_values(&["failure"]).inc();
            tracing::warn!(
                cert = %config.cert.display(),
                %error,
                "identity files changed but cannot be used; keeping the current certificate"
            );
        }
    }
}

fn watched_dirs(config: &FilesIdentity) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [&config.cert, &config.key, &config.trust_bundle]
        .into_iter()
        .chain(config.crls.iter())
        .map(|p| parent_dir(p))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
