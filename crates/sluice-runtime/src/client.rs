//! An RTMP client on tokio: play from or publish to any RTMP server. Used by origin pulls,
//! the test suite and the load generator. Every connect and handshake has a deadline.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_rtmp::chunk::ChunkLimits;
use sluice_rtmp::client::{ClientConfig, ClientEvent, StatusCode};
use sluice_rtmp::connection::{ClientConnection, ConnectionError};
use sluice_rtmp::handshake::{Handshake, HandshakeError, Progress, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// What went wrong on the client side, and whose fault it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `rtmp://host[:port]/app/stream`.
    #[error("bad RTMP URL {0:?}")]
    BadUrl(String),
    /// The deadline passed (connect, handshake or a reply); a retry may help.
    #[error("timed out while {0}")]
    Timeout(&'static str),
    /// A socket error; a retry may help.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server's handshake is broken.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server broke the chunk or command protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] ConnectionError),
    /// Media or metadata sent on a connection that does not publish (the caller's mistake).
    #[error("this connection does not publish")]
    NotPublishing,
    /// The server refused (connect, play or publish), with its status code.
    #[error("refused: {code}: {description}")]
    Refused {
        /// onStatus code, e.g. [`StatusCode::StreamNotFound`].
        code: StatusCode,
        /// The server's description.
        description: String,
    },
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
}

/// The parts of an RTMP URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    /// host:port (port 1935 when absent).
    pub addr: String,
    /// Application.
    pub app: String,
    /// Stream name (with any query string).
    pub stream: String,
    /// The URL up to the application, as sent in connect's tcUrl.
    pub tc_url: String,
}

impl RtmpUrl {
    /// Parses `rtmp://host[:port]/app/stream`.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("rtmp://").ok_or_else(bad)?;
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let (app, stream) = path.split_once('/').ok_or_else(bad)?;
        if host.is_empty() || app.is_empty() || stream.is_empty() {
            return Err(bad());
        }
        let addr = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']')
        {
            host.to_owned()
        } else {
            format!("{host}:1935")
        };
        Ok(RtmpUrl {
            addr,
            app: app.to_owned(),
            stream: stream.to_owned(),
            tc_url: format!("rtmp://{host}/{app}"),
        })
    }
}

/// A connected RTMP client.
#[derive(Debug)]
pub struct Client {
    socket: TcpStream,
    conn: ClientConnection,
    out: BytesMut,
    read_buf: BytesMut,
    events: std::collections::VecDeque<ClientEvent>,
    closed: bool,
}

impl Client {
    /// Connects, handshakes and sends `connect` for the URL's application, all within `deadline`.
    pub async fn connect(url: &RtmpUrl, deadline: Duration) -> Result<Self, ClientError> {
        timeout(deadline, Self::connect_inner(url))
            .await
            .map_err(|_| ClientError::Timeout("connecting"))?
    }

    async fn connect_inner(url: &RtmpUrl) -> Result<Self, ClientError> {
        let mut socket = TcpStream::connect(&url.addr).await?;
        socket.set_nodelay(true)?;
        let mut hs = Handshake::new(Role::Client);
        let start = hs.start()?;
        socket.write_all(&start).await?;
        let mut buf = vec![0u8; 4096];
        let remaining = loop {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            match hs.process(&buf[..n])? {
                Progress::InProgress { out } => socket.write_all(&out).await?,
                Progress::Done { out, remaining } => {
                    socket.write_all(&out).await?;
                    break remaining;
                }
            }
        };
        let conn = ClientConnection::new(
            ClientConfig {
                app: url.app.clone(),
                tc_url: url.tc_url.clone(),
                chunk_size: 4096,
                flash_ver: "FMLE/3.0 (compatible; sluice)".to_owned(),
                enhanced: true,
            },
            ChunkLimits::default(),
        );
        let mut client = Client {
            socket,
            conn,
            out: BytesMut::new(),
            read_buf: BytesMut::with_capacity(64 * 1024),
            events: Default::default(),
            closed: false,
        };
        client.conn.session.connect();
        client.input(&remaining)?;
        client.flush().await?;
        Ok(client)
    }

