//! The admin surface: metric definitions, the admin HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`, `/certs`, `/listeners`,
//! `POST /reload`), and the `[[watch]]` certificate expiry exporter.

pub mod metrics;
pub mod peers;
pub mod server;
pub mod watch;

pub use metrics::Metrics;
pub use server::AdminState;
