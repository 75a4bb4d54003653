#!/usr/bin/env python3
"""The benchmark driver of bench/run.sh: direct, Nginx and ssegate in one run, fresh processes
for every scenario, loopback only. Memory comes from /proc (RSS summed over the process tree),
CPU from /proc/PID/stat over the measurement window. Writes the results into BENCHMARKS.md
between its markers and prints them."""

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
SSEGATE = os.path.join(ROOT, "target/release/ssegate")
APP = os.path.join(ROOT, "target/release/examples/naive_app")
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
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
        wait_port(port)

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


def start_app(interval, payload):
    port = free_port()
    return Proc("app", [APP, "--listen", f"127.0.0.1:{port}", "--interval", interval,
                        "--payload", str(payload), "--lifetime", "off"], port)


def start_ssegate(app_port, extra=""):
    port = free_port()
    path = os.path.join(WORK, f"ssegate-{port}.toml")
    with open(path, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nmax_connections = 19000\n'
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


def loadgen(args, port, **flags):
    argv = [args.loadgen, "--url", f"http://127.0.0.1:{port}/events"]
    for key, value in flags.items():
        if value is True:
            argv.append("--" + key.replace("_", "-"))
        elif value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_loadgen(args, port, on_measuring=None, **flags):
    """Runs the load generator; `on_measuring` is called when its window opens."""
    proc = loadgen(args, port, **flags)
    report = None
    for line in proc.stdout:
        data = json.loads(line)
        if data.get("phase") == "measuring":
            if on_measuring:
                on_measuring()
        else:
            report = data
    proc.wait()
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


# A fan-out row with ssegate holding events long enough that several share a write (at 100
# events/s), to show what the CPU target would cost in latency.
HELD = "ssegate, coalesce 80ms"
# And the floor: bench/floor.c, a C loop that only formats each event and send()s it to each
# client, the least any server writing each event at once can spend.
FLOOR = "floor: one send() per event per client"
FLOOR_BIN = os.path.join(ROOT, "target/release/floor")


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
        marks["t0"] = time.time()
        time.sleep(args.window - 0.2)
        marks["cpu1"] = cpu_seconds(subject.pid)
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
    return {"cpu_cores": cpu, "upstream_connections": marks["upstream"],
            "events_per_s": report["events_per_s"], "latency_us": report["latency_us"],
            "gaps": report["gaps"], "duplicates": report["duplicates"],
            "errors": report["errors"], "established": report["established"]}


def combine(rounds):
    """Per figure, the median over the rounds; losses added up; every round kept."""
    latency = {key: median([r["latency_us"][key] for r in rounds]) for key in ("p50", "p99", "p999", "max")}
    return {"cpu_cores": median([r["cpu_cores"] for r in rounds]),
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


def scenario_resume(args):
    app = start_app("10ms", 200)
    proxy = start_ssegate(app.port)
    seen = []
    stop = threading.Event()

    def monitor():
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        # The Host the load generator sends too: it is part of the default stream key.
        host = f"127.0.0.1:{proxy.port}".encode()
        sock.sendall(b"GET /events HTTP/1.1\r\nhost: " + host + b"\r\naccept: text/event-stream\r\n\r\n")
        sock.settimeout(0.5)
        buf = b""
        while not stop.is_set():
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
                    seen.append((ident, seq))
        sock.close()

    thread = threading.Thread(target=monitor)
    thread.start()
    deadline = time.time() + 30
    while len(seen) < 520 and time.time() < deadline:
        time.sleep(0.1)
    ident, seq = seen[-501]
    newest = seen[-1][1]
    report = run_loadgen(args, proxy.port, clients=args.resume_clients, ramp=args.resume_clients,
                         warmup="0s", duration="4s", last_event_id=ident, resume_seq=seq,
                         catch_up_seq=newest)
    stop.set()
    thread.join()
    RESULTS["resume"] = {"clients": args.resume_clients, "established": report["established"],
                         "failed": report["failed"], "ramp_s": report["ramp_s"],
                         "replayed_from_seq": seq, "newest_seq": newest,
                         "catch_up_ms": report["catch_up_ms"], "gaps": report["gaps"],
                         "duplicates": report["duplicates"], "errors": report["errors"],
                         "first_error": report["first_error"]}
    print(f"resume: {RESULTS['resume']}", flush=True)
    proxy.stop()
    app.stop()


def verdict(ok):
    return "met" if ok else "**missed**"


def render(args, started, seconds):
    r = RESULTS
    lines = []
    lines.append(f"Run of {started} on {platform.node()}: {os.cpu_count()} cores, "
                 f"{platform.machine()}, Linux {platform.release()}, "
                 f"{subprocess.run([NGINX, '-v'], capture_output=True, text=True).stderr.strip()}; "
                 f"{seconds:.0f} s in all. Command: `bench/run.sh`.")
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
                     f"ssegate uses {s['cpu_cores'] / fl['cpu_cores']:.2f}× the floor.")
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


def write_benchmarks(text):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
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
    scenarios = ["idle", "fanout", "single", "capacity", "resume"]
    parser.add_argument("--only", nargs="*", choices=scenarios, default=scenarios)
    parser.add_argument("--idle-clients", type=int, default=15000)
    parser.add_argument("--capacity-clients", type=int, default=1000)
    parser.add_argument("--capacity-rates", type=int, nargs="*", default=[100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000])
    parser.add_argument("--resume-clients", type=int, default=5000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="fan-out and single stream: rounds, reported as medians")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.time()
    for name in args.only:
        globals()[f"scenario_{name}"](args)
        # Let the kernel finish with the sockets of the last scenario before the next.
        time.sleep(2)
    text = render(args, started, time.time() - t0)
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=2)
    print(text)
    if not args.no_write:
        write_benchmarks(text)
        print("BENCHMARKS.md updated; raw results in", os.path.join(WORK, "results.json"))


if __name__ == "__main__":
    main()
