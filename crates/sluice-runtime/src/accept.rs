//! The accept loop every listener shares: accepts until shutdown, and backs off briefly
//! after an accept error (out of file descriptors, say) instead of spinning on it. An error
//! that means the socket no longer listens ends the loop instead (see [`listener_failed`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::sleep;
use tracing::warn;

use crate::Context;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Whether an accept error means the listening socket itself is broken for good, so that
/// retrying cannot help: `EINVAL`, the socket no longer listens (it was shut down under
/// us). Every other error concerns one connection (reset before it was accepted, refused
/// by a firewall) or a passing shortage (descriptors, memory) and is retried.
pub fn listener_failed(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::InvalidInput
}

/// Hands every accepted connection to `accepted` until `ctx.shutdown` is cancelled (Ok) or
/// the listener fails for good (the error, see [`listener_failed`]).
pub async fn until_shutdown(
    listener: &TcpListener,
    ctx: &Context,
    protocol: &'static str,
    mut accepted: impl FnMut(TcpStream, SocketAddr),
) -> std::io::Result<()> {
    loop {
        let result = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            result = listener.accept() => result,
        };
        match result {
            Ok((socket, peer)) => accepted(socket, peer),
            Err(error) if listener_failed(&error) => return Err(error),
            Err(error) => {
                warn!(%error, protocol, "accept failed");
                sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
