//! RTMP peers for tests: a [`Publisher`] of fixture tags, viewers that record what they get
//! (inline with [`record`], or from a task with [`Player`]), and a raw socket that has only
//! done the handshake, for tests that write bytes by hand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_rtmp::client::ClientEvent;
use sluice_runtime::client::{Client, RtmpUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::media::{Tag, fixture_media};

/// Deadline for a connect, a handshake or a publish against an in-process node.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Parses an `rtmp://` URL; panics on a bad one.
pub fn url(s: &str) -> RtmpUrl {
    RtmpUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// How a [`Publisher`] spaces its tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// This long after each tag, whatever the timestamps say (faster or slower than live).
    Gap(Duration),
    /// Each tag when its timestamp is due, counted from the first: a live encoder.
    RealTime,
}

/// Publishes fixture tags from a task: onMetaData, then the tags, looped with increasing
/// timestamps (sequence headers on the first pass only), then it hands back the client.
///
/// ```no_run
/// # async fn f() {
/// use std::time::Duration;
/// use sluice_testkit::{fixtures::H264_AAC, rtmp::Publisher};
/// let publishing = Publisher::fixture("rtmp://127.0.0.1:1935/live/a", H264_AAC)
///     .gap(Duration::from_millis(10))
///     .loops(100)
///     .spawn();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    url: String,
    tags: Vec<Tag>,
    metadata: Bytes,
    pacing: Pacing,
    loops: u32,
    until: Option<Duration>,
}

impl Publisher {
    /// Publishes `tags` (audio and video) after the onMetaData body `metadata`; once, 10 ms
    /// apart, unless told otherwise.
    pub fn new(url: impl Into<String>, tags: Vec<Tag>, metadata: Bytes) -> Publisher {
        Publisher {
            url: url.into(),
            tags,
            metadata,
            pacing: Pacing::Gap(Duration::from_millis(10)),
            loops: 1,
            until: None,
        }
    }

    /// Publishes the checked-in fixture `name` (see [`crate::fixtures`]).
    pub fn fixture(url: impl Into<String>, name: &str) -> Publisher {
        let (tags, metadata) = fixture_media(name);
        Publisher::new(url, tags, metadata)
    }

    /// Sends a tag every `gap`.
    pub fn gap(self, gap: Duration) -> Publisher {
        Publisher {
            pacing: Pacing::Gap(gap),
            ..self
        }
    }

    /// Sends each tag when its timestamp is due; loops until [`Publisher::until`].
    pub fn real_time(self) -> Publisher {
        Publisher {
            pacing: Pacing::RealTime,
            loops: u32::MAX,
            ..self
        }
    }

    /// Sends the tags `passes` times.
    pub fn loops(self, passes: u32) -> Publisher {
        Publisher {
            loops: passes,
            ..self
        }
    }

    /// Stops before the first tag whose (looped) timestamp is past `media_time`.
    pub fn until(self, media_time: Duration) -> Publisher {
        Publisher {
            until: Some(media_time),
            ..self
        }
    }

    /// Starts publishing; the task panics if the server refuses or goes away.
    pub fn spawn(self) -> JoinHandle<Client> {
        self.spawn_noting(|_, _| {})
    }

    /// [`Publisher::spawn`], calling `on_send(type_id, timestamp)` just before each tag
    /// goes out (to note when it was sent, say).
    pub fn spawn_noting(
        self,
        mut on_send: impl FnMut(u8, u32) + Send + 'static,
    ) -> JoinHandle<Client> {
        tokio::spawn(async move {
            let mut client = Client::publish(&url(&self.url), DEADLINE)
                .await
                .unwrap_or_else(|e| panic!("publish {}: {e}", self.url));
            client
                .send_metadata(self.metadata.clone())
                .await
                .expect("metadata");
            // One pass's length: the next pass starts a frame after its last tag.
            let span = self.tags.last().map_or(0, |t| t.timestamp) + 40;
            let start = Instant::now();
            for pass in 0..self.loops {
                for tag in &self.tags {
                    if pass > 0 && tag.is_sequence_header() {
                        continue;
                    }
                    let ts = tag.timestamp + pass * span;
                    let due = Duration::from_millis(u64::from(ts));
                    if self.until.is_some_and(|until| due > until) {
                        return client;
                    }
                    if self.pacing == Pacing::RealTime {
                        tokio::time::sleep_until(start + due).await;
                    }
                    on_send(tag.type_id, ts);
                    client
                        .send_media(tag.type_id, ts, tag.payload.clone())
                        .await
                        .expect("send");
                    if let Pacing::Gap(gap) = self.pacing {
                        tokio::time::sleep(gap).await;
                    }
                }
            }
            client
        })
    }
}

