#!/usr/bin/env bash
# Make this machine able to run Derrick's tests and dev stack. Idempotent: a second run
# is a quick no-op. Runs as root on a fresh Debian 12 (CI); elsewhere it uses sudo only
# when something actually has to be installed.
#
#   1. Debian packages: mosquitto, influxdb (1.6), victoria-metrics, mbpoll, socat
#      (socat makes the pty pairs of the serial Modbus RTU tests), etcd-server and
#      etcd-client (3.4: collector fail-over, docs/failover.md), chromium and
#      chromium-driver (the console's browser tests drive them headless), systemd
#      (systemd-analyze verifies the shipped units), nodejs and npm
#      (when `node` / `npm` are missing)
#      (+ python3-venv and make if missing). If apt starts mosquitto/influxd/
#      victoria-metrics as system services on 1883/8086/8088/8428, that is fine: the
#      tests and `make run` start their own copies on free loopback ports.
#   2. .venv with the three distributions editable (derrick: kernel and agent;
#      collector/ and simulators/ each have a pyproject.toml of their own) and the dev
#      tools, redone when a pyproject.toml is newer than the stamp .venv/.installed.
#   3. tests/interop's Node packages (Eclipse Tahu's Sparkplug B client and payload
#      codec, for tests/test_sparkplug_interop.py):
#      `npm ci` from the committed package-lock.json, redone when the lock file is
#      newer than npm's record of the last install (node_modules/.package-lock.json).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*"; }

have() {
    # /usr/sbin is not on a normal user's PATH, and mosquitto lives there.
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

packages=()
for pair in mosquitto:mosquitto influxd:influxdb victoria-metrics:victoria-metrics \
    mbpoll:mbpoll socat:socat etcd:etcd-server etcdctl:etcd-client chromium:chromium \
    chromedriver:chromium-driver systemd-analyze:systemd make:make node:nodejs npm:npm; do
    have "${pair%%:*}" || packages+=("${pair#*:}")
done
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3 python3-venv)
fi

if [ "${#packages[@]}" -gt 0 ]; then
    # make / python3-venv are listed only on a machine that lacks them (bare images).
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            say "need root (or sudo) to install: ${packages[*]}" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    say "installing Debian packages: ${packages[*]}"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${packages[@]}"
else
    say "Debian packages present (mosquitto, influxd, victoria-metrics, mbpoll, socat, etcd, chromium, node, npm)"
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi

stale=0
for project in pyproject.toml collector/pyproject.toml simulators/pyproject.toml; do
    if [ "$project" -nt .venv/.installed ]; then stale=1; fi
done
if [ "$stale" -eq 1 ]; then
    say "pip install -e '.[dev]' -e ./collector -e ./simulators into .venv"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    .venv/bin/pip install -q --root-user-action=ignore -e '.[dev]' -e ./collector -e ./simulators
    touch .venv/.installed
else
    say ".venv up to date (every pyproject.toml older than .venv/.installed)"
fi

interop=tests/interop
if [ ! -e "$interop/node_modules/.package-lock.json" ] ||
    [ "$interop/package-lock.json" -nt "$interop/node_modules/.package-lock.json" ]; then
    say "npm ci in $interop (Eclipse Tahu's Sparkplug packages, from package-lock.json)"
    npm ci --prefix "$interop" --no-audit --no-fund
else
    say "$interop/node_modules up to date (older package-lock.json)"
fi
