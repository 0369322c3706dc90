//! The client side of an RTMP connection, at the message level and without I/O: pulls from
//! origins (play) and pushes in tests (publish).
//!
//! Calls may be made at once (`connect(); play(key)`): play/publish wait until the connect
//! succeeds. Commands go on chunk stream 3, audio on 4, data on 5, video on 6.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::{self, Amf0Value, Command, metadata_from_set_data_frame, object};
use crate::control::{Control, UserControl};
use crate::message::{Message, MessageType};
pub use crate::server::SessionError;
use crate::server::amf0_body;

/// Chunk stream id for audio we publish.
pub const AUDIO_CSID: u32 = 4;
/// Chunk stream id for data messages (metadata) we publish.
pub const DATA_CSID: u32 = 5;
/// Chunk stream id for video we publish.
pub const VIDEO_CSID: u32 = 6;
/// Transaction id of our connect.
const CONNECT_TID: f64 = 1.0;
/// Buffer length we announce when playing, ms.
const PLAY_BUFFER_MS: u32 = 1000;
/// Window acknowledgement size we ask the server to use.
const WINDOW_ACK_SIZE: u32 = 2_500_000;

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Application name (`app` in connect).
    pub app: String,
    /// `tcUrl`, e.g. `rtmp://origin/live`.
    pub tc_url: String,
    /// Our outgoing chunk size (default 4096).
    pub chunk_size: u32,
    /// `flashVer` we announce.
    pub flash_ver: String,
    /// Offer enhanced RTMP (`fourCcList`) in connect.
    pub enhanced: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            app: "live".into(),
            tc_url: "rtmp://localhost/live".into(),
            chunk_size: 4096,
            flash_ver: "FMLE/3.0 (compatible; Sluice)".into(),
            enhanced: true,
        }
    }
}

/// What the application must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted our connect.
    Connected,
    /// The server rejected our connect.
    ConnectRejected {
        /// Its description, empty if none.
        description: String,
    },
    /// createStream answered; play/publish follows on this stream.
    StreamCreated {
        /// Message stream id.
        stream_id: u32,
    },
    /// NetStream.Play.Start.
    PlayStarted,
    /// NetStream.Publish.Start; media may be sent now.
    PublishStarted,
    /// Any other non-error onStatus.
    Status {
        /// `level`.
        level: String,
        /// `code`.
        code: StatusCode,
        /// `description`.
        description: String,
    },
    /// Audio or video on the stream we play.
    Media {
        /// 8 audio, 9 video.
        type_id: u8,
        /// RTMP timestamp, ms.
        timestamp: u32,
        /// FLV tag body.
        payload: Bytes,
    },
    /// Metadata on the stream we play: the `onMetaData` script-tag body.
    Metadata {
        /// RTMP timestamp, ms.
        timestamp: u32,
        /// String `onMetaData` + object.
        payload: Bytes,
    },
    /// StreamEOF for our stream: the publisher is gone.
    StreamEof,
    /// StreamBegin for our stream.
    StreamBegin,
    /// A request failed: onStatus with level `error`, or `_error` to createStream.
    Failed {
        /// Status code (e.g. [`StatusCode::StreamNotFound`]).
        code: StatusCode,
        /// Description.
        description: String,
    },
}

/// The code of an error status a server answered with (onStatus `code`): those a client
/// decides on, named; any other as sent. Displays as the code on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusCode {
    /// `NetStream.Play.StreamNotFound`: the server does not have the stream.
    StreamNotFound,
    /// `NetStream.Publish.BadName`: the server refuses the name for publishing (taken, or
    /// not allowed).
    BadName,
    /// `NetConnection.Connect.Rejected`: the server refused the connection (e.g. an
    /// application it does not serve).
    ConnectRejected,
    /// `NetStream.Play.UnpublishNotify`: the stream's publisher went away.
    UnpublishNotify,
    /// `NetStream.Play.Stop`: the server stopped playing the stream.
    PlayStop,
    /// Any other code, as sent.
    Other(String),
}

impl StatusCode {
    /// The code as it goes on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            StatusCode::StreamNotFound => "NetStream.Play.StreamNotFound",
            StatusCode::BadName => "NetStream.Publish.BadName",
            StatusCode::ConnectRejected => "NetConnection.Connect.Rejected",
            StatusCode::UnpublishNotify => "NetStream.Play.UnpublishNotify",
            StatusCode::PlayStop => "NetStream.Play.Stop",
            StatusCode::Other(code) => code,
        }
    }
}

