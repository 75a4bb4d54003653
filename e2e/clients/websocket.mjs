// Chromium (playwright-core) opens URL, a page whose WebSocket echoes through ssegate (see
// apps/ws_page.html), and prints what the page saw as one JSON line, with the HTTP version of
// the page's own request. Usage: node websocket.mjs URL
import { chromium } from "playwright-core";

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--ignore-certificate-errors"],
});
const page = await browser.newPage();
const response = await page.goto(url);
const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
await page.waitForFunction(() => window.__ws.close !== null, null, { timeout: 20000 }).catch(() => {});
const seen = await page.evaluate(() => window.__ws);
console.log(JSON.stringify({ status: response.status(), protocol, ...seen }));
await browser.close();
