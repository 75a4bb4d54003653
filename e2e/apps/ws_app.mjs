// A WebSocket app on the `ws` package: `/` is a page (apps/ws_page.html) whose WebSocket to
// `/socket` the browser opens; every message comes back as it came, pings are answered by the
// library, a close is answered with its code. Logs one JSON line per connection it accepted.
// Usage: node ws_app.mjs PORT
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { WebSocketServer } from "ws";

const port = Number(process.argv[2]);
const page = readFileSync(new URL("./ws_page.html", import.meta.url));
const server = createServer((request, response) => {
  if (request.url === "/") {
    response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    response.end(page);
  } else {
    response.writeHead(404).end();
  }
});
const sockets = new WebSocketServer({ server, path: "/socket", maxPayload: 16 << 20 });
sockets.on("connection", (socket, request) => {
  console.log(JSON.stringify({ connection: request.url, forwarded_for: request.headers["x-forwarded-for"] ?? null }));
  socket.on("message", (data, binary) => socket.send(data, { binary }));
});
server.listen(port, "127.0.0.1");
