"""End to end: real browsers, real clients and real app frameworks around the real ssegate
binary, with connections cut on purpose. Each scenario asserts the exact sequence of `seq`
values a client collected."""

import json
import os
import socket
import subprocess
import time

import httpx
import pytest
from httpx_sse import connect_sse

from conftest import HERE, App, Proc, Ssegate, browser, eventsource, eventually, free_port, seqs, wait_port
from relay import Relay


def route(app, extra=""):
    return (f'[[route]]\npath = "/events"\nupstream = "http://127.0.0.1:{app.port}"\n{extra}\n'
            f'[[route]]\npath = "/"\nupstream = "http://127.0.0.1:{app.port}"\n')


def test_browser_survives_a_load_balancer_idle_timeout(procs):
    """The relay cuts connections idle for 2 s; heartbeats every second keep this one alive
    through 6 s of silence from the app."""
    app = App(procs, "starlette")
    proxy = Ssegate(procs, '[defaults]\nheartbeat = "1s"\n' + route(app))
    relay = Relay(proxy.port, idle_timeout=2.0)
    try:
        # A connection with nothing on it, to show the relay does cut idle ones.
        idle = socket.create_connection(("127.0.0.1", relay.port))
        chrome = browser(procs, f"http://127.0.0.1:{relay.port}/")
        chrome.wait("the EventSource to open", lambda s: s.get("opens") == 1)
        app.wait_streams(1)
        app.emit(3)
        chrome.wait("3 events", lambda s: s.get("events") == 3)
        time.sleep(6)  # the app is silent: this is the scenario, not a synchronisation
        app.emit(3)
        chrome.wait("6 events", lambda s: s.get("events") == 6)
        final = chrome.final()
        assert seqs(final["events"]) == [1, 2, 3, 4, 5, 6]
        assert final["opens"] == 1, "never reconnected"
        assert relay.cut_for_idle >= 1, "the relay cut the idle connection meanwhile"
        idle.close()
    finally:
        relay.close()


def test_browser_resumes_without_gap_after_its_connection_is_cut(procs):
    app = App(procs, "starlette")
    proxy = Ssegate(procs, '[defaults]\nretry = "300ms"\n' + route(app))
    relay = Relay(proxy.port)
    try:
        chrome = browser(procs, f"http://127.0.0.1:{relay.port}/")
        chrome.wait("the EventSource to open", lambda s: s.get("opens") == 1)
        app.wait_streams(1)
        app.emit(3)
        chrome.wait("3 events", lambda s: s.get("events") == 3)
        relay.cut_all()
        # Sent while the browser is away: kept in ssegate's buffer.
        app.emit(3)
        chrome.wait("the browser to reconnect by itself", lambda s: s.get("opens") == 2)
        chrome.wait("the missed events", lambda s: s.get("events") == 6)
        app.emit(3)
        chrome.wait("9 events", lambda s: s.get("events") == 9)
        final = chrome.final()
        assert seqs(final["events"]) == list(range(1, 10)), "no gap, no duplicate"
        ids = [e["id"] for e in final["events"]]
        assert len(set(ids)) == 9 and all(ids), ids
    finally:
        relay.close()


@pytest.mark.parametrize("kind", ["starlette", "express"])
def test_app_worker_timeouts_are_invisible(procs, kind):
    """The app ends its stream every 2 s; for 10 s the browser and npm clients see one
    continuous sequence and never reconnect."""
    app = App(procs, kind, interval=0.1, lifetime=2.0)
    proxy = Ssegate(procs, '[defaults]\nreconnect_initial = "50ms"\n' + route(app))
    chrome = browser(procs, proxy.url("/"))
    npm = eventsource(procs, proxy.url("/events"), 3)
    chrome.wait("the browser to open", lambda s: s.get("opens") == 1)
    npm.wait("the npm clients to open", lambda s: s.get("opened") == 3)
    time.sleep(10)  # five of the app's stream lifetimes
    browser_events = chrome.final()
    npm_final = npm.final()
    stats = app.stats()
    assert stats["streams_opened"] >= 5, stats
    got = seqs(browser_events["events"])
    assert len(got) > 40 and got == list(range(got[0], got[0] + len(got))), got
    assert browser_events["opens"] == 1
    for client in npm_final["clients"]:
        mine = seqs(client["events"])
        assert len(mine) > 40 and mine == list(range(mine[0], mine[0] + len(mine))), mine
        assert client["opens"] == 1


