//! The running proxy: builds every runtime object from a validated config,
//! binds the listeners, serves, reloads, and drains on shutdown.
//!
//! `prepare` does everything that can fail on bad input (files, keys, TLS
//! configs) without touching the network, so `portcullis check`, a start and
//! a reload fail the same way with the same messages. `serve` is the life of
//! the process, one named step a line: bind, start listeners, start watchers,
//! report where everything is, serve until a shutdown signal, drain.

pub mod addresses;
pub mod kinds;
pub mod listeners;
pub mod logging;
pub mod reload;
pub mod signals;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admin::peers::PeerTable;
use crate::admin::{AdminState, Metrics};
use crate::certs;
use crate::config::{
    compile_policy, AdminConfig, Config, ConfigError, ConfigErrors, IdentityConfig,
};
use crate::identity::Authorizer;
use crate::tls::{self, default_provider, IdentityStore, TlsMaterial};

pub use addresses::BoundAddresses;
use listeners::{Listeners, PlacedListeners, PreparedListeners, Shared};
use reload::ReloadRequest;
use signals::{SignalEvent, Signals};

/// Every runtime object built from a config, ready to bind and serve.
pub struct Prepared {
    /// The config these objects came from.
    pub config: Config,
    /// Our identity and trust material.
    pub store: Arc<IdentityStore>,
    /// Every listener's settings, built and not yet bound.
    pub listeners: PreparedListeners,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("inbound", &self.listeners.inbound.len())
            .field("outbound", &self.listeners.outbound.len())
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
    let listeners = build_listeners(&config, &store, path)?;
    Ok(Prepared {
        config,
        store,
        listeners,
    })
}

/// Build every listener's settings against `store`; errors name the entry.
fn build_listeners(
    config: &Config,
    store: &Arc<IdentityStore>,
    path: &Path,
) -> Result<PreparedListeners, ConfigErrors> {
    PreparedListeners::build(config, store).map_err(|(key, reason)| one_error(path, &key, reason))
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

/// What `serve` needs besides the prepared config.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The config file to reload from (None: no reloads).
    pub config_path: Option<PathBuf>,
    /// Where to write the bound addresses (JSON) once every listener is
    /// bound; rewritten when a reload moves a listener, removed at shutdown.
    pub ready_file: Option<PathBuf>,
}

/// Run the proxy described by the config at `path` until SIGTERM/SIGINT,
/// reloading on SIGHUP, on a change of the file, and on `POST /reload`.
pub async fn run(path: PathBuf, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM during start-up must drain, not kill.
    let signals = Signals::install()?;
    let config = crate::config::load(&path)?;
    let prepared = prepare(config, &path)?;
    let options = ServeOptions {
        config_path: Some(path),
        ready_file,
    };
    serve(prepared, options, signals, |_| {}).await
}

/// Bind and serve `prepared` until a shutdown signal, then drain.
/// `on_bound` is told where the listeners are once all are bound.
pub async fn serve(
    prepared: Prepared,
    options: ServeOptions,
    signals: Signals,
    on_bound: impl FnOnce(&BoundAddresses),
) -> anyhow::Result<()> {
    let Prepared {
        config,
        store,
        listeners,
    } = prepared;
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(16);
    let mut runtime = Runtime::new(config, store, options, &reload_tx)?;
    let (admin, placed) = runtime.bind(listeners).await?;
    runtime.start_listeners(admin, placed)?;
    runtime.start_watchers(reload_tx).await?;
    on_bound(&runtime.announce()?);
    runtime.wait_for_signals(signals, reload_rx).await;
    runtime.drain().await;
    Ok(())
}

