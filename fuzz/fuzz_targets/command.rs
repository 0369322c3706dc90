//! AMF0 command/data decoders and a connected server session fed arbitrary bytes.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_rtmp::chunk::ChunkLimits;
use sluice_rtmp::client::{ClientConfig, ClientEvent};
use sluice_rtmp::command::{Command, decode_data, metadata_from_set_data_frame};
use sluice_rtmp::connection::{ClientConnection, ServerConnection};
use sluice_rtmp::server::{ServerConfig, ServerEvent};

/// A server connection that has accepted connect and a publish on stream 1, plus the client
/// that got it there (so chunk-stream state matches real traffic).
fn connected() -> ServerConnection {
    static SETUP: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let steps = SETUP.get_or_init(|| {
        let mut server = ServerConnection::new(ServerConfig::default(), ChunkLimits::default());
        let mut client = ClientConnection::new(ClientConfig::default(), ChunkLimits::default());
        client.session.connect();
        client.session.publish("fuzz");
        let mut steps = Vec::new();
        for _ in 0..8 {
            let mut c2s = BytesMut::new();
            client.drain_output(&mut c2s);
            if !c2s.is_empty() {
                steps.push(c2s.to_vec());
                server.handle_input(&c2s).expect("setup");
            }
            while let Some(e) = server.session.poll_event() {
                match e {
                    ServerEvent::ConnectRequested { .. } => server.session.accept_connect(),
                    ServerEvent::PublishRequested { stream_id, .. } => {
                        server.session.accept_publish(stream_id)
                    }
                    _ => {}
                }
            }
            let mut s2c = BytesMut::new();
            server.drain_output(&mut s2c);
            client.handle_input(&s2c).expect("setup");
            while let Some(e) = client.session.poll_event() {
                let _: ClientEvent = e;
            }
        }
        steps
    });
    let mut server = ServerConnection::new(ServerConfig::default(), ChunkLimits::default());
    for step in steps {
        server.handle_input(step).expect("replay");
        while let Some(e) = server.session.poll_event() {
            match e {
                ServerEvent::ConnectRequested { .. } => server.session.accept_connect(),
                ServerEvent::PublishRequested { stream_id, .. } => {
                    server.session.accept_publish(stream_id)
                }
                _ => {}
            }
        }
    }
    server
}

fuzz_target!(|data: &[u8]| {
    let _ = Command::decode(data);
    let _ = decode_data(data);
    if let Ok(body) = metadata_from_set_data_frame(data) {
        assert_eq!(metadata_from_set_data_frame(&body).ok(), Some(body));
    }
    let mut server = connected();
    let _ = server.handle_input(data);
    while server.session.poll_event().is_some() {}
    let mut out = BytesMut::new();
    server.drain_output(&mut out);
});
