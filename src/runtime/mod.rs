//! The running proxy: builds every runtime object from a validated config,
//! binds the listeners, serves, reloads, and drains on shutdown.
//!
//! `prepare` does everything that can fail on bad input (files, keys, TLS
//! configs) without touching the network, so `portcullis check`, a start and
//! a reload fail the same way with the same messages.

pub mod listeners;
pub mod logging;
pub mod reload;
pub mod signals;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, Metrics};
use crate::certs;
use crate::config::{
    compile_authorizer, compile_policy, compile_rule, Config, ConfigError, ConfigErrors,
    IdentityConfig, InboundConfig, OutboundConfig,
};
use crate::identity::Authorizer;
use crate::proxy::inbound::{self, InboundSettings};
use crate::proxy::outbound::{self, OutboundSettings};
use crate::proxy::Direction;
use crate::tls::{self, default_provider, IdentityStore, TlsMaterial};

use listeners::{Running, Shared};
use reload::ReloadRequest;

/// Every runtime object built from a config, ready to bind and serve.
pub struct Prepared {
    /// The config these objects came from.
    pub config: Config,
    /// Our identity and trust material.
    pub store: Arc<IdentityStore>,
    /// Inbound listener settings, in config order.
    pub inbound: Vec<Arc<InboundSettings>>,
    /// Outbound listener settings, in config order.
    pub outbound: Vec<Arc<OutboundSettings>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("inbound", &self.inbound.len())
            .field("outbound", &self.outbound.len())
            .finish_non_exhaustive()
    }
}

fn one_error(path: &Path, key: &str, reason: String) -> ConfigErrors {
    ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            key: key.to_string(),
            reason,
        }],
    }
}

/// Load the identity and build every TLS config and policy, without binding.
pub fn prepare(config: Config, path: &Path) -> Result<Prepared, ConfigErrors> {
    let provider = default_provider();
    let material = load_identity(&config.identity, &provider)
        .map_err(|e| one_error(path, &e.key, e.message))?;
    let store = Arc::new(IdentityStore::new(material, provider));
    let (inbound, outbound) = build_listeners(&config, &store, path)?;
    Ok(Prepared {
        config,
        store,
        inbound,
        outbound,
    })
}

type BuiltListeners = (Vec<Arc<InboundSettings>>, Vec<Arc<OutboundSettings>>);

/// Build every listener's settings against `store`.
fn build_listeners(
    config: &Config,
    store: &Arc<IdentityStore>,
    path: &Path,
) -> Result<BuiltListeners, ConfigErrors> {
    let mut inbound = Vec::new();
    for (index, cfg) in config.inbound.iter().enumerate() {
        let settings = build_inbound(cfg, store)
            .map_err(|reason| one_error(path, &format!("inbound[{index}]"), reason))?;
        inbound.push(Arc::new(settings));
    }
    let mut outbound = Vec::new();
    for (index, cfg) in config.outbound.iter().enumerate() {
        let settings = build_outbound(cfg, store)
            .map_err(|reason| one_error(path, &format!("outbound[{index}]"), reason))?;
        outbound.push(Arc::new(settings));
    }
    Ok((inbound, outbound))
}

