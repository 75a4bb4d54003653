"""End to end, plain requests: compression of what a Starlette app serves (httpx decodes gzip and,
with the brotli package, br, as a browser would), and what the app is told of the client
(X-Real-IP, Forwarded, and uvicorn's own reading of X-Forwarded-For)."""

import json
import os
import sys

import httpx
import pytest
from httpx_sse import connect_sse

from conftest import HERE, Proc, Ssegate, free_port, wait_port

sys.path.insert(0, os.path.join(HERE, "apps"))
from pages_app import items, page, piece  # noqa: E402


class PagesApp:
    def __init__(self, procs, pieces=4):
        self.port = free_port()
        Proc(procs, "pages-app", [sys.executable, os.path.join(HERE, "apps", "pages_app.py"),
                                  "--port", str(self.port), "--pieces", str(pieces)])
        wait_port(self.port)

    def route(self, path="/", extra=""):
        return f'[[route]]\npath = "{path}"\nupstream = "http://127.0.0.1:{self.port}"\n{extra}\n'


def test_pages_and_json_are_compressed_by_accept_encoding(procs):
    app = PagesApp(procs)
    proxy = Ssegate(procs, app.route(extra='compress = ["br", "gzip"]'))
    with httpx.Client(timeout=10) as client:
        for accept, coding in [("gzip", "gzip"), ("gzip, deflate, br", "br"), ("br;q=0, gzip", "gzip"),
                               ("identity", None)]:
            headers = {"accept-encoding": accept}
            html = client.get(proxy.url("/page.html"), headers=headers)
            api = client.get(proxy.url("/api/items"), headers=headers)
            for response in (html, api):
                assert response.status_code == 200
                assert response.headers.get("content-encoding") == coding, (accept, response.headers)
                assert response.headers["vary"].lower() == "accept-encoding"
                if coding:
                    assert "content-length" not in response.headers
                    assert response.num_bytes_downloaded < len(response.content) / 3, accept
            # httpx decoded them: exactly what the app rendered.
            assert html.text == page()
            assert api.json() == items()

        # The app gzips this one itself (GZipMiddleware): passed on as it is, never twice.
        gzipped = client.get(proxy.url("/gzipped/items"), headers={"accept-encoding": "gzip, br"})
        assert gzipped.headers["content-encoding"] == "gzip"
        assert gzipped.json() == items(), "one decoding gives the JSON: it was encoded once"

    # Off (the default): the app's bytes as sent.
    faithful = Ssegate(procs, app.route())
    plain = httpx.get(faithful.url("/page.html"), headers={"accept-encoding": "gzip, br"})
    assert "content-encoding" not in plain.headers and "vary" not in plain.headers
    assert plain.num_bytes_downloaded == len(page())


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_slow_page_arrives_decodable_piece_by_piece(procs, coding):
    """Each piece the app renders reaches httpx, decoded, before the app renders the next."""
    app = PagesApp(procs, pieces=4)
    proxy = Ssegate(procs, app.route(extra='compress = ["br", "gzip"]'))
    received = ""
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", proxy.url("/slow"), headers={"accept-encoding": coding}) as response:
            assert response.headers["content-encoding"] == coding
            chunks = response.iter_text()
            for n in range(4):
                expected = "".join(piece(k) for k in range(n + 1))
                while len(received) < len(expected):
                    received += next(chunks)  # a stall here is a timeout: the piece was held
                assert received == expected
                if n < 3:
                    httpx.post(f"http://127.0.0.1:{app.port}/slow/next")
            assert list(chunks) == []


def test_a_passed_through_event_stream_is_never_compressed(procs):
    app = PagesApp(procs, pieces=3)
    proxy = Ssegate(procs, app.route(extra='sse = "never"\ncompress = ["br", "gzip"]'))
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, "GET", proxy.url("/feed"), headers={"accept-encoding": "gzip, br"}) as source:
            assert "content-encoding" not in source.response.headers
            events = source.iter_sse()
            for n in range(3):
                assert next(events).data == str(n)  # each before the app sends the next
                if n < 2:
                    httpx.post(f"http://127.0.0.1:{app.port}/slow/next")


def client_from(address):
    """An httpx client whose connections come from `address` (any of 127.0.0.0/8)."""
    return httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address=address))


def test_the_app_is_told_the_client_address_and_never_a_clients_claim(procs):
    app = PagesApp(procs)
    proxy = Ssegate(procs, 'trusted_proxies = ["127.0.0.1"]\n'
                    + app.route("/", 'client_headers = ["x-real-ip", "forwarded"]'))
    host = f"127.0.0.1:{proxy.port}"
    lies = {"x-real-ip": "6.6.6.6", "forwarded": 'for="6.6.6.6";proto=https', "x-forwarded-for": "6.6.6.6"}
    with client_from("127.0.0.5") as client:
        seen = client.get(proxy.url("/whoami"), headers=lies).json()
    assert seen["x_real_ip"] == ["127.0.0.5"]
    assert seen["forwarded"] == [f'for=127.0.0.5;host="{host}";proto=http']
    assert seen["x_forwarded_for"] == ["6.6.6.6, 127.0.0.5"]
    assert seen["uvicorn_client"] == "127.0.0.5", "uvicorn's reading of X-Forwarded-For agrees"

    # Through a trusted balancer (127.0.0.1) that names the client in X-Forwarded-For.
    with client_from("127.0.0.1") as balancer:
        seen = balancer.get(proxy.url("/whoami"), headers={
            "x-forwarded-for": "6.6.6.6, 198.51.100.7", "x-real-ip": "6.6.6.6"}).json()
    assert seen["x_real_ip"] == ["198.51.100.7"]
    assert seen["forwarded"] == [f'for=198.51.100.7, for=127.0.0.1;host="{host}";proto=http']
    assert seen["uvicorn_client"] == "198.51.100.7"

    # A subscription: the stream's upstream request says the same of the client that opened it.
    with client_from("127.0.0.6") as client:
        with connect_sse(client, "GET", proxy.url("/whoami/events"), headers=lies) as source:
            seen = json.loads(next(event for event in source.iter_sse() if event.data).data)
    assert seen["x_real_ip"] == ["127.0.0.6"]
    assert seen["forwarded"] == [f'for=127.0.0.6;host="{host}";proto=http']
    assert seen["uvicorn_client"] == "127.0.0.6"


def test_by_default_a_clients_claims_are_removed_and_nothing_added(procs):
    app = PagesApp(procs)
    proxy = Ssegate(procs, app.route())
    with client_from("127.0.0.5") as client:
        seen = client.get(proxy.url("/whoami"), headers={"x-real-ip": "6.6.6.6", "forwarded": "for=6.6.6.6"}).json()
    assert seen["x_real_ip"] == [] and seen["forwarded"] == []
    assert seen["uvicorn_client"] == "127.0.0.5"
