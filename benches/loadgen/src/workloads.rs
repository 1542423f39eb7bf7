//! The client workloads. Each prints one `key=value` line.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::MissedTickBehavior;

use crate::client::{Dialer, Stream};
use crate::procfs::{rss_kib, Window};
use crate::{ClientArgs, Result};

pub(crate) fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

pub(crate) fn quantiles_us(h: &Histogram<u64>, line: &mut String) {
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        let _ = write!(
            line,
            " {name}_us={:.1}",
            h.value_at_quantile(q) as f64 / 1000.0
        );
    }
    let _ = write!(line, " max_us={:.1}", h.max() as f64 / 1000.0);
}

fn tickets(dialer: &Dialer) -> u64 {
    dialer.tickets.0.load(Ordering::Relaxed)
}

/// Bulk: each stream writes `write_size` chunks of zeros for the duration,
/// then asks the sink how much arrived; throughput is what arrived.
pub async fn bulk(args: ClientArgs, streams: usize, write_size: usize) -> Result<()> {
    let dialer = Dialer::new(&args)?;
    let duration = Duration::from_secs_f64(args.duration);
    let window = Window::start(&args.pid);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for index in 0..streams {
        let dialer = dialer.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = dialer.dial(index as u64).await?;
            let negotiated = Dialer::describe(&stream);
            let mut chunk = vec![0u8; write_size];
            chunk[0] = b'S';
            stream.write_all(&chunk).await?;
            chunk[0] = 0;
            while Instant::now() < deadline {
                stream.write_all(&chunk).await?;
            }
            stream.write_all(&[0x01]).await?;
            stream.flush().await?;
            let mut count = [0u8; 8];
            stream.read_exact(&mut count).await?;
            let _ = stream.shutdown().await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                u64::from_le_bytes(count),
                negotiated,
            ))
        }));
    }
    let mut bytes = 0u64;
    let mut negotiated = String::new();
    let mut errors = 0;
    for task in tasks {
        match task.await? {
            Ok((n, tls)) => {
                bytes += n;
                negotiated = tls;
            }
            Err(e) => {
                errors += 1;
                eprintln!("bulk stream: {e:?}");
            }
        }
    }
    let (cpu, wall) = window.finish();
    let gb = bytes as f64 / 1e9;
    let mut line = format!(
        "mode=bulk streams={streams} bytes={bytes} wall_s={wall:.3} gbytes_per_s={:.3} proxy_cpu_s={cpu:.3} errors={errors} tls={negotiated} tickets={}",
        gb / wall,
        tickets(&dialer),
    );
    if !args.pid.is_empty() && gb > 0.0 {
        let _ = write!(line, " cpu_s_per_gb={:.3}", cpu / gb);
        let _ = write!(
            line,
            " gb_per_cpu_s={:.3}",
            if cpu > 0.0 { gb / cpu } else { 0.0 }
        );
    }
    println!("{line}");
    if errors > 0 {
        return Err(format!("{errors} stream(s) failed").into());
    }
    Ok(())
}

async fn one_connection(dialer: &Dialer, index: u64, describe: bool) -> Result<String> {
    let mut stream = dialer.dial(index).await?;
    stream.write_all(b"E").await?;
    stream.flush().await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    let negotiated = if describe {
        Dialer::describe(&stream)
    } else {
        String::new()
    };
    let _ = stream.shutdown().await;
    Ok(negotiated)
}

/// Connection rate: `concurrency` workers each loop connect + handshake +
/// 1-byte echo + close until the duration is over.
pub async fn connect(args: ClientArgs, concurrency: usize, warmup: f64) -> Result<()> {
    let dialer = Dialer::new(&args)?;
    let counter = Arc::new(AtomicU64::new(0));
    if warmup > 0.0 {
        // Unmeasured: fills caches (and session ticket stores) first.
        connect_phase(
            &dialer,
            &counter,
            concurrency,
            Duration::from_secs_f64(warmup),
        )
        .await?;
    }
    let window = Window::start(&args.pid);
    let (hist, errors, negotiated) = connect_phase(
        &dialer,
        &counter,
        concurrency,
        Duration::from_secs_f64(args.duration),
    )
    .await?;
    let (cpu, wall) = window.finish();
    let done = hist.len();
    let mut line = format!(
        "mode=connect concurrency={concurrency} connections={done} wall_s={wall:.3} conn_per_s={:.1} proxy_cpu_s={cpu:.3} errors={errors} tls={negotiated} tickets={}",
        done as f64 / wall,
        tickets(&dialer),
    );
    if !args.pid.is_empty() && done > 0 {
        let _ = write!(line, " cpu_ms_per_conn={:.4}", cpu * 1000.0 / done as f64);
    }
    quantiles_us(&hist, &mut line);
    println!("{line}");
    if done == 0 {
        return Err("no connection completed".into());
    }
    Ok(())
}