def test_app_killed_and_restarted(procs):
    """Clients stay connected while the app is down, are told of the gap, then continue."""
    app = App(procs, "starlette")
    proxy = Ssegate(procs, '[defaults]\non_gap = "event"\nreconnect_initial = "100ms"\nreconnect_max = "300ms"\n' + route(app))
    chrome = browser(procs, proxy.url("/"))
    npm = eventsource(procs, proxy.url("/events"), 2)
    chrome.wait("the browser to open", lambda s: s.get("opens") == 1)
    npm.wait("the npm clients to open", lambda s: s.get("opened") == 2)
    app.wait_streams(1)
    app.emit(3)
    chrome.wait("3 events", lambda s: s.get("events") == 3)
    npm.wait("3 events", lambda s: s.get("min_events") == 3)
    app.kill()
    time.sleep(1)  # the app is down for a while: this is the scenario
    app.start()
    app.wait_streams(1)
    app.emit(2)
    chrome.wait("the gap event and 2 new events", lambda s: s.get("events") == 6)
    npm.wait("the gap event and 2 new events", lambda s: s.get("min_events") == 6)
    for events, opens in [(chrome.final()["events"], None)] + [(c["events"], c["opens"]) for c in npm.final()["clients"]]:
        kinds = [e["type"] for e in events]
        assert kinds == ["message"] * 3 + ["gap"] + ["message"] * 2, kinds
        assert seqs(events) == [1, 2, 3, 1, 2], "the restarted app counts from 1 again"
        assert events[3]["data"] == events[2]["id"], "the gap starts after the last event seen"
        if opens is not None:
            assert opens == 1, "stayed connected"


def test_three_hundred_npm_clients_share_one_app_stream(procs):
    app = App(procs, "express")
    proxy = Ssegate(procs, route(app))
    npm = eventsource(procs, proxy.url("/events"), 300)
    npm.wait("300 clients to open", lambda s: s.get("opened") == 300, timeout=20)
    app.wait_streams(1)
    app.emit(5)
    npm.wait("every client to get 5 events", lambda s: s.get("min_events") == 5)
    assert app.stats()["open_streams"] == 1
    clients = npm.final()["clients"]
    first_ids = [e["id"] for e in clients[0]["events"]]
    assert len(set(first_ids)) == 5
    for client in clients:
        assert seqs(client["events"]) == [1, 2, 3, 4, 5]
        assert [e["id"] for e in client["events"]] == first_ids


def messages(source):
    """The events of an httpx-sse source that carry data. httpx-sse also yields the blank-data
    block that primes the id (`id: …` then a blank line), which a browser does not dispatch."""
    return (event for event in source.iter_sse() if event.data)


def test_httpx_sse_resumes_by_header_and_by_query(procs):
    app = App(procs, "starlette")
    proxy = Ssegate(procs, route(app))
    with httpx.Client(timeout=10) as client:
        with connect_sse(client, "GET", proxy.url("/events")) as source:
            events = messages(source)
            eventually("the app's stream", lambda: app.stats()["open_streams"] == 1)
            app.emit(5)
            seen = [next(events) for _ in range(5)]
        assert [json.loads(e.data)["seq"] for e in seen] == [1, 2, 3, 4, 5]
        after = seen[2].id
        for how in ("header", "query"):
            headers = {"Last-Event-ID": after} if how == "header" else {}
            url = proxy.url("/events") + (f"?lastEventId={after}" if how == "query" else "")
            with connect_sse(client, "GET", url, headers=headers) as source:
                replay = messages(source)
                got = [next(replay) for _ in range(2)]
            assert [json.loads(e.data)["seq"] for e in got] == [4, 5], how
            assert [e.id for e in got] == [seen[3].id, seen[4].id], how


@pytest.mark.parametrize("kind", ["starlette", "express"])
def test_plain_pages_and_api_requests_pass_through(procs, kind):
    app = App(procs, kind)
    proxy = Ssegate(procs, route(app))
    with httpx.Client(timeout=10) as client:
        page = client.get(proxy.url("/"))
        assert page.status_code == 200 and "new EventSource" in page.text
        echo = client.post(proxy.url("/api/echo"), content="hello", headers={"content-type": "text/plain"})
        assert echo.status_code == 200
        assert echo.json() == {"method": "POST", "body": "hello", "app": kind}
        missing = client.get(proxy.url("/nowhere"))
        assert missing.status_code == 404, "the app's own 404 comes through"


