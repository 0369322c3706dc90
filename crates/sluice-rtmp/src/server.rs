//! The server side of an RTMP connection, at the message level and without I/O.
//!
//! Feed it each [`Message`] the [`ChunkReader`](crate::chunk::ChunkReader) produces; take
//! [`ServerEvent`]s for the application and outgoing [`Message`]s for the
//! [`ChunkWriter`](crate::chunk::ChunkWriter). [`crate::connection::ServerConnection`] does
//! that wiring.
//!
//! Nothing a peer sends can make this panic. Protocol violations that leave the connection
//! meaningless (commands before `connect`, malformed AMF0 commands or control messages) are
//! `Err`; sloppiness real clients show (missing arguments, publish/play on a stream id never
//! created, unknown commands, broken metadata) is tolerated, answered or counted.
//!
//! Chunk stream ids of what we send: protocol/user control on 2, every command and data
//! message (connection- and stream-level) on 3. Media is not sent by the session; front ends
//! serialise it once for all viewers with [`encode_full`](crate::chunk::encode_full) on other
//! chunk stream ids (4 audio, 5 data, 6 video) so the two never share header-compression state.

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::{Buf, Bytes, BytesMut};

use crate::command::{
    self, Amf0Value, Command, CommandError, metadata_from_set_data_frame, object, status_info,
};
use crate::control::{Control, ControlError, UserControl};
use crate::message::{Message, MessageType};

/// Chunk stream id for every command and data message we send.
pub const COMMAND_CSID: u32 = 3;
/// Most message streams one connection may hold at once.
pub const MAX_STREAMS: usize = 16;
/// Video FourCCs we accept and forward (enhanced RTMP `fourCcList`).
pub const VIDEO_FOURCCS: &[&str] = &["avc1", "hvc1", "av01", "vp09"];
/// Audio FourCCs we accept and forward.
pub const AUDIO_FOURCCS: &[&str] = &["mp4a", ".mp3", "Opus"];
/// Enhanced RTMP `FourCcInfoMask.CanForward`.
const CAN_FORWARD: f64 = 4.0;
/// Aggregate sub-message header (type, size, timestamp, ext, stream id) and back pointer.
const AGG_HEADER: usize = 11;
const AGG_BACK_POINTER: usize = 4;

/// Why a session refused what its peer sent. Always the peer's fault; fatal for the
/// connection (a retry on the same connection cannot help).
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum SessionError {
    /// A command other than `connect` arrived before `connect`.
    #[error("peer sent `{0}` before connect")]
    CommandBeforeConnect(String),
    /// A second `connect` on the same connection.
    #[error("peer sent connect twice")]
    DuplicateConnect,
    /// A command after the connect was rejected.
    #[error("peer sent `{0}` after its connect was rejected")]
    AfterRejectedConnect(String),
    /// `connect` whose command object is not an object.
    #[error("peer sent connect without a command object")]
    ConnectWithoutObject,
    /// A command message that is not valid AMF0.
    #[error("malformed command: {0}")]
    Command(#[from] CommandError),
    /// A protocol or user control message too short for its type.
    #[error("malformed control message: {0}")]
    Control(#[from] ControlError),
    /// The server answered `createStream` without a stream id (client side).
    #[error("server answered createStream without a stream id")]
    NoStreamId,
}

/// Server settings that reach the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our outgoing chunk size, announced in `accept_connect` (default 4096).
    pub chunk_size: u32,
    /// Window acknowledgement size we ask the peer to use (default 2,500,000).
    pub window_ack_size: u32,
    /// Peer bandwidth we set, dynamic limit (default 2,500,000).
    pub peer_bandwidth: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            peer_bandwidth: 2_500_000,
        }
    }
}

/// The `type` argument of `publish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// `live` (also the default when absent or unknown).
    Live,
    /// `record`.
    Record,
    /// `append`.
    Append,
}

