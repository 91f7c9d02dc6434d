#!/usr/bin/env bash
# Builds Palisade and runs the whole test suite: unit tests, integration tests against real
# listeners with real TLS and real HTTP/gRPC clients, and the command-line tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
cargo build --locked --all-targets --quiet
# Benchmarks run once each, as a smoke test (timings come from `cargo bench`).
cargo test --locked --benches
cargo test --locked --lib --bins --tests
