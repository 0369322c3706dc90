//! The web player page: `GET {player.path}/APP/NAME` answers an HTML page that plays the
//! stream in a browser, LL-HLS from `/APP/NAME.m3u8` with hls.js (or the browser's own HLS
//! player, e.g. Safari's), or with `?format=flv` HTTP-FLV from `/APP/NAME.flv` with
//! mpegts.js. The page shows the player's latency behind the live edge, its state and its
//! errors, and exposes them to scripts and tests as `window.sluicePlayer` (`latency()` in
//! seconds or null, `state()`, `errors()`, `engine()`, `format()`, `stats()`).
//!
//! This module owns the routing of those paths and the page's text; it does no I/O except
//! [`Body::load`], which reads an asset file. The player libraries are not part of Sluice:
//! with `player.assets_dir` set (filled by `deploy/player-assets.sh`), exactly
//! `{path}/assets/hls.min.js` and `{path}/assets/mpegts.js` are served from that directory
//! (no other name, so no path reaches another file); otherwise the page loads them from
//! `player.script_base`, an npm CDN.
//!
//! APP and NAME come from the URL, so they reach the page only escaped: inside a JSON object
//! in a `<script type="application/json">` element with `<`, `>` and `&` written as `\u00XX`
//! (nothing in it can end the element), and in the title as HTML text. The page's script
//! puts them into the document with `textContent` only. The stream URLs in that object are
//! built here from the percent-encoded segments.

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use sluice_core::config::PlayerConfig;

/// The page, with `{{title}}` and `{{config}}` filled in per request.
const PAGE: &str = include_str!("player.html");
/// The player libraries that may be served from `player.assets_dir`, and their types.
const ASSETS: [&str; 2] = ["hls.min.js", "mpegts.js"];
/// Larger asset files are refused rather than read into memory (hls.min.js is ~600 KiB).
pub const MAX_ASSET_BYTES: u64 = 8 << 20;

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
/// The page is cheap and names the player libraries, which a config reload may change.
const PAGE_CACHE: &str = "no-cache";
/// Asset names carry no version, so caches keep them for a while, not forever.
const ASSET_CACHE: &str = "public, max-age=3600";

/// The answer to a player path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerResponse {
    /// The status line's code and reason, e.g. `200 OK`.
    pub status: &'static str,
    /// `content-type`.
    pub content_type: &'static str,
    /// `cache-control`.
    pub cache_control: &'static str,
    /// What to send.
    pub body: Body,
}

/// A response body: in memory, or an asset file still to be read ([`Body::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// The bytes themselves.
    Bytes(Bytes),
    /// A player library in `player.assets_dir`.
    File(PathBuf),
}

impl Body {
    /// The body's bytes; an asset file is read on a blocking thread (at most
    /// [`MAX_ASSET_BYTES`]).
    pub async fn load(self) -> std::io::Result<Bytes> {
        match self {
            Body::Bytes(bytes) => Ok(bytes),
            Body::File(path) => tokio::task::spawn_blocking(move || {
                let len = std::fs::metadata(&path)?.len();
                if len > MAX_ASSET_BYTES {
                    return Err(std::io::Error::other(format!(
                        "{} is {len} bytes, over {MAX_ASSET_BYTES}",
                        path.display()
                    )));
                }
                std::fs::read(&path).map(Bytes::from)
            })
            .await
            .map_err(std::io::Error::other)?,
        }
    }
}

/// What the page plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Hls,
    Flv,
}

