//! The cluster tests' own pieces: starting nodes of the binary under test, and the checks
//! made on what their RTMP viewers recorded. The nodes, specs and players themselves are
//! `sluice_testkit::{node, rtmp}`.

use std::collections::HashMap;
use std::process::Command;

use bytes::Bytes;
use sluice_rtmp::client::{ClientEvent, StatusCode};
use sluice_runtime::client::{Client, ClientError, RtmpUrl};
use sluice_testkit::media::{fixture_media, is_avc_config, is_keyframe};
use sluice_testkit::node::{Process, Spec, WAIT};
use sluice_testkit::process::Child;
use sluice_testkit::rtmp::Seen;
use tokio::time::Instant;

/// The `sluice` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Starts a node of `spec` from the binary under test (see [`Process::start`]).
pub async fn node(spec: Spec) -> Process {
    Process::start(BIN, spec).await
}

/// Runs `sluice <args>` to completion (bounded); returns (success, stderr).
pub fn sluice_once(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear();
    let mut child = Child::spawn(&mut cmd).expect("spawn sluice");
    let status = child
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("sluice {} did not finish", args.join(" ")));
    (status.success(), child.stderr_tail())
}

/// Plays `url` and expects NetStream.Play.StreamNotFound, either as the answer to play or
/// right after it started. Returns the server's description.
pub async fn expect_not_found(url: &str) -> String {
    let refused = |code: &StatusCode, description: String| {
        assert_eq!(
            code,
            &StatusCode::StreamNotFound,
            "{url}: refused with {code}: {description}"
        );
        description
    };
    match Client::play(&RtmpUrl::parse(url).expect("url"), WAIT).await {
        Err(ClientError::Refused { code, description }) => refused(&code, description),
        Err(e) => panic!("{url}: {e}"),
        Ok(mut client) => loop {
            match tokio::time::timeout(WAIT, client.next_event()).await {
                Ok(Ok(Some(ClientEvent::Failed { code, description }))) => {
                    return refused(&code, description);
                }
                Ok(Ok(Some(ClientEvent::Media { .. }))) => {
                    panic!("{url}: media for a stream nobody has")
                }
                Ok(Ok(Some(_))) => {}
                other => panic!("{url}: ended without StreamNotFound: {other:?}"),
            }
        },
    }
}

/// The position in the fixture of each of its coded video frames, by payload: looped
/// publishers send the same bytes every pass, so a viewer's frames can be placed exactly.
pub fn fixture_video_index(fixture: &str) -> (HashMap<Bytes, usize>, usize) {
    let (media, _) = fixture_media(fixture);
    let frames: Vec<Bytes> = media
        .into_iter()
        .filter(|t| t.type_id == 9 && !is_avc_config(&t.payload))
        .map(|t| t.payload)
        .collect();
    let count = frames.len();
    let index: HashMap<Bytes, usize> = frames
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    assert_eq!(
        index.len(),
        count,
        "the fixture's video frames are distinct"
    );
    (index, count)
}

/// The largest step between consecutive timestamps of one kind that still reads as one
/// continuous stream (the fixture's frames are 23–40 ms apart; a splice must not jump).
const MAX_TIMESTAMP_STEP: u32 = 1000;

/// Checks a viewer's recording: it never ended, each track's timestamps never go backwards
/// nor jump ahead, and its video is the fixture's frames in order, looping, except where it
/// jumps — and every jump lands on a keyframe (a splice: a switch of upstream, a new publisher). Returns
/// the number of jumps. `since` limits the check to messages received from then on;
/// `timestamps: false` skips the timestamp check.
pub fn check_continuity(
    who: &str,
    seen: &[Seen],
    (index, frames): (&HashMap<Bytes, usize>, usize),
    since: Instant,
    timestamps: bool,
) -> Result<usize, String> {
    let mut last_ts: HashMap<u8, u32> = HashMap::new();
    let mut previous: Option<usize> = None;
    let mut jumps = 0;
    for (n, s) in seen.iter().enumerate() {
        let (type_id, timestamp, payload) = match s {
            Seen::Media {
                type_id,
                timestamp,
                payload,
                at,
            } if *at >= since => (*type_id, *timestamp, payload),
            Seen::Media { .. } | Seen::Event(_) => continue,
            Seen::Ended(e) => return Err(format!("{who}: the connection ended: {e}")),
        };
        if let Some(&last) = last_ts.get(&type_id)
            && timestamp < last
            && timestamps
        {
            return Err(format!(
                "{who}: message {n}: type {type_id} timestamp went back from {last} to {timestamp}"
            ));
        }
        if let Some(&last) = last_ts.get(&type_id)
            && timestamp > last + MAX_TIMESTAMP_STEP
            && timestamps
        {
            return Err(format!(
                "{who}: message {n}: type {type_id} timestamp jumped from {last} to {timestamp}"
            ));
        }
        last_ts.insert(type_id, timestamp);
        if type_id != 9 || is_avc_config(payload) {
            continue;
        }
        let Some(&i) = index.get(payload) else {
            return Err(format!(
                "{who}: message {n}: a video frame not in the fixture"
            ));
        };
        let continues = previous.is_none_or(|p| (p + 1) % frames == i);
        if !continues {
            if !is_keyframe(payload) {
                return Err(format!(
                    "{who}: message {n} (ts {timestamp}): fixture frame {} followed by frame {i}, \
                     not a keyframe",
                    previous.unwrap_or_default()
                ));
            }
            jumps += 1;
        }
        previous = Some(i);
    }
    Ok(jumps)
}

/// The first coded video frame (not a sequence header) received at or after `since`.
pub fn first_video_since(seen: &[Seen], since: Instant) -> Option<Bytes> {
    seen.iter().find_map(|s| match s {
        Seen::Media {
            type_id: 9,
            payload,
            at,
            ..
        } if *at >= since && !is_avc_config(payload) => Some(payload.clone()),
        _ => None,
    })
}
