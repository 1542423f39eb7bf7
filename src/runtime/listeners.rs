//! The set of running listeners: start one on a bound socket, swap its
//! settings, stop it and drain its connections.
//!
//! A listener's settings live behind an `ArcSwap`; each new connection
//! loads them once at accept, so a swap applies to new connections at once
//! and never touches live ones.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Metrics;
use crate::proxy::listener::AcceptLoop;
use crate::proxy::{ConnectionContext, Direction, LiveConnections};
use crate::tls::linger::LingerGate;

/// One running listener.
pub struct Running<S> {
    /// The address it is bound to.
    pub listen: SocketAddr,
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
}

impl<S: Send + Sync + 'static> Running<S> {
    /// Start accepting on `listener`, handing each connection to `handle`
    /// with the settings in force at accept.
    pub fn start<F, Fut>(
        listener: TcpListener,
        name: Arc<str>,
        direction: Direction,
        settings: Arc<S>,
        max_connections: usize,
        shared: &Shared,
        handle: F,
    ) -> std::io::Result<Running<S>>
    where
        F: Fn(TcpStream, SocketAddr, Arc<S>, ConnectionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listen = listener.local_addr()?;
        let settings = Arc::new(ArcSwap::new(settings));
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
        };
        let accept = AcceptLoop {
            name,
            direction,
            limit: limit.clone(),
            stop_accepting: stop_accepting.clone(),
            tracker: shared.tracker.clone(),
            metrics: shared.metrics.clone(),
            linger,
        };
        let current = settings.clone();
        let accept_task = tokio::spawn(accept.run(listener, move |stream, peer| {
            handle(stream, peer, current.load_full(), ctx.clone())
        }));
        Ok(Running {
            listen,
            settings,
            live,
            limit,
            max_connections,
            stop_accepting,
            force_close,
            accept_task,
        })
    }

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
