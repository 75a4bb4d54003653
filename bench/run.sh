#!/usr/bin/env bash
# Benchmarks ssegate against the naive app served directly and against Nginx configured for SSE
# the way its documentation recommends, and ssegate as a cluster (three instances on Redis behind
# HAProxy) against one embedded instance, and plain requests with compression off and on, in one
# run, and writes the tables into BENCHMARKS.md. Loopback only; about 11 minutes on 2 cores (the
# cluster scenario alone, `--only cluster`, about 2 minutes; `--only plain` about 2). Needs root
# (or sudo) only to install Nginx, HAProxy, Redis and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; fi
}
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "== installing nginx from Debian"
  apt_install nginx-light
fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  echo "== installing haproxy from Debian"
  apt_install haproxy
fi
if ! command -v wrk >/dev/null 2>&1 && [ ! -x /usr/bin/wrk ]; then
  echo "== installing wrk from Debian (plain requests)"
  apt_install wrk
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server from Debian"
  apt_install redis-server
fi

echo "== building the binaries (profiling profile: release code with symbols, for perf)"
cargo build --profile profiling --bin ssegate --example naive_app
cargo bench --bench loadgen --no-run 2>&1 | tail -1
cc -O2 -o target/profiling/floor bench/floor.c
loadgen=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loadgen" and m.get("executable"):
        print(m["executable"])' | tail -1)

# One process holds well under 20,000 sockets; the scenarios stay below that.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py --loadgen "$loadgen" "$@"
