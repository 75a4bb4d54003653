// N EventSource clients from the npm `eventsource` package, each recording what it gets.
import { EventSource } from "eventsource";
import { report } from "./common.mjs";

const [url, count] = [process.argv[2], Number(process.argv[3] || 1)];
const clients = [];
for (let i = 0; i < count; i++) {
  const state = { events: [], opens: 0, errors: 0 };
  const source = new EventSource(url);
  source.onopen = () => { state.opens += 1; };
  source.onerror = () => { state.errors += 1; };
  const keep = (e) => state.events.push({ type: e.type, id: e.lastEventId, data: e.data });
  source.onmessage = keep;
  source.addEventListener("gap", keep);
  clients.push({ source, state });
}
report(
  () => ({ clients: clients.map((c) => c.state) }),
  (s) => ({
    min_events: Math.min(...s.clients.map((c) => c.events.length)),
    opened: s.clients.filter((c) => c.opens > 0).length,
    opens: s.clients.reduce((n, c) => n + c.opens, 0),
  }),
  async () => clients.forEach((c) => c.source.close()),
);
