#!/usr/bin/env bash
# Installs edgehook as a systemd service on Debian / Raspberry Pi OS (arm64, armhf, amd64).
#
#   sudo scripts/install.sh                  install or upgrade from this checkout (npm install --omit=dev --no-audit --no-fund)
#   sudo scripts/install.sh --from-checkout  same, but reuse this checkout's node_modules (no network)
#   sudo scripts/install.sh --uninstall      remove the service and /opt/edgehook; keep config and data
#   sudo scripts/install.sh --uninstall --purge   also remove /etc/edgehook, /var/lib/edgehook and the user
#
# Options: --no-enable (do not enable the service at boot), --source DIR (install from another
# checkout or unpacked release; default: the tree this script is in).
#
# Environment:
#   PREFIX         where the program goes (default /opt/edgehook)
#   EDGEHOOK_ROOT  install into this root instead of / (DESTDIR-style, for packaging and tests);
#                  user creation and systemctl are skipped when it is not /
#   NODE, NPM      the node and npm to use (default: found on PATH)
#
# Run it again to upgrade: the program is replaced, /etc/edgehook/agent.yaml is never overwritten,
# the outbox in /var/lib/edgehook is kept, and a running service is restarted.
set -euo pipefail

MIN_NODE="20.19.0"
SERVICE="edgehook.service"
USER_NAME="edgehook"

PREFIX="${PREFIX:-/opt/edgehook}"
ROOT="${EDGEHOOK_ROOT:-/}"
NODE="${NODE:-node}"
NPM="${NPM:-npm}"
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

action=install
from_checkout=0
purge=0
enable=1

say() { printf 'edgehook-install: %s\n' "$*"; }
die() {
  printf 'edgehook-install: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --from-checkout) from_checkout=1 ;;
    --uninstall) action=uninstall ;;
    --purge) purge=1 ;;
    --no-enable) enable=0 ;;
    --source) shift; SOURCE="$(cd "${1:?--source needs a directory}" && pwd)" ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done
[ "$purge" = 1 ] && [ "$action" != uninstall ] && die "--purge only goes with --uninstall"