    /// Connects and asks to play the URL's stream; returns once the server started playback.
    pub async fn play(url: &RtmpUrl, deadline: Duration) -> Result<Self, ClientError> {
        let mut client = Self::connect(url, deadline).await?;
        client.conn.session.play(&url.stream);
        client.flush().await?;
        client
            .wait_for(deadline, "waiting for play to start", |e| {
                matches!(e, ClientEvent::PlayStarted)
            })
            .await?;
        Ok(client)
    }

    /// Connects and asks to publish the URL's stream; returns once the server accepted it.
    pub async fn publish(url: &RtmpUrl, deadline: Duration) -> Result<Self, ClientError> {
        let mut client = Self::connect(url, deadline).await?;
        client.conn.session.publish(&url.stream);
        client.flush().await?;
        client
            .wait_for(deadline, "waiting for publish to start", |e| {
                matches!(e, ClientEvent::PublishStarted)
            })
            .await?;
        Ok(client)
    }

    async fn wait_for(
        &mut self,
        deadline: Duration,
        what: &'static str,
        done: impl Fn(&ClientEvent) -> bool,
    ) -> Result<(), ClientError> {
        timeout(deadline, async {
            loop {
                let event = self.next_event().await?.ok_or(ClientError::Closed)?;
                match event {
                    ClientEvent::ConnectRejected { description } => {
                        return Err(ClientError::Refused {
                            code: StatusCode::ConnectRejected,
                            description,
                        });
                    }
                    ClientEvent::Failed { code, description } => {
                        return Err(ClientError::Refused { code, description });
                    }
                    e if done(&e) => return Ok(()),
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(what))?
    }

    fn input(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.conn.handle_input(data)?;
        while let Some(e) = self.conn.session.poll_event() {
            self.events.push_back(e);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        self.conn.drain_output(&mut self.out);
        if !self.out.is_empty() {
            let out = self.out.split();
            self.socket.write_all(&out).await?;
        }
        Ok(())
    }

    /// The next event from the server; None once the server closed the connection.
    pub async fn next_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.closed {
                return Ok(None);
            }
            self.read_buf.clear();
            let n = self.socket.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                self.closed = true;
                continue;
            }
            let data = self.read_buf.split().freeze();
            self.input(&data)?;
            self.flush().await?;
        }
    }

    /// Sends an audio (8) or video (9) message on the publishing stream.
    pub async fn send_media(
        &mut self,
        type_id: u8,
        timestamp: u32,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        let msg = self
            .conn
            .session
            .media_message(type_id, timestamp, payload)
            .ok_or(ClientError::NotPublishing)?;
        self.conn.send(&msg, &mut self.out);
        self.flush().await
    }

    /// Sends `@setDataFrame onMetaData` with an onMetaData body.
    pub async fn send_metadata(&mut self, body: Bytes) -> Result<(), ClientError> {
        let msg = self
            .conn
            .session
            .metadata_message(body)
            .ok_or(ClientError::NotPublishing)?;
        self.conn.send(&msg, &mut self.out);
        self.flush().await
    }

    /// Writes raw bytes (hand-built chunks in tests), after any pending session output.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.flush().await?;
        self.socket.write_all(bytes).await?;
        Ok(())
    }

    /// Unpublishes / stops playing, and closes the socket.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.conn.session.close();
        self.flush().await?;
        self.socket.shutdown().await?;
        Ok(())
    }

    /// The stream id the server gave this client's stream, if any.
    pub fn session(&self) -> &sluice_rtmp::client::ClientSession {
        &self.conn.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = RtmpUrl::parse("rtmp://127.0.0.1:1936/live/key?t=1").unwrap();
        assert_eq!(u.addr, "127.0.0.1:1936");
        assert_eq!((u.app.as_str(), u.stream.as_str()), ("live", "key?t=1"));
        assert_eq!(u.tc_url, "rtmp://127.0.0.1:1936/live");
        assert_eq!(
            RtmpUrl::parse("rtmp://example/live/k").unwrap().addr,
            "example:1935"
        );
        assert!(RtmpUrl::parse("http://x/live/k").is_err());
        assert!(RtmpUrl::parse("rtmp://x/live").is_err());
    }
}
