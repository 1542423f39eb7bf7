//! Load generator for the portcullis benchmarks (see docs/benchmarks.md).
//!
//! One binary, several roles, each on a single-threaded tokio runtime (the
//! benchmark pins every process to one core):
//!
//! - `backend`: the plain-TCP service behind every proxy. A connection whose
//!   first byte is `S` is a *sink*: every byte is counted and discarded, and
//!   each `0x01` byte is answered with the 8-byte little-endian count so far
//!   (the bulk client's "how much arrived?"); any other first byte makes an
//!   *echo* connection.
//! - `relay`: a plaintext TCP relay (tokio, 16 KiB buffers per direction),
//!   the "plaintext relay" row: what forwarding costs without TLS.
//! - `bulk`, `connect`, `latency`, `idle`: the client workloads, over mTLS
//!   (`--ca/--cert/--key`) or plain TCP (`--plain`). With `--pid`, each reads
//!   the proxy's CPU time (utime+stime, /proc/PID/stat) and RSS
//!   (/proc/PID/status) around its measurement window and reports the cost
//!   per unit of work.
//! - `http-backend`: the HTTP service behind the HTTP proxies: `200` with
//!   a fixed-size body for every request (hyper; HTTP/1.1 keep-alive, h2c).
//! - `http`: keep-alive GETs over HTTP/1.1 or HTTP/2 (ALPN) through an
//!   mTLS HTTP proxy, N connections (HTTP/2: M streams each), closed loop
//!   or paced at a fixed rate; requests per second, the proxy's CPU time
//!   per request, latency.
//! - `handshake-mem`: full mTLS handshakes pumped in memory between a rustls
//!   client and server, to compare crypto providers (build with
//!   `--no-default-features --features aws-lc-rs` for aws-lc-rs).
//!
//! Every workload prints one line of `key=value` pairs on stdout.

mod backend;
mod client;
mod http;
mod memhs;
mod procfs;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", about = "portcullis benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo/sink backend on plain TCP.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Plaintext TCP relay (the "plaintext relay" row).
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
    },
    /// Throughput: N streams each writing 16 KiB chunks for the duration.
    Bulk {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Bytes per write.
        #[arg(long, default_value_t = 16 * 1024)]
        write_size: usize,
    },
    /// Connection rate: full handshake + 1-byte echo per connection.
    Connect {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Unmeasured seconds of the same load first.
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Open-loop ping-pong at a fixed rate on one connection.
    Latency {
        #[command(flatten)]
        common: ClientArgs,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// Hold N idle connections and report the proxy's RSS per connection.
    Idle {
        #[command(flatten)]
        common: ClientArgs,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to wait after the last connection before reading RSS.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
    /// HTTP backend: `200` with `--size` bytes for every request.
    HttpBackend {
        #[arg(long)]
        listen: SocketAddr,
        /// Response body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Keep-alive HTTP GETs, closed loop, on N connections (HTTP/2: M
    /// concurrent streams on each).
    Http {
        #[command(flatten)]
        common: ClientArgs,
        /// HTTP/1.1 (ALPN http/1.1) or HTTP/2 (ALPN h2; h2c with --plain).
        #[arg(long, value_enum, default_value_t = http::Proto::H1)]
        proto: http::Proto,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Concurrent streams per HTTP/2 connection (HTTP/1.1: always 1).
        #[arg(long, default_value_t = 16)]
        streams: usize,
        /// Path to GET.
        #[arg(long, default_value = "/1k")]
        path: String,
        /// Unmeasured seconds of the same load first (after the connections are open).
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// Requests per second over all loops, paced (latency from when each
        /// request was due); 0: closed loop, as fast as answers come.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Full mTLS handshakes in memory (no sockets), to compare crypto providers.
    HandshakeMem {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        server_cert: PathBuf,
        #[arg(long)]
        server_key: PathBuf,
        #[arg(long)]
        client_cert: PathBuf,
        #[arg(long)]
        client_key: PathBuf,
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
    },
}

/// What every client workload takes.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Address to connect to (the proxy, or the backend for the baseline).
    #[arg(long)]
    pub target: SocketAddr,
    /// Speak plain TCP instead of mTLS.
    #[arg(long)]
    pub plain: bool,
    /// CA bundle (PEM) to verify the server with.
    #[arg(long, required_unless_present = "plain")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM).
    #[arg(long, required_unless_present = "plain")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, required_unless_present = "plain")]
    pub key: Option<PathBuf>,
    /// TLS server name to send and verify.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Proxy process(es) whose CPU time and RSS to read (comma-separated PIDs).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Bind each connection to 127.0.0.(1 + i % 250) to spread source addresses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub spread_sources: bool,
}

fn main() {
    let cli = Cli::parse();
    procfs::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Backend { listen } => backend::backend(listen).await,
            Command::Relay { listen, to } => backend::relay(listen, to).await,
            Command::Bulk {
                common,
                streams,
                write_size,
            } => workloads::bulk(common, streams, write_size).await,
            Command::Connect {
                common,
                concurrency,
                warmup,
            } => workloads::connect(common, concurrency, warmup).await,
            Command::Latency { common, size, rate } => workloads::latency(common, size, rate).await,
            Command::Idle {
                common,
                connections,
                concurrency,
                settle,
            } => workloads::idle(common, connections, concurrency, settle).await,
            Command::HttpBackend { listen, size } => http::backend(listen, size).await,
            Command::Http {
                common,
                proto,
                connections,
                streams,
                path,
                warmup,
                rate,
            } => http::run(common, proto, connections, streams, path, warmup, rate).await,
            Command::HandshakeMem {
                ca,
                server_cert,
                server_key,
                client_cert,
                client_key,
                iterations,
            } => memhs::run(
                &ca,
                &server_cert,
                &server_key,
                &client_cert,
                &client_key,
                iterations,
            ),
        }
    });
    if let Err(error) = result {
        eprintln!("loadgen: {error}");
        std::process::exit(1);
    }
}

/// Errors are reported as text; this is a tool.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
