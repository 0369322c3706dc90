//! The accept loop every listener shares: accepts until shutdown, and backs off briefly
//! after an accept error (out of file descriptors, say) instead of spinning on it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::sleep;
use tracing::warn;

use crate::Context;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Hands every accepted connection to `accepted` until `ctx.shutdown` is cancelled.
pub async fn until_shutdown(
    listener: &TcpListener,
    ctx: &Context,
    protocol: &'static str,
    mut accepted: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let result = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            result = listener.accept() => result,
        };
        match result {
            Ok((socket, peer)) => accepted(socket, peer),
            Err(error) => {
                warn!(%error, protocol, "accept failed");
                sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
