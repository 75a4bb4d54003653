#!/usr/bin/env bash
# What the tests need beyond Rust: Debian's redis-server and haproxy (the cluster tests start
# their own on free ports; the system services are not started). Installed only when missing.
set -euo pipefail

echo "== redis-server and haproxy (Debian's; the cluster tests start their own on free ports)"
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
missing=()
have redis-server || missing+=(redis-server)
have haproxy || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  # The tests need the programs, not the system services: keep the packages' scripts from
  # starting them (policy-rc.d answering 101 is how Debian says "do not start services").
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    made_policy=1
  fi
  apt_install() { $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; }
  # The package lists are fetched only when the install cannot do without them.
  installed=1
  apt_install || { $sudo apt-get update -q && apt_install; } || installed=""
  [ -z "$made_policy" ] || $sudo rm -f "$policy"
  [ -n "$installed" ] || { echo "cannot install ${missing[*]}" >&2; exit 1; }
fi
redis-server --version
"$(command -v haproxy || echo /usr/sbin/haproxy)" -v | sed -n 1p

