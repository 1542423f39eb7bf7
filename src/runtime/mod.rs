//! The running proxy: builds every runtime object from a validated config,
//! binds the listeners, serves, and drains on shutdown.
//!
//! `prepare` does everything that can fail on bad input (files, keys, TLS
//! configs) without touching the network, so `portcullis check` and a start
//! fail the same way with the same messages.

pub mod logging;
pub mod signals;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, Metrics};
use crate::certs::{self, CertError};
use crate::config::{Config, ConfigError, ConfigErrors, IdentityConfig};
use crate::identity::policy::{Policy, Rule};
use crate::proxy::inbound::{self, InboundSettings};
use crate::proxy::listener::AcceptLoop;
use crate::proxy::outbound::{self, OutboundSettings};
use crate::proxy::{ConnectionContext, Direction};
use crate::tls::{self, default_provider, IdentityStore, TlsMaterial};

/// Every runtime object built from a config, ready to bind and serve.
pub struct Prepared {
    /// The config these objects came from.
    pub config: Config,
    /// Our identity and trust material.
    pub store: Arc<IdentityStore>,
    /// Inbound listeners: address and settings.
    pub inbound: Vec<(SocketAddr, usize, Arc<InboundSettings>)>,
    /// Outbound listeners: address and settings.
    pub outbound: Vec<(SocketAddr, usize, Arc<OutboundSettings>)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("inbound", &self.inbound.len())
            .field("outbound", &self.outbound.len())
            .finish_non_exhaustive()
    }
}

/// Load the identity and build every TLS config and policy, without binding.
pub fn prepare(config: Config, path: &Path) -> Result<Prepared, ConfigErrors> {
    let fail = |key: &str, reason: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            key: key.to_string(),
            reason,
        }],
    };
    let provider = default_provider();
    let material =
        load_identity(&config.identity, &provider).map_err(|e| fail("identity", e.to_string()))?;
    let store = Arc::new(IdentityStore::new(material, provider));

    let mut inbound = Vec::new();
    for (index, cfg) in config.inbound.iter().enumerate() {
        let key = format!("inbound[{index}]");
        let policy = Policy::compile(&cfg.allow, cfg.allow_any_authenticated)
            .map_err(|errs| fail(&key, format!("{errs:?}")))?;
        let server = tls::inbound_server_config(&store, Arc::new(policy), cfg.tls_min_version)
            .map_err(|e| fail(&key, e.to_string()))?;
        let settings = InboundSettings::new(cfg, TlsAcceptor::from(server));
        inbound.push((cfg.listen, cfg.max_connections, Arc::new(settings)));
    }
    let mut outbound = Vec::new();
    for (index, cfg) in config.outbound.iter().enumerate() {
        let key = format!("outbound[{index}]");
        let expect = Rule::compile(&cfg.expect).map_err(|errs| fail(&key, format!("{errs:?}")))?;
        let client = tls::outbound_client_config(&store, Arc::new(expect), cfg.tls_min_version)
            .map_err(|e| fail(&key, e.to_string()))?;
        let settings = OutboundSettings::new(cfg, TlsConnector::from(client))
            .map_err(|reason| fail(&key, reason))?;
        outbound.push((cfg.listen, cfg.max_connections, Arc::new(settings)));
    }
    Ok(Prepared {
        config,
        store,
        inbound,
        outbound,
    })
}

fn load_identity(
    identity: &IdentityConfig,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<TlsMaterial, CertError> {
    match identity {
        IdentityConfig::Files(files) => TlsMaterial::build(certs::files::load(files)?, provider),
    }
}

/// Where a running proxy's listeners ended up (useful when tests bind port 0).
#[derive(Debug, Clone, Default)]
pub struct BoundAddresses {
    /// Admin listener, if enabled.
    pub admin: Option<SocketAddr>,
    /// Inbound listeners by name.
    pub inbound: Vec<(String, SocketAddr)>,
    /// Outbound listeners by name.
    pub outbound: Vec<(String, SocketAddr)>,
}

/// Run the proxy described by the config at `path` until SIGTERM/SIGINT.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = crate::config::load(&path)?;
    let prepared = prepare(config, &path)?;
    serve(prepared, signals::shutdown_signal(), |_| {}).await
}