case "$PREFIX" in
  /*edgehook*) ;;
  *) die "PREFIX must be an absolute path containing 'edgehook' (is '$PREFIX'): it is removed on upgrade and uninstall" ;;
esac
case "$ROOT" in
  /*) ;;
  *) die "EDGEHOOK_ROOT must be an absolute path (is '$ROOT')" ;;
esac
R="${ROOT%/}" # "" for the real root, so "$R/etc" is /etc
real_root=0
[ -z "$R" ] && real_root=1

if [ "$real_root" = 1 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0 $*), or set EDGEHOOK_ROOT to install into another root"
fi

# systemd manages services only when it is PID 1 (not in most containers or chroots).
systemd_running() { [ "$real_root" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

skip_note() {
  if [ "$real_root" = 0 ]; then
    say "skipping $1: EDGEHOOK_ROOT is $ROOT, not /"
  else
    say "skipping $1: systemd is not running (container or chroot?)"
  fi
}

# ---------------------------------------------------------------- uninstall

uninstall() {
  if systemd_running; then
    systemctl disable --now "$SERVICE" 2>/dev/null || true
  else
    skip_note "systemctl disable --now $SERVICE"
  fi
  rm -f "$R/etc/systemd/system/$SERVICE"
  if systemd_running; then systemctl daemon-reload; fi
  # The CLI link, only if it is ours.
  if [ -L "$R/usr/local/bin/edgehook" ] && [ "$(readlink "$R/usr/local/bin/edgehook")" = "$PREFIX/bin/edgehook.js" ]; then
    rm -f "$R/usr/local/bin/edgehook"
  fi
  rm -rf "$R$PREFIX" "$R$PREFIX.new" "$R$PREFIX.old"
  say "removed $SERVICE and $PREFIX"
  if [ "$purge" = 1 ]; then
    rm -rf "$R/etc/edgehook" "$R/var/lib/edgehook" "$R/etc/systemd/system/$SERVICE.d"
    say "purged /etc/edgehook, /var/lib/edgehook (configuration and outbox) and drop-ins"
    if [ "$real_root" = 1 ]; then
      if getent passwd "$USER_NAME" >/dev/null; then
        userdel "$USER_NAME" || say "could not remove user $USER_NAME"
      fi
    else
      skip_note "userdel $USER_NAME"
    fi
  else
    say "kept /etc/edgehook (configuration) and /var/lib/edgehook (outbox); --uninstall --purge removes them"
  fi
}

# ---------------------------------------------------------------- install

version_ge() { # version_ge 20.19.0 20.18.1
  local IFS=.
  local -a a b
  read -r -a a <<<"$1"
  read -r -a b <<<"$2"
  local i
  for i in 0 1 2; do
    if ((${a[i]:-0} > ${b[i]:-0})); then return 0; fi
    if ((${a[i]:-0} < ${b[i]:-0})); then return 1; fi
  done
  return 0
}

node_help() {
  cat >&2 <<EOF

edgehook needs Node.js $MIN_NODE or newer (Debian 12 / Raspberry Pi OS bookworm ship 18.x).
Install Node.js 22 LTS from NodeSource (arm64, armhf and amd64):

  curl -fsSL https://deb.nodesource.com/setup_22.x -o /tmp/nodesource_setup.sh
  sudo bash /tmp/nodesource_setup.sh
  sudo apt-get install -y nodejs

then run this script again. (A Pi Zero / Pi 1, armv6, has no official Node.js 20+ build.)
EOF
}

check_node() {
  local v
  if ! v="$("$NODE" --version 2>/dev/null)"; then
    node_help
    die "Node.js not found ($NODE)"
  fi
  v="${v#v}"
  if ! version_ge "$v" "$MIN_NODE"; then
    node_help
    die "Node.js $v is too old"
  fi
  NODE_PATH_ABS="$(command -v "$NODE")"
  say "using Node.js $v ($NODE_PATH_ABS) on $(uname -m)"
}

check_source() {
  local f
  for f in package.json package-lock.json bin/edgehook.js agent.service config/agent.example.yaml; do
    [ -e "$SOURCE/$f" ] || die "$SOURCE/$f is missing: run this script from an edgehook checkout or release"
  done
  [ -f "$SOURCE/dist/edgehook.js" ] && [ -f "$SOURCE/dist/config-loader.cjs" ] && [ -d "$SOURCE/dist/chunks" ] ||
    die "$SOURCE/dist/edgehook.js is missing: build first with 'npm install && npm run build'"
}

# Program files: exactly the package's "files" (package.json) plus the lockfile, into a
# staging directory that replaces the old tree only once complete.
stage_program() {
  local stage="$R$PREFIX.new"
  rm -rf "$stage"
  mkdir -p "$stage"
  cp -a "$SOURCE/package.json" "$SOURCE/package-lock.json" "$SOURCE/agent.service" "$stage/"
  cp -a "$SOURCE/bin" "$SOURCE/config" "$stage/"
  # The program is the bundle (scripts/bundle.mjs); dist/'s per-module build is for tests.
  mkdir -p "$stage/dist"
  cp -a "$SOURCE/dist/edgehook.js" "$SOURCE/dist/config-loader.cjs" "$SOURCE/dist/chunks" "$stage/dist/"
  for map in edgehook.js.map config-loader.cjs.map; do
    if [ -f "$SOURCE/dist/$map" ]; then cp -a "$SOURCE/dist/$map" "$stage/dist/"; fi
  done
  mkdir -p "$stage/scripts"
  cp -a "$SOURCE/scripts/install.sh" "$stage/scripts/"
  [ -f "$SOURCE/README.md" ] && cp -a "$SOURCE/README.md" "$stage/"
  [ -d "$SOURCE/docs" ] && cp -a "$SOURCE/docs" "$stage/"

  # "prepare" compiles TypeScript, which a production install has neither the need nor the compiler for.
  (cd "$stage" && "$NPM" pkg delete scripts.prepare)

  local npm_failed="npm could not install the dependencies. better-sqlite3 and serialport are
native modules: when no prebuilt binary matches (often on armhf), npm compiles them, which needs
  sudo apt-get install -y build-essential python3 make g++"
  if [ "$from_checkout" = 1 ]; then
    [ -d "$SOURCE/node_modules" ] || die "--from-checkout: $SOURCE/node_modules is missing (run npm install there)"
    say "copying node_modules from $SOURCE and pruning development packages"
    # "/." follows a node_modules that is itself a symlink.
    cp -a "$SOURCE/node_modules/." "$stage/node_modules/"
    (cd "$stage" && "$NPM" prune --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error) || die "$npm_failed"
    find "$stage/node_modules" -mindepth 1 -maxdepth 1 -type d -empty -delete # emptied @scope directories
  else
    say "installing dependencies with npm install --omit=dev --no-audit --no-fund (needs network)"
    (cd "$stage" && "$NPM" install --omit=dev --no-audit --no-fund --loglevel=error) || die "$npm_failed"
  fi
  # A broken native module should fail the install, not the service at boot.
  (cd "$stage" && "$NODE" -e 'new (require("better-sqlite3"))(":memory:").close()') ||
    die "the installed better-sqlite3 does not load with $NODE_PATH_ABS. $npm_failed"

  # Swap in: the running service keeps its open files; systemctl restarts it below.
  rm -rf "$R$PREFIX.old"
  [ -e "$R$PREFIX" ] && mv "$R$PREFIX" "$R$PREFIX.old"
  mv "$stage" "$R$PREFIX"
  rm -rf "$R$PREFIX.old"
  say "installed the program into $PREFIX"
}

ensure_user() {
  if [ "$real_root" = 0 ]; then
    skip_note "creating system user $USER_NAME"
    return
  fi
  getent group dialout >/dev/null || groupadd --system dialout
  if getent passwd "$USER_NAME" >/dev/null; then
    usermod -a -G dialout "$USER_NAME"
  else
    useradd --system --user-group --groups dialout --home-dir /var/lib/edgehook --no-create-home \
      --shell /usr/sbin/nologin --comment "edgehook agent" "$USER_NAME"
    say "created system user $USER_NAME (groups: $USER_NAME, dialout)"
  fi
}

install_config() {
  local dir="$R/etc/edgehook" conf="$R/etc/edgehook/agent.yaml"
  mkdir -p "$dir"
  chmod 0755 "$dir"
  if [ -e "$conf" ]; then
    say "kept the existing /etc/edgehook/agent.yaml"
  else
    # Data goes to the state directory systemd gives the service (/etc is read-only to it):
    # set agent.data_dir, or add it as the first key under `agent:` when the example has none.
    local example="$SOURCE/config/agent.example.yaml"
    if grep -Eq '^[[:space:]]+data_dir:' "$example"; then
      sed -E 's#^([[:space:]]+)data_dir:.*$#\1data_dir: /var/lib/edgehook#' "$example" >"$conf.tmp"
    else
      awk '
        !done && pending && /^[[:space:]]+[^[:space:]#]/ {
          match($0, /^[[:space:]]+/); print substr($0, 1, RLENGTH) "data_dir: /var/lib/edgehook"; done = 1
        }
        { print }
        !done && /^agent:[[:space:]]*(#.*)?$/ { pending = 1 }
      ' "$example" >"$conf.tmp"
    fi
    grep -Eq '^[[:space:]]+data_dir: /var/lib/edgehook$' "$conf.tmp" ||
      die "could not set agent.data_dir in the example configuration; set it to /var/lib/edgehook by hand"
    chmod 0640 "$conf.tmp"
    if [ "$real_root" = 1 ]; then chgrp "$USER_NAME" "$conf.tmp"; fi
    mv "$conf.tmp" "$conf"
    say "installed the example configuration as /etc/edgehook/agent.yaml: edit it before starting"
  fi
  mkdir -p "$R/var/lib/edgehook"
  chmod 0750 "$R/var/lib/edgehook"
  if [ "$real_root" = 1 ]; then chown "$USER_NAME:$USER_NAME" "$R/var/lib/edgehook"; fi
}

install_unit() {
  local unit="$R/etc/systemd/system/$SERVICE"
  mkdir -p "$R/etc/systemd/system" "$R/usr/local/bin"
  # The unit names /usr/bin/node and /opt/edgehook; follow a different node or PREFIX.
  local node_bin="/usr/bin/node"
  if [ "$real_root" = 1 ] && [ "$NODE_PATH_ABS" != /usr/bin/node ]; then
    node_bin="$NODE_PATH_ABS"
    case "$node_bin" in
      /home/* | /root/*) say "warning: $node_bin is under a home directory, which the unit hides (ProtectHome=yes)" ;;
    esac
  fi
  sed -e "s#/usr/bin/node #$node_bin #" -e "s#/opt/edgehook/#$PREFIX/#g" "$SOURCE/agent.service" >"$unit.tmp"
  chmod 0644 "$unit.tmp"
  mv "$unit.tmp" "$unit"
  ln -sfn "$PREFIX/bin/edgehook.js" "$R/usr/local/bin/edgehook"
  say "installed /etc/systemd/system/$SERVICE and /usr/local/bin/edgehook"

  if ! systemd_running; then
    skip_note "systemctl daemon-reload / enable"
    return
  fi
  systemctl daemon-reload
  if [ "$enable" = 1 ]; then
    systemctl enable "$SERVICE" >/dev/null
    say "enabled $SERVICE (starts at boot)"
  fi
  if systemctl is-active --quiet "$SERVICE"; then
    systemctl restart "$SERVICE"
    say "restarted $SERVICE with the new version"
  else
    say "next: edit /etc/edgehook/agent.yaml, check it with"
    say "  sudo -u $USER_NAME edgehook check --config /etc/edgehook/agent.yaml"
    say "then: sudo systemctl start edgehook && journalctl -u edgehook -f -o cat"
  fi
}

if [ "$action" = uninstall ]; then
  uninstall
  exit 0
fi

check_node
check_source
ensure_user
stage_program
install_config
install_unit
say "done"
