"""Apps reached over a Unix socket and over HTTPS: uvicorn serving the Starlette app on a
socket (as `uvicorn --uds` does) and with its own TLS certificate, httpx and httpx-sse as the
clients, the real ssegate binary between them."""

import json
import os
import subprocess

import httpx
from httpx_sse import connect_sse

from conftest import SSEGATE, App, Ssegate, eventually
from test_e2e import messages, self_signed


def authority_and_app_cert(directory):
    """A private CA and a certificate for localhost it signed (the CA is what `upstream_ca`
    names), made now with openssl: (ca, cert, key)."""
    ca, ca_key = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    cert, key = os.path.join(directory, "app.pem"), os.path.join(directory, "app.key")
    csr, ext = os.path.join(directory, "app.csr"), os.path.join(directory, "app.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=ssegate e2e CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    return ca, cert, key


def routes(upstream, extra=""):
    return (f'[[route]]\npath = "/events"\nupstream = "{upstream}"\n{extra}\n'
            f'[[route]]\npath = "/"\nupstream = "{upstream}"\n{extra}\n')


def log_of(proxy):
    with open(proxy.proc.log_path) as f:
        return f.read()


def pass_through_and_sse(app, proxy, client):
    """Plain pages and API calls pass through, and an SSE stream is shared and resumed: the
    same checks over whichever transport `proxy` reaches `app` by."""
    page = client.get(proxy.url("/"))
    assert page.status_code == 200 and "new EventSource" in page.text
    echo = client.post(proxy.url("/api/echo"), content="hello", headers={"content-type": "text/plain"})
    assert echo.json() == {"method": "POST", "body": "hello", "app": "starlette"}
    with connect_sse(client, "GET", proxy.url("/events")) as first, \
            connect_sse(client, "GET", proxy.url("/events")) as second:
        a, b = messages(first), messages(second)
        eventually("the app's stream", lambda: app.stats()["open_streams"] == 1)
        app.emit(3)
        seen = [next(a) for _ in range(3)]
        assert [json.loads(e.data)["seq"] for e in seen] == [1, 2, 3]
        assert [e.id for e in (next(b) for _ in range(3))] == [e.id for e in seen]
        assert app.stats()["open_streams"] == 1, "two clients, one stream from the app"
    with connect_sse(client, "GET", proxy.url("/events"), headers={"Last-Event-ID": seen[0].id}) as source:
        replay = messages(source)
        assert [json.loads(next(replay).data)["seq"] for _ in range(2)] == [2, 3]


def test_an_app_on_a_unix_socket(procs):
    socket_path = os.path.join(procs.dir, "app.sock")
    app = App(procs, "starlette", uds=socket_path)
    proxy = Ssegate(procs, routes(f"unix:{socket_path}"))
    with httpx.Client(timeout=10) as client:
        where = client.get(proxy.url("/api/where")).json()
        assert where["server"][0] == socket_path, "the request came in on the socket"
        assert where["host"] == f"127.0.0.1:{proxy.port}", "the client's Host"
        pass_through_and_sse(app, proxy, client)


def test_an_app_whose_socket_appears_after_ssegate_starts(procs):
    socket_path = os.path.join(procs.dir, "late.sock")
    proxy = Ssegate(procs, routes(f"unix:{socket_path}"))
    check = subprocess.run([SSEGATE, "check", "--config", proxy.config], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert f"the socket {socket_path} does not exist (yet)" in check.stderr, check.stderr
    with httpx.Client(timeout=10) as client:
        assert client.get(proxy.url("/api/where")).status_code == 502
        eventually("a log line naming the socket", lambda: f"cannot connect to the socket {socket_path}" in log_of(proxy))
        App(procs, "starlette", uds=socket_path)
        assert client.get(proxy.url("/api/where")).json()["server"][0] == socket_path


def test_an_app_over_https(procs):
    ca, cert, key = authority_and_app_cert(procs.dir)
    app = App(procs, "starlette", tls=(cert, key, ca))
    proxy = Ssegate(procs, routes(f"https://localhost:{app.port}", f'upstream_ca = "{ca}"'))
    with httpx.Client(timeout=10) as client:
        # The app's port speaks nothing but TLS.
        try:
            client.get(f"http://127.0.0.1:{app.port}/api/where")
            raise AssertionError("the app answered plain HTTP")
        except httpx.HTTPError:
            pass
        where = client.get(proxy.url("/api/where")).json()
        assert where["http_version"] == "1.1", "uvicorn offers no h2: ALPN gave HTTP/1.1"
        assert where["host"] == f"127.0.0.1:{proxy.port}", "the client's Host"
        # uvicorn believes X-Forwarded-Proto from loopback: the client's scheme, not the hop's.
        assert where["scheme"] == "http", where
        pass_through_and_sse(app, proxy, client)


def test_an_https_app_whose_certificate_fails_a_check(procs):
    """Without upstream_ca the system's roots are asked, which do not hold the app's CA; with
    it but another name checked, the name does not match; an app whose certificate is itself a
    CA certificate (what `openssl req -x509` makes by default) is refused too. Each is a 502
    and a log line that says which check failed."""
    ca, cert, key = authority_and_app_cert(procs.dir)
    app = App(procs, "starlette", tls=(cert, key, ca))
    self_signed_cert, self_signed_key = self_signed(procs.dir)
    ca_as_leaf = App(procs, "starlette", tls=(self_signed_cert, self_signed_key, self_signed_cert))
    proxy = Ssegate(procs, f'[[route]]\npath = "/system"\nupstream = "https://localhost:{app.port}"\n'
                           f'[[route]]\npath = "/name"\nupstream = "https://localhost:{app.port}"\n'
                           f'upstream_ca = "{ca}"\nupstream_server_name = "app.internal"\n'
                           f'[[route]]\npath = "/ca-as-leaf"\nupstream = "https://localhost:{ca_as_leaf.port}"\n'
                           f'upstream_ca = "{self_signed_cert}"\n')
    with httpx.Client(timeout=10) as client:
        for path, says in [("/system", "not signed by a trusted authority"),
                           ("/name", "not valid for the name checked"),
                           ("/ca-as-leaf", "presents a CA certificate as its own")]:
            assert client.get(proxy.url(path)).status_code == 502, path
            eventually(f"the log line of {path}", lambda: says in log_of(proxy))
