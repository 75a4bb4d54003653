#!/usr/bin/env python3
"""The benchmark driver of bench/run.sh: direct, Nginx and ssegate in one run, fresh processes
for every scenario, loopback only; and ssegate as a cluster (three instances on a Redis of the
bench's own, behind HAProxy). Memory comes from /proc (RSS summed over the process tree), CPU
from /proc/PID/stat over the measurement window. Writes the results into BENCHMARKS.md between
its markers and prints them."""

import argparse
import datetime
import json
import os
import platform
import socket
from statistics import median
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSEGATE = os.path.join(ROOT, "target/profiling/ssegate")
APP = os.path.join(ROOT, "target/profiling/examples/naive_app")
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
HAPROXY = "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else "haproxy"
REDIS = "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else "redis-server"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

WORK = tempfile.mkdtemp(prefix="ssegate-bench-")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def children(pid):
    """pid and every descendant."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def rss_kib(pid):
    total = 0
    for p in children(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE // 1024
        except OSError:
            pass
    return total


def user_seconds(pid):
    """utime alone of `pid`'s tree: the share of CPU spent in the process's own code."""
    total = 0
    for p in children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11])
        except OSError:
            pass
    return total / TICK


def cpu_seconds(pid):
    total = 0
    for p in children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


class Proc:
    def __init__(self, name, argv, port, env=None):
        self.name = name
        self.log = open(os.path.join(WORK, f"{name}-{port}.log"), "w")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = port
        try:
            wait_port(port)
        except RuntimeError:
            self.stop()
            raise

    @property
    def pid(self):
        return self.popen.pid

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


def start_app(interval, payload, stagger=False):
    """The naive app; with `stagger`, a ticker per stream from when it was asked for (users'
    streams tick at different moments) instead of one for all."""
    port = free_port()
    return Proc("app", [APP, "--listen", f"127.0.0.1:{port}", "--interval", interval,
                        "--payload", str(payload), "--lifetime", "off"]
                + (["--stagger"] if stagger else []), port)


def start_ssegate(app_port, extra="", top=""):
    """`extra`: keys of the route; `top`: lines before it (top-level keys, then tables)."""
    port = free_port()
    path = os.path.join(WORK, f"ssegate-{port}.toml")
    with open(path, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nmax_connections = 19000\n{top}\n'
                f'[[route]]\npath = "/events"\nupstream = "http://127.0.0.1:{app_port}"\n{extra}\n')
    # Warnings only: an access log line per request would measure the logger.
    env = dict(os.environ, RUST_LOG="warn")
    return Proc("ssegate", [SSEGATE, "--config", path], port, env)


NGINX_CONF = """
worker_processes auto;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 20000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=20000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 24h;
        }}
    }}
}}
"""


def start_nginx(app_port):
    port = free_port()
    directory = os.path.join(WORK, f"nginx-{port}")
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=directory, app_port=app_port, port=port))
    return Proc("nginx", [NGINX, "-p", directory, "-c", conf, "-g", "daemon off;"], port)


def app_stats(app):
    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/stats", timeout=5) as r:
        return json.loads(r.read())


def loadgen(args, port, scheme="http", **flags):
    argv = [args.loadgen, "--url", f"{scheme}://127.0.0.1:{port}/events"]
    for key, value in flags.items():
        if value is True:
            argv.append("--" + key.replace("_", "-"))
        elif value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_loadgen(args, port, on_measuring=None, limit=None, started=None, scheme="http", **flags):
    """Runs the load generator; `on_measuring` is called when its window opens, `started` with
    its process. With `limit` (seconds), a load generator still running then is killed (and
    gives no report)."""
    proc = loadgen(args, port, scheme, **flags)
    if started:
        started(proc)
    timer = threading.Timer(limit, proc.kill) if limit else None
    if timer:
        timer.start()
    report = None
    for line in proc.stdout:
        data = json.loads(line)
        if data.get("phase") == "measuring":
            if on_measuring:
                on_measuring()
        else:
            report = data
    proc.wait()
    if timer:
        timer.cancel()
    if report is None:
        raise RuntimeError("loadgen gave no report: " + proc.stderr.read())
    return report


def targets(app, which):
    """(name, port, process) for direct and for each proxy in front of `app`."""
    out = []
    for name in which:
        if name == "direct":
            out.append(("direct", app.port, None))
        elif name == "nginx":
            out.append(("nginx", None, "nginx"))
        else:
            out.append(("ssegate", None, "ssegate"))
    return out


def with_proxy(name, app, extra=""):
    if name == "direct":
        return None, app.port
    proxy = start_nginx(app.port) if name == "nginx" else start_ssegate(app.port, extra)
    return proxy, proxy.port


RESULTS = {}


def scenario_idle(args):
    clients = args.idle_clients
    rows = {}
    for name in ("direct", "nginx", "ssegate"):
        app = start_app("1h", 0)
        proxy, port = with_proxy(name, app)
        subject = proxy or app
        time.sleep(0.5)
        before = rss_kib(subject.pid)
        holder = {}

        def measure():
            time.sleep(2)
            holder["rss"] = rss_kib(subject.pid)
            holder["upstream"] = app_stats(app)["open_streams"]

        report = run_loadgen(args, port, on_measuring=lambda: threading.Thread(target=measure).start(),
                             clients=clients, ramp=5000, warmup="1s", duration="4s", idle=True)
        time.sleep(0.1)
        per_client = (holder["rss"] - before) * 1024 / max(report["established"], 1)
        rows[name] = {"established": report["established"], "failed": report["failed"],
                      "rss_before_kib": before, "rss_kib": holder["rss"],
                      "kib_per_client": per_client / 1024, "upstream_connections": holder["upstream"]}
        print(f"idle {name}: {rows[name]}", flush=True)
        for p in (proxy, app):
            if p:
                p.stop()
    RESULTS["idle"] = rows


# Per-user streams: every client has credentials of its own, so ssegate keys a stream (an
# upstream request, a buffer) per client, as it does by default for signed-in users. The
# per-client limits are for browsers; here 5,000 clients share 200 source addresses.
PER_USER_TOP = 'max_streams_per_client = "off"\nnew_streams_per_client = "off"\n'


# CPU over a long window is the median of its 10-second slices: another tenant's burst on a
# shared machine spoils one slice, not the figure.
CPU_SLICE_S = 10


def cpu_slices(pid, seconds):
    """CPU (cores) of `pid`'s tree in each CPU_SLICE_S slice of the next `seconds`."""
    out = []
    end = time.time() + seconds
    while time.time() + 1 < end:
        c0, t0 = cpu_seconds(pid), time.time()
        time.sleep(min(CPU_SLICE_S, end - t0))
        out.append((cpu_seconds(pid) - c0) / (time.time() - t0))
    return out or [0.0]


def users_setup(name):
    """The app with a ticker per stream, and `name` in front of it (ssegate with its per-client
    limits off and an admin port): (app, proxy or None, port to load, admin port or None)."""
    app = start_app("1s", 200, stagger=True)
    if name != "ssegate":
        proxy, port = with_proxy(name, app)
        return app, proxy, port, None
    admin = free_port()
    proxy = start_ssegate(app.port, "", PER_USER_TOP + f'admin_listen = "127.0.0.1:{admin}"\n')
    wait_port(admin)
    return app, proxy, proxy.port, admin


def per_user_once(args, name):
    """One measurement of `args.per_user_clients` clients each on its own stream, on fresh
    processes: RSS per client at the end of the window, CPU over it, latency, upstream
    connections; for ssegate also the buffered history (`buffer_bytes`)."""
    app, proxy, port, admin = users_setup(name)
    subject = proxy or app
    time.sleep(0.5)
    before = rss_kib(subject.pid)
    marks = {}

    def measure():
        marks["cpu0"] = cpu_seconds(subject.pid)
        marks["t0"] = time.time()
        marks["slices"] = cpu_slices(subject.pid, args.per_user_window - 0.5)
        marks["cpu1"] = cpu_seconds(subject.pid)
        marks["t1"] = time.time()
        marks["rss"] = rss_kib(subject.pid)
        marks["upstream"] = app_stats(app)["open_streams"]
        if admin:
            marks["buffered"] = metric(admin, "ssegate_buffer_bytes")
            marks["streams"] = metric(admin, "ssegate_streams")
            marks["events"] = metric(admin, "ssegate_events_received_total")

    thread = None

    def begin():
        nonlocal thread
        thread = threading.Thread(target=measure)
        thread.start()

    clients = args.per_user_clients
    report = run_loadgen(args, port, on_measuring=begin, clients=clients, ramp=2500,
                         streams=clients, warmup="2s", duration=f"{args.per_user_window}s")
    thread.join()
    for p in (proxy, app):
        if p:
            p.stop()
    established = max(report["established"], 1)
    row = {"established": report["established"], "failed": report["failed"],
           "rss_before_kib": before, "rss_kib": marks["rss"],
           "kib_per_client": (marks["rss"] - before) / established,
           "cpu_cores": median(marks["slices"]),
           "cpu_cores_mean": (marks["cpu1"] - marks["cpu0"]) / (marks["t1"] - marks["t0"]),
           "cpu_slices": marks["slices"],
           "upstream_connections": marks["upstream"], "events_per_s": report["events_per_s"],
           "latency_us": report["latency_us"], "gaps": report["gaps"],
           "duplicates": report["duplicates"], "errors": report["errors"],
           "first_error": report["first_error"]}
    if admin:
        row["buffered_kib_per_client"] = marks["buffered"] / 1024 / established
        row["streams"] = marks["streams"]
        row["bytes_per_event"] = marks["buffered"] / max(marks["events"], 1)
    return row


def scenario_per_user(args):
    rows = {}
    for name in args.subjects:
        rows[name] = per_user_once(args, name)
        print(f"per-user {name}: {rows[name]}", flush=True)
    RESULTS["per_user"] = rows


def make_certs():
    """A CA and a certificate for localhost / 127.0.0.1 signed by it (ECDSA P-256, as most sites
    serve browsers now): (ca, cert, key) paths, made once per run."""
    directory = os.path.join(WORK, "tls")
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem"))
    if os.path.exists(paths[0]):
        return paths
    os.makedirs(directory)
    ext = os.path.join(directory, "ext.cnf")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True, cwd=directory)
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem")
    run("openssl", "req", "-x509", "-new", "-key", "ca-key.pem", "-subj", "/CN=ssegate bench CA",
        "-days", "2", "-out", "ca.pem")
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem")
    run("openssl", "req", "-new", "-key", "key.pem", "-subj", "/CN=localhost", "-out", "csr.pem")
    run("openssl", "x509", "-req", "-in", "csr.pem", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
        "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", "cert.pem")
    return paths


