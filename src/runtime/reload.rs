//! Hot reload: a changed config file, SIGHUP or `POST /reload` loads the
//! whole new config, builds every runtime object and binds every new socket
//! first, and only then swaps them in. Any failure leaves the running config
//! entirely in force.
//!
//! What a reload changes: listeners added (start), removed (stop accepting,
//! drain up to `[shutdown] drain_timeout`), changed (new settings for new
//! connections at once), and `[identity]`. What it never touches: live
//! connections — except, when a listener sets `reauthorize_on_reload`, those
//! whose peer the new policy no longer allows. The admin listener address is
//! fixed at start.
//!
//! A listener keeps its socket when its name is unchanged and the socket
//! satisfies the new `listen` (same IP; same port, or port 0): see
//! `listeners.rs`. So a port-0 listener keeps the port it got. When a reload
//! moves a listener, `GET /listeners` and the ready file say where it went.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{build_listeners, load_identity, unix_now, Runtime};
use crate::config::IdentityConfig;

/// A request to reload, with where it came from and who waits for the answer.
#[derive(Debug)]
pub struct ReloadRequest {
    /// `file`, `SIGHUP`, `admin`.
    pub trigger: &'static str,
    /// Told the outcome: a summary of what changed, or why nothing did.
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// How long to wait after a config file event for the writer to finish.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watch the config file's folder (so editors' renames and the Kubernetes
/// ConfigMap `..data` symlink swap are seen) and ask for a reload whenever
/// the file's content changes.
pub fn spawn_config_watcher(
    path: PathBuf,
    reload: mpsc::Sender<ReloadRequest>,
    stop: CancellationToken,
) -> Result<(), notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut last = fingerprint(&path);
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let now = fingerprint(&path);
            if now == last {
                continue;
            }
            last = now;
            let request = ReloadRequest {
                trigger: "file",
                reply: None,
            };
            if reload.send(request).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn fingerprint(path: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    std::fs::read(path).ok().hash(&mut hasher);
    hasher.finish()
}

impl Runtime {
    /// Reload from the config file; counts and logs the outcome.
    pub async fn reload(&mut self, trigger: &'static str) -> Result<String, String> {
        let metrics = self.shared.metrics.clone();
        match self.try_reload().await {
            Ok(summary) => {
                metrics.config_reloads.with_label_values(&["success"]).inc();
                metrics.config_last_reload_success.set(unix_now());
                tracing::info!(trigger, changes = %summary, "config reloaded");
                self.republish_addresses();
                Ok(summary)
            }
            Err(error) => {
                metrics.config_reloads.with_label_values(&["failure"]).inc();
                tracing::warn!(trigger, %error, "config reload failed; the running config stays in force");
                Err(error)
            }
        }
    }

    async fn try_reload(&mut self) -> Result<String, String> {
        let path = self
            .options
            .config_path
            .clone()
            .ok_or_else(|| "no config file to reload from".to_string())?;
        let config =
            crate::config::load(&path).map_err(|e| e.to_string().trim_end().to_string())?;
        if config.admin != self.config.admin {
            tracing::warn!("[admin] changes take effect only after a restart");
        }

        // Build everything; nothing running is touched yet.
        let identity_changed = config.identity != self.config.identity;
        let material = match (&config.identity, identity_changed) {
            (_, false) => None,
            // A reload must never swap a working certificate for a placeholder:
            // obtain the first CA certificate now, or fail the reload.
            (IdentityConfig::Ca(ca), true) => Some(
                crate::certs::rotation::first_material(ca, self.store.provider())
                    .await
                    .map_err(|e| format!("identity: {e}"))?,
            ),
            (IdentityConfig::Files(_), true) => Some(
                load_identity(&config.identity, self.store.provider())
                    .map_err(|e| e.to_string())?,
            ),
        };
        let prepared = build_listeners(&config, &self.store, &path)
            .map_err(|e| e.to_string().trim_end().to_string())?;
        // Bind every new socket; a failure drops the ones bound so far.
        let placed = self
            .listeners
            .place(prepared)
            .await
            .map_err(|e| format!("{e:#}"))?;

        // Commit. From here on nothing can fail.
        let mut changes = Vec::new();
        if let Some(material) = material {
            let material = self.store.install_material(material);
            self.shared
                .metrics
                .set_own_certs(&material.certified_key.cert, &material.trust_bundle);
            changes.push("identity".to_string());
        }
        let drain = config.shutdown.drain_timeout;
        changes.extend(
            self.listeners
                .apply(placed, Some(&self.config), &self.shared, drain),
        );
        if config.shutdown != self.config.shutdown {
            changes.push("shutdown".to_string());
        }
        let watch_changed = config.watch != self.config.watch;
        self.config = config;
        if watch_changed {
            self.watch_certs().await;
            changes.push("watch".to_string());
        }
        if identity_changed {
            if let Err(error) = self.watch_identity() {
                tracing::warn!(%error, "cannot watch the new identity files; changes to them need a reload");
            }
        }
        if changes.is_empty() {
            changes.push("no changes".into());
        }
        Ok(changes.join(", "))
    }

    /// After a reload: if a listener moved, was added or removed, tell
    /// `GET /listeners` and rewrite the ready file.
    fn republish_addresses(&self) {
        let bound = self.bound_addresses();
        if self.admin.listeners().as_deref() == Some(&bound) {
            return;
        }
        if let Err(error) = self.publish(&bound) {
            tracing::warn!(%error, "cannot rewrite the ready file after the reload");
        }
        tracing::info!(
            inbound = ?bound.inbound,
            outbound = ?bound.outbound,
            admin = ?bound.admin,
            "listeners moved"
        );
    }
}
