//! The `http` workload and the HTTP backend behind it.
//!
//! Client: `connections` keep-alive connections (mTLS with ALPN `http/1.1`
//! or `h2`, or plain TCP with HTTP/1.1 or h2c prior knowledge), hyper's
//! client connection API (no pool: each connection is driven directly).
//! HTTP/1.1 runs one request at a time per connection; HTTP/2 runs
//! `streams` concurrent request loops on each connection. Closed loop: each
//! loop sends its next GET as soon as the previous response body is read;
//! or paced (`rate`): the loops share a fixed request rate, and a request
//! sent late because the previous answer was late counts its latency from
//! when it was due.
//! After `warmup` unmeasured seconds, every request that completes within
//! the `duration` window is counted (200s, other statuses, errors) and its
//! latency (request sent → whole body read) recorded; the proxy's CPU time
//! is read around the same window.
//!
//! Backend: answers every request `200` with a body of `size` bytes and an
//! `x-saw-xfcc: 1|0` header telling whether the request carried an
//! `X-Forwarded-Client-Cert` header (so the client can check the proxy did
//! its identity-header work on every request). HTTP/1.1 keep-alive, or
//! h2c (prior knowledge) for the no-proxy HTTP/2 row.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::client::Dialer;
use crate::procfs::Window;
use crate::workloads::{histogram, quantiles_us};
use crate::{ClientArgs, Result};

/// HTTP/1.1 or HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
        }
    }

    fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        }
    }
}

const XFCC_SEEN: &str = "x-saw-xfcc";

/// The HTTP backend: `size` bytes for any request.
pub async fn backend(listen: SocketAddr, size: usize) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "http backend listening on {} ({size} B responses)",
        listener.local_addr()?
    );
    let body = Bytes::from(vec![b'x'; size]);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("http backend accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let saw = request.headers().contains_key("x-forwarded-client-cert");
                let mut response = Response::new(Full::new(body.clone()));
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(
                    XFCC_SEEN,
                    HeaderValue::from_static(if saw { "1" } else { "0" }),
                );
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What one request loop counted.
struct Tally {
    hist: hdrhistogram::Histogram<u64>,
    ok: u64,
    other_status: u64,
    errors: u64,
    no_xfcc: u64,
    body_bytes: u64,
    reconnects: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: histogram(),
            ok: 0,
            other_status: 0,
            errors: 0,
            no_xfcc: 0,
            body_bytes: 0,
            reconnects: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn add(&mut self, other: Tally) -> Result<()> {
        self.hist.add(&other.hist)?;
        self.ok += other.ok;
        self.other_status += other.other_status;
        self.errors += other.errors;
        self.no_xfcc += other.no_xfcc;
        self.body_bytes += other.body_bytes;
        self.reconnects += other.reconnects;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// The measurement window: requests completing in `[start, end)` count.
#[derive(Clone, Copy)]
struct Phase {
    start: Instant,
    end: Instant,
}

/// Either kind of hyper client connection.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn send(&mut self, request: Request<Empty<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
        }
    }

    fn clone_h2(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }
}

/// Dial connection `index` and hand it to hyper. Returns the sender and a
/// description of what was negotiated.
async fn open(dialer: &Dialer, index: u64, proto: Proto) -> Result<(Sender, String)> {
    let stream = dialer.dial(index).await?;
    let alpn = Dialer::alpn(&stream);
    let negotiated = format!("tls={} alpn={alpn}", Dialer::describe(&stream));
    if alpn != "-" && alpn.as_bytes() != proto.alpn() {
        return Err(format!(
            "asked for {} but the server chose ALPN {alpn}",
            proto.name()
        )
        .into());
    }
    let io = TokioIo::new(stream);
    let sender = match proto {
        Proto::H1 => {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Sender::H1(sender)
        }
        Proto::H2 => {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Sender::H2(sender)
        }
    };
    Ok((sender, negotiated))
}

/// One GET; counts it if it completes inside the window.
async fn one_request(
    sender: &mut Sender,
    uri: &str,
    host: &HeaderValue,
    phase: Phase,
    tally: &mut Tally,
    started: Instant,
) -> Result<()> {
    let mut request = Request::get(uri).body(Empty::<Bytes>::new())?;
    request.headers_mut().insert(HOST, host.clone());
    let response = sender.send(request).await?;
    let status = response.status();
    let saw_xfcc = response
        .headers()
        .get(XFCC_SEEN)
        .is_some_and(|v| v.as_bytes() == b"1");
    let body = response.into_body().collect().await?.to_bytes();
    let done = Instant::now();
    if done >= phase.start && done < phase.end {
        if status == StatusCode::OK {
            tally.ok += 1;
            let _ = tally
                .hist
                .record(done.duration_since(started).as_nanos() as u64);
            tally.body_bytes += body.len() as u64;
            if !saw_xfcc {
                tally.no_xfcc += 1;
            }
        } else {
            tally.other_status += 1;
            tally.first_error.get_or_insert_with(|| {
                format!("status {status}: {}", String::from_utf8_lossy(&body))
            });
        }
    }
    Ok(())
}

/// What every request loop shares.
#[derive(Clone)]
struct LoopSpec {
    dialer: Dialer,
    proto: Proto,
    uri: String,
    host: HeaderValue,
    phase: Phase,
    /// Paced loops: the time between two sends of one loop.
    interval: Option<Duration>,
}

