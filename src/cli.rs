//! The command line: clap definitions only. `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::runtime::logging::LogFormat;

/// portcullis: a mutual-TLS sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "PORTCULLIS_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `portcullis=debug`); default `info`, or RUST_LOG.
    #[arg(long, global = true, env = "PORTCULLIS_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar proxy.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and the files it names; exit non-zero with every reason.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Check the configuration only; do not read the certificate, key and CRL files it names.
        #[arg(long)]
        no_files: bool,
    },
    /// Certificate tools.
    Cert {
        /// What to do with certificates.
        #[command(subcommand)]
        command: CertCommand,
    },
}

/// `portcullis cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Summarize every certificate in a PEM file.
    Inspect {
        /// PEM file with one or more certificates.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}
