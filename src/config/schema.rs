//! The shape of the TOML configuration file, as serde reads it.
//!
//! Every struct here rejects unknown keys so that a typo is an error, not a
//! silently ignored setting. Semantic checks (names, globs, addresses) live in
//! `validate.rs`; this file only says what keys exist and their defaults.
//! Every key is documented in docs/configuration.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin HTTP listener (metrics, health, readiness).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where our own certificate, key and trust bundle come from.
    pub identity: IdentityConfig,
    /// Listeners that terminate mTLS and forward to a local backend.
    #[serde(default)]
    pub inbound: Vec<InboundConfig>,
    /// Loopback listeners that originate mTLS to an upstream.
    #[serde(default)]
    pub outbound: Vec<OutboundConfig>,
    /// Process-wide shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Extra certificates to export expiry metrics for (files, folders, TLS endpoints).
    #[serde(default)]
    pub watch: Vec<WatchConfig>,
}

/// `[[watch]]`: certificates whose expiry is exported with `role="watched"`.
/// Exactly one of `path` and `endpoint`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// A PEM file, or a folder whose `*.pem`, `*.crt` and `*.cer` files are read.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A TLS endpoint `host:port` whose presented chain is read.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// SNI for `endpoint`; defaults to its host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate for endpoints that require one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// How often to read.
    #[serde(default = "default_watch_interval", with = "humantime_serde")]
    pub interval: Duration,
}

/// `[admin]`: the admin HTTP endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; loopback by default.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Set to false to run without an admin listener.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Serve the admin endpoint over mTLS with our certificate, for scrapes
    /// from other hosts; clients are authorized by `allow`.
    #[serde(default)]
    pub mtls: bool,
    /// With `mtls`: who may use the admin endpoint (same rules as inbound).
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// With `mtls`: admit every client whose chain verifies.
    #[serde(default)]
    pub allow_any_authenticated: bool,
    /// Most peers `GET /peers` remembers (least recently seen evicted).
    #[serde(default = "default_peer_table_size")]
    pub peer_table_size: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            enabled: true,
            mtls: false,
            allow: Vec::new(),
            allow_any_authenticated: false,
            peer_table_size: default_peer_table_size(),
        }
    }
}

/// `[identity]`: the source of our own certificate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum IdentityConfig {
    /// PEM files on disk, watched for changes.
    Files(FilesIdentity),
    /// Short-lived certificates from `portcullis ca serve`, renewed automatically.
    Ca(CaIdentity),
}

/// `[identity] source = "ca"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaIdentity {
    /// Base URL of the CA, `https://host:port`.
    pub url: String,
    /// PEM file with the CA's root(s): verifies the CA server and seeds the trust bundle.
    pub ca_bundle: PathBuf,
    /// File holding the bootstrap token (JWT); re-read on every use.
    pub token_file: PathBuf,
    /// TLS server name of the CA; defaults to the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Lifetime to ask for; the CA caps it.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Renew when this fraction of the lifetime has passed.
    #[serde(default = "default_renew_at")]
    pub renew_at: f64,
    /// Longest pause between retries after a failed renewal.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// How often to refresh the trust bundle from the CA.
    #[serde(default = "default_bundle_refresh", with = "humantime_serde")]
    pub bundle_refresh: Duration,
    /// Also write cert.pem, key.pem (0600) and bundle.pem here for a co-located app.
    #[serde(default)]
    pub write_dir: Option<PathBuf>,
}

/// `[identity] source = "files"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesIdentity {
    /// PEM file with our certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with our private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM file with the CA certificates we trust for peers.
    pub trust_bundle: PathBuf,
    /// PEM or DER certificate revocation lists checked for peer chains.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Reload the files when they change on disk.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Accept a key file that group or others may read (refused by default).
    #[serde(default)]
    pub insecure_key_permissions: bool,
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only (default).
    #[serde(rename = "1.3")]
    #[default]
    Tls13,
}

