// N EventSource clients from the npm `eventsource` package on a stream whose events carry a
// number as their data (`data: n`). Each keeps, compactly, the number and the id of every event,
// the HTTP status of every connection attempt (through its own `fetch`) and the instance that
// answered it (an `X-Served-By` header the test's load balancer may add), every `open` and every
// `error` event with the wall-clock time (ms) and the last number received before it, and the
// readyState an error left: CONNECTING is a reconnect, CLOSED is the end.
import { EventSource } from "eventsource";
import { report } from "./common.mjs";

const [url, count] = [process.argv[2], Number(process.argv[3] || 1)];
const clients = [];
for (let i = 0; i < count; i++) {
  const state = { numbers: [], ids: [], others: [], statuses: [], servers: [], opened: [], errors: [], opens: 0, ready_state: 0 };
  const lastNumber = () => (state.numbers.length ? state.numbers[state.numbers.length - 1] : null);
  const fetchRecording = async (input, init) => {
    const response = await fetch(input, init);
    state.statuses.push(response.status);
    state.servers.push(response.headers.get("x-served-by"));
    return response;
  };
  const source = new EventSource(url, { fetch: fetchRecording });
  source.onopen = () => {
    state.opens += 1;
    state.ready_state = source.readyState;
    state.opened.push({ ms: Date.now(), after: lastNumber() });
  };
  source.onerror = (e) => {
    state.ready_state = source.readyState;
    state.errors.push({ ms: Date.now(), after: lastNumber(), ready_state: source.readyState,
                        code: e.code ?? null, message: e.message ?? null });
  };
  source.onmessage = (e) => {
    const n = Number(e.data);
    if (Number.isInteger(n)) {
      state.numbers.push(n);
      state.ids.push(e.lastEventId);
    } else {
      state.others.push({ type: e.type, id: e.lastEventId, data: e.data });
    }
  };
  source.addEventListener("gap", (e) => state.others.push({ type: e.type, id: e.lastEventId, data: e.data }));
  clients.push({ source, state });
}

const last = (c) => (c.numbers.length ? c.numbers[c.numbers.length - 1] : 0);
report(
  () => ({ clients: clients.map((c) => c.state) }),
  (s) => ({
    opened: s.clients.filter((c) => c.opens > 0).length,
    opens: s.clients.reduce((n, c) => n + c.opens, 0),
    closed: s.clients.filter((c) => c.ready_state === EventSource.CLOSED).length,
    min_last: Math.min(...s.clients.map(last)),
    max_last: Math.max(...s.clients.map(last)),
  }),
  async () => clients.forEach((c) => c.source.close()),
);
