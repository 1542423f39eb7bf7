//! The certificate expiry exporter: `[[watch]]` entries name PEM files,
//! folders of PEM files and TLS endpoints whose certificates are exported
//! with the same expiry metrics as our own (`role="watched"`), so one
//! sidecar can watch every certificate of a host.
//!
//! Reading an endpoint's chain trusts nothing: the handshake accepts any
//! certificate, records it, and the connection is closed without sending
//! data. The result is only ever used for metrics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::certs::pem::{load_certs, load_key};
use crate::config::{split_host_port, WatchConfig};

/// Longest a TLS endpoint read may take.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// Start one reader task per `[[watch]]` entry, until `stop` is cancelled.
/// A stopped task removes the series it exported before it ends.
pub fn spawn_all(
    entries: &[WatchConfig],
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for entry in entries {
        let entry = entry.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut sources: Vec<String> = Vec::new();
            loop {
                sources = read_once(&entry, &metrics, sources).await;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(entry.interval) => {}
                }
            }
            // No longer watched: remove the series rather than leave stale ones.
            for source in sources {
                metrics.set_certs(&source, &[]);
            }
        }));
    }
    tasks
}

/// Read an entry once and export what was found. Returns the sources
/// exported now; sources exported last time and gone now are removed.
async fn read_once(entry: &WatchConfig, metrics: &Metrics, previous: Vec<String>) -> Vec<String> {
    let results: Vec<(String, Result<Vec<CertificateDer<'static>>, String>)> =
        match (&entry.path, &entry.endpoint) {
            (Some(path), _) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_path(&path))
                    .await
                    .unwrap_or_else(|e| vec![(String::new(), Err(e.to_string()))])
            }
            (None, Some(endpoint)) => {
                vec![(endpoint.clone(), read_endpoint(entry, endpoint).await)]
            }
            (None, None) => Vec::new(),
        };
    let mut current = Vec::new();
    for (source, result) in results {
        match result {
            Ok(certs) => {
                let refs: Vec<(&str, &[u8])> =
                    certs.iter().map(|c| ("watched", c.as_ref())).collect();
                metrics.set_certs(&source, &refs);
                current.push(source);
            }
            Err(error) => {
                metrics.watch_errors.with_label_values(&[&source]).inc();
                tracing::warn!(source = %source, %error, "watch: cannot read certificates");
                // Keep the last good values of a source that failed to read.
                if previous.contains(&source) {
                    current.push(source);
                }
            }
        }
    }
    for gone in previous.iter().filter(|s| !current.contains(s)) {
        metrics.set_certs(gone, &[]);
    }
    current
}

/// A file yields one source; a folder yields one per certificate file.
fn read_path(path: &Path) -> Vec<(String, Result<Vec<CertificateDer<'static>>, String>)> {
    let label = path.display().to_string();
    if !path.is_dir() {
        return vec![(label, load_certs(path).map_err(|e| e.to_string()))];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => return vec![(label, Err(format!("cannot read folder: {e}")))],
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "pem" | "crt" | "cer"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let result = load_certs(&file).map_err(|e| e.to_string());
            (file.display().to_string(), result)
        })
        .collect()
}

async fn read_endpoint(
    entry: &WatchConfig,
    endpoint: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let host = match &entry.server_name {
        Some(name) => name.clone(),
        None => split_host_port(endpoint)?.0,
    };
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| format!("{host:?} is not a valid server name"))?;
    let recorder = Arc::new(RecordingVerifier::default());
    let provider = crate::tls::default_provider();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone());
    let config = match (&entry.client_cert, &entry.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert).map_err(|e| e.to_string())?;
            let key = load_key(key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The chain is recorded during the handshake; whether the server
        // then accepts our (absent) client certificate does not matter.
        let _ = connector.connect(server_name, tcp).await;
        Ok::<(), String>(())
    };
    tokio::time::timeout(ENDPOINT_TIMEOUT, handshake)
        .await
        .map_err(|_| "timed out".to_string())??;
    let chain = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
    if chain.is_empty() {
        return Err("the endpoint presented no certificate".into());
    }
    Ok(chain)
}

/// Accepts any server certificate and remembers the chain. Used only to
/// read expiry dates; never to protect traffic.
#[derive(Debug, Default)]
struct RecordingVerifier {
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
