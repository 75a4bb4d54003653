"""The e2e harness: free ports, processes started and stopped by PID with their logs kept (and
printed when a test fails), ssegate from a TOML string, the two naive apps, the Node clients
(Chromium through playwright-core, npm eventsource), and for a cluster a Redis and an HAProxy of
the test's own."""

import json
import os
import queue
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SSEGATE = os.environ.get("SSEGATE_BIN", os.path.join(ROOT, "target", "debug", "ssegate"))
TIMEOUT = 15.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def eventually(what, check, timeout=TIMEOUT):
    """Polls `check` until it returns a truthy value; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Proc:
    """A process of the test, stopped by PID at the end; its output goes to a log file."""

    def __init__(self, registry, name, argv, cwd=HERE, stdin=False, stdout=False, env=None):
        self.name = name
        self.log_path = os.path.join(registry.dir, f"{name}-{len(registry.procs)}.log")
        self.log = open(self.log_path, "w")
        self.popen = subprocess.Popen(
            argv, cwd=cwd, stderr=self.log,
            stdout=subprocess.PIPE if stdout else self.log,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True,
            env=None if env is None else dict(os.environ, **env))
        registry.procs.append(self)

    def stop(self, sig=signal.SIGTERM):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Registry:
    def __init__(self, directory):
        self.dir = directory
        self.procs = []

    def stop_all(self):
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def procs(tmp_path, request):
    registry = Registry(str(tmp_path))
    yield registry
    registry.stop_all()
    # Logs are kept in tmp_path; on failure they are printed too.
    if getattr(request.node, "failed", False):
        for proc in registry.procs:
            with open(proc.log_path) as f:
                sys.stderr.write(f"\n----- {proc.name} log ({proc.log_path}) -----\n{f.read()[-4000:]}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.failed = True


class App:
    """A naive SSE app (Starlette or Express) the test controls over HTTP; with `ids` (Starlette
    only) a well-behaved one that numbers its events and resumes from Last-Event-ID."""

    def __init__(self, procs, kind, port=None, interval=0.0, lifetime=0.0, cors=None, ids=False, uds=None,
                 tls=None):
        """`uds`: a Unix socket path the app serves on too; `tls`: (cert, key, ca) files, to
        serve HTTPS on its port, its certificate checked against `ca` (Starlette only, both)."""
        self.procs, self.kind = procs, kind
        self.port = port or free_port()
        self.interval, self.lifetime, self.cors, self.ids = interval, lifetime, cors, ids
        self.uds, self.tls = uds, tls
        self.start()

    def start(self):
        args = ["--port", str(self.port), "--interval", str(self.interval), "--lifetime", str(self.lifetime)]
        if self.cors:
            args += ["--cors", self.cors]
        if self.ids:
            assert self.kind == "starlette", "only the Starlette app numbers its events"
            args += ["--ids"]
        if self.uds or self.tls:
            assert self.kind == "starlette", "only the Starlette app serves a socket or TLS"
        if self.uds:
            args += ["--uds", self.uds]
        if self.tls:
            args += ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]]
        if self.kind == "starlette":
            argv = [sys.executable, os.path.join(HERE, "apps", "starlette_app.py"), *args]
        else:
            argv = ["node", os.path.join(HERE, "apps", "express_app.mjs"), *args]
        self.proc = Proc(self.procs, f"app-{self.kind}", argv)
        wait_port(self.port)

    def kill(self):
        self.proc.stop(signal.SIGKILL)

    def call(self, method, path):
        if self.tls:
            url, context = f"https://localhost:{self.port}{path}", ssl.create_default_context(cafile=self.tls[2])
        else:
            url, context = f"http://127.0.0.1:{self.port}{path}", None
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5, context=context) as r:
            return json.loads(r.read())

    def emit(self, count=1):
        return self.call("POST", f"/emit?count={count}")["seq"]

    def close_streams(self):
        self.call("POST", "/close")

    def stats(self):
        return self.call("GET", "/stats")

    def wait_streams(self, n):
        eventually(f"{n} open stream(s) at the app", lambda: self.stats()["open_streams"] == n)


class Ssegate:
    """An ssegate process from a TOML string (`listen`, and `admin_listen` with `admin`, are added
    on free ports). `terminate`, then `start` again: a restart with the same file and ports."""

    def __init__(self, procs, toml, scheme="http", admin=False, name="ssegate"):
        self.procs, self.scheme, self.name = procs, scheme, name
        self.port = free_port()
        self.admin_port = free_port() if admin else None
        self.config = os.path.join(procs.dir, f"ssegate-{self.port}.toml")
        with open(self.config, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\n')
            if admin:
                f.write(f'admin_listen = "127.0.0.1:{self.admin_port}"\n')
            f.write(toml)
        self.start()

    def start(self):
        env = {"RUST_LOG": os.environ.get("RUST_LOG", "info"), "NO_COLOR": "1"}
        self.proc = Proc(self.procs, self.name, [SSEGATE, "--config", self.config], env=env)
        if self.admin_port:
            eventually(f"{self.name} to be ready", self.ready)
        else:
            wait_port(self.port)

    def ready(self):
        """Whether /readyz answers 200 (the admin listener is required); fails if it exited."""
        code = self.proc.popen.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with {code}; its log: {self.proc.log_path}")
        try:
            with urllib.request.urlopen(self.admin_url("/readyz"), timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def terminate(self, within=TIMEOUT):
        """SIGTERM, and the exit code once it has exited (fails if it takes over `within`)."""
        self.proc.popen.send_signal(signal.SIGTERM)
        try:
            return self.proc.popen.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {within}s of SIGTERM") from None

    def url(self, path=""):
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}{path}"

    def admin_url(self, path=""):
        return f"http://127.0.0.1:{self.admin_port}{path}"


def program(name):
    """The path of `name` (also looked for in /usr/sbin, which is not on every PATH); fails the
    test naming the package when it is missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        pytest.fail(f"{name} is not installed: this test needs Debian's {name} package "
                    f"(apt-get install {name}; .ci/run installs it)", pytrace=False)
    return found