/// What a viewer received, in order (see [`record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// An onMetaData body.
    Metadata(Bytes),
    /// An audio or video message.
    Media(Tag),
    /// StreamBegin.
    Begin,
    /// StreamEOF.
    Eof,
}

/// Reads `client`'s events until the stream ends (StreamEOF or close), `limit` media
/// messages arrived, or `within` passed.
pub async fn record(client: &mut Client, limit: usize, within: Duration) -> Vec<Got> {
    let mut got = Vec::new();
    let mut media = 0;
    let _ = tokio::time::timeout(within, async {
        while media < limit {
            match client.next_event().await {
                Ok(Some(ClientEvent::Media {
                    type_id,
                    timestamp,
                    payload,
                })) => {
                    media += 1;
                    got.push(Got::Media(Tag {
                        type_id,
                        timestamp,
                        payload,
                    }));
                }
                Ok(Some(ClientEvent::Metadata { payload, .. })) => got.push(Got::Metadata(payload)),
                Ok(Some(ClientEvent::StreamBegin)) => got.push(Got::Begin),
                Ok(Some(ClientEvent::StreamEof)) => {
                    got.push(Got::Eof);
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    got
}

/// The media messages of a recording.
pub fn media_of(got: &[Got]) -> Vec<Tag> {
    got.iter()
        .filter_map(|g| match g {
            Got::Media(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// One thing a [`Player`] received.
#[derive(Debug, Clone)]
pub enum Seen {
    /// An audio (8) or video (9) message, and when it arrived.
    Media {
        /// 8 audio, 9 video.
        type_id: u8,
        /// RTMP timestamp, ms.
        timestamp: u32,
        /// The message body.
        payload: Bytes,
        /// When the player read it.
        at: Instant,
    },
    /// Any other event, by name (`StreamEof`, a status or failure code, …); not metadata.
    Event(String),
    /// The connection ended (closed by the server, or an error), and why.
    Ended(String),
}

/// An RTMP viewer recording everything it receives, from a task, until stopped or
/// disconnected.
#[derive(Debug)]
pub struct Player {
    /// What it plays.
    pub url: String,
    /// Deadline for playing and for each wait.
    within: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Player {
    /// Plays `url` (panics if the server refuses or does not answer `within`) and records.
    pub async fn start(url: &str, within: Duration) -> Player {
        let mut client = Client::play(&self::url(url), within)
            .await
            .unwrap_or_else(|e| panic!("play {url}: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let seen = seen.clone();
            let stop = stop.clone();
            async move {
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = client.next_event() => e,
                    };
                    let item = match event {
                        Ok(Some(ClientEvent::Media {
                            type_id,
                            timestamp,
                            payload,
                        })) => Seen::Media {
                            type_id,
                            timestamp,
                            payload,
                            at: Instant::now(),
                        },
                        Ok(Some(ClientEvent::Metadata { .. })) => continue,
                        Ok(Some(ClientEvent::Status { code, .. })) => Seen::Event(code.to_string()),
                        Ok(Some(ClientEvent::Failed { code, .. })) => Seen::Event(code.to_string()),
                        Ok(Some(other)) => Seen::Event(format!("{other:?}")),
                        Ok(None) => Seen::Ended("closed by the server".to_owned()),
                        Err(e) => Seen::Ended(e.to_string()),
                    };
                    let ended = matches!(item, Seen::Ended(_));
                    seen.lock().expect("recording").push(item);
                    if ended {
                        return;
                    }
                }
            }
        });
        Player {
            url: url.to_owned(),
            within,
            seen,
            stop,
            task,
        }
    }

    /// What was received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("recording").clone()
    }

    /// How many audio and video messages arrived so far.
    pub fn media(&self) -> usize {
        self.seen
            .lock()
            .expect("recording")
            .iter()
            .filter(|s| matches!(s, Seen::Media { .. }))
            .count()
    }

    /// Video messages received at or after `since`.
    pub fn videos_since(&self, since: Instant) -> usize {
        self.seen
            .lock()
            .expect("recording")
            .iter()
            .filter(|s| matches!(s, Seen::Media { type_id: 9, at, .. } if *at >= since))
            .count()
    }

    /// Why the stream or the connection ended (`StreamEof`, or the connection's end), if it
    /// did.
    pub fn ended(&self) -> Option<String> {
        self.seen
            .lock()
            .expect("recording")
            .iter()
            .find_map(|s| match s {
                Seen::Event(e) if e == "StreamEof" => Some(e.clone()),
                Seen::Ended(e) => Some(e.clone()),
                _ => None,
            })
    }

    /// Waits until `n` video messages arrived at or after `since`; panics if they do not.
    pub async fn wait_videos(&self, n: usize, since: Instant) {
        let ok =
            crate::wait::eventually(self.within, || async { self.videos_since(since) >= n }).await;
        assert!(
            ok,
            "{}: {} of {n} video messages; last events: {:?}",
            self.url,
            self.videos_since(since),
            self.events()
        );
    }

    /// Waits until `more` media messages arrived beyond those received so far, with the
    /// stream still going; Err says what happened instead.
    pub async fn keeps_receiving(&self, more: usize) -> Result<(), String> {
        let from = self.media();
        crate::wait::eventually(self.within, || async {
            self.ended().is_some() || self.media() >= from + more
        })
        .await;
        match self.ended() {
            Some(why) => Err(format!("it ended ({why}) after {} messages", self.media())),
            None if self.media() < from + more => Err(format!(
                "{} of {more} more messages in {:?}",
                self.media() - from,
                self.within
            )),
            None => Ok(()),
        }
    }

    /// The non-media things seen (events, the end).
    pub fn events(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Media { .. } => None,
                Seen::Event(e) => Some(e),
                Seen::Ended(e) => Some(format!("ended: {e}")),
            })
            .collect()
    }

    /// Stops playing and returns everything seen.
    pub async fn stop(self) -> Vec<Seen> {
        self.stop.cancel();
        let _ = tokio::time::timeout(self.within, self.task).await;
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().expect("recording"))
            .unwrap_or_else(|arc| arc.lock().expect("recording").clone())
    }
}

/// A TCP connection that completed the RTMP handshake as a client (rml_rtmp's handshake, an
/// implementation independent of Sluice's), with nothing else sent yet.
pub async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    handshake_on(TcpStream::connect(addr).await.expect("connect")).await
}

/// [`handshaken`] on a socket the caller connected (with its own socket options).
pub async fn handshake_on(mut socket: TcpStream) -> TcpStream {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    let mut hs = Handshake::new(PeerType::Client);
    let c0c1 = hs.generate_outbound_p0_and_p1().expect("c0c1");
    socket.write_all(&c0c1).await.expect("write");
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("handshake answer")
            .expect("read");
        assert!(n > 0, "server closed during handshake");
        match hs.process_bytes(&buf[..n]).expect("handshake") {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.expect("write");
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await.expect("write");
                assert!(remaining_bytes.is_empty());
                return socket;
            }
        }
    }
}

/// Reads and discards until the peer closes; whether it closed within `within`.
pub async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 8192];
    tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
