// A real browser: Debian's Chromium driven by playwright-core, opening a page whose EventSource
// records every event it gets (see apps/page.html).
import { chromium } from "playwright-core";
import { report } from "./common.mjs";

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync",
         ...(process.env.BROWSER_ARGS || "").split(" ").filter(Boolean)],
});
const page = await browser.newPage();
await page.goto(url);
report(
  () => page.evaluate(() => window.__sse),
  (s) => ({ events: s.events.length, opens: s.opens, errors: s.errors,
            receiving: s.per_source.filter((n) => n > 0).length }),
  () => browser.close(),
);
