//! The listeners' HTTP server: the loop of `axum::serve` (accept, one task per
//! connection, graceful shutdown), written out because `axum::serve` exposes no
//! connection settings, and OTLP's large requests want other ones than hyper's
//! defaults (measured in the README, "Performance"):
//!
//! - HTTP/2 frames up to [`MAX_FRAME_BYTES`] (hyper's default is the protocol's
//!   16 KiB): a client that honours the setting (h2, so tonic and rotel) sends
//!   a 150 KiB export as one DATA frame instead of ten, and the server reads it
//!   in fewer, larger reads;
//! - flow-control windows of [`STREAM_WINDOW_BYTES`] per request and
//!   [`CONNECTION_WINDOW_BYTES`] per connection (hyper's defaults: 1 MiB
//!   each), so window updates, each a write of its own, go out less often;
//!   `otlp.max_request_bytes` (64 MiB by default) still bounds what one request
//!   may hold, checked as the body is read;
//! - `TCP_NODELAY` on every accepted connection: an answer goes out at once
//!   instead of waiting for the acknowledgement of the previous segment.
//!
//! Measured together (+9% spans per CPU-second); each alone was within the
//! noise of the rounds it was measured in.

use std::pin::pin;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The largest HTTP/2 frame the server accepts (the protocol allows up to
/// 16 MiB - 1).
const MAX_FRAME_BYTES: u32 = 1 << 20;
/// The HTTP/2 flow-control window of one request.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// The HTTP/2 flow-control window of one connection.
const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

/// How long open connections get to finish after a stop before they are closed.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` on `listener` until `stop`, then lets open connections
/// finish the requests they have begun (graceful shutdown, for at most
/// [`SHUTDOWN_GRACE`]) before it returns.
pub(super) fn serve(
    listener: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Each connection's task holds a receiver; the sender learns when the
        // last one is gone.
        let (all_closed, open) = tokio::sync::watch::channel(());
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http2()
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: it passes, so
                        // wait rather than spin (axum::serve does the same).
                        warn!(%error, what, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%error, ?peer, what, "cannot set TCP_NODELAY");
            }
            let service = TowerToHyperService::new(router.clone());
            let (stop, open, builder) = (stop.clone(), open.clone(), builder.clone());
            tokio::spawn(async move {
                let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        // An HTTP/2 client that does not answer the closing
                        // PING would hold the stop up for good.
                        tokio::time::timeout(SHUTDOWN_GRACE, connection)
                            .await
                            .unwrap_or(Ok(()))
                    }
                };
                if let Err(error) = result {
                    debug!(%error, ?peer, what, "connection ended with an error");
                }
                drop(open);
            });
        }
        drop(open);
        all_closed.closed().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// HTTP/2 frame types and settings read below (RFC 9113).
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    const MAX_FRAME_SIZE: u16 = 0x5;
    /// The connection window every HTTP/2 connection starts with.
    const PROTOCOL_WINDOW: u32 = 65_535;

    async fn frame(stream: &mut TcpStream) -> (u8, u32, Vec<u8>) {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.expect("frame header");
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
        let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let mut payload = vec![0u8; length as usize];
        stream
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        (header[3], stream_id, payload)
    }

    /// The server's first SETTINGS frame and the connection window update it
    /// sends after it, as a client sees them on the wire.
    #[tokio::test]
    async fn a_connection_gets_the_large_frames_and_windows_and_stop_ends_the_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = serve(listener, axum::Router::new(), stop.clone(), "test");
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("preface");
        let (kind, _, payload) = frame(&mut stream).await;
        assert_eq!(kind, SETTINGS, "the server speaks first with its settings");
        let settings: Vec<(u16, u32)> = payload
            .chunks_exact(6)
            .map(|s| {
                (
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                )
            })
            .collect();
        assert!(
            settings.contains(&(MAX_FRAME_SIZE, MAX_FRAME_BYTES)),
            "{settings:?}"
        );
        assert!(
            settings.contains(&(INITIAL_WINDOW_SIZE, STREAM_WINDOW_BYTES)),
            "{settings:?}"
        );
        let update = loop {
            let (kind, stream_id, payload) = frame(&mut stream).await;
            if kind == WINDOW_UPDATE && stream_id == 0 {
                break u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            }
        };
        assert_eq!(update, CONNECTION_WINDOW_BYTES - PROTOCOL_WINDOW);
        // The client leaves; stop: the server returns.
        drop(stream);
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .expect("the server task ends cleanly");
    }
}
