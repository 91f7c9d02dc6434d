#!/usr/bin/env bash
# Builds Palisade and runs `palisade demo`: a whole mesh on loopback. Extra arguments go to the
# demo (e.g. --once to exit after the summary).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked --quiet
exec ./target/release/palisade demo "$@"
