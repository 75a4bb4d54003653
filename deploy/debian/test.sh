#!/usr/bin/env bash
# The Debian package, tested as an admin would use it: builds it with `cargo deb`, installs it
# with dpkg, checks what it installed, then runs the installed unit under a real systemd (PID 1
# of its own PID, mount, network and cgroup namespaces, booted with no unit but this test's, so
# the machine's own services stay untouched) and finally purges the package.
#
# Run as root on Debian, where systemd is not already the init (CI; a container): it installs
# what it needs (cargo-deb, systemd, curl, openssl, python3), and refuses to run over an ssegate
# package installed before it. What it proves and what it does not: README, "Install".
set -euo pipefail
cd "$(dirname "$0")/../.."

# The pinned cargo-deb (builds with the machine's Rust; `cargo install --locked` takes minutes once).
CARGO_DEB_VERSION=3.8.0
UNIT=/usr/lib/systemd/system/ssegate.service
CONFIG=/etc/ssegate/ssegate.toml
CREDENTIALS=/run/credentials/ssegate.service
# The test's directory as seen in the namespaces, whose /run, /tmp and /var/tmp are their own.
NSWORK=/run/ssegate-test/work

passed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() {
  echo "FAIL: $*" >&2
  if [[ -n ${SD_PID:-} ]]; then
    echo "--- systemctl status ssegate, then its journal:" >&2
    ns systemctl status --no-pager --lines=0 ssegate.service >&2 || true
    ns journalctl --no-pager -o cat -u ssegate.service -u ssegate-test-app.service >&2 || true
  fi
  exit 1
}

# --- In the namespaces, before systemd: runs as their PID 1, then becomes systemd -------------
if [[ ${1:-} == --namespace-init ]]; then
  work=$2
  # Mounts made here stay here; the service's own mounts (ProtectSystem, credentials) are made
  # below a shared root, as on a booted system.
  mount --make-rprivate /
  mount -t tmpfs -o mode=0755 tmpfs /run
  mkdir -p "$NSWORK"
  mount --bind "$work" "$NSWORK"
  mount -t tmpfs -o mode=1777 tmpfs /tmp
  mount -t tmpfs -o mode=1777 tmpfs /var/tmp
  umount -R /sys/fs/cgroup
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
  # A container's policy-rc.d may forbid package scripts to touch services (exit 101); a booted
  # system has none, and the upgrade below is to restart ssegate as it would there.
  [[ ! -e /usr/sbin/policy-rc.d ]] || mount --bind /usr/bin/true /usr/sbin/policy-rc.d
  mount --make-rshared /
  ip link set lo up
  # Only these units exist for this systemd: the installed one, journald, the test's app and
  # empty stand-ins for the targets a service orders itself after.
  units=/run/ssegate-test/units
  mkdir -p "$units" /run/systemd/journald.conf.d
  printf '[Journal]\nStorage=volatile\n' >/run/systemd/journald.conf.d/test.conf
  ln -s "$UNIT" "$units/"
  for unit in systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket; do
    ln -s "/usr/lib/systemd/system/$unit" "$units/"
  done
  for target in sysinit basic sockets shutdown network network-online multi-user; do
    printf '[Unit]\nDescription=%s, empty for the test\nDefaultDependencies=no\n' "$target" \
      >"$units/$target.target"
  done
  printf '[Unit]\nDescription=the test boot\nDefaultDependencies=no\nWants=systemd-journald.socket\n' \
    >"$units/ssegate-test.target"
  printf '[Service]\nExecStart=/usr/bin/python3 %s/app.py\n' "$NSWORK" \
    >"$units/ssegate-test-app.service"
  exec env -i container=ssegate-test SYSTEMD_UNIT_PATH="$units" \
    /usr/lib/systemd/systemd --unit=ssegate-test.target --show-status=no
fi

[[ $(id -u) == 0 ]] || fail "run as root: the test installs and purges a Debian package"
[[ ! -d /run/systemd/system ]] ||
  fail "systemd runs this machine: the test boots its own systemd; run it in a container or in CI"
if dpkg-query -W -f='${Status}' ssegate 2>/dev/null | grep -q installed; then
  fail "an ssegate package is installed already; the test installs and purges its own (dpkg --purge ssegate)"
fi

echo "== tools"
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
[[ -x /usr/bin/python3 ]] || missing+=(python3-minimal)
command -v ip >/dev/null || missing+=(iproute2)
command -v pgrep >/dev/null || missing+=(procps)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ $(cargo deb --version 2>/dev/null) != "cargo-deb $CARGO_DEB_VERSION" ]]; then
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
cargo deb --version