impl From<String> for StatusCode {
    fn from(code: String) -> Self {
        match code.as_str() {
            "NetStream.Play.StreamNotFound" => StatusCode::StreamNotFound,
            "NetStream.Publish.BadName" => StatusCode::BadName,
            "NetConnection.Connect.Rejected" => StatusCode::ConnectRejected,
            "NetStream.Play.UnpublishNotify" => StatusCode::UnpublishNotify,
            "NetStream.Play.Stop" => StatusCode::PlayStop,
            _ => StatusCode::Other(code),
        }
    }
}

impl From<&str> for StatusCode {
    fn from(code: &str) -> Self {
        StatusCode::from(code.to_owned())
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Intent {
    Play(String),
    Publish(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Connected,
    Closed,
}

/// The client side of one RTMP connection (see the module docs).
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    /// Play/publish waiting for connect to succeed.
    pending: Option<Intent>,
    next_tid: f64,
    /// createStream transactions in flight.
    creating: HashMap<u64, Intent>,
    /// Our stream and what we do on it.
    active: Option<(u32, Intent)>,
    publishing: bool,
    peer_window: Option<u32>,
    last_ack: u64,
    events: VecDeque<ClientEvent>,
    output: VecDeque<Message>,
}

impl ClientSession {
    /// A session for a connection whose handshake is done.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            phase: Phase::Idle,
            pending: None,
            next_tid: CONNECT_TID + 1.0,
            creating: HashMap::new(),
            active: None,
            publishing: false,
            peer_window: None,
            last_ack: 0,
            events: VecDeque::new(),
            output: VecDeque::new(),
        }
    }

