//! `portcullis authz`: try authorization before enforcing it. `explain`
//! shows what a listener decides for a certificate and why, rule by rule;
//! `suggest` turns the identities a running proxy has seen into allow rules.

pub mod explain;
pub mod suggest;

use crate::config::ConfigErrors;

/// Why an `authz` command could not answer (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The config file is invalid, or a file it names is.
    #[error("{0}")]
    Config(ConfigErrors),
    /// A command-line argument or an input file is unusable.
    #[error("{0}")]
    Input(String),
}