/// `protocol` of an inbound listener.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// Bytes, piped (default).
    #[default]
    Tcp,
    /// HTTP/1.1 and HTTP/2, request by request.
    Http,
}

/// `backend_protocol` of an HTTP listener.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// Plaintext HTTP/1.1 (default).
    #[default]
    Http1,
    /// Plaintext HTTP/2 with prior knowledge.
    H2c,
}

/// An entry of `identity_headers`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityHeaderKind {
    /// `X-Forwarded-Client-Cert`, as Envoy writes it.
    Xfcc,
    /// RFC 9440 `Client-Cert`.
    ClientCert,
    /// The SPIFFE ID in `spiffe_id_header`.
    SpiffeId,
}

/// `[[inbound.route]]`: requests whose path (and method) match are decided
/// by this route's rules instead of the listener's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path glob with `/` as separator, e.g. `/admin/**`.
    pub path: String,
    /// Methods the route covers; empty: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Who may make these requests; none: nobody.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Every peer whose chain verified may make these requests.
    #[serde(default)]
    pub allow_any_authenticated: bool,
}

/// `[inbound.http]`: limits of an HTTP listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    /// Most bytes of a request head; more is answered 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields of a request; more is answered 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time a client has to send a request head.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time the backend has to answer with a response head (then 504).
    #[serde(default = "default_backend_timeout", with = "humantime_serde")]
    pub backend_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Most HTTP/2 streams a client may reset before they are accepted.
    #[serde(default = "default_max_pending_reset_streams")]
    pub max_pending_reset_streams: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_read_timeout(),
            backend_timeout: default_backend_timeout(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_pending_reset_streams: default_max_pending_reset_streams(),
        }
    }
}

/// `authz_mode`: whether a listener's allow rules refuse or only report.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthzMode {
    /// A peer the rules deny is refused (default).
    #[default]
    Enforce,
    /// A peer the rules deny is admitted and reported as `would_deny`.
    Audit,
}

/// The PROXY protocol header sent to the backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// PROXY protocol version 2 with the peer identity in TLVs.
    #[serde(rename = "v2")]
    V2,
}

/// `[[inbound]]`: terminate mTLS, authorize, forward to a local backend.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Unique listener name, used in logs and metric labels.
    pub name: String,
    /// Address to accept TLS on.
    pub listen: SocketAddr,
    /// `host:port` of the service behind the proxy.
    pub backend: String,
    /// Allow rules: a peer is admitted when any rule matches.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Admit every peer whose chain verifies; must be written explicitly.
    #[serde(default)]
    pub allow_any_authenticated: bool,
    /// `enforce` (default): a peer the allow rules deny is refused.
    /// `audit`: it is admitted, and logged and counted as `would_deny`.
    #[serde(default)]
    pub authz_mode: AuthzMode,
    /// Shadow allow rules: evaluated beside `allow` on every handshake and
    /// reported, never changing the outcome.
    #[serde(default)]
    pub shadow_allow: Vec<AllowRule>,
    /// On a reload that changes this listener's policy, close live
    /// connections whose peer the new policy no longer allows.
    #[serde(default)]
    pub reauthorize_on_reload: bool,
    /// Lowest TLS version accepted.
    #[serde(default)]
    pub tls_min_version: TlsVersion,
    /// Send a PROXY protocol header to the backend.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `tcp` (default): forward bytes. `http`: speak HTTP/1.1 and HTTP/2 to
    /// the client, set identity headers, authorize per route.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// With `http`: `http1` (default) or `h2c` to the backend.
    #[serde(default)]
    pub backend_protocol: BackendProtocol,
    /// With `http`: which identity headers to set.
    #[serde(default = "default_identity_headers")]
    pub identity_headers: Vec<IdentityHeaderKind>,
    /// With `http`: the name of the `spiffe-id` header.
    #[serde(default = "default_spiffe_id_header")]
    pub spiffe_id_header: String,
    /// With `http` and `client-cert`: also send `Client-Cert-Chain`.
    #[serde(default)]
    pub client_cert_chain: bool,
    /// With `http`: routes with their own allow rules; the first match decides.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// With `http`: limits on requests.
    #[serde(default)]
    pub http: HttpLimits,
    /// Time allowed for the TLS handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time allowed to connect to the backend.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once; further ones are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// After refusing a peer with a TLS alert, wait at most this long for
    /// it to close, reading and discarding what it sends, so that it can
    /// read the alert (a lingering close); `"0s"` closes at once.
    #[serde(default = "default_lingering_time", with = "humantime_serde")]
    pub lingering_time: Duration,
    /// Most bytes read and discarded during a lingering close.
    #[serde(default = "default_lingering_bytes")]
    pub lingering_bytes: usize,
}

