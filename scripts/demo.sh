#!/usr/bin/env bash
# Builds Palisade and runs `palisade demo`: a whole mesh on loopback. Extra arguments go to the
# demo (e.g. --once to exit after the summary). PALISADE_BIN=<a palisade binary> runs that one
# instead, with no set-up and no build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PALISADE_BIN:-}" ]]; then
    exec "$PALISADE_BIN" demo "$@"
fi
./scripts/setup.sh
cargo build --release --locked --quiet
exec ./target/release/palisade demo "$@"