fn build_inbound(
    cfg: &InboundConfig,
    store: &Arc<IdentityStore>,
) -> Result<InboundSettings, String> {
    let authz = Arc::new(compile_authorizer(cfg).map_err(|errors| {
        errors
            .iter()
            .map(|(key, reason)| format!("{key}: {reason}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?);
    let server = tls::inbound_server_config(store, authz.clone(), cfg.tls_min_version)
        .map_err(|e| e.to_string())?;
    Ok(InboundSettings::new(cfg, authz, TlsAcceptor::from(server)))
}

fn build_outbound(
    cfg: &OutboundConfig,
    store: &Arc<IdentityStore>,
) -> Result<OutboundSettings, String> {
    let expect = compile_rule(&cfg.expect).map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("expect.{e}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let client = tls::outbound_client_config(store, Arc::new(expect), cfg.tls_min_version)
        .map_err(|e| e.to_string())?;
    OutboundSettings::new(cfg, TlsConnector::from(client))
}

fn load_identity(
    identity: &IdentityConfig,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<TlsMaterial, certs::SourceError> {
    match identity {
        IdentityConfig::Files(files) => certs::files::load_material(files, provider),
        // The first certificate is asked for once serving starts; until then
        // a placeholder keeps readiness false.
        IdentityConfig::Ca(ca) => {
            certs::rotation::placeholder_material(ca, provider).map_err(|e| certs::SourceError {
                key: "identity.ca_bundle".into(),
                message: e.to_string(),
            })
        }
    }
}

/// Where a running proxy's listeners ended up.
#[derive(Debug, Clone, Default)]
pub struct BoundAddresses {
    /// Admin listener, if enabled.
    pub admin: Option<SocketAddr>,
    /// Inbound listeners by name.
    pub inbound: Vec<(String, SocketAddr)>,
    /// Outbound listeners by name.
    pub outbound: Vec<(String, SocketAddr)>,
}

/// Run the proxy described by the config at `path` until SIGTERM/SIGINT,
/// reloading on SIGHUP, on a change of the file, and on `POST /reload`.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM during start-up must drain, not kill.
    let signals = signals::Signals::install()?;
    let config = crate::config::load(&path)?;
    let prepared = prepare(config, &path)?;
    serve(prepared, Some(path), signals, |_| {}).await
}

/// The live state a reload acts on.
pub struct Runtime {
    path: Option<PathBuf>,
    config: Config,
    store: Arc<IdentityStore>,
    shared: Shared,
    inbound: BTreeMap<String, Running<InboundSettings>>,
    outbound: BTreeMap<String, Running<OutboundSettings>>,
    identity_watch: CancellationToken,
    cert_watch: CancellationToken,
    cert_watch_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Bind and serve `prepared` until a shutdown signal, then drain.
/// `path` is the config file to reload from (None: no reloads).
/// `on_bound` is told where the listeners are once all are bound.
pub async fn serve(
    prepared: Prepared,
    path: Option<PathBuf>,
    mut signals: signals::Signals,
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
    metrics
        .config_reloads
        .with_label_values(&["failure"])
        .inc_by(0);
    metrics.config_last_reload_success.set(unix_now());
    let shared = Shared {
        metrics: metrics.clone(),
        tracker: TaskTracker::new(),
        stop_all: CancellationToken::new(),
        force_all: CancellationToken::new(),
    };

    // Bind everything before serving anything: a port in use fails the start
    // with the listener's name, and nothing half-starts.
    let mut inbound_sockets = Vec::new();
    for settings in inbound {
        inbound_sockets.push((
            bind(settings.listen, &settings.name, Direction::Inbound).await?,
            settings,
        ));
    }
    let mut outbound_sockets = Vec::new();
    for settings in outbound {
        outbound_sockets.push((
            bind(settings.listen, &settings.name, Direction::Outbound).await?,
            settings,
        ));
    }
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(16);
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        store: store.clone(),
        listeners_bound: false.into(),
        reload: path.as_ref().map(|_| reload_tx.clone()),
    });
    let mut bound = BoundAddresses::default();
    let admin_stop = CancellationToken::new();
    if config.admin.enabled {
        let listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("admin: cannot listen on {}", config.admin.listen))?;
        bound.admin = Some(listener.local_addr()?);
        let tls = if config.admin.mtls {
            let policy = compile_policy(&config.admin.allow, config.admin.allow_any_authenticated)
                .map_err(|errors| anyhow::anyhow!("admin.allow: {errors:?}"))?;
            let server = tls::inbound_server_config(
                &store,
                Arc::new(Authorizer::enforcing(policy)),
                crate::config::TlsVersion::Tls13,
            )?;
            Some(TlsAcceptor::from(server))
        } else {
            None
        };
        tokio::spawn(crate::admin::server::serve(
            listener,
            admin_state.clone(),
            admin_stop.clone(),
            tls,
        ));
    }

    let mut runtime = Runtime {
        path: path.clone(),
        config,
        store,
        shared,
        inbound: BTreeMap::new(),
        outbound: BTreeMap::new(),
        identity_watch: CancellationToken::new(),
        cert_watch: CancellationToken::new(),
        cert_watch_tasks: Vec::new(),
    };
    for (listener, settings) in inbound_sockets {
        runtime.start_inbound(listener, settings)?;
    }
    for (listener, settings) in outbound_sockets {
        runtime.start_outbound(listener, settings)?;
    }
    runtime.watch_identity()?;
    runtime.watch_certs().await;
    if let Some(path) = &path {
        reload::spawn_config_watcher(
            path.clone(),
            reload_tx.clone(),
            runtime.shared.stop_all.clone(),
        )
        .context("cannot watch the config file")?;
    }
    bound.inbound = runtime
        .inbound
        .iter()
        .map(|(n, r)| (n.clone(), r.listen))
        .collect();
    bound.outbound = runtime
        .outbound
        .iter()
        .map(|(n, r)| (n.clone(), r.listen))
        .collect();

    admin_state.listeners_bound.store(true, Ordering::Release);
    tracing::info!(
        inbound = ?bound.inbound,
        outbound = ?bound.outbound,
        admin = ?bound.admin,
        "portcullis is serving"
    );
    on_bound(&bound);

    loop {
        tokio::select! {
            event = signals.next() => {
                if event == signals::SignalEvent::Shutdown {
                    break;
                }
                if path.is_some() {
                    // The outcome is logged and counted by reload itself.
                    let _ = runtime.reload("SIGHUP").await;
                } else {
                    tracing::info!("SIGHUP ignored: no config file to reload");
                }
            }
            Some(request) = reload_rx.recv() => {
                let result = runtime.reload(request.trigger).await;
                if let Some(reply) = request.reply {
                    let _ = reply.send(result);
                }
            }
        }
    }
    admin_stop.cancel();
    runtime.shutdown().await;
    Ok(())
}

impl Runtime {
    fn start_inbound(
        &mut self,
        listener: TcpListener,
        settings: Arc<InboundSettings>,
    ) -> anyhow::Result<()> {
        let (name, max) = (settings.name.clone(), settings.max_connections);
        let running = Running::start(
            listener,
            name.clone(),
            Direction::Inbound,
            settings,
            max,
            &self.shared,
            inbound::handle,
        )?;
        self.inbound.insert(name.to_string(), running);
        Ok(())
    }

    fn start_outbound(
        &mut self,
        listener: TcpListener,
        settings: Arc<OutboundSettings>,
    ) -> anyhow::Result<()> {
        let (name, max) = (settings.name.clone(), settings.max_connections);
        let running = Running::start(
            listener,
            name.clone(),
            Direction::Outbound,
            settings,
            max,
            &self.shared,
            outbound::handle,
        )?;
        self.outbound.insert(name.to_string(), running);
        Ok(())
    }

    /// (Re)start what keeps the identity fresh: the file watcher, or CA renewal.
    fn watch_identity(&mut self) -> anyhow::Result<()> {
        self.identity_watch.cancel();
        self.identity_watch = self.shared.stop_all.child_token();
        match &self.config.identity {
            IdentityConfig::Files(files) if files.watch => {
                certs::files::spawn_watcher(
                    files.clone(),
                    self.store.clone(),
                    self.shared.metrics.clone(),
                    self.identity_watch.clone(),
                )
                .context("cannot watch the identity files")?;
            }
            IdentityConfig::Files(_) => {}
            IdentityConfig::Ca(ca) => {
                certs::rotation::spawn(
                    ca.clone(),
                    self.store.clone(),
                    self.shared.metrics.clone(),
                    self.identity_watch.clone(),
                );
            }
        }
        Ok(())
    }

    /// (Re)start the `[[watch]]` exporters of the current config; the old
    /// ones finish removing their series first.
    async fn watch_certs(&mut self) {
        self.cert_watch.cancel();
        for task in self.cert_watch_tasks.drain(..) {
            let _ = task.await;
        }
        self.cert_watch = self.shared.stop_all.child_token();
        self.cert_watch_tasks = crate::admin::watch::spawn_all(
            &self.config.watch,
            &self.shared.metrics,
            &self.cert_watch,
        );
    }

    /// Stop accepting everywhere, drain live connections up to the drain
    /// timeout, then close what is left.
    async fn shutdown(self) {
        let drain = self.config.shutdown.drain_timeout;
        let tracker = self.shared.tracker.clone();
        tracing::info!(
            open_connections = tracker.len(),
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: stopped accepting, draining live connections"
        );
        self.shared.stop_all.cancel();
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!(
                open_connections = tracker.len(),
                "drain timeout passed; closing the remaining connections"
            );
            self.shared.force_all.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tracker.wait()).await;
        }
        tracing::info!("shutdown complete");
    }
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