/// What the application must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// The peer sent `connect`; answer with [`ServerSession::accept_connect`] or
    /// [`ServerSession::reject_connect`].
    ConnectRequested {
        /// `app` (empty if absent).
        app: String,
        /// `tcUrl`, if sent.
        tc_url: Option<String>,
        /// `flashVer`, if sent.
        flash_ver: Option<String>,
        /// FourCCs the client offered (`fourCcList` and `*FourCcInfoMap` keys), if any.
        enhanced: Option<Vec<String>>,
    },
    /// The peer wants to publish; answer with `accept_publish` or `reject_publish`.
    PublishRequested {
        /// Message stream id it publishes on.
        stream_id: u32,
        /// Stream name as sent, query string kept (`key?token=x`).
        stream_key: String,
        /// Publish type.
        mode: PublishMode,
    },
    /// The peer wants to play; answer with `accept_play` or `reject_play`.
    PlayRequested {
        /// Message stream id to send media on.
        stream_id: u32,
        /// Stream name as sent, query string kept.
        stream_key: String,
    },
    /// A publish request (accepted or still pending) ended: FCUnpublish, closeStream,
    /// deleteStream or a new publish replacing it.
    PublishFinished {
        /// Message stream id.
        stream_id: u32,
    },
    /// A play request (accepted or still pending) ended: closeStream, deleteStream or a new
    /// play on the same stream.
    PlayFinished {
        /// Message stream id.
        stream_id: u32,
    },
    /// Audio or video on an accepted publishing stream (aggregates are split into these).
    Media {
        /// Message stream id.
        stream_id: u32,
        /// 8 audio, 9 video.
        type_id: u8,
        /// RTMP timestamp, ms.
        timestamp: u32,
        /// FLV tag body, as received.
        payload: Bytes,
    },
    /// Metadata on an accepted publishing stream.
    Metadata {
        /// Message stream id.
        stream_id: u32,
        /// RTMP timestamp, ms.
        timestamp: u32,
        /// The `onMetaData` script-tag body (string `onMetaData` + object).
        payload: Bytes,
    },
    /// The peer acknowledged this many bytes (sequence number, wraps at 2^32).
    PeerAcknowledged {
        /// Sequence number.
        bytes: u32,
    },
    /// The peer answered a ping.
    PingResponse {
        /// Timestamp echoed from our request.
        timestamp: u32,
    },
}

/// What a session dropped instead of failing on; report these as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Audio/video messages on a stream not accepted for publishing.
    pub media_dropped: u64,
    /// Data messages dropped: malformed metadata, unknown data, or not on a publishing stream.
    pub data_dropped: u64,
    /// Commands we did not know (answered with `_error` if they had a transaction id).
    pub unknown_commands: u64,
    /// Aggregate messages whose sub-messages were cut short.
    pub aggregates_truncated: u64,
    /// Message types we ignore (shared objects, unknown ids).
    pub ignored_messages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnect,
    Connected,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamState {
    Idle,
    PublishPending,
    Publishing,
    PlayPending,
    Playing,
}

#[derive(Debug, Clone)]
struct Stream {
    state: StreamState,
    key: String,
}

/// The server side of one RTMP connection (see the module docs).
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    phase: Phase,
    connect_tid: f64,
    /// A connect was reported and the application has not accepted or rejected it yet.
    connect_pending: bool,
    /// The client offered enhanced RTMP FourCCs in connect.
    enhanced_offered: bool,
    streams: BTreeMap<u32, Stream>,
    /// Names announced with FCPublish, answered with onFCPublish on accept.
    fc_published: HashSet<String>,
    peer_window: Option<u32>,
    last_ack: u64,
    events: VecDeque<ServerEvent>,
    output: VecDeque<Message>,
    stats: SessionStats,
}

