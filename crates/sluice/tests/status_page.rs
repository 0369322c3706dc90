//! The status page on the admin listener (`GET /`), in a real browser: a `sluice serve`
//! process with fixture publishers and an RTMP and an HTTP-FLV viewer, Debian's headless
//! Chromium driven through `sluice_testkit::browser::drive_page`. The page must show the
//! stream with its codecs, a bitrate and its viewers by protocol, link it to the player page
//! on the HTTP listener, show a publisher's hostile stream name as text, fit a phone's width,
//! and, with `admin.token` set, show nothing until it is given the token (and the token must
//! not reach the node's log).

use std::time::Duration;

use serde_json::Value;
use sluice_testkit::browser::{self, PageReport, PageShot, Step};
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::http;
use sluice_testkit::node::{Process, Spec, Transport};
use sluice_testkit::rtmp::{Player, Publisher};
use sluice_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Everything the browser does in one test.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(40);
/// A stream name as a hostile publisher could choose it (RTMP allows all but `/` and `?`).
const HOSTILE: &str = "<img src=x onerror=\"window.pwned=1\">&amp;<script>window.pwned=2";
const TOKEN: &str = "status-page-secret-4242";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Chromium and playwright-core, installed on first use (off the runtime's threads).
async fn browser_kit() {
    tokio::task::spawn_blocking(|| {
        browser::chromium();
        browser::playwright();
    })
    .await
    .expect("browser kit");
}

async fn drive(steps: Vec<Step>) -> PageReport {
    tokio::task::spawn_blocking(move || browser::drive_page(&steps, BROWSER_TIMEOUT))
        .await
        .expect("browser task")
        .expect("the browser ran")
}

/// The fixture (H.264 + AAC) published in real time, looped.
fn publish(node: &Process, name: &str) -> JoinHandle<sluice_runtime::client::Client> {
    Publisher::fixture(node.rtmp_url(name), H264_AAC)
        .real_time()
        .spawn()
}

/// An HTTP-FLV viewer that reads (and discards) what it gets until aborted.
async fn flv_viewer(node: &Process, name: &str) -> JoinHandle<()> {
    let mut socket = TcpStream::connect(node.http).await.expect("connect HTTP");
    let request = format!("GET /live/{name}.flv HTTP/1.1\r\nHost: sluice\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("send");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
    })
}

/// A PNG file's width and height from its header, after checking its signature.
fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is no PNG",
        path.display()
    );
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

/// A screenshot of a page with something on it: the size asked for (at least), many colours
/// and contrast (a blank or single-colour page has neither).
fn check_shot(shot: &PageShot, min_width: u32, summary: &str) {
    assert_eq!(
        png_size(&shot.path),
        (shot.width, shot.height),
        "decoded size differs from the PNG header: {summary}"
    );
    assert!(
        shot.width >= min_width && shot.height >= 200,
        "{shot:?}: {summary}"
    );
    assert!(
        shot.colors >= 8 && shot.stddev_luma > 10.0,
        "blank-looking screenshot {shot:?}: {summary}"
    );
}

/// The streams table as the page shows it, and what a script injected there could have done.
const READ_PAGE: &str = r##"(() => ({
  rows: [...document.querySelectorAll("#streams tbody tr[data-key]")].map((tr) => ({
    key: tr.dataset.key,
    bitrate: Number(tr.dataset.bitrate),
    name: tr.querySelector(".name").textContent,
    href: tr.querySelector("a.name")?.href ?? null,
    video: tr.querySelector("td.video").textContent,
    audio: tr.querySelector("td.audio").textContent,
    viewers: tr.querySelector("td.viewers").textContent,
    text: tr.textContent,
  })),
  injected: document.querySelectorAll("#streams img, #streams script").length,
  pwned: window.pwned ?? null,
  state: document.body.dataset.state,
  overflow: document.documentElement.scrollWidth - window.innerWidth,
}))()"##;

