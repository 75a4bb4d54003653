// A deliberately naive SSE app on Express: the same endpoints and behaviour as
// starlette_app.py (bare `data: {"seq": n}` lines, /emit, /close, /stats, a ticker that only
// advances while someone listens, an optional stream lifetime). --cors ORIGIN: the `cors`
// package, allowing that origin with credentials.
import cors from "cors";
import express from "express";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    port: { type: "string" },
    interval: { type: "string", default: "0" },
    lifetime: { type: "string", default: "0" },
    cors: { type: "string" },
  },
});
const page = readFileSync(new URL("./page.html", import.meta.url), "utf8");
const streams = new Set();
let seq = 0;
let opened = 0;

function emit(count) {
  for (let i = 0; i < count; i++) {
    if (streams.size === 0) return;
    seq += 1;
    for (const res of streams) res.write(`data: {"seq": ${seq}}\n\n`);
  }
}

const app = express();
if (values.cors) app.use(cors({ origin: values.cors, credentials: true }));
app.use(express.text({ type: "*/*" }));
app.get("/events", (req, res) => {
  res.writeHead(200, { "content-type": "text/event-stream" });
  res.flushHeaders();
  streams.add(res);
  opened += 1;
  const lifetime = Number(values.lifetime) * 1000;
  // A worker timeout ends the stream: it leaves the set first, so no event is written to a
  // response that is ending (and so lost by the app itself).
  const timer = lifetime ? setTimeout(() => { streams.delete(res); res.end(); }, lifetime) : null;
  res.on("close", () => {
    streams.delete(res);
    if (timer) clearTimeout(timer);
  });
});
app.post("/emit", (req, res) => {
  emit(Number(req.query.count || 1));
  res.json({ seq });
});
app.post("/close", (req, res) => {
  for (const s of streams) s.end();
  res.json({ closed: true });
});
app.get("/stats", (req, res) => res.json({ open_streams: streams.size, streams_opened: opened, seq }));
app.get("/", (req, res) => res.type("html").send(page));
app.all("/api/echo", (req, res) => res.json({ method: req.method, body: typeof req.body === "string" ? req.body : "", app: "express" }));

const interval = Number(values.interval) * 1000;
if (interval) setInterval(() => emit(1), interval);
app.listen(Number(values.port), "127.0.0.1");
