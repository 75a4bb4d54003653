"""End to end with [cluster]: three ssegate instances sharing their streams through a real Redis,
behind a real HAProxy configured as haproxy.cfg.tmpl says (round-robin, no stickiness, health
checks on /readyz), in front of a Starlette app that numbers its events and resumes from
Last-Event-ID. The clients are what users run: npm `eventsource` and Chromium's EventSource."""

import datetime
import json
import os
import secrets
import signal
import time
import urllib.request

import pytest

from conftest import App, Client, Haproxy, HERE, Redis, Ssegate, browser, eventually

TICK = 0.05  # the app's counter: 20 events a second
CLIENTS = 300
# At the end every client is at most this many events behind the app (a second's worth).
LAG = 20


def cluster_config(app, redis, secret, node):
    return f'''shutdown_delay = "1s"
drain_spread = "2s"

[cluster]
redis = "{redis.url()}"
secret_file = "{secret}"
lease = "2s"
node = "{node}"

[defaults]
retry = "1s"

[[route]]
path = "/events"
upstream = "http://127.0.0.1:{app.port}"

[[route]]
path = "/"
upstream = "http://127.0.0.1:{app.port}"
'''


def drain_span(log_path):
    """How many SSE responses a stopped instance ended in its drain, and over how long (from its
    log's "sse subscription ended ... ssegate is stopping" lines)."""
    times = []
    with open(log_path) as f:
        for line in f:
            if "sse subscription ended" in line and 'ended="ssegate is stopping"' in line:
                times.append(datetime.datetime.fromisoformat(line.split(" ", 1)[0]))
    return len(times), (max(times) - min(times)).total_seconds() if times else 0.0


def sequence_problems(numbers, ids):
    """What is wrong with one client's numbers (and their ids): each gap with the numbers that
    are missing, each repeat or step back; [] when they run 1 by 1 from first to last."""
    problems = []
    if not numbers:
        return ["no events at all"]
    for before, after in zip(numbers, numbers[1:]):
        if after == before + 1:
            continue
        if after > before + 1:
            missing = list(range(before + 1, after))
            shown = missing if len(missing) <= 6 else missing[:3] + ["..."] + missing[-3:]
            problems.append(f"lost {len(missing)} after {before}: {shown}")
        else:
            problems.append(f"{after} again after {before}")
    if len(set(ids)) != len(ids):
        problems.append(f"{len(ids) - len(set(ids))} repeated ids")
    return problems


