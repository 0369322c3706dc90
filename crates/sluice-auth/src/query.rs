//! Query strings and stream URLs: what a client's credential is read from.
//!
//! Everything here takes peer bytes: bounded, and never panics.

use std::borrow::Cow;

/// Most parameters [`query_params`] yields; the rest of a query is ignored.
pub const MAX_PARAMS: usize = 64;
/// The longest query a request may carry (credentials, webhook parameters): the front ends
/// refuse longer ones before anything is checked or sent to a hook.
pub const MAX_QUERY: usize = 2048;

/// The `name=value` pairs of `query` (without the `?`), percent-decoded (`%XX`; a `%` not
/// followed by two hex digits stays as it is, and bytes that are not UTF-8 become U+FFFD).
/// `+` is a plain `+`, not a space: credentials are base64url or plain tokens, never form
/// data. A parameter without `=` has an empty value; empty pieces (`a&&b`) are skipped. At
/// most [`MAX_PARAMS`] pairs. When a name repeats, callers take the first (see
/// [`param`]).
pub fn query_params(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .take(MAX_PARAMS)
        .map(|piece| {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            (percent_decode(name), percent_decode(value))
        })
}

/// The first value of `name` in `query`.
pub fn param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query_params(query).find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Decodes `%XX` escapes (a `%` not followed by two hex digits stays as it is); bytes that
/// are not UTF-8 become U+FFFD. Borrows when there are no escapes.
pub fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    match String::from_utf8(decode_escapes(text)) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// [`percent_decode`] for names that must be exact (URL path segments): `None` when the
/// decoded bytes are not UTF-8.
pub fn percent_decode_exact(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    String::from_utf8(decode_escapes(text)).ok().map(Cow::Owned)
}

fn decode_escapes(text: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        let escaped = match bytes.get(at..at + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        };
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                at += 3;
            }
            None => {
                out.push(b);
                at += 1;
            }
        }
    }
    out
}

/// `text` with every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`, for a
/// query value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The application and stream a URL path names, as the RTMP and HTTP front ends read it:
/// `/APP/NAME` (RTMP), `/APP/NAME.flv` (HTTP-FLV), `/APP/NAME.m3u8` and `/APP/NAME/FILE`
/// (HLS: `media.m3u8`, segments, parts). Segments are percent-decoded; `None` for any
/// other shape, an empty or `.`/`..` segment, or one that decodes to hold `/`. A query or
/// fragment must already be cut off.
pub fn stream_of_url_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<Cow<'_, str>> = rest.split('/').map(percent_decode).collect();
    if !(2..=3).contains(&segments.len())
        || segments
            .iter()
            .any(|s| s.is_empty() || s == "." || s == ".." || s.contains('/'))
    {
        return None;
    }
    let app = segments[0].clone().into_owned();
    let second = &segments[1];
    let name = if segments.len() == 3 {
        second.as_ref()
    } else {
        second
            .strip_suffix(".flv")
            .or_else(|| second.strip_suffix(".m3u8"))
            .unwrap_or(second)
    };
    (!name.is_empty()).then(|| (app, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_params(q)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn params_are_split_decoded_and_bounded() {
        assert_eq!(
            pairs("a=1&b=x%20y&c&&d=%zz&e=a+b&f=%e2%82%ac&g=="),
            [
                ("a", "1"),
                ("b", "x y"),
                ("c", ""),
                ("d", "%zz"),
                ("e", "a+b"),
                ("f", "€"),
                ("g", "="),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert!(pairs("").is_empty());
        assert_eq!(pairs("%ff=%"), [("\u{fffd}".to_owned(), "%".to_owned())]);
        assert_eq!(pairs("%4"), [("%4".to_owned(), String::new())]);
        let many: String = (0..1000).map(|i| format!("p{i}=1&")).collect();
        assert_eq!(query_params(&many).count(), MAX_PARAMS);
        assert_eq!(param("key=a&key=b", "key").as_deref(), Some("a"));
        assert_eq!(param("keys=a", "key"), None);
    }

    #[test]
    fn exact_decoding_refuses_what_is_not_utf8_and_lossy_decoding_replaces_it() {
        assert_eq!(percent_decode_exact("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode_exact("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode_exact("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(percent_decode_exact("%ff"), None);
        assert_eq!(percent_decode("%ffa"), "\u{fffd}a");
        assert!(matches!(
            percent_decode_exact("plain"),
            Some(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn encoding_roundtrips_through_decoding() {
        for s in ["", "abc", "a b&c=d", "ü€/?#%", "::ffff:1.2.3.4"] {
            let e = percent_encode(s);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
            );
            assert_eq!(percent_decode(&e), s);
        }
    }

    #[test]
    fn url_paths_name_app_and_stream() {
        let s = |a: &str, n: &str| Some((a.to_owned(), n.to_owned()));
        assert_eq!(stream_of_url_path("/live/cam"), s("live", "cam"));
        assert_eq!(stream_of_url_path("/live/cam.flv"), s("live", "cam"));
        assert_eq!(stream_of_url_path("/live/cam.m3u8"), s("live", "cam"));
        assert_eq!(stream_of_url_path("/live/cam/media.m3u8"), s("live", "cam"));
        assert_eq!(stream_of_url_path("/live/cam/seg-3.m4s"), s("live", "cam"));
        assert_eq!(
            stream_of_url_path("/live/my%20cam.flv"),
            s("live", "my cam")
        );
        assert_eq!(stream_of_url_path("/live/a.b"), s("live", "a.b"));
        for bad in [
            "",
            "/",
            "live/cam",
            "/live",
            "/live/",
            "//cam",
            "/live/.flv",
            "/live/..",
            "/live/a%2Fb",
            "/a/b/c/d",
            "/live/cam/",
        ] {
            assert_eq!(stream_of_url_path(bad), None, "{bad}");
        }
    }
}