work=$(mktemp -d /var/tmp/ssegate-deb-test.XXXXXX)
installed=""
SD_PID=""
cgroup=""
cleanup() {
  if [[ -n $SD_PID ]]; then
    kill -KILL "$SD_PID" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  # The namespaces' processes die with their PID 1; their cgroups can go once they have.
  for _ in $(seq 50); do
    [[ -n $cgroup && -d $cgroup ]] || break
    find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || sleep 0.1
  done
  [[ -z $installed ]] || dpkg --purge ssegate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== build: cargo deb"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
cargo deb --locked --output "$work/"
deb=$(echo "$work"/ssegate_*.deb)
[[ -f $deb ]] || fail "cargo deb made no package in $work"
ok "built $(basename "$deb"), $(stat -c %s "$deb") bytes"

echo "== install: dpkg -i"
dpkg -i "$deb"
installed=1
[[ $(dpkg-query -W -f='${Status}' ssegate) == "install ok installed" ]] || fail "dpkg does not list ssegate as installed"
ok "dpkg installed it"

echo "== what it installed"
[[ $(/usr/bin/ssegate --version) == "ssegate $version" ]] ||
  fail "/usr/bin/ssegate --version says '$(/usr/bin/ssegate --version)', not 'ssegate $version'"
ok "/usr/bin/ssegate --version: ssegate $version"
file_is() { # path mode owner:group
  local got
  got=$(stat -c '%a %U:%G' "$1") || fail "$1 is missing"
  [[ $got == "$2 $3" ]] || fail "$1 is $got, not $2 $3"
}
file_is /usr/bin/ssegate 755 root:root
file_is /etc/ssegate 755 root:root
file_is "$CONFIG" 644 root:root
file_is "$UNIT" 644 root:root
file_is /usr/lib/sysusers.d/ssegate.conf 644 root:root
file_is /usr/share/doc/ssegate/README.md 644 root:root
ok "files and their modes: binary 755, config, unit, sysusers.d and README 644, all root's"
cmp -s "$CONFIG" config.example.toml || fail "$CONFIG is not config.example.toml"
grep -q '^listen = "127.0.0.1:' "$CONFIG" || fail "$CONFIG does not listen on loopback"
dpkg-query -W -f='${Conffiles}\n' ssegate | grep -q "^ $CONFIG " || fail "$CONFIG is not a conffile"
ok "$CONFIG is config.example.toml, listens on loopback, and is a conffile"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd ssegate) || fail "no user ssegate"
getent group ssegate >/dev/null || fail "no group ssegate"
((uid < 1000)) || fail "user ssegate has uid $uid: not a system user"
[[ $home == /nonexistent && $shell == /usr/sbin/nologin ]] ||
  fail "user ssegate has home $home and shell $shell, not /nonexistent and /usr/sbin/nologin"
ok "system user ssegate (uid $uid, gid $gid), no home, no login"
runuser -u ssegate -- /usr/bin/ssegate check --config "$CONFIG" >"$work/check.out" ||
  fail "ssegate check --config $CONFIG, as the user ssegate, exits $?"
grep -q ": valid" "$work/check.out" || fail "ssegate check printed no verdict: $(cat "$work/check.out")"
ok "the installed config passes ssegate check, run as the user ssegate"
# verify needs the binaries the unit names; it runs without a systemd to talk to.
verified=$(systemd-analyze verify "$UNIT" 2>&1) || fail "systemd-analyze verify $UNIT: $verified"
[[ -z $verified ]] || fail "systemd-analyze verify $UNIT has complaints: $verified"
ok "systemd-analyze verify $UNIT: no complaint"

echo "== the unit under systemd"
# The app ssegate fronts in the example config: 127.0.0.1:3000, a page and an event stream.
cat >"$work/app.py" <<'EOF'
import http.server, time

class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"data: hello\n\n")
            self.wfile.flush()
            time.sleep(30)
        else:
            body = b"hello from the app\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", 3000), App).serve_forever()
EOF