NGINX_TLS_CONF = NGINX_CONF.replace(
    "listen 127.0.0.1:{port} backlog=20000;",
    "listen 127.0.0.1:{port} ssl http2 backlog=20000;\n"
    "        ssl_certificate {cert};\n        ssl_certificate_key {key};")


def start_tls_proxy(name, app_port):
    """Nginx or ssegate in front of the app over TLS, offering HTTP/2 and HTTP/1.1 by ALPN."""
    _, cert, key = make_certs()
    if name == "ssegate":
        return start_ssegate(app_port, "", f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    port = free_port()
    directory = os.path.join(WORK, f"nginx-{port}")
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_TLS_CONF.format(dir=directory, app_port=app_port, port=port, cert=cert, key=key))
    return Proc("nginx", [NGINX, "-p", directory, "-c", conf, "-g", "daemon off;"], port)


# The idle subscriptions of browsers behind [tls]: HTTP/2 (each client its own connection, as
# tabs of different users are) and HTTP/1.1 over TLS.
IDLE_TLS = (("h2", True), ("TLS HTTP/1.1", False))


def scenario_idle_tls(args):
    clients = args.idle_tls_clients
    ca, _, _ = make_certs()
    rows = {}
    for protocol, h2 in IDLE_TLS:
        for name in ("nginx", "ssegate"):
            app = start_app("1h", 0)
            proxy = start_tls_proxy(name, app.port)
            time.sleep(0.5)
            before = rss_kib(proxy.pid)
            holder = {}

            def measure():
                time.sleep(2)
                holder["rss"] = rss_kib(proxy.pid)
                holder["upstream"] = app_stats(app)["open_streams"]

            argv = {"clients": clients, "ramp": 1000, "warmup": "1s", "duration": "4s",
                    "idle": True, "ca": ca, "h2": h2 or None}
            report = run_loadgen(args, proxy.port, on_measuring=lambda: threading.Thread(target=measure).start(),
                                 scheme="https", **argv)
            time.sleep(0.1)
            established = max(report["established"], 1)
            rows[f"{name} {protocol}"] = {
                "established": report["established"], "failed": report["failed"],
                "first_error": report["first_error"], "rss_before_kib": before,
                "rss_kib": holder["rss"], "kib_per_client": (holder["rss"] - before) / established,
                "upstream_connections": holder["upstream"]}
            print(f"idle tls {name} {protocol}: {rows[f'{name} {protocol}']}", flush=True)
            proxy.stop()
            app.stop()
    RESULTS["idle_tls"] = rows


# Churn: clients come and go on streams that open and close. The streams new clients pick slide
# by CHURN_ROTATE a second (all 500 in a minute), so old streams lose their last client, linger
# (30 s by default) and close, and new ones open.
CHURN_STREAMS = 500
CHURN_ROTATE = 8


def churn_flags(args, duration):
    return {"clients": args.churn_clients, "ramp": 2500, "streams": CHURN_STREAMS,
            "churn": args.churn_rate, "rotate": CHURN_ROTATE, "warmup": "5s",
            "duration": duration}


def ssegate_gauges(admin):
    return {"streams": metric(admin, "ssegate_streams"),
            "subscriptions": metric(admin, "ssegate_sse_subscriptions"),
            "buffer_kib": metric(admin, "ssegate_buffer_bytes") / 1024,
            "resumes": metric(admin, "ssegate_resumes_total"),
            "resume_gaps": metric(admin, "ssegate_resume_gaps_total")}


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def churn_once(args, name):
    """`args.churn_clients` clients on 500 streams while `args.churn_rate` a second leave and
    as many join (half resuming with Last-Event-ID): latency, CPU, resumes, RSS at the start and
    the end of the window."""
    app, proxy, port, admin = users_setup(name)
    subject = proxy or app
    marks = {}

    def measure():
        marks["cpu0"] = cpu_seconds(subject.pid)
        marks["rss0"] = rss_kib(subject.pid)
        marks["t0"] = time.time()
        if admin:
            marks["gauges0"] = ssegate_gauges(admin)
        marks["slices"] = cpu_slices(subject.pid, args.churn_window - 0.5)
        marks["cpu1"] = cpu_seconds(subject.pid)
        marks["rss1"] = rss_kib(subject.pid)
        marks["t1"] = time.time()
        marks["upstream"] = app_stats(app)["open_streams"]
        if admin:
            marks["gauges1"] = ssegate_gauges(admin)

    thread = None

    def begin():
        nonlocal thread
        thread = threading.Thread(target=measure)
        thread.start()

    report = run_loadgen(args, port, on_measuring=begin, **churn_flags(args, f"{args.churn_window}s"))
    thread.join()
    for p in (proxy, app):
        if p:
            p.stop()
    row = {"established": report["established"], "failed": report["failed"],
           "errors": report["errors"], "first_error": report["first_error"],
           "left_per_s": report["left_per_s"], "resumed_per_s": report["resumed_per_s"],
           "cpu_cores": median(marks["slices"]), "cpu_slices": marks["slices"],
           "cpu_cores_mean": (marks["cpu1"] - marks["cpu0"]) / (marks["t1"] - marks["t0"]),
           "rss_start_kib": marks["rss0"], "rss_end_kib": marks["rss1"],
           "upstream_connections": marks["upstream"], "latency_us": report["latency_us"],
           "events_per_s": report["events_per_s"], "gaps": report["gaps"],
           "duplicates": report["duplicates"]}
    if admin:
        g0, g1 = marks["gauges0"], marks["gauges1"]
        row.update({"streams_start": g0["streams"], "streams_end": g1["streams"],
                    "resumes": g1["resumes"] - g0["resumes"],
                    "resume_gaps": g1["resume_gaps"] - g0["resume_gaps"],
                    "buffer_kib_start": g0["buffer_kib"], "buffer_kib_end": g1["buffer_kib"]})
    return row


def scenario_churn(args):
    rows = {}
    for name in args.subjects:
        rows[name] = churn_once(args, name)
        print(f"churn {name}: {rows[name]}", flush=True)
    RESULTS["churn"] = rows


def scenario_soak(args):
    """The churn for `args.soak_minutes` against ssegate alone: RSS, open files and the gauges
    every minute; then every client leaves and the gauges must go back to zero once the streams'
    linger is over. Not part of the default run."""
    app = start_app("1s", 200, stagger=True)
    admin = free_port()
    proxy = start_ssegate(app.port, "", PER_USER_TOP + f'admin_listen = "127.0.0.1:{admin}"\n')
    wait_port(admin)
    samples = []
    began = time.time()

    def sample(phase):
        point = {"minute": (time.time() - began) / 60, "phase": phase,
                 "rss_kib": rss_kib(proxy.pid), "fds": open_fds(proxy.pid),
                 "upstream": app_stats(app)["open_streams"], **ssegate_gauges(admin)}
        samples.append(point)
        print(f"soak: {point}", flush=True)

    sample("start")
    done = threading.Event()

    def sampler():
        while not done.wait(60):
            sample("churn")

    thread = threading.Thread(target=sampler)
    thread.start()
    seconds = int(args.soak_minutes * 60)
    report = run_loadgen(args, proxy.port, **churn_flags(args, f"{seconds}s"))
    done.set()
    thread.join()
    sample("clients gone")
    # The streams linger 30 s after their last client, then close.
    deadline = time.time() + 60
    while time.time() < deadline:
        g = ssegate_gauges(admin)
        if g["streams"] == 0 and g["subscriptions"] == 0:
            break
        time.sleep(1)
    sample("after linger")
    proxy.stop()
    app.stop()
    RESULTS["soak"] = {"samples": samples, "report": report, "minutes": args.soak_minutes,
                       "clients": args.churn_clients, "churn": args.churn_rate}


# A fan-out row with ssegate holding events long enough that several share a write (at 100
# events/s), to show what the CPU target would cost in latency.
HELD = "ssegate, coalesce 80ms"
# And the floor: bench/floor.c, a C loop that only formats each event and send()s it to each
# client, the least any server writing each event at once can spend.
FLOOR = "floor: one send() per event per client"
FLOOR_BIN = os.path.join(ROOT, "target/profiling/floor")


FANOUT = ("direct", "nginx", "ssegate", HELD, FLOOR)


def fanout_once(args, name):
    """One measurement of one fan-out variant, on fresh processes."""
    if name == FLOOR:
        app = None
        port = free_port()
        proxy = Proc("floor", [FLOOR_BIN, str(port), "10000", "200"], port)
    else:
        app = start_app("10ms", 200)
    if name == HELD:
        proxy = start_ssegate(app.port, 'coalesce = "80ms"')
        port = proxy.port
    elif app:
        proxy, port = with_proxy(name, app)
    subject = proxy or app
    marks = {}

    def measure():
        marks["cpu0"] = cpu_seconds(subject.pid)
        marks["user0"] = user_seconds(subject.pid)
        marks["t0"] = time.time()
        time.sleep(args.window - 0.2)
        marks["cpu1"] = cpu_seconds(subject.pid)
        marks["user1"] = user_seconds(subject.pid)
        marks["t1"] = time.time()
        marks["upstream"] = app_stats(app)["open_streams"] if app else "–"

    thread = None

    def begin():
        nonlocal thread
        thread = threading.Thread(target=measure)
        thread.start()

    report = run_loadgen(args, port, on_measuring=begin, clients=1000, ramp=2000,
                         warmup="2s", duration=f"{args.window}s")
    thread.join()
    for p in (proxy, app):
        if p:
            p.stop()
    cpu = (marks["cpu1"] - marks["cpu0"]) / (marks["t1"] - marks["t0"])
    user = (marks["user1"] - marks["user0"]) / max(marks["cpu1"] - marks["cpu0"], 1e-9)
    return {"cpu_cores": cpu, "user_share": user, "upstream_connections": marks["upstream"],
            "events_per_s": report["events_per_s"], "latency_us": report["latency_us"],
            "gaps": report["gaps"], "duplicates": report["duplicates"],
            "errors": report["errors"], "established": report["established"]}


