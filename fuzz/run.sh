#!/usr/bin/env bash
# Runs one fuzz target under AFL++ (through `cargo afl`, on the stable toolchain) for a while:
#
#   fuzz/run.sh head 600      # target: head (the lean HTTP/1.1 head reader and the target
#                             # checks), sse (the event-stream parser and encoder), config
#                             # (the TOML loader) or upstream (a stream's reading of an app's
#                             # response head and body); then seconds
#
# Installs cargo-afl (and builds its AFL++) if missing. Starts from fuzz/corpus/<target>,
# writes to fuzz/out/<target>; prints executions, paths found, crashes and hangs at the end.
# A crash or hang input, once fixed, goes into fuzz/corpus/<target>/ so that `cargo test`
# (tests/fuzz_seeds.rs) replays it for good.
set -euo pipefail
target=${1:?usage: fuzz/run.sh head|sse|config|upstream [seconds]}
seconds=${2:-600}
case "$target" in head|sse|config|upstream) ;; *) echo "unknown target $target" >&2; exit 2;; esac
cd "$(dirname "$0")"

command -v cargo-afl >/dev/null || cargo install --locked cargo-afl
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release --quiet --bin "$target"

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
mkdir -p "out/$target"
# -V: stop after that many seconds; -t: an input that runs over 1 s is a hang.
cargo afl fuzz -V "$seconds" -t 1000 -i "corpus/$target" -o "out/$target" -- "target/release/$target" \
  > "out/$target/fuzz.log" 2>&1 || { tail -20 "out/$target/fuzz.log"; exit 1; }

stats="out/$target/default/fuzzer_stats"
crashes=$(find "out/$target/default/crashes" -type f -name 'id:*' | wc -l)
hangs=$(find "out/$target/default/hangs" -type f -name 'id:*' | wc -l)
printf '%s: %s executions in %s s (%s/s), %s paths, %s crashes, %s hangs\n' "$target" \
  "$(awk '/^execs_done/ {print $3}' "$stats")" "$(awk '/^run_time/ {print $3}' "$stats")" \
  "$(awk '/^execs_per_sec/ {print $3}' "$stats")" "$(awk '/^corpus_count/ {print $3}' "$stats")" \
  "$crashes" "$hangs"
[ "$crashes" -eq 0 ] && [ "$hangs" -eq 0 ]