ns() { nsenter --target "$SD_PID" --all "$@"; }
cgroup=$(findmnt -n -o TARGET -t cgroup2 | head -n1)
[[ -n $cgroup ]] || fail "no cgroup2 file system is mounted: systemd cannot run in a namespace here"
cgroup=$cgroup/ssegate-deb-test.$$
mkdir "$cgroup"
(
  echo "$BASHPID" >"$cgroup/cgroup.procs"
  exec unshare --pid --mount --net --uts --ipc --cgroup --fork --mount-proc \
    "$0" --namespace-init "$work"
) >"$work/systemd.log" 2>&1 &
for _ in $(seq 100); do
  SD_PID=$(pgrep -P $! || true)
  [[ -z $SD_PID ]] || [[ $(cat "/proc/$SD_PID/comm" 2>/dev/null) != systemd ]] || break
  SD_PID=""
  sleep 0.1
done
[[ -n $SD_PID ]] || fail "systemd did not start in the namespaces: $(cat "$work/systemd.log")"
for _ in $(seq 100); do
  ! ns test -S /run/systemd/private || break
  sleep 0.1
done
state=$(ns timeout 30 systemctl is-system-running --wait 2>&1) || true
[[ $state == running ]] || fail "systemd in the namespaces is '$state': $(cat "$work/systemd.log")"
ns systemctl start ssegate-test-app.service
ok "systemd $(ns systemctl --version | head -n1 | cut -d' ' -f2) runs as PID 1 of its namespaces"

# Polls a command (up to 10 s) until it succeeds.
eventually() {
  for _ in $(seq 50); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}
main_pid() { ns systemctl show -P MainPID ssegate.service; }
show() { ns systemctl show -P "$1" ssegate.service; }
http() { ns curl -sS --max-time 5 "$@"; }

