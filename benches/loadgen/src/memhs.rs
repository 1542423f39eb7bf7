//! Full mTLS handshakes pumped in memory between a rustls client and a
//! rustls server (no sockets, no tokio), timing the server side separately.
//!
//! The server is set up like a portcullis inbound listener (TLS 1.3, client
//! certificate required and chain-verified by webpki, no tickets, no session
//! cache) but without portcullis's identity extraction and policy, which the
//! criterion benchmark in benches/micro.rs measures. Built once with ring and
//! once with aws-lc-rs, it compares the two crypto providers.
//!
//! Times are this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not wall
//! time, so other load on the machine does not count.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use crate::client::{bench_provider, full_provider, load_certs, load_key, roots};
use crate::Result;

#[allow(clippy::too_many_arguments)]
pub fn run(
    ca: &Path,
    server_cert: &Path,
    server_key: &Path,
    client_cert: &Path,
    client_key: &Path,
    iterations: u32,
) -> Result<()> {
    let server_provider = Arc::new(full_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), server_provider.clone())
            .build()?;
    let mut server = ServerConfig::builder_with_provider(server_provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(server_cert)?, load_key(server_key)?)?;
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let server = Arc::new(server);

    let mut client = ClientConfig::builder_with_provider(Arc::new(bench_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(client_cert)?, load_key(client_key)?)?;
    client.resumption = Resumption::disabled();
    let client = Arc::new(client);
    let name = ServerName::try_from("localhost")?;

    // Warm up.
    for _ in 0..iterations.min(100) {
        handshake(&server, &client, &name)?;
    }
    let mut server_time = Duration::ZERO;
    let started = CpuClock::now();
    for _ in 0..iterations {
        server_time += handshake(&server, &client, &name)?;
    }
    let total = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / iterations as f64;
    println!(
        "mode=handshake-mem provider={} iterations={iterations} us_per_handshake={:.1} server_us_per_handshake={:.1} client_us_per_handshake={:.1}",
        if cfg!(feature = "aws-lc-rs") { "aws-lc-rs" } else { "ring" },
        per(total),
        per(server_time),
        per(total - server_time),
    );
    Ok(())
}

/// One full handshake; returns the time spent in the server's calls.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> Result<Duration> {
    let mut server_time = Duration::ZERO;
    let t = CpuClock::now();
    let mut s = ServerConnection::new(server.clone())?;
    server_time += t.elapsed();
    let mut c = ClientConnection::new(client.clone(), name.clone())?;
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut rounds = 0;
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() || s.wants_write() {
        rounds += 1;
        if rounds > 20 {
            return Err("handshake did not finish".into());
        }
        buffer.clear();
        while c.wants_write() {
            c.write_tls(&mut buffer)?;
        }
        let t = CpuClock::now();
        let mut input = &buffer[..];
        while !input.is_empty() {
            s.read_tls(&mut input)?;
            s.process_new_packets()?;
        }
        let mut out = Vec::with_capacity(8 * 1024);
        while s.wants_write() {
            s.write_tls(&mut out)?;
        }
        server_time += t.elapsed();
        let mut input = &out[..];
        while !input.is_empty() {
            c.read_tls(&mut input)?;
            c.process_new_packets()?;
        }
    }
    Ok(server_time)
}

/// This thread's CPU time.
#[derive(Clone, Copy)]
struct CpuClock(Duration);

impl CpuClock {
    fn now() -> CpuClock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        CpuClock(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(self) -> Duration {
        CpuClock::now().0.saturating_sub(self.0)
    }
}
