#!/usr/bin/env bash
# Installs what a build of Palisade needs on a fresh Debian machine that has only Rust:
# cmake (pingora's zlib-ng) and a C compiler (ring, zstd, brotli). Idempotent; needs root
# (or sudo) only when something is missing.
set -euo pipefail

need=()
# --test: also what the test suite drives: iptables (transparent capture), promtool (Debian's
# prometheus package, to check /metrics), and PyJWT with cryptography (the independent JWT
# signer of tests/authn_crosscheck.rs).
if [ "${1:-}" = "--test" ]; then
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  # The pod simulation: network namespaces and veth pairs (iproute2), running as uid 2102 (setpriv).
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
fi
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${1:-}" = "--test" ] && ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
  echo "setup: installing pyjwt cryptography" >&2
  # pip where Python allows it; Debian's own packages where Python is the system's (PEP 668).
  python3 -m pip install --quiet pyjwt cryptography >/dev/null 2>&1 || {
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq python3-jwt python3-cryptography >/dev/null
  }
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust first (https://rustup.rs)" >&2; exit 1; }

# --test: the Kubernetes validation tests' tools (Helm SDK, kubernetes-validate, checkov, ...), pinned in
# tests/k8s/requirements.txt, in a virtualenv of their own (target/k8s-venv) so the system Python is untouched.
if [ "${1:-}" = "--test" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  venv="${PALISADE_K8S_VENV:-$root/target/k8s-venv}"
  stamp="$venv/.requirements"
  if ! cmp -s "$root/tests/k8s/requirements.txt" "$stamp" 2>/dev/null; then
    echo "setup: installing the Kubernetes test tools into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/tests/k8s/requirements.txt"
    cp "$root/tests/k8s/requirements.txt" "$stamp"
  fi
fi
