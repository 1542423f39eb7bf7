//! Metric definitions. The names and labels are part of portcullis's
//! interface (docs/metrics.md); change them only with a migration note.
//!
//! Every label set is bounded: listener names come from the config, results
//! and reasons from fixed lists, certificate labels from our own (small)
//! chain and trust bundle. Nothing is labelled per peer or per connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric portcullis exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `portcullis_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `portcullis_tls_handshakes_total{listener,direction,result}`.
    pub handshakes: IntCounterVec,
    /// `portcullis_tls_handshake_duration_seconds{listener,direction}`.
    pub handshake_duration: HistogramVec,
    /// `portcullis_authz_decisions_total{listener,policy,decision}`: policy
    /// is `enforced` or `shadow`; decision `allow`, `deny` or `would_deny`.
    pub authz_decisions: IntCounterVec,
    /// `portcullis_authz_shadow_disagreements_total{listener,enforced,shadow}`.
    pub authz_shadow_disagreements: IntCounterVec,
    /// `portcullis_connections_open{listener,direction}`.
    pub connections_open: IntGaugeVec,
    /// `portcullis_connections_total{listener,direction}`: accepted connections.
    pub connections_total: IntCounterVec,
    /// `portcullis_connection_errors_total{listener,direction,reason}`.
    pub connection_errors: IntCounterVec,
    /// `portcullis_bytes_total{listener,direction}`: direction is `upstream` (client to server) or `downstream`.
    pub bytes: IntCounterVec,
    /// `portcullis_cert_expiration_timestamp_seconds{role,subject,serial,spiffe_id,source}`.
    pub cert_expiration: GaugeVec,
    /// `portcullis_cert_not_before_timestamp_seconds{role,subject,serial,spiffe_id,source}`.
    pub cert_not_before: GaugeVec,
    /// `portcullis_cert_renewal_timestamp_seconds`: when the next renewal of
    /// our certificate is planned (CA source only).
    /// Only exported once a renewal is planned: no series with the files source.
    pub cert_renewal_timestamp: GaugeVec,
    /// `portcullis_cert_rotations_total{result}`: new own certificates installed or refused.
    pub cert_rotations: IntCounterVec,
    /// `portcullis_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `portcullis_reauthorization_closed_total{listener}`: live connections closed
    /// because a reloaded policy no longer allows their peer.
    pub reauthorization_closed: IntCounterVec,
    /// `portcullis_config_last_reload_success_timestamp_seconds`.
    pub config_last_reload_success: IntGauge,
    /// `portcullis_peer_cert_expiration_min_timestamp_seconds{listener}`.
    pub peer_cert_expiration_min: GaugeVec,
    /// `portcullis_watch_errors_total{source}`: `[[watch]]` reads that failed.
    pub watch_errors: IntCounterVec,
    /// `portcullis_lingering_closes_total{listener,direction,end}`: refused
    /// peers given time to read our alert, by how that ended.
    pub lingering_closes: IntCounterVec,
    /// `portcullis_chain_cache_lookups_total{listener,direction,result}`:
    /// verified-chain cache lookups, `hit` or `miss`.
    pub chain_cache_lookups: IntCounterVec,
    /// `portcullis_chain_cache_evictions_total{listener,direction}`: entries
    /// dropped because the cache was full.
    pub chain_cache_evictions: IntCounterVec,
    /// `portcullis_http_requests_total{listener,route,code_class}`.
    pub http_requests: IntCounterVec,
    /// `portcullis_http_request_duration_seconds{listener}`: to the response head.
    pub http_request_duration: HistogramVec,
    /// `portcullis_http_authz_decisions_total{listener,route,decision}`.
    pub http_authz_decisions: IntCounterVec,
    /// `portcullis_peer_table_entries`: peers held by `GET /peers`.
    pub peer_table_entries: IntGauge,
    /// `portcullis_peer_table_evictions_total`: peers dropped from the full table.
    pub peer_table_evictions: prometheus::IntCounter,
    /// `portcullis_chain_cache_entries{listener,direction}`: entries held,
    /// as of the latest handshake that changed them.
    pub chain_cache_entries: IntGaugeVec,
    cert_series: Arc<Mutex<HashMap<String, Vec<Vec<String>>>>>,
    peer_expiry: Arc<Mutex<HashMap<String, PeerExpiryWindow>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Bounded reasons for `portcullis_connection_errors_total`.
