//! The kinds of listener the runtime runs, each described once: which config
//! entries it comes from, how its settings are built, how a connection is
//! served, and what a reload that changes it does to live connections.
//!
//! Everything else (binding, starting, swapping settings, stopping, reporting
//! addresses) is generic over [`ListenerKind`] in `listeners.rs`. A new kind
//! (an HTTP listener, a Workload API socket) is one more implementation here
//! and one more field in `listeners::Listeners`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::admin::Metrics;
use crate::config::{
    compile_authorizer, compile_http_authz, compile_rule, Config, IdentityHeaderKind,
    InboundConfig, ListenerProtocol, OutboundConfig, RouteConfig,
};
use crate::http::headers::{HeaderConfig, IdentityHeader};
use crate::http::routes::{Route, Routes};
use crate::http::{BackendProtocol, HttpSettings, Limits};
use crate::identity::glob::Glob;
use crate::identity::Authorizer;
use crate::proxy::inbound::{self, InboundSettings};
use crate::proxy::outbound::{self, OutboundSettings};
use crate::proxy::{ConnectionContext, Direction, LiveConnections};
use crate::tls::{self, IdentityStore};

/// Where a listener accepts and how many connections it takes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerSpec<'a> {
    /// Unique name within its kind, used in logs and metric labels.
    pub name: &'a str,
    /// The configured address; port 0 asks the kernel for any free port.
    pub listen: SocketAddr,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl<'a> ListenerSpec<'a> {
    /// Name, address and connection limit.
    pub fn new(name: &'a str, listen: SocketAddr, max_connections: usize) -> Self {
        ListenerSpec {
            name,
            listen,
            max_connections,
        }
    }
}

/// One kind of listener, implemented by its settings type (what a connection
/// reads once, at accept).
pub trait ListenerKind: Sized + Send + Sync + 'static {
    /// The config entry one listener is built from.
    type Entry: Clone + PartialEq + Send + Sync + 'static;
    /// The `direction` metric label of its connections.
    const DIRECTION: Direction;
    /// The config key of its entries (`inbound` for `[[inbound]]`), used in
    /// error key paths and in reload summaries such as `added inbound api`.
    const KEY: &'static str;

    /// This kind's entries in a config, in file order.
    fn entries(config: &Config) -> &[Self::Entry];

    /// Name, address and connection limit of an entry.
    fn spec(entry: &Self::Entry) -> ListenerSpec<'_>;

    /// Build the settings of a validated entry (policy, TLS config). The
    /// error is the reason, without the key path.
    fn build(entry: &Self::Entry, store: &Arc<IdentityStore>) -> Result<Self, String>;

    /// Serve one accepted connection to the end.
    fn handle(
        stream: TcpStream,
        peer: SocketAddr,
        settings: Arc<Self>,
        ctx: ConnectionContext,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// After a reload gave a running listener new settings (its entry
    /// changed from `old` to `new`): act on its live connections if the kind
    /// asks for it, and say what was done for the reload summary.
    fn reloaded(
        old: Option<&Self::Entry>,
        new: &Self::Entry,
        settings: &Self,
        live: &LiveConnections,
        metrics: &Metrics,
    ) -> Option<String> {
        let _ = (old, new, settings, live, metrics);
        None
    }
}

impl ListenerKind for InboundSettings {
    type Entry = InboundConfig;
    const DIRECTION: Direction = Direction::Inbound;
    const KEY: &'static str = "inbound";

    fn entries(config: &Config) -> &[InboundConfig] {
        &config.inbound
    }

    fn spec(entry: &InboundConfig) -> ListenerSpec<'_> {
        ListenerSpec::new(&entry.name, entry.listen, entry.max_connections)
    }

    fn build(entry: &InboundConfig, store: &Arc<IdentityStore>) -> Result<Self, String> {
        let keyed = |errors: Vec<(String, String)>| {
            joined(&errors, |(key, reason)| format!("{key}: {reason}"))
        };
        match entry.protocol {
            ListenerProtocol::Tcp => {
                let authz = Arc::new(compile_authorizer(entry).map_err(keyed)?);
                let server =
                    tls::inbound_server_config(store, authz.clone(), entry.tls_min_version, &[])
                        .map_err(|e| e.to_string())?;
                Ok(InboundSettings::new(
                    entry,
                    authz,
                    TlsAcceptor::from(server),
                ))
            }
            ListenerProtocol::Http => {
                let authz = compile_http_authz(entry).map_err(keyed)?;
                let handshake = Arc::new(authz.handshake);
                let server = tls::inbound_server_config(
                    store,
                    handshake.clone(),
                    entry.tls_min_version,
                    &[b"h2", b"http/1.1"],
                )
                .map_err(|e| e.to_string())?;
                let http = http_settings(entry, authz.listener, authz.routes, store)?;
                let mut settings =
                    InboundSettings::new(entry, handshake, TlsAcceptor::from(server));
                settings.http = Some(http);
                Ok(settings)
            }
        }
    }

    fn handle(
        stream: TcpStream,
        peer: SocketAddr,
        settings: Arc<Self>,
        ctx: ConnectionContext,
    ) -> impl Future<Output = ()> + Send + 'static {
        inbound::handle(stream, peer, settings, ctx)
    }

    /// With `reauthorize_on_reload`, a changed policy closes the live
    /// connections whose peer it no longer allows.
    fn reloaded(
        old: Option<&InboundConfig>,
        new: &InboundConfig,
        settings: &Self,
        live: &LiveConnections,
        metrics: &Metrics,
    ) -> Option<String> {
        let policy_changed = old.is_none_or(|o| {
            o.allow != new.allow
                || o.allow_any_authenticated != new.allow_any_authenticated
                || o.authz_mode != new.authz_mode
        });
        if !(policy_changed && new.reauthorize_on_reload) {
            return None;
        }
        let closed = live.close_denied(&settings.authz);
        metrics
            .reauthorization_closed
            .with_label_values(&[&new.name])
            .inc_by(closed.len() as u64);
        for peer in &closed {
            tracing::warn!(listener = %new.name, peer_identity = %peer, "closing live connection: the reloaded policy no longer allows this peer");
        }
        Some(format!(
            "reauthorized inbound {}: closed {}",
            new.name,
            closed.len()
        ))
    }
}

