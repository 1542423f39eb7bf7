//! The admin surface: metric definitions and the admin HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`).

pub mod metrics;
pub mod server;

pub use metrics::Metrics;
pub use server::AdminState;