/// The live state a reload acts on.
pub struct Runtime {
    options: ServeOptions,
    config: Config,
    store: Arc<IdentityStore>,
    shared: Shared,
    listeners: Listeners,
    admin: Arc<AdminState>,
    admin_addr: Option<SocketAddr>,
    identity_watch: CancellationToken,
    cert_watch: CancellationToken,
    cert_watch_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Runtime {
    /// The state before anything is bound: metrics initialised from our
    /// identity, no listener running.
    fn new(
        config: Config,
        store: Arc<IdentityStore>,
        options: ServeOptions,
        reload: &mpsc::Sender<ReloadRequest>,
    ) -> anyhow::Result<Runtime> {
        let metrics = startup_metrics(&store)?;
        // Sized at start; a reload does not resize it.
        let peers = Arc::new(PeerTable::new(config.admin.peer_table_size));
        let admin = Arc::new(AdminState::new(
            metrics.clone(),
            store.clone(),
            options.config_path.as_ref().map(|_| reload.clone()),
            peers.clone(),
        ));
        Ok(Runtime {
            options,
            config,
            store,
            shared: Shared::new(metrics, peers),
            listeners: Listeners::default(),
            admin,
            admin_addr: None,
            identity_watch: CancellationToken::new(),
            cert_watch: CancellationToken::new(),
            cert_watch_tasks: Vec::new(),
        })
    }

    /// Step 1, bind: every socket before serving anything, so a port in use
    /// fails the start with the listener's name and nothing half-starts.
    async fn bind(
        &self,
        listeners: PreparedListeners,
    ) -> anyhow::Result<(Option<TcpListener>, PlacedListeners)> {
        let placed = self.listeners.place(listeners).await?;
        let admin = bind_admin(&self.config.admin).await?;
        Ok((admin, placed))
    }

    /// Step 2, start listeners: the admin endpoint and every proxy listener.
    fn start_listeners(
        &mut self,
        admin: Option<TcpListener>,
        placed: PlacedListeners,
    ) -> anyhow::Result<()> {
        if let Some(socket) = admin {
            self.admin_addr = Some(socket.local_addr().context("admin: bound address")?);
            let tls = admin_tls(&self.config.admin, &self.store)?;
            tokio::spawn(crate::admin::server::serve(
                socket,
                self.admin.clone(),
                self.shared.stop_all.child_token(),
                tls,
            ));
        }
        let drain = self.config.shutdown.drain_timeout;
        self.listeners.apply(placed, None, &self.shared, drain);
        Ok(())
    }

    /// Step 3, start watchers: our identity (files or CA renewal), the
    /// `[[watch]]` exporters, and the config file.
    async fn start_watchers(&mut self, reload: mpsc::Sender<ReloadRequest>) -> anyhow::Result<()> {
        self.watch_identity()?;
        self.watch_certs().await;
        if let Some(path) = &self.options.config_path {
            reload::spawn_config_watcher(path.clone(), reload, self.shared.stop_all.clone())
                .context("cannot watch the config file")?;
        }
        Ok(())
    }

    /// Step 4, report: where every listener is, in the log, on `GET
    /// /listeners` and in the ready file; from here on `/readyz` can pass.
    fn announce(&self) -> anyhow::Result<BoundAddresses> {
        let bound = self.bound_addresses();
        self.publish(&bound).with_context(|| {
            let path = self.options.ready_file.as_deref().unwrap_or(Path::new(""));
            format!("cannot write the ready file {}", path.display())
        })?;
        tracing::info!(
            inbound = ?bound.inbound,
            outbound = ?bound.outbound,
            admin = ?bound.admin,
            "portcullis is serving"
        );
        Ok(bound)
    }

    /// Step 5, wait for signals: serve until SIGTERM/SIGINT, reloading on SIGHUP and on
    /// requests from the config watcher and `POST /reload`.
    async fn wait_for_signals(
        &mut self,
        mut signals: Signals,
        mut reload_rx: mpsc::Receiver<ReloadRequest>,
    ) {
        loop {
            tokio::select! {
                event = signals.next() => match event {
                    SignalEvent::Shutdown => return,
                    SignalEvent::Reload if self.options.config_path.is_some() => {
                        // The outcome is logged and counted by reload itself.
                        let _ = self.reload("SIGHUP").await;
                    }
                    SignalEvent::Reload => {
                        tracing::info!("SIGHUP ignored: no config file to reload");
                    }
                },
                Some(request) = reload_rx.recv() => {
                    let result = self.reload(request.trigger).await;
                    if let Some(reply) = request.reply {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    /// Step 6, drain: stop accepting everywhere (the admin endpoint too),
    /// let live connections finish up to the drain timeout, then close
    /// what is left.
    async fn drain(self) {
        if let Some(path) = &self.options.ready_file {
            // Whoever waits for the file must not find a stale one.
            let _ = std::fs::remove_file(path);
        }
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

    /// Where every listener is bound now.
    fn bound_addresses(&self) -> BoundAddresses {
        BoundAddresses {
            admin: self.admin_addr,
            ..self.listeners.addresses()
        }
    }

    /// Serve `bound` on `GET /listeners` (which also marks the listeners
    /// bound for `/readyz`) and write it to the ready file, if asked for.
    fn publish(&self, bound: &BoundAddresses) -> std::io::Result<()> {
        self.admin.set_listeners(bound.clone());
        match &self.options.ready_file {
            Some(path) => bound.write_ready_file(path),
            None => Ok(()),
        }
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
}

/// The metrics at start: our certificates' dates, and the config loaded
/// now counting as the last good load.
fn startup_metrics(store: &IdentityStore) -> anyhow::Result<Metrics> {
    let metrics = Metrics::new().context("cannot create metrics")?;
    let material = store.current();
    metrics.set_own_certs(&material.certified_key.cert, &material.trust_bundle);
    metrics.config_last_reload_success.set(unix_now());
    Ok(metrics)
}

/// Bind the admin listener, when enabled. Its address is fixed at start.
async fn bind_admin(admin: &AdminConfig) -> anyhow::Result<Option<TcpListener>> {
    if !admin.enabled {
        return Ok(None);
    }
    let socket = TcpListener::bind(admin.listen)
        .await
        .with_context(|| format!("admin: cannot listen on {}", admin.listen))?;
    Ok(Some(socket))
}

/// With `[admin] mtls`, the TLS acceptor that authorizes admin clients.
fn admin_tls(
    admin: &AdminConfig,
    store: &Arc<IdentityStore>,
) -> anyhow::Result<Option<TlsAcceptor>> {
    if !admin.mtls {
        return Ok(None);
    }
    let policy = compile_policy(&admin.allow, admin.allow_any_authenticated)
        .map_err(|errors| anyhow::anyhow!("admin.allow: {errors:?}"))?;
    let server = tls::inbound_server_config(
        store,
        Arc::new(Authorizer::enforcing(policy)),
        crate::config::TlsVersion::Tls13,
        &[],
    )?;
    Ok(Some(TlsAcceptor::from(server)))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