pub mod reason {
    /// The listener was at `max_connections`.
    pub const MAX_CONNECTIONS: &str = "max_connections";
    /// The backend or upstream could not be reached.
    pub const CONNECT_FAILED: &str = "connect_failed";
    /// The TLS handshake failed or was denied.
    pub const HANDSHAKE_FAILED: &str = "handshake_failed";
    /// Writing the PROXY header failed.
    pub const PROXY_HEADER: &str = "proxy_header";
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("portcullis_build_info", "Build information; always 1."),
            &["version"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "portcullis_tls_handshakes_total",
                "TLS handshakes by listener, direction and result (success or a bounded error reason).",
            ),
            &["listener", "direction", "result"],
        )?;
        let handshake_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_tls_handshake_duration_seconds",
                "Duration of completed and failed TLS handshakes.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 14)?),
            &["listener", "direction"],
        )?;
        let authz_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_authz_decisions_total",
                "Authorization decisions on peer identities, by policy (enforced or shadow) and decision (allow, deny, or would_deny in audit mode).",
            ),
            &["listener", "policy", "decision"],
        )?;
        let authz_shadow_disagreements = IntCounterVec::new(
            Opts::new(
                "portcullis_authz_shadow_disagreements_total",
                "Handshakes on which a listener's shadow rules decided otherwise than its enforced rules.",
            ),
            &["listener", "enforced", "shadow"],
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new("portcullis_connections_open", "Connections open now."),
            &["listener", "direction"],
        )?;
        let connections_total = IntCounterVec::new(
            Opts::new("portcullis_connections_total", "Connections accepted."),
            &["listener", "direction"],
        )?;
        let connection_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_connection_errors_total",
                "Connections that ended in an error, by bounded reason.",
            ),
            &["listener", "direction", "reason"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "portcullis_bytes_total",
                "Bytes forwarded; direction is upstream (client to server) or downstream.",
            ),
            &["listener", "direction"],
        )?;
        let cert_labels = ["role", "subject", "serial", "spiffe_id", "source"];
        let cert_expiration = GaugeVec::new(
            Opts::new(
                "portcullis_cert_expiration_timestamp_seconds",
                "notAfter of our own certificates and trust bundle, as a Unix timestamp.",
            ),
            &cert_labels,
        )?;
        let cert_not_before = GaugeVec::new(
            Opts::new(
                "portcullis_cert_not_before_timestamp_seconds",
                "notBefore of our own certificates and trust bundle, as a Unix timestamp.",
            ),
            &cert_labels,
        )?;
        let cert_renewal_timestamp = GaugeVec::new(
            Opts::new(
                "portcullis_cert_renewal_timestamp_seconds",
                "When the next renewal of our own certificate is planned, as a Unix timestamp (CA source only).",
            ),
            &[],
        )?;
        let cert_rotations = IntCounterVec::new(
            Opts::new(
                "portcullis_cert_rotations_total",
                "New own certificates installed (success) or refused (failure).",
            ),
            &["result"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Configuration reloads by result.",
            ),
            &["result"],
        )?;
        let reauthorization_closed = IntCounterVec::new(
            Opts::new(
                "portcullis_reauthorization_closed_total",
                "Live connections closed because a reloaded policy no longer allows their peer.",
            ),
            &["listener"],
        )?;
        let config_last_reload_success = IntGauge::new(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully, as a Unix timestamp.",
        )?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(handshake_duration.clone()))?;
        registry.register(Box::new(authz_decisions.clone()))?;
        registry.register(Box::new(authz_shadow_disagreements.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(connection_errors.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(cert_expiration.clone()))?;
        registry.register(Box::new(cert_not_before.clone()))?;
        registry.register(Box::new(cert_rotations.clone()))?;
        registry.register(Box::new(cert_renewal_timestamp.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(reauthorization_closed.clone()))?;
        let peer_cert_expiration_min = GaugeVec::new(
            Opts::new(
                "portcullis_peer_cert_expiration_min_timestamp_seconds",
                "Soonest notAfter among peer certificates seen on the listener in the last 10 to 20 minutes.",
            ),
            &["listener"],
        )?;
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_watch_errors_total",
                "Failed reads of certificates named by [[watch]] entries.",
            ),
            &["source"],
        )?;
        let lingering_closes = IntCounterVec::new(
            Opts::new(
                "portcullis_lingering_closes_total",
                "Refused peers given time to read our TLS alert before the close, by how the wait ended.",
            ),
            &["listener", "direction", "end"],
        )?;
        let chain_cache_lookups = IntCounterVec::new(
            Opts::new(
                "portcullis_chain_cache_lookups_total",
                "Verified-chain cache lookups by result (hit or miss).",
            ),
            &["listener", "direction", "result"],
        )?;
        let chain_cache_evictions = IntCounterVec::new(
            Opts::new(
                "portcullis_chain_cache_evictions_total",
                "Verified-chain cache entries dropped because the cache was full.",
            ),
            &["listener", "direction"],
        )?;
        let chain_cache_entries = IntGaugeVec::new(
            Opts::new(
                "portcullis_chain_cache_entries",
                "Verified chains held in the cache, as of the latest handshake that changed them.",
            ),
            &["listener", "direction"],
        )?;
        registry.register(Box::new(peer_cert_expiration_min.clone()))?;
        registry.register(Box::new(watch_errors.clone()))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_http_requests_total",
                "HTTP requests by listener, route (the path pattern, or default) and status class.",
            ),
            &["listener", "route", "code_class"],
        )?;
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_http_request_duration_seconds",
                "Time from a request's head to the response head sent to the client.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            &["listener"],
        )?;
        let http_authz_decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_http_authz_decisions_total",
                "Authorization decisions on HTTP requests by route: allow, deny, or would_deny (audit mode).",
            ),
            &["listener", "route", "decision"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_request_duration.clone()))?;
        registry.register(Box::new(http_authz_decisions.clone()))?;
        let peer_table_entries = IntGauge::new(
            "portcullis_peer_table_entries",
            "Peers held in the table served on GET /peers.",
        )?;
        let peer_table_evictions = prometheus::IntCounter::new(
            "portcullis_peer_table_evictions_total",
            "Least recently seen peers dropped from the full GET /peers table.",
        )?;
        registry.register(Box::new(peer_table_entries.clone()))?;
        registry.register(Box::new(peer_table_evictions.clone()))?;
        registry.register(Box::new(lingering_closes.clone()))?;
        registry.register(Box::new(chain_cache_lookups.clone()))?;
        registry.register(Box::new(chain_cache_evictions.clone()))?;
        registry.register(Box::new(chain_cache_entries.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Both results exist from the start, so increase() sees the first failure.
        for result in ["success", "failure"] {
            cert_rotations.with_label_values(&[result]).inc_by(0);
            config_reloads.with_label_values(&[result]).inc_by(0);
        }
        Ok(Metrics {
            registry,
            build_info,
            handshakes,
            handshake_duration,
            authz_decisions,
            authz_shadow_disagreements,
            connections_open,
            connections_total,
            connection_errors,
            bytes,
            cert_expiration,
            cert_not_before,
            cert_rotations,
            cert_renewal_timestamp,
            config_reloads,
            reauthorization_closed,
            config_last_reload_success,
            peer_cert_expiration_min,
            watch_errors,
            lingering_closes,
            http_requests,
            http_request_duration,
            http_authz_decisions,
            peer_table_entries,
            peer_table_evictions,
            chain_cache_lookups,
            chain_cache_evictions,
            chain_cache_entries,
            cert_series: Arc::new(Mutex::new(HashMap::new())),
            peer_expiry: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The registry, for encoding or adding collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in Prometheus text exposition format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        self.refresh_peer_expiry();
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

impl Metrics {
    /// Replace the certificate gauges with our current chain (leaf first,
    /// then intermediates) and trust bundle (`source="identity"`).
    pub fn set_own_certs(
        &self,
        chain: &[rustls_pki_types::CertificateDer<'_>],
        trust_bundle: &[rustls_pki_types::CertificateDer<'_>],
    ) {
        let certs: Vec<(&str, &[u8])> = chain
            .iter()
            .enumerate()
            .map(|(i, c)| (if i == 0 { "leaf" } else { "intermediate" }, c.as_ref()))
            .chain(trust_bundle.iter().map(|c| ("trust", c.as_ref())))
            .collect();
        self.set_certs(OWN_SOURCE, &certs);
    }

    /// Replace every certificate series of `source` with `certs` (role, DER).
    /// Series of a certificate no longer present are removed, so a
    /// rotated-out or deleted certificate does not linger.
    pub fn set_certs(&self, source: &str, certs: &[(&str, &[u8])]) {
        let Ok(mut exported) = self.cert_series.lock() else {
            return;
        };
        for labels in exported.remove(source).unwrap_or_default() {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            let _ = self.cert_expiration.remove_label_values(&refs);
            let _ = self.cert_not_before.remove_label_values(&refs);
        }
        let mut now_exported = Vec::new();
        for (role, der) in certs {
            let Ok(summary) = crate::inspect::summarize_der(der) else {
                continue;
            };
            let labels = vec![
                role.to_string(),
                summary.subject.clone(),
                summary.serial.clone(),
                summary.spiffe_id.clone().unwrap_or_default(),
                source.to_string(),
            ];
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.cert_expiration
                .with_label_values(&refs)
                .set(summary.not_after as f64);
            self.cert_not_before
                .with_label_values(&refs)
                .set(summary.not_before as f64);
            now_exported.push(labels);
        }
        if !now_exported.is_empty() {
            exported.insert(source.to_string(), now_exported);
        }
    }

    /// Note a peer certificate's expiry seen on `listener`.
    pub fn observe_peer_expiry(&self, listener: &str, not_after: i64) {
        let now = unix_now();
        if let Ok(mut windows) = self.peer_expiry.lock() {
            let window = windows
                .entry(listener.to_string())
                .or_insert(PeerExpiryWindow {
                    started: now,
                    current: None,
                    previous: None,
                });
            window.roll(now);
            window.current = Some(window.current.map_or(not_after, |m| m.min(not_after)));
        }
    }

    /// Bring the peer expiry gauges up to date: the soonest expiry seen in
    /// the current and the previous window, or no series when none was seen.
    fn refresh_peer_expiry(&self) {
        let now = unix_now();
        let Ok(mut windows) = self.peer_expiry.lock() else {
            return;
        };
        for (listener, window) in windows.iter_mut() {
            window.roll(now);
            match window.soonest() {
                Some(min) => self
                    .peer_cert_expiration_min
                    .with_label_values(&[listener])
                    .set(min as f64),
                None => {
                    let _ = self
                        .peer_cert_expiration_min
                        .remove_label_values(&[listener]);
                }
            }
        }
    }
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Count an accepted connection; it is counted as open until the
    /// returned guard is dropped, whichever way the connection ends.
    pub fn connection_opened(&self, listener: &str, direction: &str) -> OpenConnection {
        self.connections_total
            .with_label_values(&[listener, direction])
            .inc();
        let open = self
            .connections_open
            .with_label_values(&[listener, direction]);
        open.inc();
        OpenConnection(open)
    }

    /// A callback adding (upstream, downstream) byte deltas to the
    /// listener's counters; the label lookups happen once, here.
    pub fn byte_counter(&self, listener: &str) -> impl Fn(u64, u64) + Sync {
        let up = self.bytes.with_label_values(&[listener, "upstream"]);
        let down = self.bytes.with_label_values(&[listener, "downstream"]);
        move |u, d| {
            up.inc_by(u);
            down.inc_by(d);
        }
    }
}

/// The `source` label value of our own certificates.
pub const OWN_SOURCE: &str = "identity";

/// How long one peer-expiry window lasts; the gauge covers one to two windows.
const PEER_EXPIRY_WINDOW_SECS: i64 = 600;

/// Soonest peer certificate expiry per window, for one listener.
#[derive(Debug, Clone, Copy)]
struct PeerExpiryWindow {
    started: i64,
    current: Option<i64>,
    previous: Option<i64>,
}

impl PeerExpiryWindow {
    fn roll(&mut self, now: i64) {
        let elapsed = now - self.started;
        if elapsed >= 2 * PEER_EXPIRY_WINDOW_SECS {
            self.previous = None;
            self.current = None;
            self.started = now;
        } else if elapsed >= PEER_EXPIRY_WINDOW_SECS {
            self.previous = self.current.take();
            self.started += PEER_EXPIRY_WINDOW_SECS;
        }
    }

    fn soonest(&self) -> Option<i64> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
