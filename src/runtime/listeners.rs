//! The one path every listener takes, at start and on reload alike: prepared
//! from its config entry (settings built, nothing bound), placed (a new socket
//! bound, or the running listener's socket kept), then applied (started,
//! given new settings, or stopped and drained).
//!
//! Everything here is generic over [`ListenerKind`]; [`Listeners`] holds one
//! [`ListenerSet`] per kind and is the only place that names the kinds.
//!
//! A listener's settings live behind an `ArcSwap`; each new connection
//! loads them once at accept, so a swap applies to new connections at once
//! and never touches live ones.
//!
//! # When a reload keeps a socket
//!
//! A running listener keeps its bound socket when the new config has an
//! entry of the same kind and name whose `listen` the socket already
//! satisfies: the same IP, and the same port or port 0 ("any port"; the one
//! it has is one). So a listener configured with port 0 is not rebound to a
//! new random port on every reload, and writing the port it got into the
//! file keeps it too. Any other address is bound anew before anything is
//! swapped, and the old listener stops accepting and drains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::kinds::{ListenerKind, ListenerSpec};
use crate::admin::peers::PeerTable;
use crate::admin::Metrics;
use crate::config::Config;
use crate::proxy::inbound::InboundSettings;
use crate::proxy::listener::AcceptLoop;
use crate::proxy::outbound::OutboundSettings;
use crate::proxy::{ConnectionContext, LiveConnections};
use crate::tls::linger::LingerGate;
use crate::tls::IdentityStore;

/// A listener built from its config entry, ready to bind: its address and
/// limits (in `entry`) and the settings its connections will read.
pub struct PreparedListener<S: ListenerKind> {
    /// The config entry, kept to tell on reload whether it changed.
    pub entry: S::Entry,
    /// Settings built from `entry`.
    pub settings: Arc<S>,
}

impl<S: ListenerKind> PreparedListener<S> {
    /// Name, address and connection limit.
    pub fn spec(&self) -> ListenerSpec<'_> {
        S::spec(&self.entry)
    }
}

/// A config problem found while building a listener: the key path
/// (`inbound[0]`) and the reason.
pub type BuildError = (String, String);

/// Build every listener of kind `S` in `config`; binds nothing.
pub fn prepare_kind<S: ListenerKind>(
    config: &Config,
    store: &Arc<IdentityStore>,
) -> Result<Vec<PreparedListener<S>>, BuildError> {
    S::entries(config)
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let settings = S::build(entry, store)
                .map_err(|reason| (format!("{}[{index}]", S::KEY), reason))?;
            Ok(PreparedListener {
                entry: entry.clone(),
                settings: Arc::new(settings),
            })
        })
        .collect()
}

/// Does a socket bound to `bound` serve a listener configured with
/// `listen`? Yes when the IP is the same and the port is the same or 0.
pub fn keeps_socket(bound: SocketAddr, listen: SocketAddr) -> bool {
    bound.ip() == listen.ip() && (listen.port() == 0 || listen.port() == bound.port())
}

/// A prepared listener and where it will accept.
pub struct Placed<S: ListenerKind> {
    prepared: PreparedListener<S>,
    socket: Option<Bound>,
}

/// A newly bound socket and the address it got.
struct Bound {
    socket: TcpListener,
    addr: SocketAddr,
}

/// Bind `spec.listen`; the error names the listener.
async fn bind(key: &str, spec: &ListenerSpec<'_>) -> anyhow::Result<Bound> {
    let (name, listen) = (spec.name, spec.listen);
    let socket = TcpListener::bind(listen)
        .await
        .with_context(|| format!("{key} listener {name:?}: cannot listen on {listen}"))?;
    let addr = socket
        .local_addr()
        .with_context(|| format!("{key} listener {name:?}: cannot read the bound address"))?;
    Ok(Bound { socket, addr })
}

/// One running listener.
pub struct Running<S> {
    /// The address it is bound to (the port the kernel chose, for port 0).
    pub bound: SocketAddr,
    /// Settings read by each new connection.
    pub settings: Arc<ArcSwap<S>>,
    /// Live authorized connections.
    pub live: Arc<LiveConnections>,
    limit: Arc<Semaphore>,
    max_connections: usize,
    stop_accepting: CancellationToken,
    force_close: CancellationToken,
    accept_task: JoinHandle<()>,
}

/// What every listener shares.
#[derive(Clone)]
pub struct Shared {
    /// Metrics.
    pub metrics: Metrics,
    /// Tracks every connection task, for the shutdown drain.
    pub tracker: TaskTracker,
    /// Parent of every listener's stop token: cancelled at shutdown.
    pub stop_all: CancellationToken,
    /// Parent of every listener's force-close token: cancelled when the
    /// shutdown drain deadline passes.
    pub force_all: CancellationToken,
    /// The peers seen by every inbound listener (`GET /peers`).
    pub peers: Arc<PeerTable>,
}

