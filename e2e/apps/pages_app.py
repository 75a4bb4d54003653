"""A Starlette/uvicorn app of the kind ssegate passes plain requests to: pages and JSON it never
compresses itself (no GZipMiddleware), one path that does, a page it renders slowly, an event
stream, and pages that say who the app thinks the client is.

- GET /page.html, /api/items: an HTML page, a JSON answer (tens of KiB).
- GET /gzipped/items: the same JSON through Starlette's GZipMiddleware (the app encodes it).
- GET /slow: an HTML page in --pieces pieces; each after POST /slow/next (the first at once).
- GET /feed: an event stream, `data: n` for n in 0..3, each after POST /slow/next.
- GET /whoami: JSON of X-Real-IP, Forwarded, X-Forwarded-For as received, and the client
  address uvicorn made of X-Forwarded-For (--proxy-headers, trusting 127.0.0.1).
- GET /whoami/events: an event stream whose one event is that JSON; it then stays open.

The bodies are functions of nothing: a test builds the same ones with `page()` and `items()`.
"""

import argparse
import asyncio
import json

import uvicorn
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route


def items():
    return [{"id": n, "name": f"item {n}", "tags": ["a", "b"], "price": n * 3 + 0.5} for n in range(400)]


def page():
    rows = "".join(f"<tr><td>{n}</td><td>item {n}</td><td>{n * 3}.50</td></tr>\n" for n in range(400))
    return f"<!doctype html><html><body><table>\n{rows}</table></body></html>\n"


def piece(n):
    return f"<p>piece {n} of a page rendered slowly</p>\n" * 30


def build(pieces):
    next_piece = asyncio.Event()

    async def slow_next(request):
        next_piece.set()
        return JSONResponse({"ok": True})

    async def in_turns(make):
        for n in range(pieces):
            if n:
                await next_piece.wait()
                next_piece.clear()
            yield make(n)

    async def slow(request):
        return StreamingResponse(in_turns(piece), media_type="text/html")

    async def feed(request):
        return StreamingResponse(in_turns(lambda n: f"data: {n}\n\n"), media_type="text/event-stream")

    def seen(request):
        return {
            "x_real_ip": request.headers.getlist("x-real-ip"),
            "forwarded": request.headers.getlist("forwarded"),
            "x_forwarded_for": request.headers.getlist("x-forwarded-for"),
            "uvicorn_client": request.client.host if request.client else None,
        }

    async def whoami(request):
        return JSONResponse(seen(request))

    async def whoami_events(request):
        async def stream():
            yield f"data: {json.dumps(seen(request))}\n\n"
            while not await request.is_disconnected():
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def items_json(request):
        return JSONResponse(items())

    gzipped = Starlette(routes=[Route("/items", items_json)])
    gzipped.add_middleware(GZipMiddleware, minimum_size=100)
    return Starlette(routes=[
        Route("/page.html", lambda request: HTMLResponse(page())),
        Route("/api/items", items_json),
        Mount("/gzipped", app=gzipped),
        Route("/slow", slow),
        Route("/slow/next", slow_next, methods=["POST"]),
        Route("/feed", feed),
        Route("/whoami", whoami),
        Route("/whoami/events", whoami_events),
    ])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pieces", type=int, default=4)
    args = parser.parse_args()
    # uvicorn's own reading of X-Forwarded-For, trusting ssegate on loopback: the address it
    # makes must be the one ssegate sends as X-Real-IP.
    uvicorn.run(build(args.pieces), host="127.0.0.1", port=args.port, log_level="warning",
                proxy_headers=True, forwarded_allow_ips="127.0.0.1")


if __name__ == "__main__":
    main()
