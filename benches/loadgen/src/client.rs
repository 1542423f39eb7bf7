//! Client side: TLS config (TLS 1.3, TLS_AES_128_GCM_SHA256, X25519 only;
//! presents a client certificate; never resumes), connecting with spread
//! source addresses, and a stream that is either TLS or plain TCP.

use std::fs::File;
use std::io::BufReader;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, NamedGroup, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::{ClientArgs, Result};

/// The crypto provider this build uses (ring unless built with aws-lc-rs).
pub fn full_provider() -> CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    {
        rustls::crypto::aws_lc_rs::default_provider()
    }
    #[cfg(not(feature = "aws-lc-rs"))]
    {
        rustls::crypto::ring::default_provider()
    }
}

/// The provider the client offers with: one suite, one group, so every proxy
/// negotiates exactly the same thing.
pub fn bench_provider() -> CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
    #[cfg(not(feature = "aws-lc-rs"))]
    use rustls::crypto::ring::{cipher_suite, kx_group};
    CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![kx_group::X25519],
        ..full_provider()
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let mut reader =
        BufReader::new(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    Ok(rustls_pemfile::certs(&mut reader).collect::<std::io::Result<Vec<_>>>()?)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let mut reader =
        BufReader::new(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    rustls_pemfile::private_key(&mut reader)?
        .ok_or_else(|| format!("{}: no private key", path.display()).into())
}

pub fn roots(ca: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Counts the session tickets servers send (and keeps none, so every
/// handshake is a full one).
#[derive(Debug, Default)]
pub struct TicketCounter(pub AtomicU64);

impl ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, _: Tls13ClientSessionValue) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        None
    }
}

pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    tickets: Arc<TicketCounter>,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(bench_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    config.resumption = Resumption::store(tickets);
    config.alpn_protocols = alpn;
    Ok(config)
}

/// How a workload reaches its target.
#[derive(Clone)]
pub struct Dialer {
    target: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    spread: bool,
    pub tickets: Arc<TicketCounter>,
}

impl Dialer {
    pub fn new(args: &ClientArgs) -> Result<Dialer> {
        Dialer::with_alpn(args, Vec::new())
    }

    /// A dialer that offers these ALPN protocols (TLS only; nothing is
    /// offered when the list is empty).
    pub fn with_alpn(args: &ClientArgs, alpn: Vec<Vec<u8>>) -> Result<Dialer> {
        let tickets = Arc::new(TicketCounter::default());
        let tls = if args.plain {
            None
        } else {
            let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
                return Err("--ca, --cert and --key are required without --plain".into());
            };
            let config = client_config(ca, cert, key, tickets.clone(), alpn)?;
            let name = ServerName::try_from(args.server_name.clone())?;
            Some((TlsConnector::from(Arc::new(config)), name))
        };
        Ok(Dialer {
            target: args.target,
            tls,
            spread: args.spread_sources,
            tickets,
        })
    }

    /// Connect (from 127.0.0.(1 + index % 250) when spreading) and handshake.
    pub async fn dial(&self, index: u64) -> Result<Stream> {
        let tcp = connect_tcp(self.target, self.spread.then_some(index)).await?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => Ok(Stream::Tls(Box::new(
                connector.connect(name.clone(), tcp).await?,
            ))),
        }
    }

    /// What was negotiated, for the report line (`-` for plain TCP).
    pub fn describe(stream: &Stream) -> String {
        match stream {
            Stream::Plain(_) => "plain".into(),
            Stream::Tls(tls) => {
                let (_, conn) = tls.get_ref();
                let suite = conn
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
                    .unwrap_or_default();
                let group = conn
                    .negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
                    .unwrap_or_default();
                format!("{suite}/{group}")
            }
        }
    }

    /// The ALPN protocol the server chose (`-` for none or plain TCP).
    pub fn alpn(stream: &Stream) -> String {
        match stream {
            Stream::Plain(_) => "-".into(),
            Stream::Tls(tls) => tls
                .get_ref()
                .1
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_else(|| "-".into()),
        }
    }
}

async fn connect_tcp(target: SocketAddr, source_index: Option<u64>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(index) = source_index {
        // Let connect() pick the port (not bind()), so ports are per
        // 4-tuple and TIME_WAIT reuse applies.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own with a correctly sized value.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of_val(&one) as libc::socklen_t,
            );
        }
        let source = Ipv4Addr::new(127, 0, 0, 1 + (index % 250) as u8);
        socket.bind(SocketAddr::from((source, 0)))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A client connection: mTLS or plain TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