impl Shared {
    /// Fresh tokens and tracker around `metrics` and the peer table.
    pub fn new(metrics: Metrics, peers: Arc<PeerTable>) -> Shared {
        Shared {
            metrics,
            peers,
            tracker: TaskTracker::new(),
            stop_all: CancellationToken::new(),
            force_all: CancellationToken::new(),
        }
    }
}

impl<S: ListenerKind> Running<S> {
    /// Start accepting on `bound`, handing each connection to `S::handle`
    /// with the settings in force at accept.
    fn start(bound: Bound, prepared: PreparedListener<S>, shared: &Shared) -> Running<S> {
        let spec = prepared.spec();
        let name: Arc<str> = spec.name.into();
        let max_connections = spec.max_connections;
        let settings = Arc::new(ArcSwap::new(prepared.settings));
        let limit = Arc::new(Semaphore::new(max_connections));
        let stop_accepting = shared.stop_all.child_token();
        let force_close = shared.force_all.child_token();
        let live = Arc::new(LiveConnections::default());
        let linger = Arc::new(LingerGate::default());
        let ctx = ConnectionContext {
            metrics: shared.metrics.clone(),
            force_close: force_close.clone(),
            live: live.clone(),
            linger: linger.clone(),
            disagreements: Arc::default(),
            peers: shared.peers.clone(),
        };
        let accept = AcceptLoop {
            name,
            direction: S::DIRECTION,
            limit: limit.clone(),
            stop_accepting: stop_accepting.clone(),
            tracker: shared.tracker.clone(),
            metrics: shared.metrics.clone(),
            linger,
        };
        let current = settings.clone();
        let accept_task = tokio::spawn(accept.run(bound.socket, move |stream, peer| {
            S::handle(stream, peer, current.load_full(), ctx.clone())
        }));
        Running {
            bound: bound.addr,
            settings,
            live,
            limit,
            max_connections,
            stop_accepting,
            force_close,
            accept_task,
        }
    }
}

impl<S> Running<S> {
    /// New settings for new connections; live connections keep theirs.
    pub fn update(&mut self, settings: Arc<S>, max_connections: usize) {
        self.settings.store(settings);
        if max_connections > self.max_connections {
            self.limit
                .add_permits(max_connections - self.max_connections);
        } else if max_connections < self.max_connections {
            // Withdraw permits as connections above the new limit finish;
            // the live ones are not cut.
            let excess = u32::try_from(self.max_connections - max_connections).unwrap_or(u32::MAX);
            let limit = self.limit.clone();
            tokio::spawn(async move {
                if let Ok(permits) = limit.acquire_many_owned(excess).await {
                    permits.forget();
                }
            });
        }
        self.max_connections = max_connections;
    }

    /// Stop accepting now; close what is still open after `drain`.
    pub fn stop(self, drain: Duration) {
        self.stop_accepting.cancel();
        let force_close = self.force_close;
        let accept_task = self.accept_task;
        tokio::spawn(async move {
            let _ = accept_task.await;
            tokio::time::sleep(drain).await;
            force_close.cancel();
        });
    }
}

/// The running listeners of one kind, by name.
pub struct ListenerSet<S> {
    running: BTreeMap<String, Running<S>>,
}

impl<S> Default for ListenerSet<S> {
    fn default() -> Self {
        ListenerSet {
            running: BTreeMap::new(),
        }
    }
}

impl<S: ListenerKind> ListenerSet<S> {
    /// Give each prepared listener a socket: the running one's, when it
    /// keeps it (see the module docs), else a new one. A bind failure drops
    /// the sockets bound so far and changes nothing.
    pub async fn place(
        &self,
        prepared: Vec<PreparedListener<S>>,
    ) -> anyhow::Result<Vec<Placed<S>>> {
        let mut placed = Vec::with_capacity(prepared.len());
        for listener in prepared {
            let spec = listener.spec();
            let kept = self
                .running
                .get(spec.name)
                .is_some_and(|running| keeps_socket(running.bound, spec.listen));
            let socket = if kept {
                None
            } else {
                Some(bind(S::KEY, &spec).await?)
            };
            placed.push(Placed {
                prepared: listener,
                socket,
            });
        }
        Ok(placed)
    }

