#!/usr/bin/env bash
# Makes sure the programs the integration tests run are present: a real mosquitto
# broker, nats-server (JetStream, for the nats:// destination), socat for pseudo-terminals, systemd-analyze to verify the unit, and Debian's
# headless-capable Chromium (with a font) for the status page test; playwright-core
# drives it and never downloads a browser.
# Installs them with apt-get when run as root on Debian; otherwise says what to install.
set -euo pipefail

declare -A pkg_of=([mosquitto]=mosquitto [nats-server]=nats-server [socat]=socat [systemd-analyze]=systemd [python3]=python3)
missing=()
for cmd in "${!pkg_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || missing+=("${pkg_of[$cmd]}")
done
[[ -x /usr/bin/chromium ]] || missing+=(chromium fonts-dejavu-core)
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package may start a broker on 1883; the tests use their own on free ports.
else
  echo "test-deps: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