/// `concurrency` workers loop connections until `duration` has passed.
async fn connect_phase(
    dialer: &Dialer,
    counter: &Arc<AtomicU64>,
    concurrency: usize,
    duration: Duration,
) -> Result<(Histogram<u64>, u64, String)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let dialer = dialer.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            let mut negotiated = String::new();
            let mut first_error = None;
            while Instant::now() < deadline {
                let index = counter.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                match one_connection(&dialer, index, negotiated.is_empty()).await {
                    Ok(tls) => {
                        let _ = hist.record(started.elapsed().as_nanos() as u64);
                        if !tls.is_empty() {
                            negotiated = tls;
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        // Do not spin on a refusing target.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (hist, errors, negotiated, first_error)
        }));
    }
    let mut hist = histogram();
    let mut errors = 0;
    let mut negotiated = String::new();
    for task in tasks {
        let (h, e, tls, first_error) = task.await?;
        hist.add(&h)?;
        errors += e;
        if !tls.is_empty() {
            negotiated = tls;
        }
        if let Some(error) = first_error {
            eprintln!("connect: first error: {error}");
        }
    }
    Ok((hist, errors, negotiated))
}

/// Open-loop ping-pong: messages of `size` bytes are sent at `rate` per
/// second whatever the replies do; latency is from each send to its echo.
pub async fn latency(args: ClientArgs, size: usize, rate: u64) -> Result<()> {
    let dialer = Dialer::new(&args)?;
    let stream = dialer.dial(0).await?;
    let negotiated = Dialer::describe(&stream);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let message = vec![b'x'; size];
    let mut echo = vec![0u8; size];
    // Warm up closed-loop: caches, buffers, the proxy's first allocations.
    for _ in 0..200 {
        writer.write_all(&message).await?;
        reader.read_exact(&mut echo).await?;
    }
    let total = ((rate as f64) * args.duration).max(1.0) as u64;
    let sent: RefCell<VecDeque<Instant>> = RefCell::new(VecDeque::new());
    let mut hist = histogram();
    let window = Window::start(&args.pid);
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        for _ in 0..total {
            tick.tick().await;
            sent.borrow_mut().push_back(Instant::now());
            writer.write_all(&message).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let receive = async {
        for _ in 0..total {
            reader.read_exact(&mut echo).await?;
            let now = Instant::now();
            if let Some(at) = sent.borrow_mut().pop_front() {
                let _ = hist.record(now.duration_since(at).as_nanos() as u64);
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let (s, r) = tokio::join!(send, receive);
    s?;
    r?;
    let (cpu, wall) = window.finish();
    let mut line = format!(
        "mode=latency size={size} rate={rate} messages={} wall_s={wall:.3} proxy_cpu_s={cpu:.3} tls={negotiated}",
        hist.len()
    );
    quantiles_us(&hist, &mut line);
    let _ = write!(line, " mean_us={:.1}", hist.mean() / 1000.0);
    println!("{line}");
    let mut stream = reader.unsplit(writer);
    let _ = stream.shutdown().await;
    Ok(())
}

/// Hold `connections` idle connections (each after a full handshake and a
/// 1-byte echo, so the proxy has its backend connection too) and report how
/// much the proxy's RSS grew per connection.
pub async fn idle(
    args: ClientArgs,
    connections: usize,
    concurrency: usize,
    settle: f64,
) -> Result<()> {
    let dialer = Dialer::new(&args)?;
    let rss_before = rss_kib(&args.pid);
    let window = Window::start(&args.pid);
    let started = Instant::now();
    let held: Arc<Mutex<Vec<Stream>>> = Arc::new(Mutex::new(Vec::with_capacity(connections)));
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (dialer, held, counter, errors) = (
            dialer.clone(),
            held.clone(),
            counter.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let index = counter.fetch_add(1, Ordering::Relaxed);
                if index >= connections as u64 {
                    return;
                }
                let result = async {
                    let mut stream = dialer.dial(index).await?;
                    stream.write_all(b"E").await?;
                    stream.flush().await?;
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(stream)
                }
                .await;
                match result {
                    Ok(stream) => held.lock().expect("lock").push(stream),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("idle: first error at connection {index}: {e}");
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let open_secs = started.elapsed().as_secs_f64();
    let (open_cpu, _) = window.finish();
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let rss_after = rss_kib(&args.pid);
    let open = held.lock().expect("lock").len();
    let per_conn_kib = if open > 0 {
        (rss_after as f64 - rss_before as f64) / open as f64
    } else {
        0.0
    };
    println!(
        "mode=idle connections={open} errors={} open_s={open_secs:.2} open_proxy_cpu_s={open_cpu:.3} rss_before_kib={rss_before} rss_after_kib={rss_after} kib_per_conn={per_conn_kib:.2}",
        errors.load(Ordering::Relaxed)
    );
    // Closing 9,000 TLS connections politely is not part of the measurement.
    drop(held);
    if open == 0 {
        return Err("no connection stayed open".into());
    }
    Ok(())
}
