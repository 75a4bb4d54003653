"""A deliberately naive SSE app on Starlette/uvicorn, as the end-to-end tests want it.

- GET /events: bare `data: {"seq": n}` lines (no id, no retry, no heartbeat); the response ends
  after --lifetime seconds when set (a worker timeout).
- POST /emit?count=k: sends the next k events to every open stream (--ids: advances the counter).
- POST /close: ends every open stream now.
- A ticker (--interval, 0 = off) sends an event while at least one stream is open; the sequence
  only advances when someone receives it.
- GET /stats: open SSE streams. GET /: a page with an EventSource. /api/echo: JSON echo.
- --cors ORIGIN: Starlette's own CORS middleware, allowing that origin with credentials.
- --uds PATH: serves on that Unix socket too (the TCP port stays, for the test's own calls).
- --tls-cert FILE --tls-key FILE: serves HTTPS on the port instead of HTTP.
- GET /api/where: where the request came in: the listener (a socket's path), scheme, HTTP
  version and Host.
- --ids: a well-behaved app instead, numbering its events itself: a global counter ticks every
  --interval whether anyone listens or not, events are `id: n` / `data: n`, and a stream starts
  after its Last-Event-ID (or after the latest number without one), so it serves any
  history again. /stats also tells the most streams ever open at once and the Last-Event-ID
  of every stream request.
"""

import argparse
import asyncio
import json
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

PAGE = open(__file__.replace("starlette_app.py", "page.html")).read()


class State:
    def __init__(self, lifetime, ids=False):
        self.lifetime = lifetime
        self.ids = ids
        # Open SSE streams: a queue each (naive), or a Numbered each (--ids).
        self.streams = set()
        self.seq = 0
        self.opened = 0
        self.most_open = 0
        self.last_event_ids = []
        self.ticked = asyncio.Event()

    def open(self, stream):
        self.streams.add(stream)
        self.opened += 1
        self.most_open = max(self.most_open, len(self.streams))

    def wake(self):
        """--ids: every numbered stream looks at the counter (and its own `closed`) again."""
        self.ticked.set()
        self.ticked = asyncio.Event()

    def emit(self, count):
        if self.ids:
            self.seq += count
            self.wake()
            return
        for _ in range(count):
            if not self.streams:
                return
            self.seq += 1
            line = f'data: {{"seq": {self.seq}}}\n\n'
            for queue in self.streams:
                queue.put_nowait(line)

    def close(self):
        for stream in self.streams:
            if self.ids:
                stream.closed = True
            else:
                stream.put_nowait(None)
        if self.ids:
            self.wake()


class Numbered:
    """An open stream of the --ids mode."""

    closed = False


def build(state, cors=None):
    async def numbered_events(request: Request):
        last = request.headers.get("last-event-id")
        state.last_event_ids.append(last)
        stream = Numbered()
        state.open(stream)
        sent = int(last) if last is not None and last.isdigit() else state.seq

        async def body():
            nonlocal sent
            try:
                while not stream.closed:
                    woken = state.ticked
                    while sent < state.seq:
                        sent += 1
                        yield f"id: {sent}\ndata: {sent}\n\n"
                    await woken.wait()
            finally:
                state.streams.discard(stream)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def events(request: Request):
        queue = asyncio.Queue()
        state.open(queue)

        async def body():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + state.lifetime if state.lifetime else None
            try:
                while True:
                    timeout = None if deadline is None else max(0.0, deadline - loop.time())
                    try:
                        line = await asyncio.wait_for(queue.get(), timeout)
                    except asyncio.TimeoutError:
                        # A worker timeout ends the stream. It leaves the set first and sends
                        # what it was given: an event put in as the timeout fired (wait_for may
                        # cancel the get just after the put) is not lost by the app itself.
                        state.streams.discard(queue)
                        while not queue.empty():
                            line = queue.get_nowait()
                            if line is None:
                                return
                            yield line
                        return
                    if line is None:
                        return
                    yield line
            finally:
                state.streams.discard(queue)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def emit(request: Request):
        state.emit(int(request.query_params.get("count", "1")))
        return JSONResponse({"seq": state.seq})

    async def close(request: Request):
        state.close()
        return JSONResponse({"closed": True})

    async def stats(request: Request):
        return JSONResponse({"open_streams": len(state.streams), "streams_opened": state.opened, "seq": state.seq,
                             "most_open": state.most_open, "last_event_ids": state.last_event_ids})

    async def page(request: Request):
        return HTMLResponse(PAGE)

    async def where(request: Request):
        return JSONResponse({"server": request.scope.get("server"), "scheme": request.url.scheme,
                             "http_version": request.scope.get("http_version"),
                             "host": request.headers.get("host")})

    async def echo(request: Request):
        body = await request.body()
        return JSONResponse({"method": request.method, "body": body.decode(), "app": "starlette"})

    middleware = []
    if cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=[cors], allow_credentials=True,
                                     allow_methods=["*"], allow_headers=["*"]))
    return Starlette(middleware=middleware, routes=[
        Route("/events", numbered_events if state.ids else events),
        Route("/emit", emit, methods=["POST"]),
        Route("/close", close, methods=["POST"]),
        Route("/stats", stats),
        Route("/", page),
        Route("/api/echo", echo, methods=["GET", "POST"]),
        Route("/api/where", where),
    ])


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--lifetime", type=float, default=0.0)
    parser.add_argument("--cors", default=None)
    parser.add_argument("--ids", action="store_true")
    parser.add_argument("--uds", default=None)
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    args = parser.parse_args()
    state = State(args.lifetime, args.ids)
    if args.interval:
        async def tick():
            while True:
                await asyncio.sleep(args.interval)
                state.emit(1)
        asyncio.get_running_loop().create_task(tick())
    tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key} if args.tls_cert else {}
    config = uvicorn.Config(build(state, args.cors), host="127.0.0.1", port=args.port, log_level="warning", **tls)
    if not args.uds:
        await uvicorn.Server(config).serve()
        return
    # One server on two listeners: the TCP port and the Unix socket (as `uvicorn --uds` binds it).
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", args.port))
    uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    uds.bind(args.uds)
    await uvicorn.Server(config).serve(sockets=[tcp, uds])


if __name__ == "__main__":
    asyncio.run(main())