    /// Make the running set what `placed` describes: stop the listeners no
    /// placement keeps (they drain for up to `drain`), give kept ones whose
    /// entry changed since `old` their new settings, start the new ones.
    /// Returns a summary line per change. Cannot fail: everything that can
    /// was done by `place`.
    pub fn apply(
        &mut self,
        placed: Vec<Placed<S>>,
        old: &[S::Entry],
        shared: &Shared,
        drain: Duration,
    ) -> Vec<String> {
        let key = S::KEY;
        let mut changes = Vec::new();
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|name| {
                !placed
                    .iter()
                    .any(|p| p.socket.is_none() && p.prepared.spec().name == name.as_str())
            })
            .cloned()
            .collect();
        for name in stale {
            if let Some(running) = self.running.remove(&name) {
                running.stop(drain);
                changes.push(format!("removed {key} {name}"));
            }
        }
        for Placed { prepared, socket } in placed {
            let name = prepared.spec().name.to_string();
            match socket {
                Some(bound) => {
                    changes.push(format!("added {key} {name}"));
                    let running = Running::start(bound, prepared, shared);
                    self.running.insert(name, running);
                }
                None => {
                    let old_entry = old.iter().find(|o| S::spec(o).name == name);
                    let Some(running) = self.running.get_mut(&name) else {
                        continue;
                    };
                    if old_entry == Some(&prepared.entry) {
                        continue;
                    }
                    running.update(prepared.settings.clone(), prepared.spec().max_connections);
                    changes.push(format!("changed {key} {name}"));
                    changes.extend(S::reloaded(
                        old_entry,
                        &prepared.entry,
                        &prepared.settings,
                        &running.live,
                        &shared.metrics,
                    ));
                }
            }
        }
        changes
    }

    /// Where each listener is bound, by name.
    pub fn addresses(&self) -> BTreeMap<String, SocketAddr> {
        self.running
            .iter()
            .map(|(name, running)| (name.clone(), running.bound))
            .collect()
    }
}

/// Every listener of a config, prepared. One field per kind.
pub struct PreparedListeners {
    /// `[[inbound]]`, in config order.
    pub inbound: Vec<PreparedListener<InboundSettings>>,
    /// `[[outbound]]`, in config order.
    pub outbound: Vec<PreparedListener<OutboundSettings>>,
}

impl PreparedListeners {
    /// Build every listener's settings against `store`; binds nothing.
    pub fn build(config: &Config, store: &Arc<IdentityStore>) -> Result<Self, BuildError> {
        Ok(PreparedListeners {
            inbound: prepare_kind(config, store)?,
            outbound: prepare_kind(config, store)?,
        })
    }
}

/// Every listener of a config, placed. One field per kind.
pub struct PlacedListeners {
    inbound: Vec<Placed<InboundSettings>>,
    outbound: Vec<Placed<OutboundSettings>>,
}

/// The running listeners. One field per kind: a new listener kind is a
/// field here, in `PreparedListeners` and `PlacedListeners`, and a line in
/// each method below.
#[derive(Default)]
pub struct Listeners {
    /// Inbound listeners by name.
    pub inbound: ListenerSet<InboundSettings>,
    /// Outbound listeners by name.
    pub outbound: ListenerSet<OutboundSettings>,
}

impl Listeners {
    /// Bind every socket `prepared` needs that is not already bound.
    pub async fn place(&self, prepared: PreparedListeners) -> anyhow::Result<PlacedListeners> {
        Ok(PlacedListeners {
            inbound: self.inbound.place(prepared.inbound).await?,
            outbound: self.outbound.place(prepared.outbound).await?,
        })
    }

    /// Start, update and stop listeners to match `placed`; `old` is the
    /// config the running listeners came from (None at start).
    pub fn apply(
        &mut self,
        placed: PlacedListeners,
        old: Option<&Config>,
        shared: &Shared,
        drain: Duration,
    ) -> Vec<String> {
        let mut changes = self.inbound.apply(
            placed.inbound,
            old.map_or(&[], |c| InboundSettings::entries(c)),
            shared,
            drain,
        );
        changes.extend(self.outbound.apply(
            placed.outbound,
            old.map_or(&[], |c| OutboundSettings::entries(c)),
            shared,
            drain,
        ));
        changes
    }

    /// Where every listener is bound: (inbound, outbound) by name.
    pub fn addresses(&self) -> super::BoundAddresses {
        super::BoundAddresses {
            admin: None,
            inbound: self.inbound.addresses(),
            outbound: self.outbound.addresses(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn port_zero_keeps_the_port_it_got() {
        assert!(keeps_socket(addr("127.0.0.1:41234"), addr("127.0.0.1:0")));
        assert!(keeps_socket(addr("[::1]:41234"), addr("[::1]:0")));
    }

    #[test]
    fn pinning_the_bound_port_keeps_the_socket() {
        assert!(keeps_socket(
            addr("127.0.0.1:41234"),
            addr("127.0.0.1:41234")
        ));
    }

    #[test]
    fn another_port_or_ip_binds_anew() {
        assert!(!keeps_socket(
            addr("127.0.0.1:41234"),
            addr("127.0.0.1:41235")
        ));
        assert!(!keeps_socket(addr("127.0.0.1:41234"), addr("127.0.0.2:0")));
        assert!(!keeps_socket(addr("127.0.0.1:41234"), addr("0.0.0.0:0")));
        assert!(!keeps_socket(addr("127.0.0.1:41234"), addr("[::1]:41234")));
    }
}
