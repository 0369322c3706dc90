// Plays a page in a running headless Chromium and reports what a viewer would have seen.
//
//   node play.mjs '{"playwright": DIR, "cdp": URL, "url": URL, "durationMs": N,
//                   "shots": N, "outDir": DIR, "timeoutMs": N}'
//
// Connects to the browser over CDP (the Rust side starts it, and kills it by PID), opens the
// page, waits until its video plays (window.sluicePlayer.state() === "playing" and time
// moves), then over durationMs takes `shots` screenshots of the video element and samples
// window.sluicePlayer.latency() every 250 ms. Each screenshot also gets a hash of the
// decoded frame itself (drawn to a canvas), so a frozen picture under changing controls
// still counts as unchanged; at the end, one of the whole page. Prints one JSON object on stdout; exits non-zero only when it
// could not run at all. Every wait is bounded by timeoutMs.
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { session, sleep } from "./session.mjs";

const { args, chromium, started, left } = session("play.mjs");

const report = {
  playing: false,
  timeToPlayMs: null,
  engine: null,
  state: null,
  screenshots: [],
  pictureChanged: false,
  latency: [],
  errors: [],
  stats: null,
  pageScreenshot: null,
};

const browser = await chromium.connectOverCDP(args.cdp, { timeout: left() });
try {
  const context = browser.contexts()[0] ?? (await browser.newContext());
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      report.errors.push(`console.${msg.type()}: ${msg.text()}`);
    }
  });
  page.on("pageerror", (err) => report.errors.push(`pageerror: ${err.message}`));
  page.on("requestfailed", (req) => {
    report.errors.push(`requestfailed: ${req.url()} ${req.failure()?.errorText ?? ""}`);
  });

  const t0 = Date.now();
  await page.goto(args.url, { waitUntil: "load", timeout: left() });
  try {
    await page.waitForFunction(
      () => {
        const p = window.sluicePlayer;
        return p && p.state() === "playing" && p.video.currentTime > 0.2 && p.video.videoWidth > 0;
      },
      null,
      { timeout: left(), polling: 100 },
    );
    report.playing = true;
    report.timeToPlayMs = Date.now() - t0;
  } catch (e) {
    report.errors.push(`never played: ${e.message.split("\n")[0]}`);
  }

  if (report.playing) {
    mkdirSync(args.outDir, { recursive: true });
    const video = page.locator("video");
    const shots = Math.max(2, args.shots);
    const gap = args.durationMs / (shots - 1);
    const end = Date.now() + args.durationMs;
    let nextShot = Date.now();
    let shot = 0;
    while (shot < shots && Date.now() < started + args.timeoutMs) {
      if (Date.now() >= nextShot) {
        const path = join(args.outDir, `shot-${shot}.png`);
        const png = await video.screenshot({ path, timeout: left() });
        const frame = await page.evaluate(() => {
          const v = window.sluicePlayer.video;
          const canvas = document.createElement("canvas");
          canvas.width = 160;
          canvas.height = 90;
          const ctx = canvas.getContext("2d", { willReadFrequently: true });
          ctx.drawImage(v, 0, 0, canvas.width, canvas.height);
          const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
          let h = 0x811c9dc5; // FNV-1a over the pixels
          for (let i = 0; i < data.length; i++) {
            h ^= data[i];
            h = Math.imul(h, 0x01000193) >>> 0;
          }
          return { hash: h.toString(16).padStart(8, "0"), currentTime: v.currentTime };
        });
        report.screenshots.push({
          path,
          sha256: createHash("sha256").update(png).digest("hex"),
          frameHash: frame.hash,
          currentTime: frame.currentTime,
        });
        shot += 1;
        nextShot += gap;
      }
      const latency = await page.evaluate(() => window.sluicePlayer.latency());
      if (typeof latency === "number") report.latency.push(Math.round(latency * 1000) / 1000);
      if (shot < shots) await sleep(Math.min(250, Math.max(0, nextShot - Date.now())));
      if (Date.now() > end + 2000) break;
    }
    const frames = new Set(report.screenshots.map((s) => s.frameHash));
    report.pictureChanged = frames.size > 1;
  }

  if (report.playing) {
    report.pageScreenshot = join(args.outDir, "page.png");
    await page.screenshot({ path: report.pageScreenshot, timeout: left() });
  }
  const info = await page.evaluate(() => {
    const p = window.sluicePlayer;
    return p
      ? { engine: p.engine(), state: p.state(), errors: p.errors(), stats: p.stats() }
      : null;
  });
  if (info) {
    report.engine = info.engine;
    report.state = info.state;
    report.stats = info.stats;
    for (const e of info.errors) report.errors.push(`player: ${e}`);
  } else {
    report.errors.push("window.sluicePlayer is missing");
  }
  await page.close();
} finally {
  // Leaves the browser running: its owner kills it by PID.
  await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(report) + "\n");
process.exit(0);
