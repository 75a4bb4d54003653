// The demo page as a user sees it: three tabs of `ssegate demo`'s page in Chromium (through
// playwright-core), waiting for what the page promises and clicking its buttons. Prints one
// line per step ("ok: ..."); on a failure, the reason and the page's logs, and exits 1.
// Usage: node demo.mjs URL SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 930 } });
const pages = [];
const resumes = []; // the Last-Event-ID headers of the EventSource requests of the first tab
for (let i = 0; i < 3; i++) {
  const page = await context.newPage();
  if (i === 0) {
    page.on("request", async (request) => {
      if (request.resourceType() !== "eventsource") return;
      const id = (await request.allHeaders())["last-event-id"];
      if (id) resumes.push(id);
    });
  }
  await page.goto(url);
  pages.push(page);
}
const page = pages[0];
const text = (selector) => page.locator(selector).first().innerText();
const logOf = (column) => page.locator(`#${column}-log li`).allInnerTexts();

async function step(what, check, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    let value;
    try { value = await check(); } catch (error) { value = false; }
    if (value) { console.log(`ok: ${what}`); return value; }
    if (Date.now() > deadline) {
      console.log(`FAILED: ${what} (within ${seconds} s)`);
      console.log("through ssegate:\n  " + (await logOf("via")).join("\n  "));
      console.log("directly:\n  " + (await logOf("direct")).join("\n  "));
      await page.screenshot({ path: screenshot });
      await browser.close();
      process.exit(1);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
const number = async (selector) => Number(await text(selector));
const has = async (column, kind, pattern) =>
  (await page.locator(`#${column}-log li.${kind}`).allInnerTexts()).some((t) => pattern.test(t));

await step("events arrive through ssegate with ids, and directly without",
  async () => (await number("#via-events")) >= 2 && (await number("#direct-events")) >= 2
    && /^\S+-\d+$/.test(await text("#via-last-id")) && (await text("#direct-last-id")) === "none", 15);
await step("fan-out: 3 tabs are 3 clients of ssegate and 1 connection to the app; 3 direct readers are 3",
  async () => (await text("#clients")) === "3" && (await text("#upstreams")) === "1"
    && (await text("#direct-readers")) === "3", 15);
await step("heartbeats while the app is quiet",
  () => has("via", "heartbeat", /heartbeat: nothing from the app/), 35);
await step("the app ends its stream: a marker through ssegate, an error directly",
  async () => (await has("via", "drop", /the app ended its stream/))
    && (await has("direct", "error", /connection lost/)), 30);
// The app is quiet for 5 s every 30 s: wait until it speaks again, so the stop below loses events.
const eventsInQuiet = await number("#via-events");
await step("the app speaks again after its quiet stretch",
  async () => (await number("#via-events")) > eventsInQuiet, 10);
await step("through ssegate nothing was lost or repeated so far",
  async () => (await text("#via-lost")) === "0" && (await text("#via-repeated")) === "0", 1);

await page.click("#cut");
const resumed = await step("cut my connection: the browser reconnects with Last-Event-ID and resumes with nothing lost",
  async () => (await has("via", "cut", /cut: the connection/))
    && (await page.locator("#via-log li.resume").allInnerTexts()).map((t) =>
      /resumed after (\S+): \d+ events? sent while away replayed by ssegate; nothing lost, nothing repeated/.exec(t))
      .find(Boolean), 15);
await step(`the reconnect carried the Last-Event-ID header ${resumed[1]}, the last id the page had seen`,
  async () => resumes.includes(resumed[1]), 1);

const eventsBeforeStop = await number("#via-events");
await page.click("#stop");
await step("stop the app for 5 s: a gap event says what was lost, and the stream goes on",
  async () => (await has("via", "stop", /the app stops for 5 s/))
    && (await has("via", "gap", /gap event from ssegate/))
    && (await has("via", "gap", /lost while the app was unreachable, as the gap event said/))
    && (await number("#via-gaps")) >= 1, 20);
await step("after the stop, events flow again through ssegate",
  async () => (await number("#via-events")) > eventsBeforeStop + 2, 10);
await step("through ssegate: no loss without notice, nothing repeated, one connection error (the cut)",
  async () => (await text("#via-lost")) === "0" && (await text("#via-repeated")) === "0"
    && (await page.locator("#via-log li.error").count()) === 1, 1);
await step("directly: events lost without notice, and connection errors",
  async () => (await number("#direct-lost")) > 0 && (await number("#direct-errors")) >= 2, 10);
await step("the other tabs resumed too, with nothing lost",
  async () => {
    for (const other of pages.slice(1)) {
      if ((await other.locator("#via-lost").innerText()) !== "0") return false;
      if ((await other.locator("#via-log li.resume").count()) < 1) return false;
    }
    return true;
  }, 5);
await page.screenshot({ path: screenshot });
console.log(`ok: screenshot ${screenshot}`);
await browser.close();