@pytest.mark.cluster
def test_rolling_restart_of_three_instances_under_300_npm_clients_and_a_browser(procs):
    """Every instance in turn is stopped (SIGTERM: /readyz 503, HAProxy takes it out of the
    rotation within its shutdown_delay, then its SSE responses end and it exits 0) and started
    again on the same ports; meanwhile 300 npm clients and a Chromium page watch one stream
    through HAProxy, reconnecting to the other instances with their Last-Event-ID. Each of them
    sees every number once, in order, from its first event to its last, and never closes for
    good; the app never serves more than one stream but briefly during a handover, and ends with
    exactly one."""
    started = time.monotonic()
    redis = Redis(procs)
    app = App(procs, "starlette", interval=TICK, ids=True)
    secret = os.path.join(procs.dir, "cluster-secret")
    with open(secret, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    instances = [Ssegate(procs, cluster_config(app, redis, secret, f"s{n}"), admin=True, name=f"ssegate-s{n}")
                 for n in (1, 2, 3)]
    haproxy = Haproxy(procs, instances, served_by=True)

    npm = Client(procs, "eventsource", ["node", os.path.join(HERE, "clients", "numbered.mjs"),
                                        haproxy.url("/events"), str(CLIENTS)])
    chrome = browser(procs, haproxy.url("/"))
    npm.wait(f"{CLIENTS} npm clients to open", lambda s: s.get("opened") == CLIENTS, timeout=30)
    chrome.wait("the page's EventSource to open", lambda s: s.get("opens") == 1, timeout=30)
    npm.wait("every npm client to get events", lambda s: s.get("min_last", 0) > 0)
    chrome.wait("the page to get events", lambda s: s.get("events", 0) > 0)
    assert app.stats()["open_streams"] == 1, "one upstream stream for all the cluster's clients"

    timeline = []
    for instance in instances:
        t = time.monotonic()
        code = instance.terminate(within=15)
        exited = time.monotonic()
        assert code == 0, f"{instance.name} exited with {code} on SIGTERM"
        ended, span = drain_span(instance.proc.log_path)
        instance.start()
        timeline.append(f"{instance.name}: exit {code} {exited - t:.1f}s after SIGTERM, its {ended} SSE "
                        f"responses ended over {span:.2f}s; ready again {time.monotonic() - exited:.1f}s later")

    # A few more seconds: the last instance's clients come back, everyone catches up and goes on.
    def caught_up():
        latest = app.stats()["seq"]
        return (npm.snapshot.get("min_last", 0) >= latest - LAG
                and chrome.snapshot.get("events", 0) > 0)
    npm.wait("every npm client to catch up with the app", lambda s: caught_up(), timeout=15)
    time.sleep(3)
    end = app.stats()
    chrome_final = chrome.final()
    npm_final = npm.final()
    # Everything the clients saw, kept beside the logs for a post-mortem.
    with open(os.path.join(procs.dir, "clients.json"), "w") as f:
        json.dump({"npm": npm_final["clients"], "chromium": chrome_final, "app": end}, f)

    # What each instance says of the stream (its role, Redis state) and its metrics, for a
    # post-mortem too.
    for instance in instances:
        for page in ("streams", "metrics"):
            with urllib.request.urlopen(instance.admin_url(f"/{page}"), timeout=5) as r:
                with open(os.path.join(procs.dir, f"{instance.name}-{page}.txt"), "wb") as f:
                    f.write(r.read())

    # Stop the cluster at once, before the harness would stop it one by one.
    for instance in instances:
        instance.proc.popen.send_signal(signal.SIGTERM)
    codes = [instance.proc.popen.wait(15) for instance in instances]
    duration = time.monotonic() - started

    clients = [dict(c, name=f"npm #{i}") for i, c in enumerate(npm_final["clients"])]
    messages = [e for e in chrome_final["events"] if e["type"] == "message"]
    clients.append({
        "name": "chromium", "numbers": [int(e["data"]) for e in messages], "ids": [e["id"] for e in messages],
        "others": [e for e in chrome_final["events"] if e["type"] != "message"], "opens": chrome_final["opens"],
        "opened": [], "errors": [], "statuses": chrome_final["statuses"], "servers": chrome_final["servers"],
        "ready_state": chrome_final["ready_state"]})

    # Lost or repeated events (the sequence), and everything else that can go wrong for a client.
    sequence, other = [], []
    id_of = {}
    for c in clients:
        numbers = c["numbers"]
        where = (f"{c['name']} (on {'>'.join(s or '?' for s in c['servers'])}, reconnected after "
                 f"{[o['after'] for o in c['opened'][1:]]}, first {numbers[:1]}, last {numbers[-1:]})")
        problems = sequence_problems(numbers, c["ids"])
        if problems:
            sequence.append(f"{where}: " + "; ".join(problems))
        problems = []
        if numbers and numbers[-1] < end["seq"] - LAG:
            problems.append(f"stuck at {numbers[-1]}, the app at {end['seq']}")
        if c["others"]:
            problems.append(f"other events: {c['others'][:3]}")
        if c["ready_state"] == 2 or any(e["ready_state"] == 2 for e in c["errors"]):
            problems.append(f"closed for good: {[e for e in c['errors'] if e['ready_state'] == 2][:3]}")
        if any(status != 200 for status in c["statuses"]) or len(c["statuses"]) < c["opens"]:
            problems.append(f"HTTP statuses {c['statuses']} for {c['opens']} opens")
        for number, event_id in zip(numbers, c["ids"]):
            if id_of.setdefault(number, event_id) != event_id:
                problems.append(f"event {number} has id {event_id} here, {id_of[number]} elsewhere")
                break
        if problems:
            other.append(f"{where}: " + "; ".join(problems))

    reconnects = [c["opens"] - 1 for c in clients[:-1]]
    print(f"\nrolling restart under load: {duration:.1f}s in all")
    print("\n".join(timeline))
    print(f"npm clients: {sum(reconnects)} reconnects in all, {min(reconnects)} to {max(reconnects)} each; "
          f"chromium: {clients[-1]['opens'] - 1}")
    print(f"events per client: {min(len(c['numbers']) for c in clients)} to "
          f"{max(len(c['numbers']) for c in clients)}; the app at {end['seq']}")
    print(f"app: {end['streams_opened']} upstream streams opened, at most {end['most_open']} at once, "
          f"{end['open_streams']} open at the end; Last-Event-IDs asked: {end['last_event_ids']}")
    print("\n".join(sequence + other))

    assert not other, f"{len(other)} of {len(clients)} clients went wrong:\n" + "\n".join(other[:20])
    assert end["most_open"] <= 2, f"the app had {end['most_open']} upstream streams open at once"
    assert codes == [0, 0, 0], f"exit codes at the end: {codes}"
    with open(haproxy.proc.log_path) as f:
        log = f.read()
    for n in (1, 2, 3):
        assert f"ssegate/s{n} is DOWN" in log, f"HAProxy never took s{n} out on its /readyz"
    assert not sequence, (f"{len(sequence)} of {len(clients)} clients lost or repeated events (logs, "
                          f"clients.json, /streams in {procs.dir}):\n" + "\n".join(sequence[:20]))
    assert end["open_streams"] == 1, f"the app ends with {end['open_streams']} upstream streams open"
