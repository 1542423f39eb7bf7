//! Unit tests of the lingering close over in-memory streams.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

use super::*;

fn limits(time_ms: u64, bytes: usize) -> LingerLimits {
    LingerLimits {
        time: Duration::from_millis(time_ms),
        bytes,
    }
}

#[tokio::test]
async fn the_peer_reads_eof_and_its_close_ends_the_linger() {
    let (ours, mut peer) = duplex(1024);
    let gate = LingerGate::default();
    let linger = tokio::spawn(async move {
        let gate = gate;
        close_after_alert(ours, limits(5_000, 1024), &gate).await
    });
    // What the peer wrote after the alert is read and discarded.
    peer.write_all(b"a request the server will never answer")
        .await
        .unwrap();
    // Our side was shut down: the peer reads EOF.
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    drop(peer);
    assert_eq!(linger.await.unwrap(), LingerEnd::PeerClosed);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_closes_is_cut_at_the_time_limit() {
    let (ours, mut peer) = duplex(1024);
    let gate = Arc::new(LingerGate::default());
    let task_gate = gate.clone();
    let linger =
        tokio::spawn(async move { close_after_alert(ours, limits(300, 1024), &task_gate).await });
    peer.write_all(b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.lingering(), 1);
    assert_eq!(linger.await.unwrap(), LingerEnd::TimeLimit);
    assert_eq!(gate.lingering(), 0);
}

#[tokio::test]
async fn a_peer_that_keeps_sending_is_cut_at_the_byte_limit() {
    let (ours, mut peer) = duplex(64 * 1024);
    let gate = LingerGate::default();
    let linger = tokio::spawn(async move {
        let gate = gate;
        close_after_alert(ours, limits(60_000, 10_000), &gate).await
    });
    let writer = tokio::spawn(async move {
        let chunk = [7u8; 1000];
        for _ in 0..100 {
            if peer.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    assert_eq!(linger.await.unwrap(), LingerEnd::ByteLimit);
    writer.await.unwrap();
}

#[tokio::test]
async fn shedding_ends_every_lingering_close() {
    let gate = Arc::new(LingerGate::default());
    let mut peers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (ours, peer) = duplex(1024);
        peers.push(peer);
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            close_after_alert(ours, limits(60_000, 1024), &gate).await
        }));
    }
    while gate.lingering() < 3 {
        tokio::task::yield_now().await;
    }
    // A moment for each to wait on its read (and so on the shed signal).
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.shed();
    for task in tasks {
        assert_eq!(task.await.unwrap(), LingerEnd::Shed);
    }
    assert_eq!(gate.lingering(), 0);
}

#[tokio::test]
async fn a_zero_time_limit_closes_at_once() {
    let (ours, mut peer) = duplex(1024);
    let gate = LingerGate::default();
    assert_eq!(
        close_after_alert(ours, limits(0, 1024), &gate).await,
        LingerEnd::TimeLimit
    );
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.unwrap();
    assert_eq!(gate.lingering(), 0);
}

#[tokio::test]
async fn only_a_handshake_that_sent_an_alert_lingers() {
    let gate = LingerGate::default();
    let ours = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::NoCertificatesPresented,
    );
    let theirs = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
    );
    let closed = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    for (error, lingers) in [(ours, true), (theirs, false), (closed, false)] {
        let (io, peer) = duplex(1024);
        drop(peer);
        let end = close_failed_handshake(&error, io, limits(1000, 1024), &gate).await;
        assert_eq!(end.is_some(), lingers, "{error}");
    }
}