/// Both streams are on the page with their codecs and a nonzero bitrate, and the RTMP and
/// HTTP-FLV viewers of `cam` are counted.
fn live_rows_shown() -> String {
    format!(
        r##"(() => {{
  const ok = (key) => {{
    const tr = [...document.querySelectorAll("#streams tbody tr")].find((r) => r.dataset.key === key);
    return tr && Number(tr.dataset.bitrate) > 0 && tr.querySelector("td.video").textContent.includes("h264")
      && tr.querySelector("td.audio").textContent.includes("aac");
  }};
  const cam = [...document.querySelectorAll("#streams tbody tr")].find((r) => r.dataset.key === "live/cam");
  return ok("live/cam") && ok({hostile}) && cam.querySelector("td.viewers").textContent.includes("RTMP 1 · FLV 1");
}})()"##,
        hostile = serde_json::to_string(&format!("live/{HOSTILE}")).expect("json")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_streams_links_players_and_escapes_names() {
    browser_kit().await;
    let node = Process::start(bin(), Spec::origin("status", Transport::Rtmp)).await;
    let cam = publish(&node, "cam");
    let hostile = publish(&node, HOSTILE);
    node.wait_publishing("cam").await;
    node.wait_publishing(HOSTILE).await;
    let rtmp_viewer = Player::start(&node.rtmp_url("cam"), Duration::from_secs(10)).await;
    let flv = flv_viewer(&node, "cam").await;

    // The JSON the page reads: viewers by protocol, and where the player pages are.
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.stream("cam").await.is_some_and(|s| {
                s["viewers_by_protocol"] == serde_json::json!({"rtmp": 1, "http_flv": 1, "hls": 0})
            })
        })
        .await,
        "viewers by protocol: {:?}",
        node.stream("cam").await
    );
    let (status, body) = http::get(node.admin, "/api/node").await;
    assert_eq!(status, 200, "{body}");
    let about: Value = serde_json::from_str(&body).expect("node JSON");
    assert_eq!(about["http_port"], node.http.port(), "{about}");
    assert_eq!(about["player_path"], "/play", "{about}");
    assert_eq!(about["role"], "origin", "{about}");
    assert_eq!(about["node_id"], "status", "{about}");

    let page = format!("http://{}/", node.admin);
    let report = drive(vec![
        Step::Goto(page),
        Step::WaitFor(live_rows_shown()),
        Step::Eval(READ_PAGE.to_owned()),
        Step::Screenshot("wide".to_owned()),
        // A phone.
        Step::Viewport(390, 844),
        Step::Eval(READ_PAGE.to_owned()),
        Step::Screenshot("phone".to_owned()),
    ])
    .await;
    let summary = format!("{report:?}\nnode log:\n{}", node.log());
    assert_eq!(report.failure, None, "{summary}");
    assert!(report.errors.is_empty(), "{summary}");

    let wide = &report.values[0];
    let rows = wide["rows"].as_array().expect("rows");
    let row = |key: &str| {
        rows.iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no row {key}: {summary}"))
    };
    let cam_row = row("live/cam");
    assert_eq!(
        cam_row["href"],
        format!("http://127.0.0.1:{}/play/live/cam", node.http.port()),
        "{summary}"
    );
    assert!(cam_row["bitrate"].as_f64() > Some(0.0), "{summary}");
    assert!(
        cam_row["text"].as_str().unwrap().contains("live"),
        "{summary}"
    );
    // The hostile name is text, exactly as published; its link is percent-encoded.
    let hostile_row = row(&format!("live/{HOSTILE}"));
    assert_eq!(hostile_row["name"], format!("live/{HOSTILE}"), "{summary}");
    let href = hostile_row["href"].as_str().expect("href");
    assert!(
        href.starts_with(&format!(
            "http://127.0.0.1:{}/play/live/%3Cimg%20src%3Dx",
            node.http.port()
        )) && !href.contains(['<', '>', '"', ' ']),
        "{href}: {summary}"
    );
    assert_eq!(wide["injected"], 0, "{summary}");
    assert_eq!(wide["pwned"], Value::Null, "{summary}");
    assert_eq!(wide["state"], "ok", "{summary}");

    // On a phone the page fits the width (one column of cards).
    let phone = &report.values[1];
    assert!(
        phone["overflow"].as_i64() <= Some(0),
        "wider than a phone: {summary}"
    );
    assert_eq!(phone["rows"].as_array().map(Vec::len), Some(2), "{summary}");

    assert_eq!(report.shots.len(), 2, "{summary}");
    check_shot(&report.shots[0], 1280, &summary);
    check_shot(&report.shots[1], 360, &summary);
    assert!(report.shots[1].width < 1280, "{summary}");

    // Viewers that leave are no longer counted.
    flv.abort();
    rtmp_viewer.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            node.stream("cam").await.is_some_and(|s| {
                s["viewers_by_protocol"] == serde_json::json!({"rtmp": 0, "http_flv": 0, "hls": 0})
            })
        })
        .await,
        "viewers by protocol after they left: {:?}",
        node.stream("cam").await
    );
    cam.abort();
    hostile.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_page_shows_nothing_until_given_it() {
    browser_kit().await;
    let node = Process::start(
        bin(),
        Spec::origin("guarded", Transport::Rtmp).with(&format!("[admin]\ntoken = \"{TOKEN}\"")),
    )
    .await;
    let cam = publish(&node, "secretcam");

    // The page and its files are served without the token, with a strict policy; the data
    // is not.
    let page = http::request(node.admin, "GET", "/").await;
    assert_eq!(page.status, 200, "{}", page.head);
    let head = page.head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");
    for path in ["/status.js", "/status.css"] {
        assert_eq!(
            http::request(node.admin, "GET", path).await.status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        http::request(node.admin, "GET", "/api/node").await.status,
        401
    );
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            let r = http::request_with(node.admin, "GET", "/api/streams", &[bearer.as_str()]).await;
            r.status == 200 && r.body.contains("secretcam") && r.body.contains("\"h264\"")
        })
        .await,
        "the stream never showed in /api/streams"
    );

    let base = format!("http://{}/", node.admin);
    let shows_cam = r##"[...document.querySelectorAll("#streams tbody tr")].some((r) => r.dataset.key === "live/secretcam")"##;
    let login_state = r##"(() => ({
  state: document.body.dataset.state,
  formShown: !document.getElementById("login").hidden,
  dataShown: !document.getElementById("data").hidden,
  rows: document.querySelectorAll("#streams tbody tr").length,
  mentions: document.body.textContent.includes("secretcam"),
  error: document.getElementById("login-error").textContent,
}))()"##;
    let after_token = r##"(() => ({
  stored: sessionStorage.getItem("sluice.adminToken"),
  address: location.href,
}))()"##;
    let report = drive(vec![
        Step::Goto(base.clone()),
        Step::WaitFor(r##"document.body.dataset.state === "login""##.to_owned()),
        // The first poll's answer came, and it was a refusal: nothing is shown.
        Step::Eval(login_state.to_owned()),
        Step::Screenshot("login".to_owned()),
        // A wrong token is refused, and the form says so.
        Step::Fill("#token".to_owned(), "not-the-token".to_owned()),
        Step::Click("#login button[type=submit]".to_owned()),
        Step::WaitFor(r##"document.getElementById("login-error").textContent !== """##.to_owned()),
        Step::Eval(login_state.to_owned()),
        // The right one shows the data, and stays in this tab only.
        Step::Fill("#token".to_owned(), TOKEN.to_owned()),
        Step::Click("#login button[type=submit]".to_owned()),
        Step::WaitFor(shows_cam.to_owned()),
        Step::Eval(after_token.to_owned()),
        // `?token=` (the query) and `#token=` (the fragment) both work, and leave the
        // address bar.
        Step::Eval("sessionStorage.clear()".to_owned()),
        Step::Goto(format!("{base}?token={TOKEN}")),
        Step::WaitFor(shows_cam.to_owned()),
        Step::Eval(after_token.to_owned()),
        Step::Eval("sessionStorage.clear()".to_owned()),
        Step::Goto("about:blank".to_owned()),
        Step::Goto(format!("{base}#token={TOKEN}")),
        Step::WaitFor(shows_cam.to_owned()),
        Step::Eval(after_token.to_owned()),
    ])
    .await;
    let summary = format!("{report:?}\nnode log:\n{}", node.log());
    assert_eq!(report.failure, None, "{summary}");

    let before = &report.values[0];
    assert_eq!(before["state"], "login", "{summary}");
    assert_eq!(before["formShown"], true, "{summary}");
    assert_eq!(before["dataShown"], false, "{summary}");
    assert_eq!(before["rows"], 0, "{summary}");
    assert_eq!(before["mentions"], false, "{summary}");
    let refused = &report.values[1];
    assert_eq!(refused["mentions"], false, "{summary}");
    assert_eq!(refused["dataShown"], false, "{summary}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{summary}"
    );
    for given in [&report.values[2], &report.values[4], &report.values[6]] {
        assert_eq!(given["stored"], TOKEN, "{summary}");
        let address = given["address"].as_str().expect("address");
        assert!(!address.contains(TOKEN), "{address}: {summary}");
    }
    check_shot(&report.shots[0], 1280, &summary);
    // The browser's only errors: the refused API requests (401s the console reports).
    assert!(report.errors.iter().all(|e| e.contains("401")), "{summary}");
    // The node logged no token, from whichever way the page was given it.
    assert!(!node.log().contains(TOKEN), "{}", node.log());
    cam.abort();
}