/// Bind and serve `prepared` until `shutdown` resolves, then drain.
/// `on_bound` is told where the listeners are once all are bound.
pub async fn serve(
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(&BoundAddresses),
) -> anyhow::Result<()> {
    let Prepared {
        config,
        store,
        inbound,
        outbound,
    } = prepared;
    let metrics = Metrics::new().context("cannot create metrics")?;
    {
        let material = store.current();
        metrics.set_own_certs(&material.certified_key.cert, &material.trust_bundle);
    }
    metrics
        .config_reloads
        .with_label_values(&["success"])
        .inc_by(0);
    metrics.config_last_reload_success.set(unix_now());

    let stop_accepting = CancellationToken::new();
    let force_close = CancellationToken::new();
    let tracker = TaskTracker::new();
    let ctx = ConnectionContext {
        metrics: metrics.clone(),
        force_close: force_close.clone(),
    };
    let mut bound = BoundAddresses::default();

    // Bind everything before serving anything: a port in use fails the start
    // with the listener's name, and nothing half-starts.
    let mut inbound_listeners = Vec::new();
    for (addr, limit, settings) in inbound {
        let listener = bind(addr, &settings.name, Direction::Inbound).await?;
        bound
            .inbound
            .push((settings.name.to_string(), listener.local_addr()?));
        inbound_listeners.push((listener, limit, settings));
    }
    let mut outbound_listeners = Vec::new();
    for (addr, limit, settings) in outbound {
        let listener = bind(addr, &settings.name, Direction::Outbound).await?;
        bound
            .outbound
            .push((settings.name.to_string(), listener.local_addr()?));
        outbound_listeners.push((listener, limit, settings));
    }
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        store: store.clone(),
        listeners_bound: false.into(),
    });
    if config.admin.enabled {
        let listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("admin: cannot listen on {}", config.admin.listen))?;
        bound.admin = Some(listener.local_addr()?);
        tokio::spawn(crate::admin::server::serve(
            listener,
            admin_state.clone(),
            stop_accepting.clone(),
        ));
    }

    let mut accept_tasks = Vec::new();
    for (listener, limit, settings) in inbound_listeners {
        let accept = AcceptLoop {
            name: settings.name.clone(),
            direction: Direction::Inbound,
            limit: Arc::new(Semaphore::new(limit)),
            stop_accepting: stop_accepting.clone(),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
        };
        let current = Arc::new(ArcSwap::new(settings));
        let ctx = ctx.clone();
        accept_tasks.push(tokio::spawn(accept.run(listener, move |stream, peer| {
            inbound::handle(stream, peer, current.load_full(), ctx.clone())
        })));
    }
    for (listener, limit, settings) in outbound_listeners {
        let accept = AcceptLoop {
            name: settings.name.clone(),
            direction: Direction::Outbound,
            limit: Arc::new(Semaphore::new(limit)),
            stop_accepting: stop_accepting.clone(),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
        };
        let current = Arc::new(ArcSwap::new(settings));
        let ctx = ctx.clone();
        accept_tasks.push(tokio::spawn(accept.run(listener, move |stream, peer| {
            outbound::handle(stream, peer, current.load_full(), ctx.clone())
        })));
    }

    let IdentityConfig::Files(files) = &config.identity;
    if files.watch {
        certs::files::spawn_watcher(
            files.clone(),
            store.clone(),
            metrics.clone(),
            stop_accepting.clone(),
        )
        .context("cannot watch the identity files")?;
    }

    admin_state.listeners_bound.store(true, Ordering::Release);
    tracing::info!(
        inbound = ?bound.inbound,
        outbound = ?bound.outbound,
        admin = ?bound.admin,
        "portcullis is serving"
    );
    on_bound(&bound);

    shutdown.await;
    let drain = config.shutdown.drain_timeout;
    tracing::info!(
        open_connections = tracker.len(),
        drain_timeout_ms = drain.as_millis() as u64,
        "shutting down: stopped accepting, draining live connections"
    );
    stop_accepting.cancel();
    for task in accept_tasks {
        let _ = task.await;
    }
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            open_connections = tracker.len(),
            "drain timeout passed; closing the remaining connections"
        );
        force_close.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tracker.wait()).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

async fn bind(addr: SocketAddr, name: &str, direction: Direction) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "{} listener {name:?}: cannot listen on {addr}",
            direction.as_str()
        )
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