/// A request loop on one sender until the window ends; on an error, reopens
/// its own connection (HTTP/1.1) or stops (an HTTP/2 stream loop: the
/// connection's first loop reopens it for itself only).
///
/// Closed loop: the next request goes as soon as the previous body is read.
/// Paced (`interval`): request k is due at `first + k × interval`. A loop
/// on schedule sleeps until then and latency counts from the actual send
/// (the timer's 1 ms granularity is not the target's delay); a loop behind
/// schedule sends at once and latency counts from when the request was due
/// (no coordinated omission).
async fn request_loop(
    spec: LoopSpec,
    index: u64,
    mut sender: Sender,
    may_reopen: bool,
    first: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut due = first;
    while Instant::now() < spec.phase.end {
        let started = match spec.interval {
            Some(interval) => {
                let now = Instant::now();
                let started = if due > now {
                    // On time: tokio's timer wakes up to a millisecond
                    // late, which is the client's delay, not the target's.
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    // Behind: the previous answer came late; this request
                    // has been waiting since it was due.
                    due
                };
                due += interval;
                started
            }
            None => Instant::now(),
        };
        let result = one_request(
            &mut sender,
            &spec.uri,
            &spec.host,
            spec.phase,
            &mut tally,
            started,
        )
        .await;
        if let Err(e) = result {
            let now = Instant::now();
            if now >= spec.phase.start && now < spec.phase.end {
                tally.error(&e);
            }
            if !may_reopen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            match open(&spec.dialer, index, spec.proto).await {
                Ok((s, _)) => {
                    sender = s;
                    tally.reconnects += 1;
                }
                Err(e) => {
                    tally.error(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            due = Instant::now();
        }
    }
    tally
}

/// The `http` workload.
pub async fn run(
    args: ClientArgs,
    proto: Proto,
    connections: usize,
    streams: usize,
    path: String,
    warmup: f64,
    rate: f64,
) -> Result<()> {
    let alpn = vec![proto.alpn().to_vec()];
    let dialer = Dialer::with_alpn(&args, alpn)?;
    let streams = if proto == Proto::H2 {
        streams.max(1)
    } else {
        1
    };
    let host = HeaderValue::from_str(&args.server_name)?;
    // HTTP/2 takes :scheme and :authority from an absolute URI; HTTP/1.1
    // sends the origin form and the Host header.
    let uri = match proto {
        Proto::H1 => path.clone(),
        Proto::H2 => format!(
            "{}://{}{path}",
            if args.plain { "http" } else { "https" },
            args.server_name
        ),
    };
    let mut senders = Vec::with_capacity(connections);
    let mut negotiated = String::new();
    for index in 0..connections {
        let (sender, tls) = open(&dialer, index as u64, proto).await?;
        negotiated = tls;
        senders.push(sender);
    }
    let start = Instant::now() + Duration::from_secs_f64(warmup);
    let phase = Phase {
        start,
        end: start + Duration::from_secs_f64(args.duration),
    };
    let loops = connections * streams;
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(loops as f64 / rate));
    let spec = LoopSpec {
        dialer: dialer.clone(),
        proto,
        uri,
        host,
        phase,
        interval,
    };
    let now = Instant::now();
    let mut tasks = Vec::new();
    let mut spawn = |index: usize, sender: Sender, may_reopen: bool| {
        // Paced loops start spread over one interval, not all at once.
        let offset = interval.map_or(Duration::ZERO, |i| i * tasks.len() as u32 / loops as u32);
        tasks.push(tokio::spawn(request_loop(
            spec.clone(),
            index as u64,
            sender,
            may_reopen,
            now + offset,
        )));
    };
    for (index, sender) in senders.into_iter().enumerate() {
        // HTTP/2: streams - 1 loops on clones of the connection's sender...
        for _ in 1..streams {
            let clone = sender.clone_h2().ok_or("HTTP/1.1 has one stream")?;
            spawn(index, clone, false);
        }
        // ...and one on the sender itself, the loop that reopens the
        // connection if it fails.
        spawn(index, sender, true);
    }
    tokio::time::sleep_until(phase.start.into()).await;
    let window = Window::start(&args.pid);
    tokio::time::sleep_until(phase.end.into()).await;
    let (cpu, wall) = window.finish();
    let mut tally = Tally::new();
    for task in tasks {
        tally.add(task.await?)?;
    }
    if let Some(error) = &tally.first_error {
        eprintln!("http: first error: {error}");
    }
    let requests = tally.ok;
    let mut line = format!(
        "mode=http proto={} connections={connections} streams={streams} rate={rate} requests={requests} wall_s={wall:.3} rps={:.1} proxy_cpu_s={cpu:.3} errors={} non_200={} no_xfcc={} reconnects={} body_bytes_per_req={:.0} {negotiated} tickets={}",
        proto.name(),
        requests as f64 / wall,
        tally.errors,
        tally.other_status,
        tally.no_xfcc,
        tally.reconnects,
        if requests > 0 { tally.body_bytes as f64 / requests as f64 } else { 0.0 },
        dialer.tickets.0.load(std::sync::atomic::Ordering::Relaxed),
    );
    if !args.pid.is_empty() && requests > 0 {
        let _ = write!(
            line,
            " cpu_ms_per_req={:.4}",
            cpu * 1000.0 / requests as f64
        );
    }
    quantiles_us(&tally.hist, &mut line);
    let _ = write!(line, " mean_us={:.1}", tally.hist.mean() / 1000.0);
    println!("{line}");
    if requests == 0 {
        return Err("no request completed".into());
    }
    Ok(())
}
