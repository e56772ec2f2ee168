#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (apt packages, Deno pinned
# through npm), then runs the whole suite: format, lint, type check, unit, integration and
# end-to-end tests against real registries, dockerd and podman.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-registry: CNCF Distribution, the registry under test; skopeo: independent fixture check;
# podman, docker.io: the loaders that prove archives; apache2-utils: htpasswd (bcrypt);
# busybox-static: the runnable binary inside test images; openssl: the test PKI;
# containerd: `ctr images import` proves archives too; zstd: zstd and zstd:chunked-shaped layers;
# tinyproxy: a real HTTP/CONNECT proxy; tmux: a real terminal for the progress bars; umoci: an
# OCI layout consumer (ls, stat, raw unpack); golang-*-dev: peers' Go sources, whose test tables
# serve as oracles for our parsers (read from /usr/share/gocode at test time, never copied).
APT_PACKAGES=(docker-registry skopeo podman docker.io apache2-utils busybox-static openssl
  ca-certificates tar gzip uidmap iproute2 containerd zstd tinyproxy tmux umoci
  golang-github-containerd-containerd-dev golang-github-containers-image-dev
  golang-github-docker-distribution-dev)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[test] installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Deno comes from the npm package "deno", pinned in tools/deno/package-lock.json. It lives in
# its own folder so that Deno does not take this repository for an npm project.
DENO_HOME="$PWD/tools/deno"
if [ ! -x "$DENO_HOME/node_modules/.bin/deno" ] ||
  ! "$DENO_HOME/node_modules/.bin/deno" --version | grep -q "^deno 2.9.6 "; then
  npm ci --prefix "$DENO_HOME" --no-audit --no-fund --loglevel=error
fi
export PATH="$DENO_HOME/node_modules/.bin:$PATH"
deno --version | head -1

deno task check
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
deno test --allow-all tests/ 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One plain summary line for CI: "N passed, N failed".
summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1 || true)
passed=$(echo "$summary" | sed -E 's/.* ([0-9]+) passed.*/\1/')
failed=$(echo "$summary" | sed -E 's/.* ([0-9]+) failed.*/\1/')
if [ -n "$summary" ]; then echo "${passed} passed, ${failed} failed"; fi
if [ -z "$summary" ] || [ "${passed:-0}" -eq 0 ]; then
  echo "[test] no test ran" >&2
  exit 1
fi
exit "$status"
