//! The registry's key layout and its in-memory view, without I/O.
//!
//! Keys: `PREFIX/streams/APP/NAME` → a [`StreamEntry`] (JSON; a bare `rtmp://`/`quic://` URL
//! is accepted too, so an operator can write one by hand) and `PREFIX/nodes/NODE_ID` → a
//! [`NodeEntry`]. The [`View`] is what the watch has shown: replaced whole from a listing,
//! then changed per event, with a generation counter bumped on every change.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sluice_core::StreamKey;
use sluice_core::topology::{Transport, Upstream};

/// Where keys live under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `PREFIX/streams/APP/NAME`.
    Stream(StreamKey),
    /// `PREFIX/nodes/NODE_ID`.
    Node(String),
}

impl Layout {
    /// The layout under `prefix` (`/sluice`, no trailing slash).
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// Everything of this cluster (watched and listed): `PREFIX/`.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The key of a stream.
    pub fn stream(&self, key: &StreamKey) -> String {
        format!("{}/streams/{}/{}", self.prefix, key.app, key.name)
    }

    /// The key of a node.
    pub fn node(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.prefix)
    }

    /// What `key` names, if it is one of ours and well formed.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        if let Some(stream) = rest.strip_prefix("streams/") {
            let (app, name) = stream.split_once('/')?;
            if app.is_empty() || name.is_empty() || name.contains('/') {
                return None;
            }
            return Some(Key::Stream(StreamKey::new(app, name)));
        }
        let id = rest.strip_prefix("nodes/")?;
        (!id.is_empty() && !id.contains('/')).then(|| Key::Node(id.to_owned()))
    }
}

/// Who publishes a stream, and where to pull it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// The publishing node's id (empty for an entry written by hand).
    #[serde(default)]
    pub node: String,
    /// Pull URLs, best first (`quic://host:port/APP`, `rtmp://host:port/APP`).
    pub upstreams: Vec<String>,
}

impl StreamEntry {
    /// Parses a value: JSON, or a bare upstream URL.
    pub fn parse(value: &[u8]) -> Option<StreamEntry> {
        let text = std::str::from_utf8(value).ok()?.trim();
        if text.starts_with("rtmp://") || text.starts_with("quic://") {
            return Some(StreamEntry {
                node: String::new(),
                upstreams: vec![text.to_owned()],
            });
        }
        serde_json::from_str(text).ok()
    }

    /// The value written.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The entry's upstreams this node can use: parsed, QUIC ones only when it has a relay
    /// endpoint. Unparsable URLs are skipped.
    pub fn usable(&self, quic: bool) -> Vec<Upstream> {
        self.upstreams
            .iter()
            .filter_map(|u| Upstream::parse(u).ok())
            .filter(|u| quic || u.transport != Transport::Quic)
            .collect()
    }
}

/// A node, as it describes itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `cluster.node_id`.
    pub id: String,
    /// `origin`, `edge` or `both`.
    pub role: String,
    /// Its advertised pull URLs (without application).
    pub advertise: Vec<String>,
    /// Its listeners: name → address.
    pub listeners: BTreeMap<String, String>,
    /// Streams known on the node.
    pub streams: usize,
    /// Streams published on the node by its own publishers.
    pub publishing: usize,
    /// Viewers attached.
    pub viewers: usize,
    /// Pulls running.
    pub pulls: usize,
    /// Unix time (seconds) of this entry.
    pub updated_unix: u64,
}

/// What the watch has shown.
#[derive(Debug, Default, Clone)]
pub struct View {
    streams: HashMap<StreamKey, StreamEntry>,
    nodes: BTreeMap<String, NodeEntry>,
    generation: u64,
}

impl View {
    /// Replaces everything with a listing of `PREFIX/`.
    pub fn reset<'a>(
        &mut self,
        layout: &Layout,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        self.streams.clear();
        self.nodes.clear();
        for (k, v) in kvs {
            self.insert(layout, k, v);
        }
        self.generation += 1;
    }

    /// A key was written; true if the view changed.
    pub fn put(&mut self, layout: &Layout, key: &[u8], value: &[u8]) -> bool {
        let changed = self.insert(layout, key, value);
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// A key was deleted (or expired with its lease); true if the view changed.
    pub fn delete(&mut self, layout: &Layout, key: &[u8]) -> bool {
        let changed = match layout.parse(key) {
            Some(Key::Stream(k)) => self.streams.remove(&k).is_some(),
            Some(Key::Node(id)) => self.nodes.remove(&id).is_some(),
            None => false,
        };
        if changed {
            self.generation += 1;
        }
        changed
    }

    fn insert(&mut self, layout: &Layout, key: &[u8], value: &[u8]) -> bool {
        match layout.parse(key) {
            Some(Key::Stream(k)) => match StreamEntry::parse(value) {
                Some(entry) => self.streams.insert(k, entry.clone()) != Some(entry),
                // A value we cannot read says nothing of where the stream is.
                None => self.streams.remove(&k).is_some(),
            },
            Some(Key::Node(id)) => match serde_json::from_slice::<NodeEntry>(value) {
                Ok(entry) => self.nodes.insert(id, entry.clone()) != Some(entry),
                Err(_) => self.nodes.remove(&id).is_some(),
            },
            None => false,
        }
    }

    /// The entry of a stream.
    pub fn stream(&self, key: &StreamKey) -> Option<&StreamEntry> {
        self.streams.get(key)
    }

    /// Every stream, sorted.
    pub fn streams(&self) -> Vec<(StreamKey, StreamEntry)> {
        let mut out: Vec<_> = self
            .streams
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| (&a.0.app, &a.0.name).cmp(&(&b.0.app, &b.0.name)));
        out
    }

    /// Every node, by id.
    pub fn nodes(&self) -> Vec<NodeEntry> {
        self.nodes.values().cloned().collect()
    }

    /// Bumped on every change.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The upstreams of `key` for a node `own_id` (entries it wrote itself are no upstream).
