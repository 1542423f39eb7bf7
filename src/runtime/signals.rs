//! Process signals: SIGTERM and SIGINT start a graceful shutdown, SIGHUP
//! asks for a config reload. Handlers are installed once, at start, before
//! anything else, so a signal during start-up is not lost.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The installed signal handlers.
#[derive(Debug)]
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Install the handlers for SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal: `Shutdown` for SIGTERM/SIGINT, `Reload` for SIGHUP.
    pub async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.terminate.recv() => {
                tracing::info!(signal = "SIGTERM", "shutdown requested");
                SignalEvent::Shutdown
            }
            _ = self.interrupt.recv() => {
                tracing::info!(signal = "SIGINT", "shutdown requested");
                SignalEvent::Shutdown
            }
            _ = self.hangup.recv() => {
                tracing::info!(signal = "SIGHUP", "reload requested");
                SignalEvent::Reload
            }
        }
    }
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// Drain and exit.
    Shutdown,
    /// Reload the config.
    Reload,
}
