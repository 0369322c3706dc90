// The status page's script: polls this node's admin API and shows what it returns.
//
// Every value from the API goes into the page as text (textContent, element by element),
// never as markup: stream names come from publishers. The admin token, when the node has
// one, is taken once from the form, `#token=` or `?token=`, kept in this tab's
// sessionStorage, and sent only as `Authorization: Bearer` to this origin's API.
"use strict";

(() => {
  const POLL_MS = 1500;
  const TOKEN_KEY = "sluice.adminToken";
  const $ = (id) => document.getElementById(id);

  let token = takeTokenFromAddress() ?? sessionStorage.getItem(TOKEN_KEY);
  let timer = null;
  let lastOk = null;
  // Bumped when the token changes: answers to a poll begun before are dropped.
  let generation = 0;

  // A token in the address is moved to sessionStorage and taken out of the address bar and
  // history, so it is not bookmarked, shared or sent again.
  function takeTokenFromAddress() {
    const query = new URLSearchParams(location.search);
    const hash = new URLSearchParams(location.hash.slice(1));
    const given = hash.get("token") ?? query.get("token");
    if (!query.has("token") && !hash.has("token")) return null;
    query.delete("token");
    hash.delete("token");
    const q = query.toString();
    const h = hash.toString();
    history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + (h ? "#" + h : ""));
    if (!given) return null;
    sessionStorage.setItem(TOKEN_KEY, given);
    return given;
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    // Relative: works behind a proxy that serves the admin API under a prefix.
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (response.status === 401) throw new Unauthorized();
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  async function poll() {
    timer = null;
    const mine = generation;
    try {
      const [node, streams, pulls, upstreams] = await Promise.all([
        api("api/node"),
        api("api/streams"),
        api("api/pulls"),
        api("api/upstreams"),
      ]);
      if (mine !== generation) return;
      lastOk = new Date();
      showData();
      renderNode(node);
      renderStreams(node, streams.streams ?? []);
      renderPulls(node, pulls.pulls ?? []);
      renderUpstreams(node, upstreams.upstreams ?? []);
    } catch (e) {
      if (mine !== generation) return;
      if (e instanceof Unauthorized) {
        askForToken(token ? "The node refused this token." : "");
        return; // polling resumes once a token is given
      }
      // Keeps the last data on screen, marked stale.
      showError("Cannot reach the admin API: " + e.message);
    }
    schedule();
  }

  function schedule() {
    if (timer === null) timer = setTimeout(poll, POLL_MS);
  }

  function askForToken(message) {
    generation += 1;
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    // No data stays on screen without a valid token.
    for (const id of ["streams", "pulls", "upstreams"]) clear($(id).tBodies[0]);
    clear($("node"));
    clear($("updated"));
    $("data").hidden = true;
    $("error").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    document.body.dataset.state = "login";
    $("token").focus();
  }

  function showData() {
    $("login").hidden = true;
    $("error").hidden = true;
    $("data").hidden = false;
    $("forget").hidden = !token;
    $("updated").textContent = "updated " + lastOk.toLocaleTimeString();
    document.body.dataset.state = "ok";
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    if (lastOk) $("updated").textContent = "stale since " + lastOk.toLocaleTimeString();
    document.body.dataset.state = "error";
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("token").value.trim();
    $("token").value = "";
    if (!given) return;
    generation += 1;
    token = given;
    sessionStorage.setItem(TOKEN_KEY, given);
    $("login").hidden = true;
    if (timer !== null) clearTimeout(timer);
    poll();
  });

  $("forget").addEventListener("click", () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    askForToken("");
  });

  // ---- rendering (text only) ----

  function clear(element) {
    while (element.firstChild) element.firstChild.remove();
  }

  function el(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (className) e.className = className;
    return e;
  }

  // A cell: a label for the one-column layout, and its content in a div.
  function cell(row, label, ...content) {
    const td = document.createElement("td");
    td.dataset.label = label;
    const div = document.createElement("div");
    for (const c of content) {
      if (c === null || c === undefined) continue;
      div.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    td.append(div);
    row.append(td);
    return td;
  }

  function fill(tbody, rows, columns, emptyText) {
    clear(tbody);
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = el("td", emptyText, "empty");
      td.colSpan = columns;
      tr.append(td);
      tbody.append(tr);
      return;
    }
    for (const row of rows) tbody.append(row);
  }

  function renderNode(node) {
    $("node").textContent = node.node_id + " · " + node.role + " · v" + node.version;
  }

  // The player page of a stream on this node's HTTP listener: the host the browser reached
  // the admin listener by, the HTTP port, the player path.
  function playerUrl(node, app, stream) {
    if (node.player_path === null || node.player_path === undefined) return null;
    const url = new URL(location.href);
    url.protocol = "http:";
    url.port = String(node.http_port);
    url.pathname = node.player_path.replace(/\/$/, "") + "/" +
      encodeURIComponent(app) + "/" + encodeURIComponent(stream);
    url.search = "";
    url.hash = "";
    return url.href;
  }

  function renderStreams(node, streams) {
    streams.sort((a, b) => (a.app + "/" + a.stream).localeCompare(b.app + "/" + b.stream));
    $("stream-count").textContent = "(" + streams.length + ")";
    const rows = streams.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.key = s.app + "/" + s.stream;
      tr.dataset.bitrate = String(s.bitrate_bps);
      const href = playerUrl(node, s.app, s.stream);
      let name;
      if (href) {
        name = el("a", s.app + "/" + s.stream, "name");
        name.href = href;
        name.target = "_blank";
        name.rel = "noopener noreferrer";
      } else {
        name = el("span", s.app + "/" + s.stream, "name");
      }
      cell(tr, "Stream", name);
      const state = s.publishing ? el("span", "live", "ok") : el("span", "idle", "muted");
      cell(tr, "State", state);
      const v = s.video;
      cell(tr, "Video", v ? el("span", v.codec + " " + v.width + "×" + v.height, "codec") : "–",
        v && (v.profile || v.level) ? el("span", [v.profile, v.level].filter(Boolean).join(" "), "sub") : null)
        .classList.add("video");
      const a = s.audio;
      cell(tr, "Audio", a ? el("span", a.codec, "codec") : "–",
        a ? el("span", hz(a.sample_rate) + " · " + channels(a.channels), "sub") : null)
        .classList.add("audio");
      cell(tr, "Bitrate", el("span", bps(s.bitrate_bps), "num")).classList.add("bitrate");
      const by = s.viewers_by_protocol ?? { rtmp: 0, http_flv: 0, hls: 0 };
      cell(tr, "Viewers",
        el("span", "RTMP " + by.rtmp + " · FLV " + by.http_flv + " · HLS " + by.hls, "num"))
        .classList.add("viewers");
      cell(tr, "GOP cache", el("span", s.cached_frames + " frames", "num"),
        el("span", bytes(s.cached_bytes), "sub"));
      cell(tr, "Uptime", el("span", s.uptime_secs === null ? "–" : duration(s.uptime_secs), "num"));
      return tr;
    });
    fill($("streams").tBodies[0], rows, 8, "No streams.");
  }

  function renderPulls(node, pulls) {
    $("pulls-section").hidden = pulls.length === 0 && node.role === "origin";
    $("pull-count").textContent = "(" + pulls.length + ")";
    const now = Date.now() / 1000;
    const rows = pulls.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.key = p.app + "/" + p.stream;
      cell(tr, "Stream", el("span", p.app + "/" + p.stream, "name"));
      const cls = p.state === "live" ? "ok" : p.state === "failed" ? "bad" : "warn";
      cell(tr, "State", el("span", p.state, cls));
      cell(tr, "Upstream", p.upstream ?? "–", p.transport ? el("span", p.transport, "sub") : null);
      cell(tr, "Since", p.since_unix ? duration(now - p.since_unix) : "–");
      cell(tr, "Received", el("span", bytes(p.bytes), "num"), el("span", p.frames + " frames", "sub"));
      cell(tr, "Switches", el("span", String(p.switches), "num"));
      cell(tr, "Last error", p.last_error ? el("span", p.last_error, "bad") : "–");
      return tr;
    });
    fill($("pulls").tBodies[0], rows, 7, "No pulls.");
  }

  function renderUpstreams(node, upstreams) {
    $("upstreams-section").hidden = upstreams.length === 0 && node.role === "origin";
    $("upstream-count").textContent = "(" + upstreams.length + ")";
    const rows = upstreams.map((u) => {
      const tr = document.createElement("tr");
      tr.dataset.key = u.url;
      cell(tr, "Upstream", el("span", u.url, "name"));
      const cls = u.state === "up" ? "ok" : u.state === "down" ? "bad" : "muted";
      cell(tr, "Health", el("span", u.state, cls),
        u.since_secs === null ? null : el("span", "for " + duration(u.since_secs), "sub"));
      cell(tr, "Failures", el("span", u.consecutive_failures + " now", "num"),
        el("span", u.failures + " in all", "sub"));
      cell(tr, "Pulls", el("span", String(u.successes), "num"));
      cell(tr, "Connect", u.last_connect_ms === null ? "–" : u.last_connect_ms.toFixed(0) + " ms");
      cell(tr, "Backoff", u.backoff_ms === null ? "–" : u.backoff_ms + " ms");
      cell(tr, "Last error", u.last_error ? el("span", u.last_error, "bad") : "–");
      return tr;
    });
    fill($("upstreams").tBodies[0], rows, 7, "No upstreams.");
  }

  // ---- units ----

  function bps(n) {
    if (n >= 1e6) return (n / 1e6).toFixed(2) + " Mb/s";
    if (n >= 1e3) return (n / 1e3).toFixed(0) + " kb/s";
    return n + " b/s";
  }

  function bytes(n) {
    if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(0) + " KiB";
    return n + " B";
  }

  function hz(n) {
    return n % 1000 === 0 ? n / 1000 + " kHz" : (n / 1000).toFixed(1) + " kHz";
  }

  function channels(n) {
    return n === 1 ? "mono" : n === 2 ? "stereo" : n + " ch";
  }

  function duration(secs) {
    const s = Math.max(0, Math.floor(secs));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (x) => String(x).padStart(2, "0");
    if (h > 0) return h + "h " + pad(m) + "m " + pad(s % 60) + "s";
    if (m > 0) return m + "m " + pad(s % 60) + "s";
    return s + "s";
  }

  poll();
})();