/// `[[outbound]]`: accept plaintext on loopback, originate mTLS upstream.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Unique listener name, used in logs and metric labels.
    pub name: String,
    /// Loopback address the local service connects to.
    pub listen: SocketAddr,
    /// `host:port` of the mTLS upstream.
    pub upstream: String,
    /// TLS server name (SNI) to send; defaults to the upstream host when it is a DNS name.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Identity the upstream must present; same fields as an allow rule.
    pub expect: AllowRule,
    /// Permit a non-loopback `listen` address (plaintext leaves the host).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Lowest TLS version offered.
    #[serde(default)]
    pub tls_min_version: TlsVersion,
    /// Time allowed for connect plus TLS handshake to the upstream.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time allowed for the TCP connect to the upstream.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once; further ones are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// After refusing a peer with a TLS alert, wait at most this long for
    /// it to close, reading and discarding what it sends, so that it can
    /// read the alert (a lingering close); `"0s"` closes at once.
    #[serde(default = "default_lingering_time", with = "humantime_serde")]
    pub lingering_time: Duration,
    /// Most bytes read and discarded during a lingering close.
    #[serde(default = "default_lingering_bytes")]
    pub lingering_bytes: usize,
}

/// One allow rule (or an outbound expectation). Every field named must match.
///
/// Values are exact strings or simple globs (see docs/configuration.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// The peer's SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Any DNS SAN.
    pub dns: Option<String>,
    /// Any URI SAN.
    pub uri: Option<String>,
    /// Any IP SAN: an address or a CIDR block.
    pub ip: Option<String>,
    /// Any email SAN.
    pub email: Option<String>,
    /// Subject common name.
    pub cn: Option<String>,
    /// Any subject organization.
    pub o: Option<String>,
    /// Any subject organizational unit.
    pub ou: Option<String>,
    /// Issuer distinguished name, as `cert inspect` prints it.
    pub issuer: Option<String>,
    /// Serial number, lowercase hex without separators.
    pub serial: Option<String>,
    /// Custom extensions: dotted OID to expected value.
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

/// `[shutdown]`: what happens on SIGTERM/SIGINT.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long live connections may run after the listeners close.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_connections() -> usize {
    4096
}

fn default_identity_headers() -> Vec<IdentityHeaderKind> {
    vec![IdentityHeaderKind::Xfcc]
}

fn default_spiffe_id_header() -> String {
    "x-spiffe-id".into()
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_backend_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_concurrent_streams() -> u32 {
    100
}

fn default_max_pending_reset_streams() -> usize {
    20
}

fn default_peer_table_size() -> usize {
    crate::admin::peers::DEFAULT_SIZE
}

fn default_lingering_time() -> Duration {
    crate::tls::linger::LingerLimits::DEFAULT.time
}

fn default_lingering_bytes() -> usize {
    crate::tls::linger::LingerLimits::DEFAULT.bytes
}

fn default_renew_at() -> f64 {
    2.0 / 3.0
}

fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}

fn default_bundle_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_watch_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