def combine(rounds):
    """Per figure, the median over the rounds; losses added up; every round kept."""
    latency = {key: median([r["latency_us"][key] for r in rounds]) for key in ("p50", "p99", "p999", "max")}
    return {"cpu_cores": median([r["cpu_cores"] for r in rounds]),
            "user_share": median([r.get("user_share", 0) for r in rounds]),
            "upstream_connections": rounds[-1]["upstream_connections"],
            "events_per_s": median([r["events_per_s"] for r in rounds]), "latency_us": latency,
            "gaps": sum(r["gaps"] for r in rounds), "duplicates": sum(r["duplicates"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds), "rounds": rounds}


def scenario_fanout(args):
    # Rounds interleave the variants (direct, nginx, ssegate, ..., then again), so a noisy
    # moment on this shared machine hits one round of each rather than all of one.
    measured = {name: [] for name in FANOUT}
    for round_no in range(args.rounds):
        for name in FANOUT:
            row = fanout_once(args, name)
            measured[name].append(row)
            print(f"fan-out {name} (round {round_no + 1}): {row}", flush=True)
    RESULTS["fanout"] = {name: combine(rows) for name, rows in measured.items()}


def scenario_capacity(args):
    rows = {}
    for name in ("nginx", "ssegate"):
        best = None
        steps = []
        for rate in args.capacity_rates:
            interval = f"{max(1, round(1_000_000 / rate))}us"
            app = start_app(interval, 200)
            proxy, port = with_proxy(name, app)
            made = {}

            def window_opens():
                made["start"] = (app_stats(app)["events"], time.time())

            report = run_loadgen(args, port, on_measuring=window_opens,
                                 clients=args.capacity_clients, ramp=2000, warmup="2s", duration="4s")
            made["end"] = (app_stats(app)["events"], time.time())
            for p in (proxy, app):
                p.stop()
            # What the app made in the window, per second: the offered load per client.
            app_rate = (made["end"][0] - made["start"][0]) / (made["end"][1] - made["start"][1])
            lost = report["gaps"] + report["duplicates"] + report["errors"] + report["failed"]
            p99_ms = report["latency_us"]["p99"] / 1000
            # Sustained: what was offered (clients × rate) arrived, in time, and nothing lost.
            # An app that cannot feed every connection at the rate shows up here as a shortfall.
            offered = args.capacity_clients * app_rate
            delivered = report["events_per_s"] / offered
            ok = lost == 0 and p99_ms <= 100 and delivered >= 0.95
            step = {"rate": rate, "app_rate": app_rate, "events_per_s": report["events_per_s"], "p99_ms": p99_ms,
                    "lost": lost, "delivered_share": delivered, "ok": ok}
            steps.append(step)
            print(f"capacity {name}: {step}", flush=True)
            if not ok:
                break
            best = step
        rows[name] = {"best_events_per_s": best["events_per_s"] if best else 0,
                      "best_rate": best["rate"] if best else 0, "steps": steps}
    RESULTS["capacity"] = rows


def scenario_single(args):
    # The three paths read the same app at the same time, so each event is measured through all
    # of them under the same conditions: the difference is what the proxy adds, not noise
    # between runs.
    measured = {"direct": [], "nginx": [], "ssegate": []}
    for round_no in range(args.rounds):
        app = start_app("1ms", 200)
        nginx = start_nginx(app.port)
        ssegate = start_ssegate(app.port)
        ports = {"direct": app.port, "nginx": nginx.port, "ssegate": ssegate.port}
        running = {name: loadgen(args, port, clients=1, warmup="1s", duration=f"{args.window}s")
                   for name, port in ports.items()}
        for name, proc in running.items():
            report = None
            for line in proc.stdout:
                data = json.loads(line)
                if "phase" not in data:
                    report = data
            proc.wait()
            row = {"events_per_s": report["events_per_s"], "latency_us": report["latency_us"],
                   "gaps": report["gaps"], "duplicates": report["duplicates"], "errors": report["errors"],
                   "cpu_cores": 0, "upstream_connections": 1}
            measured[name].append(row)
            print(f"single {name} (round {round_no + 1}): {row}", flush=True)
        for p in (ssegate, nginx, app):
            p.stop()
    RESULTS["single"] = {name: combine(rows) for name, rows in measured.items()}


class IdWatcher:
    """An SSE client of the bench's own on `port`, in a thread: the (id, seq) of each event."""

    def __init__(self, port):
        self.seen = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port,))
        self._thread.start()

    def _run(self, port):
        sock = socket.create_connection(("127.0.0.1", port))
        # The Host the load generator sends too: it is part of the default stream key.
        host = f"127.0.0.1:{port}".encode()
        sock.sendall(b"GET /events HTTP/1.1\r\nhost: " + host + b"\r\naccept: text/event-stream\r\n\r\n")
        sock.settimeout(0.5)
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                ident, seq = None, None
                for line in block.split(b"\n"):
                    if line.startswith(b"id: "):
                        ident = line[4:].decode()
                    if b'"seq": ' in line:
                        seq = int(line.split(b'"seq": ')[1].split(b",")[0].split(b"}")[0])
                if ident and seq is not None:
                    self.seen.append((ident, seq))
        sock.close()

    def wait(self, count, timeout=30):
        deadline = time.time() + timeout
        while len(self.seen) < count and time.time() < deadline:
            time.sleep(0.1)
        if len(self.seen) < count:
            raise RuntimeError(f"the watching client got {len(self.seen)} events, not {count}")

    def stop(self):
        self._stop.set()
        self._thread.join()


def scenario_resume(args):
    app = start_app("10ms", 200)
    proxy = start_ssegate(app.port)
    watcher = IdWatcher(proxy.port)
    watcher.wait(520)
    ident, seq = watcher.seen[-501]
    newest = watcher.seen[-1][1]
    report = run_loadgen(args, proxy.port, clients=args.resume_clients, ramp=args.resume_clients,
                         warmup="0s", duration="4s", last_event_id=ident, resume_seq=seq,
                         catch_up_seq=newest)
    watcher.stop()
    RESULTS["resume"] = {"clients": args.resume_clients, "established": report["established"],
                         "failed": report["failed"], "ramp_s": report["ramp_s"],
                         "replayed_from_seq": seq, "newest_seq": newest,
                         "catch_up_ms": report["catch_up_ms"], "gaps": report["gaps"],
                         "duplicates": report["duplicates"], "errors": report["errors"],
                         "first_error": report["first_error"]}
    print(f"resume: {RESULTS['resume']}", flush=True)
    proxy.stop()
    app.stop()


# ---------------------------------------------------------------------------------------------
# The cluster: three instances sharing one stream through a Redis of the bench's own, behind
# HAProxy; against one embedded instance (no [cluster]) with the same clients, behind the same
# HAProxy and directly; then a resume storm on a fourth instance that never saw the stream.

HAPROXY_CONF = """
global
    maxconn 9000
defaults
    mode http
{nodelay}    maxconn 9000
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend in
    bind 127.0.0.1:{port}
    default_backend ssegate
backend ssegate
    balance roundrobin
{servers}
"""


WRK = "/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else "wrk"