pub fn upstreams_of(view: &View, key: &StreamKey, own_id: &str, quic: bool) -> Vec<Upstream> {
    match view.stream(key) {
        Some(e) if e.node != own_id => e.usable(quic),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        let l = Layout::new("/sluice");
        let k = StreamKey::new("live", "cam1");
        assert_eq!(l.stream(&k), "/sluice/streams/live/cam1");
        assert_eq!(l.parse(l.stream(&k).as_bytes()), Some(Key::Stream(k)));
        assert_eq!(
            l.parse(b"/sluice/nodes/o1"),
            Some(Key::Node("o1".to_owned()))
        );
        for bad in [
            &b"/sluicex/streams/live/a"[..],
            b"/sluice/streams/live",
            b"/sluice/streams/live/a/b",
            b"/sluice/streams//a",
            b"/sluice/nodes/",
            b"/other/streams/live/a",
            b"/sluice/\xff",
        ] {
            assert_eq!(l.parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn entries_parse_from_json_or_a_bare_url() {
        let e = StreamEntry {
            node: "o1".to_owned(),
            upstreams: vec![
                "quic://127.0.0.1:7000/live".to_owned(),
                "rtmp://127.0.0.1:1935/live".to_owned(),
            ],
        };
        assert_eq!(StreamEntry::parse(e.to_json().as_bytes()), Some(e.clone()));
        let with_quic = e.usable(true);
        assert_eq!(with_quic.len(), 2);
        assert_eq!(with_quic[0].transport, Transport::Quic);
        let without = e.usable(false);
        assert_eq!(without.len(), 1);
        assert_eq!(&*without[0].url, "rtmp://127.0.0.1:1935/live");
        let bare = StreamEntry::parse(b"rtmp://10.0.0.1:1935/live\n").unwrap();
        assert_eq!(bare.node, "");
        assert_eq!(bare.usable(false)[0].addr, "10.0.0.1:1935");
        assert_eq!(StreamEntry::parse(b"{not json"), None);
        let junk = StreamEntry {
            node: String::new(),
            upstreams: vec!["http://x".to_owned()],
        };
        assert!(junk.usable(true).is_empty());
    }

    #[test]
    fn the_view_follows_puts_and_deletes_and_counts_changes() {
        let l = Layout::new("/s");
        let k = StreamKey::new("live", "a");
        let key = l.stream(&k);
        let mut v = View::default();
        v.reset(&l, [(key.as_bytes(), &b"rtmp://o1:1935/live"[..])]);
        let g = v.generation();
        assert_eq!(upstreams_of(&v, &k, "edge", false)[0].addr, "o1:1935");
        assert!(
            !v.put(&l, key.as_bytes(), b"rtmp://o1:1935/live"),
            "same value: no change"
        );
        assert_eq!(v.generation(), g);
        assert!(v.put(&l, key.as_bytes(), b"rtmp://o2:1935/live"), "moved");
        assert_eq!(upstreams_of(&v, &k, "edge", false)[0].addr, "o2:1935");
        assert!(
            v.put(&l, key.as_bytes(), b"garbage"),
            "unreadable: forgotten"
        );
        assert!(upstreams_of(&v, &k, "edge", false).is_empty());
        v.put(
            &l,
            key.as_bytes(),
            br#"{"node":"edge","upstreams":["rtmp://e:1/live"]}"#,
        );
        assert!(
            upstreams_of(&v, &k, "edge", false).is_empty(),
            "a node's own entry is no upstream"
        );
        assert!(v.delete(&l, key.as_bytes()));
        assert!(!v.delete(&l, key.as_bytes()));
        assert!(v.stream(&k).is_none());
        let node = NodeEntry {
            id: "o1".to_owned(),
            role: "origin".to_owned(),
            advertise: vec![],
            listeners: BTreeMap::new(),
            streams: 1,
            publishing: 1,
            viewers: 0,
            pulls: 0,
            updated_unix: 1,
        };
        let json = serde_json::to_vec(&node).unwrap();
        assert!(v.put(&l, l.node("o1").as_bytes(), &json));
        assert_eq!(v.nodes(), vec![node]);
        assert!(v.generation() > g + 3);
        v.reset(&l, std::iter::empty());
        assert!(v.nodes().is_empty() && v.streams().is_empty());
    }
}
