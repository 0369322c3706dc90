// Drives a page in a running headless Chromium through a list of steps and reports what
// each found.
//
//   node page.mjs '{"playwright": DIR, "cdp": URL, "outDir": DIR, "timeoutMs": N,
//                   "steps": [STEP, ...]}'
//
// Steps (run in order; the first that fails ends the run, and is reported):
//   {"goto": URL}                          open URL (waits for "load")
//   {"viewport": [W, H]}                   resize the page
//   {"waitFor": EXPR}                      until the JS expression is truthy (every 100 ms)
//   {"eval": EXPR}                         the expression's JSON value goes to `values`
//   {"fill": [SELECTOR, TEXT]}             type into an input
//   {"click": SELECTOR}
//   {"screenshot": NAME}                   the whole page as outDir/NAME.png; its decoded
//                                          pixels are measured (in a blank page) into `shots`
//
// Connects over CDP (the Rust side starts the browser, and kills it by PID). Prints one JSON
// object on stdout; exits non-zero only when it could not run at all. Every wait is bounded
// by timeoutMs.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { session, sleep } from "./session.mjs";

const { args, chromium, left } = session("page.mjs");

const report = { completed: 0, failure: null, values: [], shots: [], errors: [] };

// Width, height and how varied the pixels are, measured by the browser's own PNG decoder.
async function measure(blank, png) {
  return blank.evaluate(async (b64) => {
    const blob = await (await fetch("data:image/png;base64," + b64)).blob();
    const bitmap = await createImageBitmap(blob);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    let sum = 0;
    let sumSq = 0;
    const colors = new Set();
    const pixels = data.length / 4;
    for (let i = 0; i < data.length; i += 4) {
      const luma = 0.2126 * data[i] + 0.7152 * data[i + 1] + 0.0722 * data[i + 2];
      sum += luma;
      sumSq += luma * luma;
      // Colours quantised to 4 bits a channel: anti-aliasing alone adds few.
      colors.add(((data[i] >> 4) << 8) | ((data[i + 1] >> 4) << 4) | (data[i + 2] >> 4));
    }
    const mean = sum / pixels;
    return {
      width: bitmap.width,
      height: bitmap.height,
      meanLuma: mean,
      stddevLuma: Math.sqrt(Math.max(0, sumSq / pixels - mean * mean)),
      colors: colors.size,
    };
  }, png.toString("base64"));
}

const browser = await chromium.connectOverCDP(args.cdp, { timeout: left() });
try {
  const context = browser.contexts()[0] ?? (await browser.newContext());
  const page = await context.newPage();
  const blank = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      report.errors.push(`console.${msg.type()}: ${msg.text()}`);
    }
  });
  page.on("pageerror", (err) => report.errors.push(`pageerror: ${err.message}`));
  page.on("requestfailed", (req) => {
    report.errors.push(`requestfailed: ${req.url()} ${req.failure()?.errorText ?? ""}`);
  });
  mkdirSync(args.outDir, { recursive: true });
  for (const step of args.steps) {
    try {
      if (step.goto !== undefined) {
        await page.goto(step.goto, { waitUntil: "load", timeout: left() });
      } else if (step.viewport !== undefined) {
        await page.setViewportSize({ width: step.viewport[0], height: step.viewport[1] });
      } else if (step.waitFor !== undefined) {
        // Polled from here: waitForFunction's in-page polling compiles the expression with
        // eval, which a page's Content-Security-Policy may (rightly) forbid.
        while (!(await page.evaluate(step.waitFor))) {
          if (left() <= 1) throw new Error(`timed out waiting for ${step.waitFor}`);
          await sleep(100);
        }
      } else if (step.eval !== undefined) {
        report.values.push(await page.evaluate(step.eval));
      } else if (step.fill !== undefined) {
        await page.fill(step.fill[0], step.fill[1], { timeout: left() });
      } else if (step.click !== undefined) {
        await page.click(step.click, { timeout: left() });
      } else if (step.screenshot !== undefined) {
        const path = join(args.outDir, `${step.screenshot}.png`);
        const png = await page.screenshot({ path, fullPage: true, timeout: left() });
        report.shots.push({ name: step.screenshot, path, ...(await measure(blank, png)) });
      } else {
        throw new Error(`unknown step ${JSON.stringify(step)}`);
      }
      report.completed += 1;
    } catch (e) {
      report.failure = `step ${report.completed} ${JSON.stringify(step)}: ${e.message.split("\n")[0]}`;
      break;
    }
  }
  await blank.close();
  await page.close();
} finally {
  await browser.close().catch(() => {});
}
process.stdout.write(JSON.stringify(report) + "\n");
process.exit(0);