class Redis:
    """A redis-server of the test's own on a free port, without persistence."""

    def __init__(self, procs):
        self.port = free_port()
        self.proc = Proc(procs, "redis", [program("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--dir", procs.dir])
        eventually("redis-server to answer PING", self.ping)

    def ping(self):
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"redis-server exited; its log: {self.proc.log_path}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def url(self):
        return f"redis://127.0.0.1:{self.port}"


class Haproxy:
    """HAProxy of the test's own in front of three ssegate instances (with admin listeners),
    configured from haproxy.cfg.tmpl; its log (health checks, one line per request) is kept.
    With `served_by`, every response also says which instance answered it (`X-Served-By: s1`),
    for a test to tell where each of its clients was."""

    def __init__(self, procs, instances, served_by=False):
        assert len(instances) == 3 and all(i.admin_port for i in instances), "three instances with admin_listen"
        self.port = free_port()
        with open(os.path.join(HERE, "haproxy.cfg.tmpl")) as f:
            template = string.Template(f.read())
        addresses = {"listen": f"127.0.0.1:{self.port}"}
        for n, instance in enumerate(instances, 1):
            addresses[f"s{n}"] = f"127.0.0.1:{instance.port}"
            addresses[f"s{n}_admin"] = str(instance.admin_port)
        text = template.substitute(addresses)
        if served_by:
            backend = "backend ssegate\n"
            assert backend in text, "haproxy.cfg.tmpl names its backend ssegate"
            text = text.replace(backend, backend + "    http-response set-header X-Served-By %s\n")
        self.config = os.path.join(procs.dir, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write(text)
        self.proc = Proc(procs, "haproxy", [program("haproxy"), "-f", self.config, "-db"])
        wait_port(self.port)

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"


class Client:
    """A Node client script speaking the snapshot protocol of clients/common.mjs."""

    def __init__(self, procs, name, argv, env=None):
        self.proc = Proc(procs, name, argv, stdin=True, stdout=True, env=env)
        self.lines = queue.Queue()
        self.snapshot = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.popen.stdout:
            self.lines.put(json.loads(line))

    def _drain(self):
        final = None
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return final
            if item["t"] == "snapshot":
                self.snapshot = item
            else:
                final = item

    def wait(self, what, predicate, timeout=TIMEOUT):
        def check():
            self._drain()
            return predicate(self.snapshot)
        return eventually(what, check, timeout)

    def final(self):
        self.proc.popen.stdin.write("dump\n")
        self.proc.popen.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if item["t"] == "final":
                return item
        raise AssertionError(f"{self.proc.name} gave no final report")


def browser(procs, url, args=""):
    env = {"BROWSER_ARGS": args} if args else None
    return Client(procs, "chromium", ["node", os.path.join(HERE, "clients", "browser.mjs"), url], env)


def eventsource(procs, url, count=1):
    return Client(procs, "eventsource", ["node", os.path.join(HERE, "clients", "eventsource.mjs"), url, str(count)])


def seqs(events):
    """The seq of each message event, in order (gap events are skipped)."""
    return [json.loads(e["data"])["seq"] for e in events if e["type"] == "message"]