impl ListenerKind for OutboundSettings {
    type Entry = OutboundConfig;
    const DIRECTION: Direction = Direction::Outbound;
    const KEY: &'static str = "outbound";

    fn entries(config: &Config) -> &[OutboundConfig] {
        &config.outbound
    }

    fn spec(entry: &OutboundConfig) -> ListenerSpec<'_> {
        ListenerSpec::new(&entry.name, entry.listen, entry.max_connections)
    }

    fn build(entry: &OutboundConfig, store: &Arc<IdentityStore>) -> Result<Self, String> {
        let expect = compile_rule(&entry.expect)
            .map_err(|errors| joined(&errors, |e| format!("expect.{e}")))?;
        let client = tls::outbound_client_config(store, Arc::new(expect), entry.tls_min_version)
            .map_err(|e| e.to_string())?;
        OutboundSettings::new(entry, TlsConnector::from(client))
    }

    fn handle(
        stream: TcpStream,
        peer: SocketAddr,
        settings: Arc<Self>,
        ctx: ConnectionContext,
    ) -> impl Future<Output = ()> + Send + 'static {
        outbound::handle(stream, peer, settings, ctx)
    }
}

/// The request-level settings of an HTTP listener.
fn http_settings(
    entry: &InboundConfig,
    listener: Authorizer,
    routes: Vec<(RouteConfig, Authorizer)>,
    store: &Arc<IdentityStore>,
) -> Result<Arc<HttpSettings>, String> {
    let mut compiled = Vec::with_capacity(routes.len());
    for (index, (route, authz)) in routes.into_iter().enumerate() {
        let path = Glob::new(&route.path, Some('/'), false)
            .map_err(|e| format!("route[{index}].path: {e}"))?;
        let methods = route
            .methods
            .iter()
            .map(|m| {
                hyper::Method::from_bytes(m.as_bytes())
                    .map_err(|e| format!("route[{index}].methods: {m:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        compiled.push(Route::new(path, methods, Arc::new(authz)));
    }
    let spiffe_id_header = hyper::header::HeaderName::from_bytes(entry.spiffe_id_header.as_bytes())
        .map_err(|e| format!("spiffe_id_header: {e}"))?;
    let headers = HeaderConfig {
        set: entry
            .identity_headers
            .iter()
            .map(|kind| match kind {
                IdentityHeaderKind::Xfcc => IdentityHeader::Xfcc,
                IdentityHeaderKind::ClientCert => IdentityHeader::ClientCert,
                IdentityHeaderKind::SpiffeId => IdentityHeader::SpiffeId,
            })
            .collect(),
        spiffe_id_header,
        client_cert_chain: entry.client_cert_chain,
    };
    let limits = Limits {
        max_header_bytes: entry.http.max_header_bytes,
        max_headers: entry.http.max_headers,
        header_read_timeout: entry.http.header_read_timeout,
        backend_timeout: entry.http.backend_timeout,
        max_concurrent_streams: entry.http.max_concurrent_streams,
        max_pending_reset_streams: entry.http.max_pending_reset_streams,
    };
    let protocol = match entry.backend_protocol {
        crate::config::BackendProtocol::Http1 => BackendProtocol::Http1,
        crate::config::BackendProtocol::H2c => BackendProtocol::H2c,
    };
    HttpSettings::new(
        Routes::new(compiled, Arc::new(listener)),
        headers,
        limits,
        entry.backend.clone(),
        protocol,
        store.clone(),
    )
}

/// Every error, described and joined into one reason.
fn joined<T>(errors: &[T], describe: impl Fn(&T) -> String) -> String {
    errors.iter().map(describe).collect::<Vec<_>>().join("; ")
}
