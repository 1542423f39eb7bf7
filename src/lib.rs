//! portcullis: a mutual-TLS sidecar proxy.
//!
//! The crate is organised by concern (see `docs/architecture.md`):
//! configuration, peer identity and policy, TLS plumbing, where our own
//! certificate comes from, the proxy data path, the running state, and the
//! admin/metrics surface. `main.rs` only parses the command line and calls
//! into this library.

pub mod admin;
pub mod authz;
pub mod ca;
pub mod certs;
pub mod cli;
pub mod config;
pub mod dev;
pub mod http;
pub mod identity;
pub mod inspect;
pub mod proxy;
pub mod runtime;
pub mod tls;