def self_signed(directory):
    """A certificate for localhost, made now with openssl (nothing checked in that expires)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def test_ten_event_sources_on_one_page_over_https_h2(procs):
    """Over TLS the browser speaks HTTP/2: ten EventSources on one page all receive events.
    Over plain HTTP/1.1 it keeps six connections per origin, so only six of them can (the
    reason for [tls])."""
    cert, key = self_signed(procs.dir)
    app = App(procs, "starlette")
    tls = Ssegate(procs, f'[tls]\ncert = "{cert}"\nkey = "{key}"\n' + route(app), scheme="https")
    chrome = browser(procs, tls.url("/?streams=10"), args="--ignore-certificate-errors")
    chrome.wait("the page's own EventSource", lambda s: s.get("opens") == 1)
    app.wait_streams(11)
    app.emit(2)
    chrome.wait("all ten extra EventSources to receive events", lambda s: s.get("receiving") == 10)
    chrome.final()

    plain = Ssegate(procs, route(app))
    old = browser(procs, plain.url("/?streams=10"))
    eventually("six HTTP/1.1 connections' worth of streams", lambda: app.stats()["open_streams"] >= 11 + 6 - 1)
    app.emit(2)
    old.wait("the six streams HTTP/1.1 allows to receive events", lambda s: s.get("receiving", 0) >= 5)
    time.sleep(1)  # give the other streams every chance: they stay stuck behind the limit
    snapshot = old.final()
    receiving = sum(1 for n in snapshot["per_source"] if n > 0) + (1 if snapshot["opens"] else 0)
    assert receiving <= 6, f"{receiving} EventSources got events over HTTP/1.1"


@pytest.mark.parametrize("kind", ["starlette", "express"])
@pytest.mark.parametrize("credentials", [False, True])
def test_cross_origin_eventsource_works_through_ssegate_as_directly(procs, kind, credentials):
    """A page on one origin, its EventSource to another, and an app with its framework's own
    CORS middleware (Starlette's CORSMiddleware, Express's `cors` package). The browser needs
    the app's Access-Control-Allow-Origin (and -Credentials) on the stream's response: through
    ssegate as when it talks to the app directly."""
    page = App(procs, "starlette")
    origin = f"http://127.0.0.1:{page.port}"
    app = App(procs, kind, cors=origin)
    proxy = Ssegate(procs, route(app))
    flag = "&credentials=1" if credentials else ""
    for opened, stream in enumerate([f"http://127.0.0.1:{app.port}/events", proxy.url("/events")], 1):
        chrome = browser(procs, f"{origin}/?stream={stream}{flag}")
        chrome.wait(f"the EventSource to {stream} to open", lambda s: s.get("opens") == 1)
        eventually("the app's stream", lambda: app.stats()["streams_opened"] >= opened)
        app.emit(2)
        chrome.wait(f"2 events from {stream}", lambda s: s.get("events") == 2)
        final = chrome.final()
        assert final["errors"] == 0, f"{stream}: {final}"
        assert seqs(final["events"]) == [1 + 2 * (opened - 1), 2 * opened]


def test_cross_origin_eventsource_fails_without_the_apps_cors_headers(procs):
    """The control: an app without CORS headers fails the browser's cross-origin EventSource
    through ssegate too, so the test above shows the app's headers are what made it work."""
    page = App(procs, "starlette")
    app = App(procs, "starlette")
    proxy = Ssegate(procs, route(app))
    chrome = browser(procs, f"http://127.0.0.1:{page.port}/?stream={proxy.url('/events')}")
    chrome.wait("the EventSource to fail", lambda s: s.get("errors", 0) >= 1)
    assert chrome.final()["events"] == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_browser_websocket_echoes_through_ssegate(procs, scheme):
    """Chromium's WebSocket through ssegate to an app on the `ws` package: a text message, a 2 MiB
    binary one, and a close with code 4001, each answered as sent. Over HTTPS the page comes over
    HTTP/2 and the WebSocket too, as an extended CONNECT (RFC 8441) on the same connection, which
    ssegate turns into the HTTP/1.1 handshake the app knows."""
    port = free_port()
    app = Proc(procs, "ws-app", ["node", os.path.join(HERE, "apps", "ws_app.mjs"), str(port)])
    wait_port(port)
    upstream = f'[[route]]\npath = "/"\nupstream = "http://127.0.0.1:{port}"\n'
    if scheme == "https":
        cert, key = self_signed(procs.dir)
        proxy = Ssegate(procs, f'[tls]\ncert = "{cert}"\nkey = "{key}"\n' + upstream, scheme="https")
    else:
        proxy = Ssegate(procs, upstream)
    run = subprocess.run(["node", os.path.join(HERE, "clients", "websocket.mjs"), proxy.url("/")],
                         cwd=HERE, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200 and seen["opened"] and seen["errors"] == 0, seen
    assert seen["protocol"] == ("h2" if scheme == "https" else "http/1.1"), seen
    assert seen["text"] == "hello through ssegate", seen
    assert seen["binary"] is True, seen
    assert seen["close"] == {"code": 4001, "reason": "bye", "clean": True}, seen
    with open(app.log_path) as f:
        accepted = [json.loads(line) for line in f if line.startswith("{")]
    assert accepted == [{"connection": "/socket", "forwarded_for": "127.0.0.1"}], accepted
    with open(proxy.proc.log_path) as f:
        log = f.read()
    asked = "method=CONNECT path=/socket status=200" if scheme == "https" else "method=GET path=/socket status=101"
    assert asked in log, log
