#!/usr/bin/env bash
# Builds Palisade and runs the whole test suite: unit tests, integration tests against real
# listeners with real TLS and real HTTP/gRPC clients, the command-line tests, and the Python
# validation tests (tests/k8s: the chart through the Helm SDK, kubernetes-validate, checkov; the
# OCSF events through ocsf-emitter).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
cargo build --locked --all-targets --quiet
# Benchmarks run once each, as a smoke test (timings come from `cargo bench`).
cargo test --locked --benches
cargo test --locked --lib --bins --tests
# The Helm chart, the manifests, the injected pods and the Dockerfile, with the real tools (about 30 s);
# and the security events the Rust tests wrote, against the OCSF schema's pydantic models (test_events.py).
"${PALISADE_K8S_VENV:-target/k8s-venv}/bin/python" -m pytest tests/k8s -q -p no:cacheprovider