# The installed config as it is: 127.0.0.1:8080 in front of the app.
ns systemctl start ssegate.service || fail "systemctl start ssegate failed"
eventually http -o /dev/null http://127.0.0.1:8080/ || fail "nothing answers on 127.0.0.1:8080"
[[ $(http http://127.0.0.1:8080/hello) == "hello from the app" ]] || fail "GET /hello did not reach the app"
events=$(http -N --max-time 2 -H 'Accept: text/event-stream' http://127.0.0.1:8080/events 2>/dev/null || true)
for line in '^retry: 3000$' '^id: ' '^data: hello$'; do
  grep -q "$line" <<<"$events" || fail "the event stream through ssegate has no line $line: $events"
done
ok "started with the installed config: a request and an event stream pass through to the app"
pid=$(main_pid)
status=$(ns cat "/proc/$pid/status")
grep -q "^Uid:[[:space:]]${uid}[[:space:]]" <<<"$status" || fail "ssegate runs as $(grep ^Uid <<<"$status"), not uid $uid"
grep -q '^CapEff:[[:space:]]0000000000000400$' <<<"$status" ||
  fail "ssegate's capabilities are $(grep ^CapEff <<<"$status"), not CAP_NET_BIND_SERVICE alone"
ok "it runs as the user ssegate with CAP_NET_BIND_SERVICE as its only capability"
ns journalctl --no-pager -o cat -u ssegate.service | grep -q "$CONFIG: valid" ||
  fail "no ExecStartPre check in the journal"
ns journalctl --no-pager -o cat -u ssegate.service | grep -q '^{.*"level":"INFO"' ||
  fail "no JSON log lines from ssegate in the journal"
ok "the journal has ExecStartPre's check and ssegate's JSON log lines"

# An upgrade (the same binary as revision 2), installed where systemd runs: the postinst
# restarts the running service, and the admin's change to the conffile stays.
echo '# changed by the admin' >>"$CONFIG"
pid=$(main_pid)
cargo deb --locked --no-build --fast --deb-revision 2 --output "$work/" >/dev/null
ns dpkg -i "$NSWORK/ssegate_$version-2_$(dpkg --print-architecture).deb" >/dev/null
[[ $(dpkg-query -W -f='${Version}' ssegate) == "$version-2" ]] || fail "the upgrade did not install revision 2"
restarted() { [[ $(show ActiveState) == active && $(main_pid) != "$pid" ]]; }
eventually restarted || fail "the upgrade did not restart the running service"
[[ $(tail -n1 "$CONFIG") == '# changed by the admin' ]] || fail "the upgrade replaced the changed $CONFIG"
eventually http -f -o /dev/null http://127.0.0.1:8080/hello || fail "nothing answers after the upgrade"
ok "an upgrade restarts the running service and keeps the changed config"

# TLS on port 443, the key and certificate given by LoadCredential from the credential store
# (/run/credstore here, private to the namespaces; /etc/credstore in the README: systemd looks
# in both). The config is the test's, in a directory mounted over /etc/ssegate, so the
# installed file is left alone.
new_certificate() { # directory
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}
fingerprint() { openssl x509 -noout -fingerprint -sha256 -in "$1"; }
served() {
  ns openssl s_client -connect 127.0.0.1:443 -servername localhost </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256
}
write_config() { # x-config header value, key path, certificate path
  cat >"$work/etc/ssegate.toml" <<EOF
listen = "127.0.0.1:443"
admin_listen = "127.0.0.1:9901"
shutdown_grace = "5s"

[tls]
cert = "$3"
key = "$2"

[defaults]
response_headers = { "x-config" = "$1" }

[[route]]
path = "/"
upstream = "http://127.0.0.1:3000"
EOF
}
https() { ns curl -sS --max-time 5 --cacert "$NSWORK/ca.pem" --resolve localhost:443:127.0.0.1 "$@"; }
x_config() { https -o /dev/null -D - https://localhost/hello | tr -d '\r' | sed -n 's/^x-config: //Ip'; }
x_config_is() { [[ $(x_config) == "$1" ]]; }
serves() { [[ $(served) == "$(fingerprint "$1")" ]]; }
mkdir -p "$work/etc" "$work/one" "$work/two"
new_certificate "$work/one"
new_certificate "$work/two"
ns install -d -m 0700 /run/credstore
ns install -m 0600 "$NSWORK/one/key.pem" /run/credstore/ssegate-tls-key.pem
ns install -m 0644 "$NSWORK/one/cert.pem" /run/credstore/ssegate-tls-cert.pem
write_config one "$CREDENTIALS/tls-key.pem" "$CREDENTIALS/tls-cert.pem"
ns mount --bind "$NSWORK/etc" /etc/ssegate
cat "$work/one/cert.pem" "$work/two/cert.pem" >"$work/ca.pem"
if ns runuser -u ssegate -- cat /run/credstore/ssegate-tls-key.pem >/dev/null 2>&1; then
  fail "the user ssegate can read the key in the credential store"
fi
ns systemctl restart ssegate.service || fail "systemctl restart ssegate (TLS on 443) failed"
eventually https -o /dev/null https://localhost/ || fail "nothing answers on https://localhost:443"
[[ $(https --http2 -o /dev/null -w '%{http_version}' https://localhost/hello) == 2 ]] || fail "no HTTP/2 over TLS"
[[ $(x_config) == one ]] || fail "the response lacks x-config: one"
pid=$(main_pid)
ns grep -q "^Uid:[[:space:]]${uid}[[:space:]]" "/proc/$pid/status" || fail "ssegate on port 443 does not run as ssegate"
ok "TLS on port 443 as the user ssegate, HTTP/2, key and certificate through LoadCredential"

# Reload: the config changes, the process stays; a bad config is refused by ssegate and changes
# nothing.
write_config two "$CREDENTIALS/tls-key.pem" "$CREDENTIALS/tls-cert.pem"
ns systemctl reload ssegate.service || fail "systemctl reload ssegate failed"
eventually x_config_is two || fail "after systemctl reload, x-config is '$(x_config)', not two"
[[ $(main_pid) == "$pid" ]] || fail "systemctl reload restarted ssegate"
ns curl -sS http://127.0.0.1:9901/metrics | grep -q '^ssegate_reloads_total{result="ok"} 1$' ||
  fail "/metrics does not count one good reload"
ok "systemctl reload applies a new config in the same process"
echo 'listen = "nowhere"' >"$work/etc/ssegate.toml"
ns systemctl reload ssegate.service || fail "systemctl reload ssegate failed"
refused() { ns curl -sS http://127.0.0.1:9901/metrics | grep -q '^ssegate_reloads_total{result="error"} 1$'; }
eventually refused || fail "/metrics does not count the refused reload"
ns journalctl --no-pager -o cat -u ssegate.service | grep -q '"level":"ERROR".*listen' ||
  fail "the journal does not say why the reload was refused"
[[ $(show ActiveState) == active && $(main_pid) == "$pid" && $(x_config) == two ]] ||
  fail "a refused reload changed the running service"
ok "systemctl reload of an invalid config: refused, logged and counted; the running config stays"

# Credentials are copied when the unit starts (systemd 252): a new key in the store is served
# after a restart, not after a reload.
write_config two "$CREDENTIALS/tls-key.pem" "$CREDENTIALS/tls-cert.pem"
ns install -m 0600 "$NSWORK/two/key.pem" /run/credstore/ssegate-tls-key.pem
ns install -m 0644 "$NSWORK/two/cert.pem" /run/credstore/ssegate-tls-cert.pem
ns systemctl reload ssegate.service || fail "systemctl reload ssegate failed"
sleep 0.5
[[ $(served) == "$(fingerprint "$work/one/cert.pem")" ]] ||
  fail "after a reload ssegate serves a new certificate from the credential store: README says it takes a restart"
ns systemctl restart ssegate.service
eventually serves "$work/two/cert.pem" ||
  fail "after a restart ssegate does not serve the new certificate from the credential store"
ok "a new key and certificate in the credential store are served after a restart"

# The other way the README gives: files readable by the group ssegate, renewed by a reload.
install -d -m 0750 -g ssegate "$work/etc/tls"
install -m 0640 -g ssegate "$work/one/key.pem" "$work/etc/tls/key.pem"
install -m 0644 "$work/one/cert.pem" "$work/etc/tls/cert.pem"
write_config two /etc/ssegate/tls/key.pem /etc/ssegate/tls/cert.pem
ns systemctl reload ssegate.service || fail "systemctl reload to the group-readable key failed"
eventually serves "$work/one/cert.pem" || fail "the group-readable key is not served"
install -m 0640 -g ssegate "$work/two/key.pem" "$work/etc/tls/key.pem"
install -m 0644 "$work/two/cert.pem" "$work/etc/tls/cert.pem"
ns systemctl reload ssegate.service || fail "systemctl reload after renewing the group-readable key failed"
eventually serves "$work/two/cert.pem" ||
  fail "a renewed group-readable key is not served after a reload"
ok "a key readable by the group ssegate is renewed by systemctl reload"

# Stop drains: an open event stream ends cleanly (its client would resume elsewhere), and
# ssegate exits 0, well within TimeoutStopSec.
https -N --max-time 10 -H 'Accept: text/event-stream' https://localhost/events >"$work/sse.out" 2>&1 &
subscriber=$!
subscribed() { grep -q '^data: hello' "$work/sse.out"; }
eventually subscribed || fail "no event on the stream before the stop: $(cat "$work/sse.out")"
start=$(date +%s%N)
ns systemctl stop ssegate.service
took=$((($(date +%s%N) - start) / 1000000))
[[ $(show Result) == success && $(show ExecMainStatus) == 0 ]] ||
  fail "systemctl stop: result $(show Result), exit status $(show ExecMainStatus)"
((took < 10000)) || fail "systemctl stop took ${took} ms"
wait "$subscriber" || fail "the event stream did not end cleanly on the stop (curl: $?): $(cat "$work/sse.out")"
ok "systemctl stop: the open event stream ended cleanly, ssegate exited 0 in ${took} ms"

# A config that does not pass the check: ExecStartPre refuses the start; systemd tries again
# a few times, then gives up.
echo 'listen = "nowhere"' >"$work/etc/ssegate.toml"
if ns systemctl start ssegate.service 2>/dev/null; then
  fail "systemctl start with an invalid config succeeded"
fi
# shellcheck disable=SC2016 # the backquotes are ssegate's
ns journalctl --no-pager -o cat -u ssegate.service | grep -q '^error: .*key `listen`' ||
  fail "the journal does not say why the start was refused"
gave_up() { ns journalctl --no-pager -o cat -u ssegate.service | grep -q 'Start request repeated too quickly'; }
eventually gave_up || fail "systemd is still starting ssegate again, $(show NRestarts) restarts so far"
[[ $(show ActiveState) == failed ]] || fail "after refused starts the unit is $(show ActiveState)"
ok "an invalid config: ExecStartPre refuses the start and says why; systemd retries up to its start limit"

kill -KILL "$SD_PID"
wait 2>/dev/null || true
SD_PID=""

echo "== purge: dpkg --purge"
dpkg --purge ssegate
installed=""
! dpkg-query -W -f='${Status}' ssegate 2>/dev/null | grep -q installed || fail "ssegate is still installed"
for path in /usr/bin/ssegate /etc/ssegate "$UNIT" /usr/lib/sysusers.d/ssegate.conf /usr/share/doc/ssegate; do
  [[ ! -e $path ]] || fail "$path is still there after the purge"
done
getent passwd ssegate >/dev/null || fail "the purge removed the user ssegate, which it should keep (README)"
ok "the purge removed every file, /etc/ssegate too; the user ssegate stays, as documented"

echo "deb: $passed passed, 0 failed"