/// Answers `path` (raw, percent-encoded, no query) with `query` (without the `?`) when it
/// is the player's: under `config.path` while the player is enabled. `None` for every other
/// path. The caller answers GET and HEAD this way; HEAD without the body.
pub fn respond(path: &str, query: &str, config: &PlayerConfig) -> Option<PlayerResponse> {
    if !config.enabled {
        return None;
    }
    let rest = path.strip_prefix(config.path.as_str())?;
    let rest = match rest.strip_prefix('/') {
        Some(rest) => rest,
        None if rest.is_empty() => return Some(not_found()),
        // `/playground` is not under `/play`.
        None => return None,
    };
    if let Some(asset) = rest.strip_prefix("assets/")
        && ASSETS.contains(&asset)
    {
        if config.assets_dir.is_empty() {
            return Some(not_found());
        }
        return Some(PlayerResponse {
            status: "200 OK",
            content_type: JAVASCRIPT,
            cache_control: ASSET_CACHE,
            body: Body::File(PathBuf::from(&config.assets_dir).join(asset)),
        });
    }
    let Some((app, name)) = rest.split_once('/') else {
        return Some(not_found());
    };
    let (Some(app), Some(name)) = (segment(app), segment(name)) else {
        return Some(not_found());
    };
    let mut format = Format::Hls;
    let mut engine = "";
    // Everything else (a stream key, a signed URL's exp/kid/sig) is the stream's: the page
    // asks for the stream with it, as it came (still percent-encoded).
    let mut credentials = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("format", "flv") => format = Format::Flv,
            ("format", "hls") => format = Format::Hls,
            ("format", _) => return Some(text("400 Bad Request", "format is hls or flv\n")),
            ("engine", value @ ("hlsjs" | "native")) => engine = value,
            ("engine", _) => {}
            _ => credentials.push(pair),
        }
    }
    let credentials = credentials.join("&");
    Some(PlayerResponse {
        status: "200 OK",
        content_type: HTML,
        cache_control: PAGE_CACHE,
        body: Body::Bytes(page(&app, &name, format, engine, &credentials, config).into()),
    })
}

/// A percent-decoded path segment that names an application or a stream: not empty, no
/// `/`, and not a dot segment (a browser would resolve `/../NAME.flv` away).
fn segment(raw: &str) -> Option<String> {
    let decoded = sluice_auth::percent_decode_exact(raw)?.into_owned();
    let usable = !decoded.is_empty()
        && decoded != "."
        && decoded != ".."
        && !decoded.contains('/')
        && !decoded.chars().any(char::is_control);
    usable.then_some(decoded)
}

fn not_found() -> PlayerResponse {
    text("404 Not Found", "not found\n")
}

fn text(status: &'static str, body: &'static str) -> PlayerResponse {
    PlayerResponse {
        status,
        content_type: TEXT,
        cache_control: PAGE_CACHE,
        body: Body::Bytes(Bytes::from_static(body.as_bytes())),
    }
}

/// The page for one stream.
fn page(
    app: &str,
    name: &str,
    format: Format,
    engine: &str,
    credentials: &str,
    config: &PlayerConfig,
) -> String {
    let stream = format!("/{}/{}", url_segment(app), url_segment(name));
    let query = if credentials.is_empty() {
        String::new()
    } else {
        format!("?{credentials}")
    };
    let scripts = if config.assets_dir.is_empty() {
        let base = config.script_base.trim_end_matches('/');
        (
            format!("{base}/hls.js@1/dist/hls.min.js"),
            format!("{base}/mpegts.js@1/dist/mpegts.js"),
        )
    } else {
        (
            format!("{}/assets/hls.min.js", config.path),
            format!("{}/assets/mpegts.js", config.path),
        )
    };
    let mut json = String::from("{");
    let fields = [
        ("app", app),
        ("name", name),
        (
            "format",
            match format {
                Format::Hls => "hls",
                Format::Flv => "flv",
            },
        ),
        ("engine", engine),
        ("hlsUrl", &format!("{stream}.m3u8{query}")),
        ("flvUrl", &format!("{stream}.flv{query}")),
    ];
    for (key, value) in fields {
        let _ = write!(json, "{}:{},", json_string(key), json_string(value));
    }
    let _ = write!(
        json,
        "\"scripts\":{{\"hls\":{},\"mpegts\":{}}}}}",
        json_string(&scripts.0),
        json_string(&scripts.1)
    );
    fill(
        PAGE,
        &[
            ("title", &html_text(&format!("{app}/{name}"))),
            ("config", &json),
        ],
    )
}

