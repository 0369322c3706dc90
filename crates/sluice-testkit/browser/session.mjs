// What play.mjs and page.mjs share: their JSON argument, playwright-core from the directory
// the Rust side installed it in, and the one deadline (timeoutMs) every wait is bounded by.
import { createRequire } from "node:module";
import { join } from "node:path";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Parses the arguments and arms the overall deadline: whatever hangs, `script` exits 3 a
// little after timeoutMs. `left()` is what remains of it, for each wait.
export function session(script) {
  const args = JSON.parse(process.argv[2]);
  const require = createRequire(join(args.playwright, "package.json"));
  const { chromium } = require("playwright-core");
  const started = Date.now();
  const left = () => Math.max(1, args.timeoutMs - (Date.now() - started));
  setTimeout(() => {
    process.stderr.write(`${script}: overall timeout\n`);
    process.exit(3);
  }, args.timeoutMs + 5000).unref();
  return { args, chromium, started, left };
}
