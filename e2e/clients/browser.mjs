// A real browser: Debian's Chromium driven by playwright-core, opening a page whose EventSource
// records every event it gets (see apps/page.html). The HTTP status of every EventSource request
// the page makes is kept too (`statuses`), and the instance that answered it when a load balancer
// says so in an `X-Served-By` header (`servers`).
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
const [statuses, servers] = [[], []];
page.on("response", (response) => {
  if (response.request().resourceType() !== "eventsource") return;
  statuses.push(response.status());
  servers.push(response.headers()["x-served-by"] ?? null);
});
await page.goto(url);
report(
  async () => ({ ...(await page.evaluate(() => window.__sse)), statuses, servers }),
  (s) => ({ events: s.events.length, opens: s.opens, errors: s.errors,
            receiving: s.per_source.filter((n) => n > 0).length }),
  () => browser.close(),
);
