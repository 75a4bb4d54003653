#!/usr/bin/env bash
# Benchmarks ssegate against the naive app served directly and against Nginx configured for SSE
# the way its documentation recommends, in one run, and writes the table into BENCHMARKS.md.
# Loopback only; about 7 minutes on 2 cores. Needs root (or sudo) only to install Nginx.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "== installing nginx from Debian"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; fi
fi

echo "== building release binaries"
cargo build --release --bin ssegate --example naive_app
cargo bench --bench loadgen --no-run 2>&1 | tail -1
cc -O2 -o target/release/floor bench/floor.c
loadgen=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loadgen" and m.get("executable"):
        print(m["executable"])' | tail -1)

# One process holds well under 20,000 sockets; the scenarios stay below that.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py --loadgen "$loadgen" "$@"