impl ServerSession {
    /// A session for a connection whose handshake is done.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            phase: Phase::AwaitConnect,
            connect_tid: 1.0,
            connect_pending: false,
            enhanced_offered: false,
            streams: BTreeMap::new(),
            fc_published: HashSet::new(),
            peer_window: None,
            last_ack: 0,
            events: VecDeque::new(),
            output: VecDeque::new(),
            stats: SessionStats::default(),
        }
    }

    /// Handles one message from the chunk reader.
    ///
    /// `Err` means the peer broke the protocol and the connection should close (draining
    /// [`poll_output`](Self::poll_output) first is allowed: a rejected connect queues its
    /// `_error` before failing). Unknown commands are answered with `_error` (if they carry a
    /// transaction id) or ignored; malformed metadata and stray media are dropped and counted
    /// in [`stats`](Self::stats).
    pub fn handle_message(&mut self, msg: Message) -> Result<(), SessionError> {
        let Some(kind) = MessageType::from_id(msg.type_id) else {
            self.stats.ignored_messages += 1;
            return Ok(());
        };
        match kind {
            MessageType::SetChunkSize
            | MessageType::Abort
            | MessageType::Acknowledgement
            | MessageType::UserControl
            | MessageType::WindowAckSize
            | MessageType::SetPeerBandwidth => self.handle_control(&msg),
            MessageType::Audio | MessageType::Video => {
                if let Some(stream_id) = self.publish_target(msg.stream_id) {
                    self.events.push_back(ServerEvent::Media {
                        stream_id,
                        type_id: msg.type_id,
                        timestamp: msg.timestamp,
                        payload: msg.payload,
                    });
                } else {
                    self.stats.media_dropped += 1;
                }
                Ok(())
            }
            MessageType::CommandAmf0 => self.handle_command(&msg.payload, msg.stream_id),
            MessageType::CommandAmf3 => self.handle_command(amf0_body(&msg.payload), msg.stream_id),
            MessageType::DataAmf0 | MessageType::DataAmf3 => {
                let body = if kind == MessageType::DataAmf3 {
                    amf0_body(&msg.payload)
                } else {
                    &msg.payload[..]
                };
                self.handle_data(body, msg.stream_id, msg.timestamp);
                Ok(())
            }
            MessageType::Aggregate => {
                if let Some(stream_id) = self.publish_target(msg.stream_id) {
                    self.split_aggregate(&msg, stream_id);
                } else {
                    self.stats.media_dropped += 1;
                }
                Ok(())
            }
            MessageType::SharedObjectAmf0 | MessageType::SharedObjectAmf3 => {
                self.stats.ignored_messages += 1;
                Ok(())
            }
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next outgoing message, in order. Write each with the connection's `ChunkWriter`;
    /// it switches its chunk size right after writing a SetChunkSize message.
    pub fn poll_output(&mut self) -> Option<Message> {
        self.output.pop_front()
    }

    /// Whether a connect, publish or play waits for the application's accept or reject.
    /// Messages behind it should wait too, so that nothing the peer pipelined after a request
    /// is answered before the request itself; [`ServerConnection`] holds them back.
    ///
    /// [`ServerConnection`]: crate::connection::ServerConnection
    pub fn awaiting_decision(&self) -> bool {
        self.connect_pending
            || self.streams.values().any(|s| {
                matches!(
                    s.state,
                    StreamState::PublishPending | StreamState::PlayPending
                )
            })
    }

    /// What this session dropped instead of failing.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Our outgoing chunk size once `accept_connect` is written.
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size.clamp(1, 0x7FFF_FFFF)
    }

    /// Accepts the pending connect: WindowAckSize, SetPeerBandwidth, SetChunkSize (the writer
    /// switches after writing it; media must be encoded at [`chunk_size`](Self::chunk_size)
    /// from then on), then `_result` NetConnection.Connect.Success. When the client offered
    /// enhanced RTMP, the properties object also carries `fourCcList`, `videoFourCcInfoMap`,
    /// `audioFourCcInfoMap` (`*`: CanForward) and `capsEx` (0: no reconnect, no multitrack).
    pub fn accept_connect(&mut self) {
        self.connect_pending = false;
        self.send_control(Control::WindowAckSize(self.config.window_ack_size));
        self.send_control(Control::SetPeerBandwidth {
            size: self.config.peer_bandwidth,
            limit: 2,
        });
        self.send_control(Control::SetChunkSize(self.chunk_size()));
        let mut props = match connect_properties() {
            Amf0Value::Object(props) => props,
            _ => Default::default(),
        };
        if self.enhanced_offered {
            let all = VIDEO_FOURCCS.iter().chain(AUDIO_FOURCCS);
            props.insert(
                "fourCcList".into(),
                Amf0Value::StrictArray(all.map(|f| Amf0Value::Utf8String((*f).into())).collect()),
            );
            let forward_all = object([("*", Amf0Value::Number(CAN_FORWARD))]);
            props.insert("videoFourCcInfoMap".into(), forward_all.clone());
            props.insert("audioFourCcInfoMap".into(), forward_all);
            props.insert("capsEx".into(), Amf0Value::Number(0.0));
        }
        let mut info = status_info(
            "status",
            "NetConnection.Connect.Success",
            "Connection succeeded.",
        );
        if let Amf0Value::Object(info) = &mut info {
            info.insert("objectEncoding".into(), Amf0Value::Number(0.0));
        }
        self.send_command(
            0,
            Command::result(self.connect_tid, Amf0Value::Object(props), vec![info]),
        );
    }

    /// Rejects the pending connect with `_error` NetConnection.Connect.Rejected. Any later
    /// command from the peer is an error.
    pub fn reject_connect(&mut self, description: &str) {
        self.reject_connect_with(status_info(
            "error",
            "NetConnection.Connect.Rejected",
            description,
        ));
    }

    /// Rejects the pending connect, sending the client to `url` (another server's tcUrl,
    /// `rtmp://host/app`): NetConnection.Connect.Rejected whose info object carries
    /// `ex: { code: 302, redirect: url }`, the form nginx-rtmp, SRS and Wowza send and
    /// clients that follow redirects read, and `redirect: url` beside it for clients that
    /// look there. Any later command from the peer is an error.
    pub fn redirect_connect(&mut self, description: &str, url: &str) {
        let mut info = status_info("error", "NetConnection.Connect.Rejected", description);
        if let Amf0Value::Object(props) = &mut info {
            props.insert(
                "ex".into(),
                object([
                    ("code", Amf0Value::Number(302.0)),
                    ("redirect", Amf0Value::Utf8String(url.to_owned())),
                ]),
            );
            props.insert("redirect".into(), Amf0Value::Utf8String(url.to_owned()));
        }
        self.reject_connect_with(info);
    }

    fn reject_connect_with(&mut self, info: Amf0Value) {
        self.connect_pending = false;
        self.phase = Phase::Rejected;
        self.send_command(
            0,
            Command::error(self.connect_tid, connect_properties(), vec![info]),
        );
    }

    /// Accepts a publish: StreamBegin, onFCPublish (if FCPublish announced the name), then
    /// onStatus NetStream.Publish.Start. Media on the stream is delivered from now on.
    ///
    /// Does nothing unless a publish is pending on `stream_id` (the peer may have closed it).
    pub fn accept_publish(&mut self, stream_id: u32) {
        let Some(stream) = self
            .streams
            .get_mut(&stream_id)
            .filter(|s| s.state == StreamState::PublishPending)
        else {
            return;
        };
        stream.state = StreamState::Publishing;
        let key = stream.key.clone();
        self.send_control(Control::User(UserControl::StreamBegin(stream_id)));
        let description = format!("{} is now published.", clip(&key));
        if self.fc_published.remove(&key) {
            let info = status_info("status", "NetStream.Publish.Start", &description);
            self.send_command(
                stream_id,
                Command::new("onFCPublish", 0.0, Amf0Value::Null, vec![info]),
            );
        }
        self.send_status(stream_id, "status", "NetStream.Publish.Start", &description);
    }

    /// Rejects a publish with an onStatus error (`code`, e.g. NetStream.Publish.BadName).
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        if let Some(stream) = self.streams.get_mut(&stream_id) {
            stream.state = StreamState::Idle;
        }
        self.send_status(stream_id, "error", code, description);
    }

    /// Accepts a play: StreamBegin, NetStream.Play.Reset, NetStream.Play.Start,
    /// `|RtmpSampleAccess`, NetStream.Data.Start. Media may follow on `stream_id`.
    ///
    /// Does nothing unless a play is pending on `stream_id` (the peer may have closed it).
    pub fn accept_play(&mut self, stream_id: u32) {
        let Some(stream) = self
            .streams
            .get_mut(&stream_id)
            .filter(|s| s.state == StreamState::PlayPending)
        else {
            return;
        };
        stream.state = StreamState::Playing;
        let name = clip(&stream.key).to_owned();
        self.send_control(Control::User(UserControl::StreamBegin(stream_id)));
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.Reset",
            &format!("Playing and resetting {name}."),
        );
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.Start",
            &format!("Started playing {name}."),
        );
        self.send_data(
            stream_id,
            &[
                Amf0Value::Utf8String("|RtmpSampleAccess".into()),
                Amf0Value::Boolean(true),
                Amf0Value::Boolean(true),
            ],
        );
        self.send_data(
            stream_id,
            &[
                Amf0Value::Utf8String("onStatus".into()),
                object([("code", Amf0Value::Utf8String("NetStream.Data.Start".into()))]),
            ],
        );
    }

    /// Rejects a play with an onStatus error (`code`, e.g. NetStream.Play.StreamNotFound).
    pub fn reject_play(&mut self, stream_id: u32, code: &str, description: &str) {
        if let Some(stream) = self.streams.get_mut(&stream_id) {
            stream.state = StreamState::Idle;
        }
        self.send_status(stream_id, "error", code, description);
    }

    /// Tells a player its publisher went away for good: NetStream.Play.UnpublishNotify and
    /// StreamEOF.
    pub fn stream_eof(&mut self, stream_id: u32) {
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.UnpublishNotify",
            "The stream was unpublished.",
        );
        self.send_control(Control::User(UserControl::StreamEof(stream_id)));
    }

    /// Tells a player its publisher is back: StreamBegin and NetStream.Play.PublishNotify.
    pub fn stream_begin(&mut self, stream_id: u32) {
        self.send_control(Control::User(UserControl::StreamBegin(stream_id)));
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.PublishNotify",
            "The stream was published.",
        );
    }

    /// Queues a PingRequest carrying `now_ms`; the answer arrives as
    /// [`ServerEvent::PingResponse`].
    pub fn ping(&mut self, now_ms: u32) {
        self.send_control(Control::User(UserControl::PingRequest(now_ms)));
    }

    /// Reports the total bytes received on the connection; queues an Acknowledgement each
    /// time another window (the peer's WindowAckSize if it sent one, else ours) has passed.
    pub fn record_bytes_received(&mut self, total: u64) {
        let window = self.peer_window.unwrap_or(self.config.window_ack_size);
        if window > 0 && total.saturating_sub(self.last_ack) >= u64::from(window) {
            self.last_ack = total;
            self.send_control(Control::Acknowledgement(total as u32));
        }
    }

    /// The publishing stream a media/data message on `stream_id` belongs to: that stream if
    /// it publishes, or, for message stream 0 (sloppy encoders), the only publishing stream.
    fn publish_target(&self, stream_id: u32) -> Option<u32> {
        let mut publishing = self
            .streams
            .iter()
            .filter(|(_, s)| s.state == StreamState::Publishing)
            .map(|(id, _)| *id);
        if stream_id != 0 || self.streams.contains_key(&0) {
            return publishing.find(|id| *id == stream_id);
        }
        match (publishing.next(), publishing.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    fn handle_control(&mut self, msg: &Message) -> Result<(), SessionError> {
        match Control::decode(msg)? {
            Some(Control::Acknowledgement(bytes)) => {
                self.events
                    .push_back(ServerEvent::PeerAcknowledged { bytes });
            }
            Some(Control::WindowAckSize(size)) => self.peer_window = Some(size),
            Some(Control::User(UserControl::PingRequest(ts))) => {
                self.send_control(Control::User(UserControl::PingResponse(ts)));
            }
            Some(Control::User(UserControl::PingResponse(timestamp))) => {
                self.events
                    .push_back(ServerEvent::PingResponse { timestamp });
            }
            // SetChunkSize and Abort are applied by the chunk reader; SetBufferLength,
            // SetPeerBandwidth and other events need nothing from us.
            _ => {}
        }
        Ok(())
    }

    fn handle_command(&mut self, payload: &[u8], stream_id: u32) -> Result<(), SessionError> {
        let cmd = Command::decode(payload)?;
        match (self.phase, cmd.name.as_str()) {
            (Phase::AwaitConnect, "connect") => return self.on_connect(cmd),
            (Phase::AwaitConnect, _) => return Err(SessionError::CommandBeforeConnect(cmd.name)),
            (Phase::Rejected, _) => return Err(SessionError::AfterRejectedConnect(cmd.name)),
            (Phase::Connected, "connect") => return Err(SessionError::DuplicateConnect),
            (Phase::Connected, _) => {}
        }
        let tid = cmd.transaction_id;
        match cmd.name.as_str() {
            "releaseStream" => self.answer(tid, Amf0Value::Undefined),
            "FCPublish" => {
                if let Some(name) = cmd.arg_str(0)
                    && self.fc_published.len() < MAX_STREAMS
                {
                    self.fc_published.insert(name.to_owned());
                }
                self.answer(tid, Amf0Value::Undefined);
            }
            "createStream" => match self.free_stream_id() {
                Some(id) => {
                    self.streams.insert(
                        id,
                        Stream {
                            state: StreamState::Idle,
                            key: String::new(),
                        },
                    );
                    self.answer(tid, Amf0Value::Number(f64::from(id)));
                }
                None => self.call_failed(tid, "Too many streams on this connection."),
            },
            "publish" => self.on_publish(&cmd, stream_id),
            "play" | "play2" => self.on_play(&cmd, stream_id),
            "FCUnpublish" => {
                let name = cmd.arg_str(0);
                let found = self.streams.iter().find_map(|(id, s)| {
                    let publishing = matches!(
                        s.state,
                        StreamState::Publishing | StreamState::PublishPending
                    );
                    (publishing && name.is_none_or(|n| n == s.key)).then_some(*id)
                });
                if let Some(id) = found {
                    self.finish(id);
                }
                self.answer(tid, Amf0Value::Undefined);
            }
            "closeStream" => self.finish(stream_id),
            "deleteStream" => {
                let id = cmd
                    .arg_number(0)
                    .filter(|n| (0.0..=f64::from(u32::MAX)).contains(n))
                    .map_or(stream_id, |n| n as u32);
                self.finish(id);
                self.streams.remove(&id);
            }
            "pause" => {
                let paused = !matches!(cmd.args.first(), Some(Amf0Value::Boolean(false)));
                let (code, what) = if paused {
                    ("NetStream.Pause.Notify", "Paused.")
                } else {
                    ("NetStream.Unpause.Notify", "Unpaused.")
                };
                self.send_status(stream_id, "status", code, what);
            }
            "getStreamLength" => self.answer(tid, Amf0Value::Number(0.0)),
            // Answers to our own calls, bandwidth checks and flow hints need nothing.
            "receiveAudio" | "receiveVideo" | "_checkbw" | "_result" | "_error" | "onStatus"
            | "onBWDone" | "FCSubscribe" | "FCUnsubscribe" => {}
            _ => {
                self.stats.unknown_commands += 1;
                let description = format!("Method not found ({}).", clip(&cmd.name));
                self.call_failed(tid, &description);
            }
        }
        Ok(())
    }

    fn on_connect(&mut self, cmd: Command) -> Result<(), SessionError> {
        self.connect_tid = cmd.transaction_id;
        let Amf0Value::Object(props) = cmd.command_object else {
            self.reject_connect("connect carried no command object.");
            return Err(SessionError::ConnectWithoutObject);
        };
        let text = |key: &str| match props.get(key) {
            Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
            _ => None,
        };
        let mut offered: Option<Vec<String>> = None;
        if let Some(Amf0Value::StrictArray(list)) = props.get("fourCcList") {
            offered
                .get_or_insert_default()
                .extend(list.iter().filter_map(|v| match v {
                    Amf0Value::Utf8String(s) => Some(s.clone()),
                    _ => None,
                }));
        }
        for map in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
            if let Some(Amf0Value::Object(m)) = props.get(map) {
                let list = offered.get_or_insert_default();
                for key in m.keys() {
                    if !list.contains(key) {
                        list.push(key.clone());
                    }
                }
            }
        }
        self.enhanced_offered = offered.is_some();
        self.phase = Phase::Connected;
        self.connect_pending = true;
        self.events.push_back(ServerEvent::ConnectRequested {
            app: text("app").unwrap_or_default(),
            tc_url: text("tcUrl"),
            flash_ver: text("flashVer"),
            enhanced: offered,
        });
        Ok(())
    }

    fn on_publish(&mut self, cmd: &Command, stream_id: u32) {
        let Some(key) = cmd.arg_str(0).filter(|k| !k.is_empty()) else {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "publish needs a stream name.",
            );
            return;
        };
        let mode = match cmd.arg_str(1) {
            Some("record") => PublishMode::Record,
            Some("append") => PublishMode::Append,
            _ => PublishMode::Live,
        };
        if let Some(stream) = self.streams.get(&stream_id)
            && stream.state != StreamState::Idle
        {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "The stream is already in use.",
            );
            return;
        }
        if !self.open_stream(stream_id, StreamState::PublishPending, key) {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "Too many streams on this connection.",
            );
            return;
        }
        self.events.push_back(ServerEvent::PublishRequested {
            stream_id,
            stream_key: key.to_owned(),
            mode,
        });
    }

    fn on_play(&mut self, cmd: &Command, stream_id: u32) {
        // play(name, start?, duration?, reset?) or play2({streamName, ...}); both tolerate
        // the object where the command object belongs.
        let name = cmd.arg_str(0).map(str::to_owned).or_else(|| {
            [cmd.args.first(), Some(&cmd.command_object)]
                .into_iter()
                .flatten()
                .find_map(|v| match v {
                    Amf0Value::Object(o) => match o.get("streamName") {
                        Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
                        _ => None,
                    },
                    _ => None,
                })
        });
        let Some(key) = name.filter(|k| !k.is_empty()) else {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Play.StreamNotFound",
                "play needs a stream name.",
            );
            return;
        };
        // A new play on a playing stream replaces the old one (Flash does this to switch).
        if let Some(stream) = self.streams.get(&stream_id) {
            match stream.state {
                StreamState::Playing | StreamState::PlayPending => self.finish(stream_id),
                StreamState::Idle => {}
                StreamState::Publishing | StreamState::PublishPending => {
                    self.send_status(
                        stream_id,
                        "error",
                        "NetStream.Play.Failed",
                        "The stream is publishing.",
                    );
                    return;
                }
            }
        }
        if !self.open_stream(stream_id, StreamState::PlayPending, &key) {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Play.Failed",
                "Too many streams on this connection.",
            );
            return;
        }
        self.events.push_back(ServerEvent::PlayRequested {
            stream_id,
            stream_key: key,
        });
    }

    /// Marks `stream_id` (created or not: clients are sloppy) as `state` with `key`; false if
    /// the stream does not exist and the cap is reached.
    fn open_stream(&mut self, stream_id: u32, state: StreamState, key: &str) -> bool {
        if !self.streams.contains_key(&stream_id) && self.streams.len() >= MAX_STREAMS {
            return false;
        }
        let stream = self.streams.entry(stream_id).or_insert(Stream {
            state: StreamState::Idle,
            key: String::new(),
        });
        stream.state = state;
        stream.key = key.to_owned();
        true
    }

    /// Ends whatever `stream_id` was doing and reports it.
    fn finish(&mut self, stream_id: u32) {
        let Some(stream) = self.streams.get_mut(&stream_id) else {
            return;
        };
        let event = match stream.state {
            StreamState::Publishing | StreamState::PublishPending => {
                ServerEvent::PublishFinished { stream_id }
            }
            StreamState::Playing | StreamState::PlayPending => {
                ServerEvent::PlayFinished { stream_id }
            }
            StreamState::Idle => return,
        };
        stream.state = StreamState::Idle;
        self.events.push_back(event);
    }

    /// Lowest stream id from 1 not in use: players get 1, matching shared media serialised
    /// once for every viewer on message stream 1.
    fn free_stream_id(&self) -> Option<u32> {
        if self.streams.len() >= MAX_STREAMS {
            return None;
        }
        (1..).find(|id| !self.streams.contains_key(id))
    }

    fn handle_data(&mut self, payload: &[u8], stream_id: u32, timestamp: u32) {
        let Some(stream_id) = self.publish_target(stream_id) else {
            self.stats.data_dropped += 1;
            return;
        };
        match metadata_from_set_data_frame(payload) {
            Ok(payload) => self.events.push_back(ServerEvent::Metadata {
                stream_id,
                timestamp,
                payload,
            }),
            Err(_) => self.stats.data_dropped += 1,
        }
    }

    /// Splits an aggregate into its audio/video/metadata sub-messages. Timestamps are shifted
    /// so the first sub-message lands on the aggregate's own timestamp. A truncated tail is
    /// dropped and counted.
    fn split_aggregate(&mut self, msg: &Message, stream_id: u32) {
        let mut rest = msg.payload.clone();
        let mut first_ts = None;
        while !rest.is_empty() {
            if rest.len() < AGG_HEADER {
                self.stats.aggregates_truncated += 1;
                return;
            }
            let type_id = rest[0];
            let size = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
            let ts = u32::from_be_bytes([rest[7], rest[4], rest[5], rest[6]]);
            if rest.len() < AGG_HEADER + size {
                self.stats.aggregates_truncated += 1;
                return;
            }
            rest.advance(AGG_HEADER);
            let body = rest.split_to(size);
            rest.advance(AGG_BACK_POINTER.min(rest.len()));
            let base = *first_ts.get_or_insert(ts);
            let timestamp = msg.timestamp.wrapping_add(ts.wrapping_sub(base));
            match type_id {
                8 | 9 => self.events.push_back(ServerEvent::Media {
                    stream_id,
                    type_id,
                    timestamp,
                    payload: body,
                }),
                18 => self.handle_data(&body, stream_id, timestamp),
                _ => self.stats.ignored_messages += 1,
            }
        }
    }

    fn answer(&mut self, tid: f64, value: Amf0Value) {
        if tid != 0.0 {
            self.send_command(0, Command::result(tid, Amf0Value::Null, vec![value]));
        }
    }

    fn call_failed(&mut self, tid: f64, description: &str) {
        if tid != 0.0 {
            let info = status_info("error", "NetConnection.Call.Failed", description);
            self.send_command(0, Command::error(tid, Amf0Value::Null, vec![info]));
        }
    }

    fn send_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.send_command(stream_id, Command::on_status(level, code, description));
    }

    fn send_command(&mut self, stream_id: u32, cmd: Command) {
        self.output.push_back(cmd.to_message(stream_id));
    }

    fn send_data(&mut self, stream_id: u32, values: &[Amf0Value]) {
        let mut payload = BytesMut::new();
        for v in values {
            command::write_value(v, &mut payload);
        }
        self.output.push_back(Message {
            csid: COMMAND_CSID,
            type_id: MessageType::DataAmf0 as u8,
            timestamp: 0,
            stream_id,
            payload: payload.freeze(),
        });
    }

    fn send_control(&mut self, control: Control) {
        self.output.push_back(control.to_message());
    }
}

/// `fmsVer`/`capabilities`/`mode`, as FMS-compatible servers answer connect.
fn connect_properties() -> Amf0Value {
    object([
        ("fmsVer", Amf0Value::Utf8String("FMS/3,5,7,7009".into())),
        ("capabilities", Amf0Value::Number(31.0)),
        ("mode", Amf0Value::Number(1.0)),
    ])
}

/// Payload of an AMF3 command/data message (types 17, 15) as AMF0: skips the format byte 0.
pub(crate) fn amf0_body(payload: &[u8]) -> &[u8] {
    match payload.first() {
        Some(0) => &payload[1..],
        _ => payload,
    }
}

/// At most 200 chars of a peer-supplied string, for descriptions we send back.
fn clip(s: &str) -> &str {
    s.char_indices().nth(200).map_or(s, |(i, _)| &s[..i])
}
