//! Bytes-level glue: chunk reader and writer around a session, for front ends and tests.
//!
//! Feed post-handshake bytes to `handle_input`, act on `session.poll_event()`, and write what
//! `drain_output` appends. Shared media the front end serialises itself (with
//! [`encode_full`](crate::chunk::encode_full) at [`ServerConnection::chunk_size`]) may be
//! written between `drain_output` calls: the session never uses the media chunk streams.

use bytes::BytesMut;

use crate::chunk::{ChunkError, ChunkLimits, ChunkReader, ChunkWriter};
use crate::client::{ClientConfig, ClientSession};
use crate::server::{ServerConfig, ServerSession, SessionError};

/// Why a connection must close.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum ConnectionError {
    /// The peer's chunk stream is broken.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The peer broke the command protocol.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A server session with its chunk reader and writer.
#[derive(Debug)]
pub struct ServerConnection {
    /// The session: poll its events, call its accept/reject methods.
    pub session: ServerSession,
    reader: ChunkReader,
    writer: ChunkWriter,
}

impl ServerConnection {
    /// A connection whose handshake is done.
    pub fn new(config: ServerConfig, limits: ChunkLimits) -> Self {
        Self {
            session: ServerSession::new(config),
            reader: ChunkReader::new(limits),
            writer: ChunkWriter::new(),
        }
    }

    /// Bytes that arrived after the handshake. Errors are fatal for this connection.
    ///
    /// Messages are handled in order until the session
    /// [awaits a decision](ServerSession::awaiting_decision) on a connect, publish or play;
    /// the rest stay buffered so nothing pipelined behind the request is answered first.
    /// Decide on the events, then call again (with no new bytes) to go on. A front end that
    /// defers a decision should stop reading from its socket meanwhile.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), ConnectionError> {
        self.reader.push(data);
        while !self.session.awaiting_decision() {
            let Some(msg) = self.reader.next_message()? else {
                break;
            };
            self.session.handle_message(msg)?;
        }
        self.session
            .record_bytes_received(self.reader.bytes_received());
        Ok(())
    }

    /// Serialises all pending session output into `out`; the writer switches its chunk size
    /// right after writing a SetChunkSize message.
    pub fn drain_output(&mut self, out: &mut BytesMut) {
        while let Some(msg) = self.session.poll_output() {
            self.writer.write(&msg, out);
        }
    }

    /// The chunk size our output currently uses: encode shared media at this size.
    pub fn chunk_size(&self) -> u32 {
        self.writer.chunk_size()
    }
}

/// A client session with its chunk reader and writer.
#[derive(Debug)]
pub struct ClientConnection {
    /// The session: call connect/play/publish, poll its events.
    pub session: ClientSession,
    reader: ChunkReader,
    writer: ChunkWriter,
}

impl ClientConnection {
    /// A connection whose handshake is done.
    pub fn new(config: ClientConfig, limits: ChunkLimits) -> Self {
        Self {
            session: ClientSession::new(config),
            reader: ChunkReader::new(limits),
            writer: ChunkWriter::new(),
        }
    }

    /// Bytes that arrived after the handshake. Errors are fatal for this connection.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), ConnectionError> {
        self.reader.push(data);
        while let Some(msg) = self.reader.next_message()? {
            self.session.handle_message(msg)?;
        }
        self.session
            .record_bytes_received(self.reader.bytes_received());
        Ok(())
    }

    /// Serialises all pending session output into `out`.
    pub fn drain_output(&mut self, out: &mut BytesMut) {
        while let Some(msg) = self.session.poll_output() {
            self.writer.write(&msg, out);
        }
    }

    /// Writes one extra message (e.g. from `session.media_message`) after pending output.
    pub fn send(&mut self, msg: &crate::message::Message, out: &mut BytesMut) {
        self.drain_output(out);
        self.writer.write(msg, out);
    }

    /// The chunk size our output currently uses.
    pub fn chunk_size(&self) -> u32 {
        self.writer.chunk_size()
    }
}