# Nginx as the app of the plain-request scenario: it serves two files, fast and without
# compressing them, so that what the scenario measures is the proxy.
NGINX_STATIC_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ text/html html; application/json json; }}
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
    }}
}}
"""

# wrk's report: one JSON line when the run is done.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "bytes": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def plain_bodies():
    """A JSON answer and an HTML page of the sizes an app commonly serves (16 KiB, 40 KiB)."""
    items = [{"id": n, "name": f"item {n}", "owner": f"user{n % 37}", "tags": ["new", "sale"][: 1 + n % 2],
              "price": round(n * 1.37 % 100, 2), "updated": f"2026-11-{1 + n % 28:02d}T10:{n % 60:02d}:00Z"}
             for n in range(160)]
    rows = "".join(f'<tr class="r{n % 2}"><td>{n}</td><td><a href="/items/{n}">item {n}</a></td>'
                   f"<td>user{n % 37}</td><td>{n * 1.37 % 100:.2f}</td></tr>\n" for n in range(380))
    html = (f"<!doctype html>\n<html><head><title>Items</title><link rel=stylesheet href=/app.css></head>"
            f"<body><h1>Items</h1><table>\n{rows}</table></body></html>\n")
    return {"json": ("items.json", json.dumps(items).encode()), "html": ("items.html", html.encode())}


def start_static(bodies):
    port = free_port()
    directory = os.path.join(WORK, f"static-{port}")
    os.makedirs(os.path.join(directory, "www"), exist_ok=True)
    for name, body in bodies.values():
        with open(os.path.join(directory, "www", name), "wb") as f:
            f.write(body)
    # Nginx's worker (not root) must reach the files through the private work directory.
    for path in (WORK, directory, os.path.join(directory, "www")):
        os.chmod(path, 0o755)
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_STATIC_CONF.format(dir=directory, port=port))
    return Proc("static", [NGINX, "-p", directory, "-c", conf, "-g", "daemon off;"], port)


def start_plain_ssegate(app_port, compress):
    port = free_port()
    path = os.path.join(WORK, f"ssegate-plain-{port}.toml")
    with open(path, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\n[[route]]\npath = "/"\nupstream = "http://127.0.0.1:{app_port}"\n'
                f"compress = {compress}\n")
    return Proc("ssegate", [SSEGATE, "--config", path], port, dict(os.environ, RUST_LOG="warn"))


# (row, ssegate's compress, the client's Accept-Encoding, the Content-Encoding it must get)
PLAIN = (
    ("off", '"off"', "gzip, br", None),
    ("on, client asks none", '["br", "gzip"]', None, None),
    ("gzip", '["br", "gzip"]', "gzip", "gzip"),
    ("br", '["br", "gzip"]', "gzip, br", "br"),
)


def scenario_plain(args):
    """Plain GETs through ssegate at wrk's pace (keep-alive, 8 connections), compression off and
    on, for a JSON answer and an HTML page served by Nginx: requests/s, ssegate's CPU per
    request, bytes per response, latency. Both ssegate processes run throughout; each round
    measures every row once, in order."""
    bodies = plain_bodies()
    report = os.path.join(WORK, "wrk-report.lua")
    with open(report, "w") as f:
        f.write(WRK_REPORT)
    load = os.getloadavg()
    static = start_static(bodies)
    proxies = {compress: start_plain_ssegate(static.port, compress) for compress in {row[1] for row in PLAIN}}
    out = {"load_before": load, "bodies": {kind: len(body) for kind, (_, body) in bodies.items()}, "rows": {}}
    try:
        for kind, (name, body) in bodies.items():
            for row, compress, accept, coding in PLAIN:
                url = f"http://127.0.0.1:{proxies[compress].port}/{name}"
                request = urllib.request.Request(url, headers={"accept-encoding": accept} if accept else {})
                with urllib.request.urlopen(request, timeout=5) as r:
                    got = r.headers.get("content-encoding")
                    if got != coding:
                        raise RuntimeError(f"{row} {kind}: Content-Encoding {got!r}, expected {coding!r}")
        for n in range(args.rounds):
            for kind, (name, body) in bodies.items():
                for row, compress, accept, coding in PLAIN:
                    proxy = proxies[compress]
                    argv = [WRK, "-t1", "-c8", f"-d{args.plain_window}s", "-s", report,
                            f"http://127.0.0.1:{proxy.port}/{name}"]
                    if accept:
                        argv[1:1] = ["-H", f"Accept-Encoding: {accept}"]
                    cpu0 = cpu_seconds(proxy.pid)
                    done = subprocess.run(argv, capture_output=True, text=True, check=True)
                    cpu = cpu_seconds(proxy.pid) - cpu0
                    w = json.loads(done.stdout.strip().splitlines()[-1])
                    seconds = w["duration_us"] / 1e6
                    x = {"requests_per_s": w["requests"] / seconds, "cpu_cores": cpu / seconds,
                         "cpu_us_per_request": cpu / max(w["requests"], 1) * 1e6,
                         "bytes_per_response": w["bytes"] / max(w["requests"], 1),
                         "p50_us": w["p50_us"], "p99_us": w["p99_us"],
                         "errors": w["errors"] + w["non_2xx"]}
                    out["rows"].setdefault(kind, {}).setdefault(row, []).append(x)
                    print(f"plain {kind} {row} round {n + 1}: {x['requests_per_s']:.0f} req/s, "
                          f"{x['cpu_us_per_request']:.1f} µs CPU per request", flush=True)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        static.stop()
    out["load_after"] = os.getloadavg()
    RESULTS["plain"] = out


def render_plain(args, started, seconds):
    p = RESULTS["plain"]
    keys = ("requests_per_s", "cpu_cores", "cpu_us_per_request", "bytes_per_response", "p50_us", "p99_us")
    med = {kind: {row: {k: median(x[k] for x in rounds) for k in keys} | {"errors": sum(x["errors"] for x in rounds)}
                  for row, rounds in rows.items()}
           for kind, rows in p["rows"].items()}
    lines = [f"Run of {started} on {platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
             f"{subprocess.run([WRK, '--version'], capture_output=True, text=True).stdout.split('[')[0].strip()}; "
             f"{seconds:.0f} s. Load average before: {p['load_before'][0]:.2f} (1 min), "
             f"{p['load_before'][1]:.2f} (5 min); after: {p['load_after'][0]:.2f}. Command: `{command_line()}`.",
             "",
             f"### Plain requests: compression off and on (wrk, 8 keep-alive connections; Nginx serving "
             f"the files as the app)",
             "",
             f"Each figure is the median of {args.rounds} rounds of {args.plain_window:g} s; a round measures "
             f"every row once, in the order of the table, against the same two ssegate processes (one with "
             f"`compress` off, one with `[\"br\", \"gzip\"]`). CPU is ssegate's alone; wrk and Nginx share "
             f"the cores, so requests/s is a saturation figure of this machine, not ssegate's ceiling.",
             "",
             "| body | row | requests/s | ssegate CPU (cores) | CPU per request | bytes per response | p50 | p99 | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, rows in med.items():
        size = p["bodies"][kind]
        for row, x in rows.items():
            lines.append(f"| {kind} ({size / 1024:.1f} KiB) | {row} | {x['requests_per_s']:.0f} | {x['cpu_cores']:.2f} | "
                         f"{x['cpu_us_per_request']:.1f} µs | {x['bytes_per_response']:.0f} | "
                         f"{x['p50_us'] / 1000:.2f} ms | {x['p99_us'] / 1000:.2f} ms | {x['errors']} |")
    lines.append("")
    for kind, rows in med.items():
        off = rows["off"]["cpu_us_per_request"]
        lines.append(f"{kind}: compressing costs ssegate "
                     + ", ".join(f"{row} {rows[row]['cpu_us_per_request'] - off:+.1f} µs "
                                 f"({rows[row]['cpu_us_per_request'] / off:.1f}×)" for row in ("gzip", "br"))
                     + f" of CPU per request over {off:.1f} µs uncompressed; turned on for a client that asks "
                     f"for none, {rows['on, client asks none']['cpu_us_per_request'] - off:+.1f} µs. Responses "
                     + ", ".join(f"{row} {rows[row]['bytes_per_response'] / rows['off']['bytes_per_response']:.0%}"
                                 for row in ("gzip", "br"))
                     + " of the uncompressed size (headers included).")
    lines.append("")
    lines.append("Rounds (requests/s / µs CPU per request): " + "; ".join(
        f"{kind} {row}: " + ", ".join(f"{x['requests_per_s']:.0f} / {x['cpu_us_per_request']:.1f}" for x in rounds)
        for kind, rows in p["rows"].items() for row, rounds in rows.items()) + ".")
    lines.append("")
    return "\n".join(lines)


def start_haproxy(backends, nodelay=True):
    """HAProxy in front of `backends` (ports): HTTP mode, round-robin, no cookies, no
    stickiness, an hour of tunnel, client and server timeout. With `nodelay`, `option
    http-no-delay`: without it HAProxy holds the small writes of an event stream (MSG_MORE) and
    adds tens of milliseconds to every event (measured in a row of its own)."""
    port = free_port()
    directory = os.path.join(WORK, f"haproxy-{port}")
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "haproxy.cfg")
    servers = "\n".join(f"    server s{i} 127.0.0.1:{b}" for i, b in enumerate(backends))
    with open(conf, "w") as f:
        f.write(HAPROXY_CONF.format(port=port, servers=servers,
                                    nodelay="    option http-no-delay\n" if nodelay else ""))
    return Proc("haproxy", [HAPROXY, "-f", conf, "-db"], port)


def start_redis():
    """A redis-server of the bench's own: no persistence, loopback, a free port."""
    port = free_port()
    directory = os.path.join(WORK, f"redis-{port}")
    os.makedirs(directory, exist_ok=True)
    return Proc("redis", [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", directory], port)


def redis_call(port, *words):
    """One Redis command over RESP; the reply as text (bulk, simple or integer)."""
    request = f"*{len(words)}\r\n".encode()
    for word in words:
        data = str(word).encode()
        request += f"${len(data)}\r\n".encode() + data + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        buf = b""
        while b"\r\n" not in buf:
            buf += sock.recv(65536)
        head, rest = buf.split(b"\r\n", 1)
        if head[:1] == b"$":
            size = int(head[1:])
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            return rest[:size].decode()
        if head[:1] == b"-":
            raise RuntimeError("redis: " + head[1:].decode())
        return head[1:].decode()


# What the instances send Redis; every other command in `INFO commandstats` runs inside their
# scripts (the append script runs about ten per event) or is the rare wake of a follower.
REQUESTS = ("evalsha", "eval", "xread", "xrange", "xrevrange", "ping", "script|load")


def commandstats(port):
    """Calls per Redis command so far (`INFO commandstats`), the INFO calls themselves left out."""
    calls = {}
    for line in redis_call(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[len("cmdstat_"):].split(":", 1)
            if name != "info":
                calls[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    return calls


def admin_get(admin_port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=5) as r:
        return r.read().decode()


def metric(admin_port, name):
    """The sum of a metric's samples (every label set) on an instance's /metrics."""
    total = 0.0
    for line in admin_get(admin_port, "/metrics").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cluster_roles(admin_port):
    """The `cluster_role` of each stream on an instance's /streams."""
    text = admin_get(admin_port, "/streams")
    data = json.loads(text)
    streams = data.get("streams", data) if isinstance(data, dict) else data
    return [s.get("cluster_role") for s in streams]


CLUSTER_SECRET = "the shared secret of the benchmark's cluster\n"
# Instances listen on ports of their own and the fourth is reached directly, so the stream is
# keyed by its path alone (the default key includes the Host, which differs per instance).
CLUSTER_ROUTE = 'stream_key = ["path"]'


def start_instance(app, redis=None, node=None, lease=None):
    """ssegate with an admin listener; in the cluster on `redis` when given, else embedded."""
    admin = free_port()
    top = f'admin_listen = "127.0.0.1:{admin}"\n'
    if redis:
        secret = os.path.join(WORK, "cluster-secret")
        with open(secret, "w") as f:
            f.write(CLUSTER_SECRET)
        top += (f'[cluster]\nredis = "redis://127.0.0.1:{redis.port}"\n'
                f'secret_file = "{secret}"\nnode = "{node}"\n'
                + (f'lease = "{lease}"\n' if lease else ""))
    proc = start_ssegate(app.port, CLUSTER_ROUTE, top)
    proc.admin = admin
    try:
        wait_port(admin)
        if redis:
            # Connected to Redis before it counts as started (an instance not yet connected
            # reads its streams locally, which is not what is measured here).
            deadline = time.time() + 10
            while metric(admin, "ssegate_cluster_redis_up") != 1:
                if time.time() > deadline:
                    raise RuntimeError(f"{node} did not connect to Redis")
                time.sleep(0.1)
    except Exception:
        proc.stop()
        raise
    return proc


# Counters of each instance worth seeing next to a window: anything but 0 is told.
COUNTERS = ("ssegate_slow_client_disconnects_total", "ssegate_client_write_stalls_total",
            "ssegate_resume_gaps_total", "ssegate_upstream_outage_gaps_total",
            "ssegate_cluster_redis_errors_total", "ssegate_cluster_leases_acquired_total",
            "ssegate_cluster_leases_lost_total", "ssegate_cluster_fenced_appends_total",
            "ssegate_stream_task_panics_total")


def counters(admins):
    return {name: {c: metric(admin, c) for c in COUNTERS} for name, admin in admins.items()}


def load_window(args, port, clients, app, watch, redis=None, admins=None):
    """`clients` SSE clients on `port` for one window: CPU of each process in `watch`
    (name → pid) and of the load generator, the app's open upstream streams, Redis commands
    per event the app made, the subscriptions each instance in `admins` (name → admin port)
    holds, what its counters added meanwhile, and the load generator's report."""
    marks = {}
    admins = admins or {}
    procs = {}

    def measure():
        watched = dict(watch, loadgen=procs["loadgen"].pid)
        marks["cpu0"] = {name: cpu_seconds(pid) for name, pid in watched.items()}
        marks["t0"] = time.time()
        marks["events0"] = app_stats(app)["events"]
        marks["cmd0"] = commandstats(redis.port) if redis else {}
        time.sleep((args.window - 0.4) / 2)
        marks["upstream"] = app_stats(app)["open_streams"]
        marks["subscriptions"] = {name: metric(a, "ssegate_sse_subscriptions") for name, a in admins.items()}
        time.sleep((args.window - 0.4) / 2)
        marks["cmd1"] = commandstats(redis.port) if redis else {}
        marks["events1"] = app_stats(app)["events"]
        marks["cpu1"] = {name: cpu_seconds(pid) for name, pid in watched.items()}
        marks["t1"] = time.time()

    thread = None

    def begin():
        nonlocal thread
        thread = threading.Thread(target=measure)
        thread.start()

    before = counters(admins)
    ramp = 2000
    report = run_loadgen(args, port, on_measuring=begin, limit=clients / ramp + args.window + 60,
                         started=lambda proc: procs.update(loadgen=proc),
                         clients=clients, ramp=ramp, warmup="2s", duration=f"{args.window}s")
    thread.join()
    after = counters(admins)
    added = {name: {c: after[name][c] - before[name][c] for c in COUNTERS if after[name][c] != before[name][c]}
             for name in admins}
    seconds = marks["t1"] - marks["t0"]
    events = marks["events1"] - marks["events0"]
    ops = {name: calls - marks["cmd0"].get(name, 0) for name, calls in marks["cmd1"].items()}
    ops = {name: n for name, n in sorted(ops.items()) if n}
    return {"clients": clients, "established": report["established"], "failed": report["failed"],
            "errors": report["errors"], "first_error": report["first_error"],
            "cpu_cores": {name: (marks["cpu1"][name] - marks["cpu0"][name]) / seconds for name in marks["cpu0"]},
            "subscriptions": marks["subscriptions"], "counters": {n: c for n, c in added.items() if c},
            "upstream_connections": marks["upstream"], "app_events": events,
            "app_events_per_s": events / seconds, "events_per_s": report["events_per_s"],
            "latency_us": report["latency_us"], "gaps": report["gaps"],
            "duplicates": report["duplicates"], "redis_ops": ops,
            "redis_ops_per_event": sum(ops.values()) / events if redis and events else None,
            "redis_requests_per_event": sum(n for name, n in ops.items() if name in REQUESTS) / events
            if redis and events else None}


def scenario_cluster(args):
    started = []
    watcher = None
    out = {}
    try:
        app = start_app("10ms", 200)
        started.append(app)
        redis = start_redis()
        started.append(redis)
        instances = []
        for n in (1, 2, 3, 4):
            instances.append(start_instance(app, redis, f"bench-{n}", args.cluster_lease))
            started.append(instances[-1])
        # The fourth is behind no load balancer: no client reaches it before the resume storm.
        fresh = instances[3]
        haproxy = start_haproxy([i.port for i in instances[:3]])
        started.append(haproxy)
        # The first subscriber (through HAProxy: the first instance) opens the stream, so that
        # one leads it; it stays connected throughout, so the stream lives across the windows,
        # and gives the storm its Last-Event-ID.
        watcher = IdWatcher(haproxy.port)
        watcher.wait(100)
        names = ["instance 1", "instance 2", "instance 3"]
        watch = {name: i.pid for name, i in zip(names, instances)}
        watch.update({"haproxy": haproxy.pid, "redis": redis.pid})
        admins = {name: i.admin for name, i in zip(names, instances)}
        for clients in args.cluster_clients:
            row = load_window(args, haproxy.port, clients, app, watch, redis, admins)
            out[f"cluster {clients}"] = row
            print(f"cluster, {clients} clients: {row}", flush=True)
            time.sleep(2)
        out["roles"] = {name: cluster_roles(admin) for name, admin in admins.items()}
        out["cluster_counters"] = counters(admins)

        # The storm: every client resumes from one id, `back` events before the newest, on an
        # instance that has no stream yet.
        back = args.storm_back
        watcher.wait(back + 20)
        ident, seq = watcher.seen[-1 - back]
        newest = watcher.seen[-1][1]
        streams_before = cluster_roles(fresh.admin)
        cmd0 = commandstats(redis.port)
        backfills0 = metric(fresh.admin, "ssegate_cluster_backfills_total")
        counters0 = counters({"instance 4": fresh.admin})["instance 4"]
        cpu0, t0 = cpu_seconds(fresh.pid), time.time()
        clients = args.storm_clients
        report = run_loadgen(args, fresh.port, limit=30, clients=clients, ramp=clients, warmup="0s",
                             duration="4s", last_event_id=ident, resume_seq=seq, catch_up_seq=newest)
        cpu1, t1 = cpu_seconds(fresh.pid), time.time()
        cmd1 = commandstats(redis.port)
        counters1 = counters({"instance 4": fresh.admin})["instance 4"]
        ops = {name: calls - cmd0.get(name, 0) for name, calls in cmd1.items()}
        out["storm"] = {
            "clients": clients, "established": report["established"], "failed": report["failed"],
            "errors": report["errors"], "first_error": report["first_error"],
            "ramp_s": report["ramp_s"], "last_event_id": ident, "replayed_from_seq": seq,
            "newest_seq": newest, "streams_before": streams_before,
            "role_after": cluster_roles(fresh.admin), "catch_up_ms": report["catch_up_ms"],
            "gaps": report["gaps"], "duplicates": report["duplicates"],
            "backfills": metric(fresh.admin, "ssegate_cluster_backfills_total") - backfills0,
            "redis_ops": {name: n for name, n in sorted(ops.items()) if n},
            "counters": {c: counters1[c] - counters0[c] for c in COUNTERS if counters1[c] != counters0[c]},
            "seconds": t1 - t0, "cpu_s": cpu1 - cpu0}
        print(f"cluster, resume storm: {out['storm']}", flush=True)
        stats = app_stats(app)
        out["streams_opened"] = stats["streams_opened"]
        out["events"] = stats["events"]
        out["redis_version"] = redis_call(redis.port, "INFO", "server").split("redis_version:")[1].split()[0]
    finally:
        if watcher:
            watcher.stop()
        for p in reversed(started):
            p.stop()
    time.sleep(2)

    # The same clients on one embedded instance: behind the same HAProxy, then directly; and
    # behind HAProxy as it comes (without http-no-delay), to show what that costs.
    variants = (("embedded, behind HAProxy", True, True, args.cluster_clients),
                ("embedded, direct", False, True, args.cluster_clients),
                ("embedded, behind HAProxy without http-no-delay", True, False, args.cluster_clients[:1]))
    for name, behind, nodelay, counts in variants:
        app = instance = proxy = None
        try:
            app = start_app("10ms", 200)
            instance = start_instance(app)
            proxy = start_haproxy([instance.port], nodelay) if behind else None
            watch = {"instance": instance.pid}
            if proxy:
                watch["haproxy"] = proxy.pid
            for clients in counts:
                row = load_window(args, (proxy or instance).port, clients, app, watch,
                                  admins={"instance": instance.admin})
                row["streams_opened"] = app_stats(app)["streams_opened"]
                out[f"{name} {clients}"] = row
                print(f"cluster: {name}, {clients} clients: {row}", flush=True)
                time.sleep(2)
        finally:
            for p in (proxy, instance, app):
                if p:
                    p.stop()
        time.sleep(2)
    RESULTS["cluster"] = out


def verdict(ok):
    return "met" if ok else "**missed**"


def render(args, started, seconds):
    r = RESULTS
    lines = []
    lines.append(f"Run of {started} on {platform.node()}: {os.cpu_count()} cores, "
                 f"{platform.machine()}, Linux {platform.release()}, "
                 f"{subprocess.run([NGINX, '-v'], capture_output=True, text=True).stderr.strip()}; "
                 f"{seconds:.0f} s in all. Command: `{command_line()}`.")
    lines.append("")
    if "idle" in r:
        i = r["idle"]
        lines.append(f"### Idle: {args.idle_clients} idle SSE clients on one stream")
        lines.append("")
        lines.append("| | connected | RSS before | RSS with clients | per client | upstream connections |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in ("direct", "nginx", "ssegate"):
            x = i[name]
            lines.append(f"| {name} | {x['established']} | {x['rss_before_kib'] / 1024:.1f} MiB | "
                         f"{x['rss_kib'] / 1024:.1f} MiB | {x['kib_per_client']:.2f} KiB | {x['upstream_connections']} |")
        s = i["ssegate"]
        lines.append("")
        lines.append(f"Target ≤ 4 KiB per client and 1 upstream connection: "
                     f"{verdict(s['kib_per_client'] <= 4 and s['upstream_connections'] == 1)}.")
        lines.append("")
    if "fanout" in r:
        f = r["fanout"]
        lines.append("### Fan-out: 1,000 clients on one stream, 100 events/s of 200 bytes")
        lines.append("")
        lines.append(f"Each figure is the median of {args.rounds} rounds; a round measures every row once, "
                     f"on fresh processes, in the order of the table. Lost: over all rounds.")
        lines.append("")
        lines.append("| | CPU (cores) | upstream connections | events/s delivered | p50 | p99 | p99.9 | max | lost |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in FANOUT:
            x = f[name]
            l = x["latency_us"]
            cpu = "(the app)" if name == "direct" else f"{x['cpu_cores']:.3f}"
            lines.append(f"| {name} | {cpu} | {x['upstream_connections']} | {x['events_per_s']:.0f} | "
                         f"{l['p50'] / 1000:.2f} ms | {l['p99'] / 1000:.2f} ms | {l['p999'] / 1000:.2f} ms | "
                         f"{l['max'] / 1000:.2f} ms | {x['gaps'] + x['duplicates']} |")
        s, n, d = f["ssegate"], f["nginx"], f["direct"]
        lines.append("")
        lines.append(f"Targets: 1 upstream connection: {verdict(s['upstream_connections'] == 1)}; "
                     f"CPU ≤ half of Nginx's ({s['cpu_cores']:.3f} vs {n['cpu_cores']:.3f}): "
                     f"{verdict(s['cpu_cores'] <= n['cpu_cores'] / 2)}; p99 ≤ direct "
                     f"({s['latency_us']['p99'] / 1000:.2f} vs {d['latency_us']['p99'] / 1000:.2f} ms): "
                     f"{verdict(s['latency_us']['p99'] <= d['latency_us']['p99'])}.")
        h, fl = f[HELD], f[FLOOR]
        lines.append("")
        lines.append(f"The floor row is a C loop that does nothing but one send() per event per client: "
                     f"{fl['cpu_cores']:.3f} cores, {fl['cpu_cores'] / n['cpu_cores']:.0%} of Nginx's; "
                     f"ssegate uses {s['cpu_cores'] / fl['cpu_cores']:.2f}× the floor (target ≤ 1.1×: "
                     f"{verdict(s['cpu_cores'] <= 1.1 * fl['cpu_cores'])}). Share of the CPU spent in "
                     f"user space: ssegate {s['user_share']:.0%}, Nginx {n['user_share']:.0%}, the floor "
                     f"{fl['user_share']:.0%}.")
        lines.append(f"The `{HELD}` row lets the stream hold events (20 ms at first, up to 80 ms while it stays busy), so that several share a write: CPU "
                     f"{h['cpu_cores'] / n['cpu_cores']:.0%} of Nginx's, p99 "
                     f"{h['latency_us']['p99'] / 1000:.2f} ms against direct's "
                     f"{d['latency_us']['p99'] / 1000:.2f} ms (see the findings above).")
        lines.append("")
        lines.append("Rounds (CPU in cores, p99 in ms): " + "; ".join(
            f"{name}: " + ", ".join(
                (f"{x['cpu_cores']:.2f} / " if name != "direct" else "") + f"{x['latency_us']['p99'] / 1000:.1f}"
                for x in f[name]["rounds"])
            for name in FANOUT) + ".")
        lines.append("")
    if "capacity" in r:
        c = r["capacity"]
        lines.append(f"### Fan-out capacity: {args.capacity_clients} clients, rate raised until p99 > 100 ms, an event is lost, or under 95% of the offered events arrive")
        lines.append("")
        lines.append("| | steps (events/s per client, as the app made them → delivered events/s (share of offered), p99; ✗ = not sustained) | highest sustained |")
        lines.append("| --- | --- | ---: |")
        for name in ("nginx", "ssegate"):
            x = c[name]
            steps = "; ".join(f"{s['app_rate']:.0f} → {s['events_per_s']:.0f} ({s['delivered_share']:.0%}), {s['p99_ms']:.1f} ms"
                              + ("" if s["ok"] else " ✗") for s in x["steps"])
            lines.append(f"| {name} | {steps} | {x['best_events_per_s']:.0f} events/s |")
        ratio = c["ssegate"]["best_events_per_s"] / max(c["nginx"]["best_events_per_s"], 1)
        lines.append("")
        lines.append(f"Target ssegate ≥ 3× Nginx: {ratio:.1f}×, {verdict(ratio >= 3)}.")
        lines.append("")
    if "single" in r:
        s = r["single"]
        lines.append("### Single stream: 1 client per path, 1,000 events/s (the three paths read the same app at once)")
        lines.append("")
        lines.append(f"Each figure is the median of {args.rounds} rounds on fresh processes.")
        lines.append("")
        lines.append("| | events/s | p50 | p99 | p99.9 | max |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in ("direct", "nginx", "ssegate"):
            l = s[name]["latency_us"]
            lines.append(f"| {name} | {s[name]['events_per_s']:.0f} | {l['p50']:.0f} µs | {l['p99']:.0f} µs | "
                         f"{l['p999']:.0f} µs | {l['max']:.0f} µs |")
        added = (s["ssegate"]["latency_us"]["p99"] - s["direct"]["latency_us"]["p99"]) / 1000
        lines.append("")
        lines.append(f"Target added p99 over direct ≤ 0.1 ms: {added:.3f} ms, {verdict(added <= 0.1)}. "
                     "Added p99 per round: " + ", ".join(
                         f"{(x['latency_us']['p99'] - y['latency_us']['p99']) / 1000:.3f} ms"
                         for x, y in zip(s["ssegate"]["rounds"], s["direct"]["rounds"])) + ".")
        lines.append("")
    if "resume" in r:
        x = r["resume"]
        c = x["catch_up_ms"]
        lines.append(f"### Resume storm: {x['clients']} clients reconnect within {x['ramp_s']:.2f} s, "
                     f"each 500 events back (ssegate only: the app cannot resume)")
        lines.append("")
        lines.append("| connected | failed | caught up | catch-up p50 | p99 | max | gaps | duplicates |")
        lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        lines.append(f"| {x['established']} | {x['failed']} | {c['clients']} | {c['p50']} ms | {c['p99']} ms | "
                     f"{c['max']} ms | {x['gaps']} | {x['duplicates']} |")
        ok = c["clients"] == x["clients"] and c["max"] <= 2000 and x["gaps"] == 0 and x["duplicates"] == 0
        lines.append("")
        lines.append(f"Target all replayed and live within 2 s, nothing lost or repeated: {verdict(ok)}.")
        lines.append("")
    return "\n".join(lines)


def latency_cells(l):
    return f"{l['p50'] / 1000:.2f} ms | {l['p99'] / 1000:.2f} ms | {l['p999'] / 1000:.2f} ms"


# ssegate's defaults, for what the buffered history of a stream per user comes to.
DEFAULT_BUFFER_AGE_S = 600
DEFAULT_BUFFER_EVENTS = 1000
DEFAULT_BUFFER_TOTAL_MIB = 256


def render_realistic(args, started, seconds):
    """The shapes users run: TLS and HTTP/2 idle, a stream per user, churn."""
    r = RESULTS
    lines = [f"Run of {started} on {platform.node()}: {os.cpu_count()} cores, "
             f"{platform.machine()}, Linux {platform.release()}; {seconds:.0f} s. "
             f"Command: `{command_line()}`.", ""]
    if "idle_tls" in r:
        t = r["idle_tls"]
        lines.append(f"### Idle over TLS: {args.idle_tls_clients} idle subscriptions to one stream, "
                     "each on its own connection (ECDSA P-256 certificate)")
        lines.append("")
        lines.append("| | connected | RSS before | RSS with clients | per client | upstream connections |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for key, x in t.items():
            lines.append(f"| {key} | {x['established']} | {x['rss_before_kib'] / 1024:.1f} MiB | "
                         f"{x['rss_kib'] / 1024:.1f} MiB | {x['kib_per_client']:.2f} KiB | {x['upstream_connections']} |")
        h2, h1 = t.get("ssegate h2"), t.get("ssegate TLS HTTP/1.1")
        lines.append("")
        if h2 and h1:
            lines.append(f"Targets: HTTP/2 ≤ 8 KiB per idle client ({h2['kib_per_client']:.1f} KiB): "
                         f"{verdict(h2['kib_per_client'] <= 8)}; TLS HTTP/1.1 ≤ 6 KiB "
                         f"({h1['kib_per_client']:.1f} KiB): {verdict(h1['kib_per_client'] <= 6)}.")
            lines.append("")
    if "per_user" in r:
        u = r["per_user"]
        lines.append(f"### A stream per user: {args.per_user_clients} clients, each on its own stream "
                     f"(its own Authorization), one 200-byte event a second each, "
                     f"{args.per_user_window:.0f} s measured after all are connected")
        lines.append("")
        lines.append("Each stream's events come from a ticker of its own (`naive_app --stagger`), so "
                     "the 5,000 streams tick at different moments, as different users' do. CPU is the "
                     f"median of the window's {CPU_SLICE_S}-second slices (all slices are in the raw results).")
        lines.append("")
        lines.append("| | connected | RSS per client | CPU (cores) | upstream connections | events/s | p50 | p99 | p99.9 | lost |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, x in u.items():
            cpu = f"{x['cpu_cores']:.3f}" + (" (the app)" if name == "direct" else "")
            lines.append(f"| {name} | {x['established']} | {x['kib_per_client']:.1f} KiB | {cpu} | "
                         f"{x['upstream_connections']} | {x['events_per_s']:.0f} | {latency_cells(x['latency_us'])} | "
                         f"{x['gaps'] + x['duplicates']} |")
        if {"direct", "nginx", "ssegate"} <= set(u):
            s_, n, d = u["ssegate"], u["nginx"], u["direct"]
            history = s_.get("buffered_kib_per_client", 0)
            per_event = s_.get("bytes_per_event", 0)
            full = min(DEFAULT_BUFFER_AGE_S, DEFAULT_BUFFER_EVENTS) * per_event / 1024
            cap = DEFAULT_BUFFER_TOTAL_MIB * 1024 / max(s_["established"], 1)
            lines.append("")
            lines.append(f"Of ssegate's {s_['kib_per_client']:.1f} KiB per client, {history:.1f} KiB is the "
                         f"stream's buffered history at the end of the window ({per_event:.0f} bytes per "
                         f"event as buffer_bytes counts them); the rest, {s_['kib_per_client'] - history:.1f} KiB, "
                         f"is the stream, its upstream connection and the client's connection. Under the "
                         f"default buffer settings a stream at one event a second keeps up to "
                         f"{min(DEFAULT_BUFFER_AGE_S, DEFAULT_BUFFER_EVENTS)} events (buffer_age 10 min), "
                         f"{full:.0f} KiB; buffer_total_bytes (256 MiB) caps all streams' history together, "
                         f"{cap:.0f} KiB a stream for {s_['established']} streams.")
            lines.append("")
            lines.append(f"Targets: memory per client ≤ Nginx's ({s_['kib_per_client']:.1f} vs "
                         f"{n['kib_per_client']:.1f} KiB): {verdict(s_['kib_per_client'] <= n['kib_per_client'])}; "
                         f"without the history: {verdict(s_['kib_per_client'] - history <= n['kib_per_client'])}; "
                         f"CPU ≤ Nginx's ({s_['cpu_cores']:.3f} vs {n['cpu_cores']:.3f}): "
                         f"{verdict(s_['cpu_cores'] <= n['cpu_cores'])}; p99 ≤ 2× direct's "
                         f"({s_['latency_us']['p99'] / 1000:.2f} vs {d['latency_us']['p99'] / 1000:.2f} ms): "
                         f"{verdict(s_['latency_us']['p99'] <= 2 * d['latency_us']['p99'])}.")
        lines.append("")
    if "churn" in r:
        c = r["churn"]
        lines.append(f"### Churn: {args.churn_clients} clients on {CHURN_STREAMS} streams, "
                     f"{args.churn_rate:.0f} a second leaving and as many joining (half resuming with "
                     f"Last-Event-ID, half new), {args.churn_window:.0f} s measured")
        lines.append("")
        lines.append(f"New clients pick their stream from a window that slides by {CHURN_ROTATE} streams a "
                     "second, so streams lose their last client, linger 30 s and close while others open. "
                     "Lost and repeated count every event a client missed or saw twice, resumes included; "
                     "direct and Nginx cannot resume (the app starts each request anew), so theirs "
                     "are not comparable.")
        lines.append("")
        lines.append("| | sessions | left/s | resumed/s | CPU (cores) | p50 | p99 | p99.9 | RSS at start | RSS at end | upstream at end | lost | repeated |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, x in c.items():
            cpu = f"{x['cpu_cores']:.3f}" + (" (the app)" if name == "direct" else "")
            lines.append(f"| {name} | {x['established']} | {x['left_per_s']:.0f} | {x['resumed_per_s']:.0f} | {cpu} | "
                         f"{latency_cells(x['latency_us'])} | {x['rss_start_kib'] / 1024:.1f} MiB | "
                         f"{x['rss_end_kib'] / 1024:.1f} MiB | {x['upstream_connections']} | {x['gaps']} | {x['duplicates']} |")
        if "ssegate" in c:
            x = c["ssegate"]
            lines.append("")
            lines.append(f"ssegate: {x['resumes']:.0f} resumes in the window ({x['resume_gaps']:.0f} found a gap), "
                         f"streams {x['streams_start']:.0f} at the start and {x['streams_end']:.0f} at the end, "
                         f"buffered history {x['buffer_kib_start'] / 1024:.1f} → {x['buffer_kib_end'] / 1024:.1f} MiB. "
                         f"Resumes exact (nothing lost or repeated, no gap): "
                         f"{verdict(x['gaps'] == 0 and x['duplicates'] == 0 and x['resume_gaps'] == 0)}.")
        lines.append("")
    return "\n".join(lines)


def nice_top(value):
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above `value` (and at least 1): an axis top
    whose quarters are round numbers."""
    step = 1.0
    while step * 10 <= value:
        step *= 10
    for factor in (1, 2, 2.5, 5, 10):
        if step * factor >= value:
            return max(step * factor, 1)
    return max(value, 1)


def soak_svg(samples, path):
    """A small plot of the soak: RSS (MiB) and open files against minutes, as SVG."""
    width, height, left, right, top, bottom = 640, 260, 56, 56, 24, 36
    xs = [p["minute"] for p in samples]
    span = max(max(xs), 1e-9)
    rss = [p["rss_kib"] / 1024 for p in samples]
    fds = [p["fds"] for p in samples]
    rss_top = nice_top(max(rss) * 1.1)
    fds_top = nice_top(max(fds) * 1.1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_at(m):
        return left + plot_w * m / span

    def line(values, top_value, colour):
        points = " ".join(f"{x_at(m):.1f},{top + plot_h * (1 - v / top_value):.1f}" for m, v in zip(xs, values))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
           f'<line x1="{left + plot_w}" y1="{top}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>']
    for k in range(5):
        frac = k / 4
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#1f6feb">{rss_top * frac:.0f}</text>')
        out.append(f'<text x="{left + plot_w + 6}" y="{y + 4:.1f}" fill="#d1242f">{fds_top * frac:.0f}</text>')
    step = 5 if span > 10 else 1
    minute = 0
    while minute <= span + 1e-9:
        out.append(f'<text x="{x_at(minute):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{minute:.0f}</text>')
        minute += step
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">minutes</text>')
    out.append(f'<text x="{left}" y="{top - 8}" fill="#1f6feb">RSS (MiB)</text>')
    out.append(f'<text x="{left + plot_w}" y="{top - 8}" text-anchor="end" fill="#d1242f">open files</text>')
    out.append(line(rss, rss_top, "#1f6feb"))
    out.append(line(fds, fds_top, "#d1242f"))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def render_soak(args, started):
    k = RESULTS["soak"]
    samples = k["samples"]
    soak_svg(samples, os.path.join(ROOT, "docs", "soak.svg"))
    lines = [f"Run of {started} on {platform.node()}: {os.cpu_count()} cores. Command: `{command_line()}`.", "",
             f"### Soak: the churn ({k['clients']} clients on {CHURN_STREAMS} streams, {k['churn']:.0f} a second "
             f"leaving and joining) for {k['minutes']:.0f} minutes, then every client gone", "",
             "![RSS and open files of ssegate over the soak](docs/soak.svg)", "",
             "| minute | phase | RSS | open files | streams | subscriptions | buffered | upstream connections |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in samples:
        lines.append(f"| {p['minute']:.1f} | {p['phase']} | {p['rss_kib'] / 1024:.1f} MiB | {p['fds']} | "
                     f"{p['streams']:.0f} | {p['subscriptions']:.0f} | {p['buffer_kib'] / 1024:.1f} MiB | {p['upstream']} |")
    churn = [p for p in samples if p["phase"] == "churn"]
    last = samples[-1]
    report = k["report"]
    lines.append("")
    # The steady state: from the fifth minute on (streams and their histories fill first).
    steady = [p for p in churn if p["minute"] >= 5] or churn
    if len(steady) >= 2:
        first, end = steady[0], steady[-1]
        top = max(steady, key=lambda p: p["rss_kib"])
        lines.append(f"In the steady state, from minute {first['minute']:.0f} to {end['minute']:.0f}, RSS went "
                     f"{first['rss_kib'] / 1024:.1f} → {end['rss_kib'] / 1024:.1f} MiB (at most "
                     f"{top['rss_kib'] / 1024:.1f}), open files {first['fds']} → {end['fds']}, streams "
                     f"{first['streams']:.0f} → {end['streams']:.0f}, buffered history "
                     f"{first['buffer_kib'] / 1024:.1f} → {end['buffer_kib'] / 1024:.1f} MiB.")
    lines.append(f"After the clients left and the streams' linger: streams {last['streams']:.0f}, "
                 f"subscriptions {last['subscriptions']:.0f}, buffered {last['buffer_kib']:.0f} KiB, "
                 f"upstream connections {last['upstream']}, open files {last['fds']} "
                 f"(against {samples[0]['fds']} before any client): "
                 f"{verdict(last['streams'] == 0 and last['subscriptions'] == 0 and last['upstream'] == 0)}. "
                 f"Clients saw {report['gaps']} events lost and {report['duplicates']} repeated over "
                 f"{report['established']} sessions. RSS after the clients left is what the allocator "
                 f"keeps of freed memory for reuse (glibc's arenas); nothing is held: every gauge and "
                 f"the buffer are at zero.")
    return "\n".join(lines)


def command_line():
    """The bench/run.sh command of this run (what came after --loadgen PATH)."""
    argv, skip = [], False
    for word in sys.argv[1:]:
        if skip:
            skip = False
        elif word == "--loadgen":
            skip = True
        elif not word.startswith("--loadgen="):
            argv.append(word)
    return " ".join(["bench/run.sh"] + argv)


def versions():
    haproxy = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return " ".join(haproxy.split()[:3])


def render_cluster(args, started, seconds, total):
    c = RESULTS["cluster"]
    small, big = args.cluster_clients
    names = ["instance 1", "instance 2", "instance 3"]
    cluster = {n: c[f"cluster {n}"] for n in (small, big)}
    behind = {n: c[f"embedded, behind HAProxy {n}"] for n in (small, big)}
    direct = {n: c[f"embedded, direct {n}"] for n in (small, big)}
    plain = c[f"embedded, behind HAProxy without http-no-delay {small}"]
    lines = []
    lines.append("### Cluster: three instances on one Redis behind HAProxy, one stream, 100 events/s of 200 bytes")
    lines.append("")
    lines.append(f"Run of {started} on {platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
                 f"{versions()}, Redis {c['redis_version']}; this scenario took {seconds:.0f} s"
                 + (f" of the run's {total:.0f} s" if total > seconds + 5 else "")
                 + f". Command: `{command_line()}`.")
    lines.append("")
    lines.append("One window per row, in the order of the table; the cluster's rows share their processes, "
                 "and so do each embedded variant's. CPU in cores over the window (utime + stime from /proc); "
                 "every process here, the load generator included, shares the two cores. Redis: commands "
                 "executed per event the app made (`INFO commandstats`, those the append script runs "
                 "included), and in brackets the requests the instances sent. Delivered: events/s that "
                 "reached the clients, and their share of what the app made times the clients (above 100% when "
                 "they caught up on a backlog from before the window). Closed: "
                 "connections the server side ended during the run (the load generator does not reconnect). "
                 "Lost: gaps and duplicates.")
    lines.append("")
    lines.append("| | clients (closed) | ssegate CPU per instance | ssegate CPU, all | HAProxy CPU | Redis CPU "
                 "| load generator CPU | upstream connections | Redis per event | delivered | p50 | p99 | max | lost |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def total_cpu(x):
        cpu = x["cpu_cores"]
        return sum(cpu[n] for n in names) if "instance 1" in cpu else cpu["instance"]

    def row(label, x):
        cpu = x["cpu_cores"]
        l = x["latency_us"]
        if "instance 1" in cpu:
            each = " / ".join(f"{cpu[n]:.3f}" for n in names)
            redis_cpu = f"{cpu['redis']:.3f}"
            per_event = f"{x['redis_ops_per_event']:.2f} ({x['redis_requests_per_event']:.2f})"
        else:
            each = f"{cpu['instance']:.3f}"
            redis_cpu = per_event = "–"
        hap = f"{cpu['haproxy']:.3f}" if "haproxy" in cpu else "–"
        offered = x["clients"] * x["app_events_per_s"]
        lines.append(f"| {label} | {x['clients']:,} ({x['errors'] + x['failed']}) | {each} | {total_cpu(x):.3f} | "
                     f"{hap} | {redis_cpu} | {cpu['loadgen']:.3f} | {x['upstream_connections']} | {per_event} | "
                     f"{x['events_per_s']:,.0f} ({x['events_per_s'] / offered:.0%}) | "
                     f"{l['p50'] / 1000:.2f} ms | {l['p99'] / 1000:.2f} ms | {l['max'] / 1000:.2f} ms | "
                     f"{x['gaps'] + x['duplicates']} |")

    for n in (small, big):
        row("cluster (3 instances), behind HAProxy", cluster[n])
    for n in (small, big):
        row("embedded (1 instance), behind HAProxy", behind[n])
    for n in (small, big):
        row("embedded (1 instance), direct", direct[n])
    row("embedded, behind HAProxy without `option http-no-delay`", plain)
    lines.append("")

    def per_event(x):
        return ", ".join(f"{name.upper()} {n / x['app_events']:.2f}" for name, n in x["redis_ops"].items()
                         if n / x["app_events"] >= 0.005)

    cs, cl = cluster[small], cluster[big]
    ok_ops = (cl["redis_ops_per_event"] <= cs["redis_ops_per_event"] * 1.1
              and cl["redis_requests_per_event"] <= cs["redis_requests_per_event"] * 1.1)
    lines.append(f"- **Upstream connections**: the app opened {c['streams_opened']} stream(s) in all, over both "
                 f"cluster windows and the resume storm (open during each window: "
                 f"{cs['upstream_connections']}, {cl['upstream_connections']}). Target 1: "
                 f"{verdict(c['streams_opened'] == 1)}. Roles on `/streams` afterwards: "
                 + ", ".join(f"{n} {'/'.join(str(r) for r in c['roles'][n])}" for n in names)
                 + f"; subscriptions per instance in the middle of the {big:,}-client window: "
                 + " / ".join(f"{cl['subscriptions'][n]:.0f}" for n in names) + ".")
    lines.append(f"- **Redis per event**: {cs['redis_ops_per_event']:.2f} commands executed "
                 f"({cs['redis_requests_per_event']:.2f} requests) with {small:,} clients, "
                 f"{cl['redis_ops_per_event']:.2f} ({cl['redis_requests_per_event']:.2f}) with {big:,}. "
                 f"Target not growing with clients (at most 10% more): {verdict(ok_ops)}. By command, "
                 f"{small:,} clients: {per_event(cs)}; {big:,} clients: {per_event(cl)}.")
    for n in (small, big):
        x = total_cpu(cluster[n])
        lines.append(f"- **CPU, {n:,} clients**: the three instances together {x:.3f} cores ({x / 3:.3f} per "
                     f"instance on average); one embedded instance with all the clients {total_cpu(behind[n]):.3f} "
                     f"behind HAProxy, {total_cpu(direct[n]):.3f} directly. Cluster ÷ embedded behind HAProxy: "
                     f"{x / total_cpu(behind[n]):.2f}× in all, {x / 3 / total_cpu(behind[n]):.2f}× per instance. "
                     f"Redis {cluster[n]['cpu_cores']['redis']:.3f}; HAProxy {cluster[n]['cpu_cores']['haproxy']:.3f} "
                     f"in front of the cluster, {behind[n]['cpu_cores']['haproxy']:.3f} in front of the embedded "
                     f"instance.")
    for n in (small, big):
        added = (cluster[n]["latency_us"]["p99"] - behind[n]["latency_us"]["p99"]) / 1000
        hop = (behind[n]["latency_us"]["p99"] - direct[n]["latency_us"]["p99"]) / 1000
        lines.append(f"- **p99 added by the cluster, {n:,} clients** (cluster behind HAProxy − embedded behind "
                     f"HAProxy): {added:+.2f} ms (p50 {(cluster[n]['latency_us']['p50'] - behind[n]['latency_us']['p50']) / 1000:+.2f} ms); "
                     f"HAProxy's own hop (embedded behind it − embedded direct): {hop:+.2f} ms.")
    lines.append(f"- **HAProxy without `option http-no-delay`** ({small:,} clients): p50 "
                 f"{plain['latency_us']['p50'] / 1000:.2f} ms and p99 {plain['latency_us']['p99'] / 1000:.2f} ms, "
                 f"against {behind[small]['latency_us']['p50'] / 1000:.2f} and "
                 f"{behind[small]['latency_us']['p99'] / 1000:.2f} ms with it.")
    told = []
    for key, x in c.items():
        if isinstance(x, dict) and x.get("counters"):
            for instance, values in x["counters"].items():
                told.append(f"{key}, {instance}: " + ", ".join(f"`{k[len('ssegate_'):]}` +{v:.0f}" for k, v in values.items()))
    if any(x["errors"] or x["failed"] for x in c.values() if isinstance(x, dict) and "errors" in x):
        firsts = {x["first_error"] for x in c.values() if isinstance(x, dict) and x.get("first_error")}
        told.append("the load generator's first error per window: " + "; ".join(sorted(firsts)))
    lines.append("- **Counters the instances added during the windows** (only those not 0): "
                 + ("; ".join(told) if told else "none") + ".")
    lines.append("")
    s = c["storm"]
    k = s["catch_up_ms"]
    xrange = s["redis_ops"].get("xrange", 0) + s["redis_ops"].get("xrevrange", 0)
    lines.append(f"### Cluster resume storm: {s['clients']:,} clients reconnect within {s['ramp_s']:.2f} s to a "
                 f"fourth instance that never saw the stream, each {s['newest_seq'] - s['replayed_from_seq']} "
                 f"events back")
    lines.append("")
    lines.append("| connected | failed | caught up | catch-up p50 | p99 | max | gaps | duplicates | "
                 "`cluster_backfills_total` | XRANGE calls | Redis commands in all |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines.append(f"| {s['established']} | {s['failed']} | {k['clients']} | {k['p50']} ms | {k['p99']} ms | "
                 f"{k['max']} ms | {s['gaps']} | {s['duplicates']} | {s['backfills']:.0f} | {xrange} | "
                 f"{sum(s['redis_ops'].values())} |")
    lines.append("")
    ok = (k["clients"] == s["clients"] and k["max"] <= 2000 and s["gaps"] == 0 and s["duplicates"] == 0
          and s["failed"] == 0)
    lines.append(f"Target all caught up within 2 s, nothing lost or repeated: {verdict(ok)}. "
                 f"Streams on the instance before the storm: {len(s['streams_before'])}; its role after: "
                 f"{'/'.join(str(r) for r in s['role_after'])}. `cluster_backfills_total` counts resumes "
                 f"served from the log, one per client; the XRANGE column counts reads of the log. Redis "
                 f"commands over the storm's {s['seconds']:.1f} s, by command, the cluster's own traffic "
                 f"meanwhile included (appends, follower reads): "
                 + ", ".join(f"{name.upper()} {n}" for name, n in s["redis_ops"].items())
                 + ". Other counters of the instance: "
                 + (", ".join(f"`{k2[len('ssegate_'):]}` +{v:.0f}" for k2, v in s["counters"].items()) or "none")
                 + ".")
    lines.append("")
    return "\n".join(lines)


def write_benchmarks(text, block="results"):
    """Replaces the text between `<!-- {block}:begin -->` and `<!-- {block}:end -->`."""
    path = os.path.join(ROOT, "BENCHMARKS.md")
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    with open(path) as f:
        doc = f.read()
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{text}\n{end}{tail}"
    else:
        doc += f"\n{begin}\n{text}\n{end}\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--loadgen", required=True)
    # The single stream, the most sensitive to noise, runs before the capacity steps load the
    # machine to its limit.
    scenarios = ["idle", "idle_tls", "fanout", "single", "capacity", "resume", "per_user",
                 "churn", "cluster", "plain"]
    # The soak (half an hour) runs only when named: `bench/run.sh --only soak`.
    parser.add_argument("--only", nargs="*", choices=scenarios + ["soak"], default=scenarios)
    parser.add_argument("--idle-clients", type=int, default=15000)
    parser.add_argument("--capacity-clients", type=int, default=1000)
    parser.add_argument("--capacity-rates", type=int, nargs="*", default=[100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000])
    parser.add_argument("--resume-clients", type=int, default=5000)
    parser.add_argument("--cluster-clients", type=int, nargs=2, default=[300, 3000],
                        help="cluster: the two client counts whose Redis calls per event are compared")
    parser.add_argument("--storm-clients", type=int, default=5000, help="cluster: the resume storm's clients")
    parser.add_argument("--cluster-lease", default=None,
                        help="cluster: the instances' `lease` (default: ssegate's own, 10s)")
    parser.add_argument("--storm-back", type=int, default=200,
                        help="cluster: how many events before the newest the storm resumes from")
    parser.add_argument("--idle-tls-clients", type=int, default=2000)
    parser.add_argument("--churn-clients", type=int, default=5000)
    parser.add_argument("--churn-rate", type=float, default=200,
                        help="churn: clients leaving (and joining) per second")
    parser.add_argument("--churn-window", type=float, default=30.0)
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--per-user-clients", type=int, default=5000)
    parser.add_argument("--per-user-window", type=float, default=60.0,
                        help="per-user streams: seconds measured after every client is connected")
    parser.add_argument("--subjects", nargs="*", default=["direct", "nginx", "ssegate"],
                        help="per-user streams: which of direct, nginx, ssegate to run")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--plain-window", type=int, default=4,
                        help="plain requests: seconds of each wrk run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fan-out and single stream: rounds, reported as medians")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    args.cluster_clients.sort()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.time()
    took = {}
    for name in args.only:
        began = time.time()
        globals()[f"scenario_{name}"](args)
        took[name] = time.time() - began
        print(f"{name}: {took[name]:.0f} s", flush=True)
        # Let the kernel finish with the sockets of the last scenario before the next.
        time.sleep(2)
    seconds = time.time() - t0
    blocks = {}
    if any(name not in ("cluster", "plain", "per_user", "idle_tls", "churn", "soak") for name in args.only):
        blocks["results"] = render(args, started, seconds)
    if "cluster" in args.only:
        blocks["cluster-results"] = render_cluster(args, started, took["cluster"], seconds)
    if "plain" in args.only:
        blocks["plain-results"] = render_plain(args, started, took["plain"])
    realistic = [name for name in ("idle_tls", "per_user", "churn") if name in args.only]
    if realistic:
        blocks["realistic-results"] = render_realistic(args, started, sum(took[name] for name in realistic))
    if "soak" in args.only:
        blocks["soak-results"] = render_soak(args, started)
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=2)
    for block, text in blocks.items():
        print(text)
        if not args.no_write:
            write_benchmarks(text, block)
    if not args.no_write:
        print("BENCHMARKS.md updated; raw results in", os.path.join(WORK, "results.json"))


if __name__ == "__main__":
    main()
