//! The plain-TCP backend (echo or sink) and the plaintext relay.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Result;

const BUFFER: usize = 16 * 1024;
/// The bulk client's "how much arrived so far?" byte; bulk payload is zeros.
const MARKER: u8 = 0x01;

pub async fn backend(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("backend listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                eprintln!("backend accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = serve(stream).await;
        });
    }
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = vec![0u8; BUFFER];
    let n = stream.read(&mut buffer).await?;
    if n == 0 {
        return Ok(());
    }
    if buffer[0] == b'S' {
        // Sink: count everything, answer each marker with the count so far.
        let mut count: u64 = 0;
        let mut chunk = &buffer[..n];
        loop {
            let mut rest = chunk;
            while let Some(pos) = rest.iter().position(|&b| b == MARKER) {
                count += pos as u64;
                stream.write_all(&count.to_le_bytes()).await?;
                rest = &rest[pos + 1..];
            }
            count += rest.len() as u64;
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                return Ok(());
            }
            chunk = &buffer[..n];
        }
    }
    // Echo.
    stream.write_all(&buffer[..n]).await?;
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buffer[..n]).await?;
    }
}

/// A plaintext relay with the same buffer size as portcullis's pipe.
pub async fn relay(listen: SocketAddr, to: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("relay listening on {} -> {to}", listener.local_addr()?);
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("relay accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(mut server) = TcpStream::connect(to).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let _ =
                tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER)
                    .await;
        });
    }
}