/// Replaces each `{{key}}` in `template` with its value in one pass, so a value that itself
/// contains `{{…}}` is never filled in again.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let filled = after.find("}}").and_then(|close| {
            let value = values.iter().find(|(key, _)| *key == &after[..close])?.1;
            Some((value, close))
        });
        match filled {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `text` as HTML character data or a quoted attribute value.
fn html_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as a JSON string that is also safe inside an HTML `<script>` element: `<`, `>`
/// and `&` are escaped (no `</script>` or `<!--`), and so are U+2028/U+2029.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` as one URL path segment: every byte but the unreserved ones percent-encoded.
pub(crate) fn url_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PlayerConfig {
        PlayerConfig {
            enabled: true,
            path: "/play".into(),
            assets_dir: String::new(),
            script_base: "https://cdn.example/npm".into(),
        }
    }

    fn html(path: &str, query: &str, config: &PlayerConfig) -> String {
        let response = respond(path, query, config).expect("a player path");
        assert_eq!(response.status, "200 OK", "{path}");
        assert_eq!(response.content_type, HTML);
        match response.body {
            Body::Bytes(bytes) => String::from_utf8(bytes.to_vec()).expect("utf-8"),
            Body::File(path) => panic!("a page, not {}", path.display()),
        }
    }

    /// The JSON object the page script reads.
    fn page_config(page: &str) -> String {
        let start = page.find("id=\"sluice-config\">").expect("config element") + 19;
        let len = page[start..].find("</script>").expect("element end");
        page[start..start + len].to_owned()
    }

    #[test]
    fn a_stream_path_gets_a_page_that_plays_it_with_hls_or_flv() {
        let page = html("/play/live/cam", "", &config());
        let json = page_config(&page);
        assert!(
            json.contains(r#""app":"live","name":"cam","format":"hls""#),
            "{json}"
        );
        assert!(json.contains(r#""hlsUrl":"/live/cam.m3u8""#), "{json}");
        assert!(json.contains(r#""flvUrl":"/live/cam.flv""#), "{json}");
        // Credentials on the page's URL go on to the stream's (and only they).
        let signed = html(
            "/play/live/cam",
            "exp=1&kid=k&sig=a-b_c&format=flv&engine=native",
            &config(),
        );
        assert!(
            signed.contains(r#""hlsUrl":"/live/cam.m3u8?exp=1\u0026kid=k\u0026sig=a-b_c""#),
            "{signed}"
        );
        assert!(signed.contains(r#""format":"flv""#), "{signed}");
        assert!(
            json.contains(r#""hls":"https://cdn.example/npm/hls.js@1/dist/hls.min.js""#),
            "{json}"
        );
        assert!(page.contains("<title>live/cam · Sluice</title>"));
        assert!(!page.contains("{{"), "every placeholder filled");
        assert!(page.contains("window.sluicePlayer"));

        let flv = page_config(&html("/play/live/cam", "x=1&format=flv", &config()));
        assert!(flv.contains(r#""format":"flv""#), "{flv}");
        let native = page_config(&html("/play/live/cam", "engine=native", &config()));
        assert!(native.contains(r#""engine":"native""#), "{native}");
        let ignored = page_config(&html("/play/live/cam", "engine=<x>", &config()));
        assert!(ignored.contains(r#""engine":"""#), "{ignored}");
        let bad = respond("/play/live/cam", "format=dash", &config()).unwrap();
        assert_eq!(bad.status, "400 Bad Request");
    }

    #[test]
    fn names_from_the_url_are_escaped_in_the_page_and_encoded_in_urls() {
        // `<script>alert("x")<!--` and `a&b'`, percent-encoded in the path (a `/`, as in
        // `</script>`, makes no stream name at all).
        let evil_name = "%3Cscript%3Ealert(%22x%22)%3C!--";
        let page = html(&format!("/play/a%26b'/{evil_name}"), "", &config());
        let json = page_config(&page);
        assert!(!json.contains('<') && !json.contains('>'), "{json}");
        assert!(
            json.contains(r#""name":"\u003cscript\u003ealert(\"x\")\u003c!--""#),
            "{json}"
        );
        assert!(json.contains(r#""app":"a\u0026b'""#), "{json}");
        assert!(
            json.contains(r#""flvUrl":"/a%26b%27/%3Cscript%3Ealert%28%22x%22%29%3C%21--.flv""#),
            "{json}"
        );
        assert!(page.contains(
            "<title>a&amp;b&#39;/&lt;script&gt;alert(&quot;x&quot;)&lt;!-- · Sluice</title>"
        ));
        // Exactly the page's own script elements: none was injected.
        assert_eq!(page.matches("<script").count(), 2);
        assert_eq!(page.matches("</script>").count(), 2);

        // Placeholders in a name are text, not filled again.
        let page = html("/play/live/%7B%7Bconfig%7D%7D", "", &config());
        assert_eq!(page.matches("\"scripts\"").count(), 1);
        let json = page_config(&html("/play/live/my%20cam%E2%80%A8", "", &config()));
        assert!(json.contains(r#""name":"my cam\u2028""#), "{json}");
        assert!(
            json.contains(r#""hlsUrl":"/live/my%20cam%E2%80%A8.m3u8""#),
            "{json}"
        );
    }

    #[test]
    fn only_the_two_libraries_are_served_from_the_assets_dir() {
        let local = PlayerConfig {
            assets_dir: "/srv/player".into(),
            ..config()
        };
        let hls = respond("/play/assets/hls.min.js", "", &local).unwrap();
        assert_eq!(
            (hls.status, hls.content_type, hls.body),
            (
                "200 OK",
                JAVASCRIPT,
                Body::File("/srv/player/hls.min.js".into())
            )
        );
        let mpegts = respond("/play/assets/mpegts.js", "", &local).unwrap();
        assert_eq!(mpegts.body, Body::File("/srv/player/mpegts.js".into()));
        // The page then loads them from here.
        let json = page_config(&html("/play/live/cam", "", &local));
        assert!(
            json.contains(
                r#""scripts":{"hls":"/play/assets/hls.min.js","mpegts":"/play/assets/mpegts.js"}"#
            ),
            "{json}"
        );
        for path in [
            "/play/assets/../../etc/passwd",
            "/play/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/play/assets/hls.min.js.map",
            "/play/assets/",
            "/play/assets",
            "/play/assets/sub/hls.min.js",
            "/play/assets/..",
            "/play/assets/%2e%2e",
        ] {
            let response = respond(path, "", &local).expect("under the prefix");
            assert!(
                !matches!(response.body, Body::File(_)),
                "{path} read a file: {response:?}"
            );
        }
        // Any other name under assets/ is just a stream of an app called "assets".
        let page = page_config(&html("/play/assets/x.js", "", &local));
        assert!(page.contains(r#""app":"assets","name":"x.js""#), "{page}");
        // Without a directory the libraries are not served at all.
        let none = respond("/play/assets/hls.min.js", "", &config()).unwrap();
        assert_eq!(none.status, "404 Not Found");
    }

    #[test]
    fn other_paths_are_not_the_players_and_bad_ones_are_404() {
        for path in [
            "/live/cam.flv",
            "/",
            "/playground/live/cam",
            "/pla",
            "/live/play",
        ] {
            assert_eq!(respond(path, "", &config()), None, "{path}");
        }
        for path in [
            "/play",
            "/play/",
            "/play/live",
            "/play/live/",
            "/play//cam",
            "/play/live/a/b",
            "/play/live/a%2Fb",
            "/play/../cam",
            "/play/live/..",
            "/play/live/%2E%2E",
            "/play/live/%ff",
            "/play/live/a%0Ab",
        ] {
            let response = respond(path, "", &config()).expect("under the prefix");
            assert_eq!(response.status, "404 Not Found", "{path}");
        }
    }

    #[test]
    fn a_disabled_player_answers_nothing_and_the_prefix_is_configurable() {
        let off = PlayerConfig {
            enabled: false,
            ..config()
        };
        assert_eq!(respond("/play/live/cam", "", &off), None);
        let moved = PlayerConfig {
            path: "/watch/v1".into(),
            assets_dir: "/srv".into(),
            ..config()
        };
        assert_eq!(respond("/play/live/cam", "", &moved), None);
        let json = page_config(&html("/watch/v1/live/cam", "", &moved));
        assert!(
            json.contains(r#""hls":"/watch/v1/assets/hls.min.js""#),
            "{json}"
        );
    }

    #[tokio::test]
    async fn an_asset_body_is_read_from_its_file() {
        let dir = std::env::temp_dir().join(format!("sluice-player-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mpegts.js"), b"var mpegts = {};").unwrap();
        let body = Body::File(dir.join("mpegts.js")).load().await.unwrap();
        assert_eq!(&body[..], b"var mpegts = {};");
        assert!(Body::File(dir.join("hls.min.js")).load().await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
