"""A deliberately naive SSE app on Starlette/uvicorn, as the end-to-end tests want it.

- GET /events: bare `data: {"seq": n}` lines (no id, no retry, no heartbeat); the response ends
  after --lifetime seconds when set (a worker timeout).
- POST /emit?count=k: sends the next k events to every open stream.
- POST /close: ends every open stream now.
- A ticker (--interval, 0 = off) sends an event while at least one stream is open; the sequence
  only advances when someone receives it.
- GET /stats: open SSE streams. GET /: a page with an EventSource. /api/echo: JSON echo.
- --cors ORIGIN: Starlette's own CORS middleware, allowing that origin with credentials.
"""

import argparse
import asyncio
import json

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

PAGE = open(__file__.replace("starlette_app.py", "page.html")).read()


class State:
    def __init__(self, lifetime):
        self.lifetime = lifetime
        self.streams = set()
        self.seq = 0
        self.opened = 0

    def emit(self, count):
        for _ in range(count):
            if not self.streams:
                return
            self.seq += 1
            line = f'data: {{"seq": {self.seq}}}\n\n'
            for queue in self.streams:
                queue.put_nowait(line)

    def close(self):
        for queue in self.streams:
            queue.put_nowait(None)


def build(state, cors=None):
    async def events(request: Request):
        queue = asyncio.Queue()
        state.streams.add(queue)
        state.opened += 1

        async def body():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + state.lifetime if state.lifetime else None
            try:
                while True:
                    timeout = None if deadline is None else max(0.0, deadline - loop.time())
                    try:
                        line = await asyncio.wait_for(queue.get(), timeout)
                    except asyncio.TimeoutError:
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
        return JSONResponse({"open_streams": len(state.streams), "streams_opened": state.opened, "seq": state.seq})

    async def page(request: Request):
        return HTMLResponse(PAGE)

    async def echo(request: Request):
        body = await request.body()
        return JSONResponse({"method": request.method, "body": body.decode(), "app": "starlette"})

    middleware = []
    if cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=[cors], allow_credentials=True,
                                     allow_methods=["*"], allow_headers=["*"]))
    return Starlette(middleware=middleware, routes=[
        Route("/events", events),
        Route("/emit", emit, methods=["POST"]),
        Route("/close", close, methods=["POST"]),
        Route("/stats", stats),
        Route("/", page),
        Route("/api/echo", echo, methods=["GET", "POST"]),
    ])


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--lifetime", type=float, default=0.0)
    parser.add_argument("--cors", default=None)
    args = parser.parse_args()
    state = State(args.lifetime)
    if args.interval:
        async def tick():
            while True:
                await asyncio.sleep(args.interval)
                state.emit(1)
        asyncio.get_running_loop().create_task(tick())
    config = uvicorn.Config(build(state, args.cors), host="127.0.0.1", port=args.port, log_level="warning")
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    asyncio.run(main())