    /// Queues SetChunkSize and `connect`.
    pub fn connect(&mut self) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::Connecting;
        let size = self.config.chunk_size.clamp(1, 0x7FFF_FFFF);
        self.output
            .push_back(Control::SetChunkSize(size).to_message());
        let text = |s: &str| Amf0Value::Utf8String(s.to_owned());
        let mut props = object([
            ("app", text(&self.config.app)),
            ("type", text("nonprivate")),
            ("flashVer", text(&self.config.flash_ver)),
            ("tcUrl", text(&self.config.tc_url)),
            ("fpad", Amf0Value::Boolean(false)),
            ("capabilities", Amf0Value::Number(15.0)),
            ("audioCodecs", Amf0Value::Number(4071.0)),
            ("videoCodecs", Amf0Value::Number(252.0)),
            ("videoFunction", Amf0Value::Number(1.0)),
            ("objectEncoding", Amf0Value::Number(0.0)),
        ]);
        if self.config.enhanced
            && let Amf0Value::Object(p) = &mut props
        {
            let list = crate::server::VIDEO_FOURCCS
                .iter()
                .chain(crate::server::AUDIO_FOURCCS)
                .map(|f| text(f))
                .collect();
            p.insert("fourCcList".into(), Amf0Value::StrictArray(list));
        }
        self.send_command(0, Command::new("connect", CONNECT_TID, props, vec![]));
    }

    /// Plays `stream_key`: createStream, then SetBufferLength and `play(key, -1000)` (live
    /// only, as FFmpeg's `rtmp_live live`). Waits for connect if needed.
    pub fn play(&mut self, stream_key: &str) {
        self.start(Intent::Play(stream_key.to_owned()));
    }

    /// Publishes to `stream_key`: releaseStream, FCPublish, createStream, then
    /// `publish(key, "live")`. Waits for connect if needed.
    pub fn publish(&mut self, stream_key: &str) {
        self.start(Intent::Publish(stream_key.to_owned()));
    }

    /// An audio (8) or video (9) message on our publishing stream; `None` unless publishing.
    pub fn media_message(&self, type_id: u8, timestamp: u32, payload: Bytes) -> Option<Message> {
        let stream_id = self.publishing_stream()?;
        let csid = match type_id {
            8 => AUDIO_CSID,
            9 => VIDEO_CSID,
            _ => DATA_CSID,
        };
        Some(Message {
            csid,
            type_id,
            timestamp,
            stream_id,
            payload,
        })
    }

    /// `@setDataFrame` + `body` (an `onMetaData` script-tag body) on our publishing stream.
    pub fn metadata_message(&self, body: Bytes) -> Option<Message> {
        let stream_id = self.publishing_stream()?;
        let mut payload = BytesMut::with_capacity(16 + body.len());
        command::write_value(&Amf0Value::Utf8String("@setDataFrame".into()), &mut payload);
        payload.put_slice(&body);
        Some(Message {
            csid: DATA_CSID,
            type_id: MessageType::DataAmf0 as u8,
            timestamp: 0,
            stream_id,
            payload: payload.freeze(),
        })
    }

    /// Ends play/publish politely: FCUnpublish (when publishing) and deleteStream.
    pub fn close(&mut self) {
        if let Some((stream_id, intent)) = self.active.take() {
            if let Intent::Publish(key) = &intent {
                let tid = self.tid();
                let args = vec![Amf0Value::Utf8String(key.clone())];
                self.send_command(0, Command::new("FCUnpublish", tid, Amf0Value::Null, args));
            }
            let args = vec![Amf0Value::Number(f64::from(stream_id))];
            self.send_command(0, Command::new("deleteStream", 0.0, Amf0Value::Null, args));
        }
        self.pending = None;
        self.publishing = false;
        self.phase = Phase::Closed;
    }

    /// Handles one message from the chunk reader. `Err` means the server broke the protocol.
    pub fn handle_message(&mut self, msg: Message) -> Result<(), SessionError> {
        let Some(kind) = MessageType::from_id(msg.type_id) else {
            return Ok(());
        };
        match kind {
            MessageType::CommandAmf0 => self.handle_command(Command::decode(&msg.payload)?)?,
            MessageType::CommandAmf3 => {
                self.handle_command(Command::decode(amf0_body(&msg.payload))?)?
            }
            MessageType::DataAmf0 | MessageType::DataAmf3 if self.is_playing(msg.stream_id) => {
                let body = if kind == MessageType::DataAmf3 {
                    msg.payload
                        .slice(usize::from(msg.payload.first() == Some(&0))..)
                } else {
                    msg.payload
                };
                self.handle_data(body, msg.timestamp);
            }
            MessageType::Audio | MessageType::Video if self.is_playing(msg.stream_id) => {
                self.events.push_back(ClientEvent::Media {
                    type_id: msg.type_id,
                    timestamp: msg.timestamp,
                    payload: msg.payload,
                });
            }
            _ => match Control::decode(&msg)? {
                Some(Control::WindowAckSize(size)) => self.peer_window = Some(size),
                Some(Control::User(event)) => self.handle_user(event),
                _ => {}
            },
        }
        Ok(())
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next outgoing message, in order (see [`crate::connection::ClientConnection`]).
    pub fn poll_output(&mut self) -> Option<Message> {
        self.output.pop_front()
    }

    /// Reports total bytes received; queues an Acknowledgement each window the server set.
    pub fn record_bytes_received(&mut self, total: u64) {
        if let Some(window) = self.peer_window.filter(|w| *w > 0)
            && total.saturating_sub(self.last_ack) >= u64::from(window)
        {
            self.last_ack = total;
            self.output
                .push_back(Control::Acknowledgement(total as u32).to_message());
        }
    }

    fn start(&mut self, intent: Intent) {
        match self.phase {
            Phase::Connected if self.active.is_none() && self.creating.is_empty() => {
                self.create_stream(intent)
            }
            Phase::Idle | Phase::Connecting => self.pending = Some(intent),
            _ => {}
        }
    }

    fn create_stream(&mut self, intent: Intent) {
        if let Intent::Publish(key) = &intent {
            for name in ["releaseStream", "FCPublish"] {
                let tid = self.tid();
                let args = vec![Amf0Value::Utf8String(key.clone())];
                self.send_command(0, Command::new(name, tid, Amf0Value::Null, args));
            }
        }
        let tid = self.tid();
        self.creating.insert(tid as u64, intent);
        self.send_command(
            0,
            Command::new("createStream", tid, Amf0Value::Null, vec![]),
        );
    }

    fn handle_command(&mut self, cmd: Command) -> Result<(), SessionError> {
        let tid = cmd.transaction_id;
        match cmd.name.as_str() {
            "_result" if tid == CONNECT_TID && self.phase == Phase::Connecting => {
                self.phase = Phase::Connected;
                self.output
                    .push_back(Control::WindowAckSize(WINDOW_ACK_SIZE).to_message());
                self.events.push_back(ClientEvent::Connected);
                if let Some(intent) = self.pending.take() {
                    self.create_stream(intent);
                }
            }
            "_error" if tid == CONNECT_TID && self.phase == Phase::Connecting => {
                self.phase = Phase::Closed;
                let description = info_field(&cmd, "description");
                self.events
                    .push_back(ClientEvent::ConnectRejected { description });
            }
            "_result" => {
                let Some(intent) = self.creating.remove(&(tid as u64)) else {
                    return Ok(()); // releaseStream, FCPublish, ... answers
                };
                let stream_id = cmd
                    .args
                    .iter()
                    .find_map(|v| match v {
                        Amf0Value::Number(n) if (0.0..=f64::from(u32::MAX)).contains(n) => {
                            Some(*n as u32)
                        }
                        _ => None,
                    })
                    .ok_or(SessionError::NoStreamId)?;
                self.events
                    .push_back(ClientEvent::StreamCreated { stream_id });
                self.begin(stream_id, intent);
            }
            "_error" => {
                // Only createStream failures matter; other calls' errors need nothing.
                let known = self.creating.remove(&(tid as u64)).is_some();
                if known {
                    self.events.push_back(ClientEvent::Failed {
                        code: info_field(&cmd, "code").into(),
                        description: info_field(&cmd, "description"),
                    });
                }
            }
            "onStatus" => self.on_status(&cmd),
            _ => {} // onFCPublish, onBWDone, ...: nothing to do
        }
        Ok(())
    }

    fn begin(&mut self, stream_id: u32, intent: Intent) {
        match &intent {
            Intent::Play(key) => {
                self.output.push_back(
                    Control::User(UserControl::SetBufferLength {
                        stream_id,
                        ms: PLAY_BUFFER_MS,
                    })
                    .to_message(),
                );
                let args = vec![
                    Amf0Value::Utf8String(key.clone()),
                    Amf0Value::Number(-1000.0),
                ];
                self.send_command(stream_id, Command::new("play", 0.0, Amf0Value::Null, args));
            }
            Intent::Publish(key) => {
                let args = vec![
                    Amf0Value::Utf8String(key.clone()),
                    Amf0Value::Utf8String("live".into()),
                ];
                self.send_command(
                    stream_id,
                    Command::new("publish", 0.0, Amf0Value::Null, args),
                );
            }
        }
        self.active = Some((stream_id, intent));
    }

    fn on_status(&mut self, cmd: &Command) {
        let level = info_field(cmd, "level");
        let code = info_field(cmd, "code");
        let description = info_field(cmd, "description");
        let event = match code.as_str() {
            "NetStream.Play.Start" => ClientEvent::PlayStarted,
            "NetStream.Publish.Start" => {
                self.publishing = matches!(self.active, Some((_, Intent::Publish(_))));
                ClientEvent::PublishStarted
            }
            _ if level == "error" => ClientEvent::Failed {
                code: code.into(),
                description,
            },
            _ => ClientEvent::Status {
                level,
                code: code.into(),
                description,
            },
        };
        self.events.push_back(event);
    }

    fn handle_data(&mut self, body: Bytes, timestamp: u32) {
        // Servers send onMetaData as a script-tag body; some relay @setDataFrame as is.
        // Anything else (onStatus as data, |RtmpSampleAccess, cue points) needs nothing.
        if let Ok(payload) = metadata_from_set_data_frame(&body) {
            self.events
                .push_back(ClientEvent::Metadata { timestamp, payload });
        }
    }

    fn handle_user(&mut self, event: UserControl) {
        let ours = |id: u32| self.active.as_ref().is_some_and(|(s, _)| *s == id);
        match event {
            UserControl::StreamBegin(id) if ours(id) => {
                self.events.push_back(ClientEvent::StreamBegin)
            }
            UserControl::StreamEof(id) if ours(id) => self.events.push_back(ClientEvent::StreamEof),
            UserControl::PingRequest(ts) => self
                .output
                .push_back(Control::User(UserControl::PingResponse(ts)).to_message()),
            _ => {}
        }
    }

    fn is_playing(&self, stream_id: u32) -> bool {
        matches!(&self.active, Some((id, Intent::Play(_))) if *id == stream_id)
    }

    fn publishing_stream(&self) -> Option<u32> {
        match (&self.active, self.publishing) {
            (Some((id, Intent::Publish(_))), true) => Some(*id),
            _ => None,
        }
    }

    fn tid(&mut self) -> f64 {
        let tid = self.next_tid;
        self.next_tid += 1.0;
        tid
    }

    fn send_command(&mut self, stream_id: u32, cmd: Command) {
        self.output.push_back(cmd.to_message(stream_id));
    }
}

/// A string field of the first object argument (the info object), or empty.
fn info_field(cmd: &Command, key: &str) -> String {
    cmd.args
        .iter()
        .find_map(|v| match v {
            Amf0Value::Object(o) => Some(o),
            _ => None,
        })
        .and_then(|o| match o.get(key) {
            Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
