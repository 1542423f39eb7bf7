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
        /// Once every listener (admin included) is bound, write their addresses here as JSON
        /// (written atomically; rewritten when a reload moves a listener; removed at shutdown).
        #[arg(long, env = "PORTCULLIS_READY_FILE")]
        ready_file: Option<PathBuf>,
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
    /// Zero-config local mTLS in front of a local port, with a dev CA and a client certificate.
    Dev {
        /// Local service to put mTLS in front of (host:port); without it a demo backend answers.
        #[arg(long)]
        forward: Option<String>,
        /// Address of the mTLS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Address of the admin endpoint (/metrics, /healthz, /readyz).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// Also originate mTLS to this upstream (host:port) from a plaintext loopback port.
        #[arg(long)]
        outbound: Option<String>,
        /// Plaintext loopback address of the outbound listener.
        #[arg(long, default_value = "127.0.0.1:15001")]
        outbound_listen: std::net::SocketAddr,
        /// Folder for the dev CA and certificates [default: ~/.local/share/portcullis/dev].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The internal CA that proxies get and renew their certificates from.
    Ca {
        /// What to do.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Try authorization before enforcing it: explain a verdict, suggest rules.
    Authz {
        /// What to do.
        #[command(subcommand)]
        command: AuthzCommand,
    },
    /// Certificate tools.
    Cert {
        /// What to do with certificates.
        #[command(subcommand)]
        command: CertCommand,
    },
}

/// `portcullis authz ...`.
#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Verify a certificate chain as a listener would and show its verdict,
    /// rule by rule. Exit 0 when the rules allow it, 1 when they do not (or
    /// the chain is refused), 2 on an error.
    Explain {
        /// The proxy's configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// The inbound listener; may be omitted when the config has one.
        #[arg(long)]
        listener: Option<String>,
        /// Verify at this time (RFC 3339, e.g. 2026-12-24T12:00:00Z) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// For an HTTP listener: decide a request for this path by route.
        #[arg(long)]
        path: Option<String>,
        /// For an HTTP listener: the request method [default: GET].
        #[arg(long)]
        method: Option<String>,
        /// PEM file with the peer's certificate chain, leaf first.
        cert: PathBuf,
    },
    /// Print `[[inbound.allow]]` rules that admit exactly the peers a running
    /// proxy has seen, for review.
    Suggest {
        /// The admin endpoint's peer table, `http://127.0.0.1:9901/peers`, or
        /// a file holding a saved answer of it.
        #[arg(
            long,
            required_unless_present = "from_log",
            conflicts_with = "from_log"
        )]
        from: Option<String>,
        /// A file of JSON access log lines (`--log-format json`).
        #[arg(long)]
        from_log: Option<PathBuf>,
        /// Only this listener.
        #[arg(long)]
        listener: Option<String>,
        /// Fold SPIFFE IDs that share a trust domain and parent path into one glob.
        #[arg(long)]
        generalize: bool,
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

/// `portcullis ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root and an intermediate CA in a new folder (keys 0600); refuses to overwrite.
    Init {
        /// Folder to create the CA in.
        #[arg(long)]
        dir: PathBuf,
        /// SPIFFE trust domain, e.g. example.org.
        #[arg(long)]
        trust_domain: String,
    },
    /// Issue a certificate offline (bootstrapping, tests): writes PREFIX.crt (chain), PREFIX.key, PREFIX.bundle.crt.
    Issue {
        /// The CA folder.
        #[arg(long)]
        dir: PathBuf,
        /// SPIFFE ID of the certificate.
        #[arg(long)]
        spiffe_id: String,
        /// DNS SANs to add.
        #[arg(long)]
        dns: Vec<String>,
        /// Lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// Output path prefix.
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint a bootstrap token (JWT) that authorizes exactly one SPIFFE ID.
    Token {
        /// The CA folder.
        #[arg(long)]
        dir: PathBuf,
        /// The SPIFFE ID the token may obtain a certificate for.
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime of the token.
        #[arg(long, default_value = "10m")]
        ttl: humantime::Duration,
    },
    /// Serve the CA's HTTPS signing API.
    Serve {
        /// CA server configuration (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Revoke a certificate by serial; it appears in the CRL the CA serves.
    Revoke {
        /// The CA folder.
        #[arg(long)]
        dir: PathBuf,
        /// Serial number in hex (as `cert inspect` prints it).
        #[arg(long)]
        serial: String,
    },
}
