//! The HTTP-aware inbound listener (`[[inbound]] protocol = "http"`).
//!
//! After the mTLS handshake (the same accept loop, TLS acceptor and chain
//! checks as a TCP listener, with ALPN `h2` and `http/1.1`), portcullis
//! speaks HTTP/1.1 or HTTP/2 to the client with hyper, authorizes every
//! request by route (`routes`), hands the verified identity to the
//! application in request headers (`headers`), and forwards the request to
//! the backend over a pool of plaintext HTTP/1.1 (or h2c) connections,
//! streaming bodies both ways (`serve`). The byte pipe of TCP listeners is
//! not involved.

pub mod headers;
pub mod routes;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::tls::IdentityStore;
use headers::HeaderConfig;
use routes::Routes;

/// The body type requests and responses are streamed as.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How the listener talks to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProtocol {
    /// Plaintext HTTP/1.1 with keep-alive.
    Http1,
    /// Plaintext HTTP/2 with prior knowledge.
    H2c,
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of a request head (request line and headers); more is
    /// answered 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more is answered 431.
    pub max_headers: usize,
    /// Time a client has to send a whole request head (slowloris).
    pub header_read_timeout: Duration,
    /// Time the backend has to answer with its response head; then 504.
    pub backend_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Most HTTP/2 streams a client may open and reset before the server
    /// accepted them (the rapid-reset attack), per connection.
    pub max_pending_reset_streams: usize,
}

/// What every request of an HTTP listener needs, built with its settings.
pub struct HttpSettings {
    /// Routes and the listener's rules.
    pub routes: Routes,
    /// Which identity headers to set.
    pub headers: HeaderConfig,
    /// Limits.
    pub limits: Limits,
    /// `host:port` of the backend.
    pub backend: String,
    /// The same, parsed once for the URI of every backend request.
    pub backend_authority: Authority,
    /// The pooled client to the backend.
    pub client: Client<HttpConnector, Body>,
    /// Our identity, for the `By` element of XFCC.
    pub store: Arc<IdentityStore>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("backend", &self.backend)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HttpSettings {
    /// Settings for a listener forwarding to `backend` with `protocol`.
    pub fn new(
        routes: Routes,
        headers: HeaderConfig,
        limits: Limits,
        backend: String,
        protocol: BackendProtocol,
        store: Arc<IdentityStore>,
    ) -> Result<Arc<HttpSettings>, String> {
        let backend_authority = Authority::try_from(backend.as_str())
            .map_err(|e| format!("backend {backend:?} is not host:port: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(limits.backend_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90));
        if protocol == BackendProtocol::H2c {
            builder.http2_only(true);
        }
        Ok(Arc::new(HttpSettings {
            routes,
            headers,
            limits,
            backend,
            backend_authority,
            client: builder.build(connector),
            store,
        }))
    }
}
