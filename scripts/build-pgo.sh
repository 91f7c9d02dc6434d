#!/usr/bin/env bash
# scripts/build-pgo.sh — builds the Palisade binary that ships: a release build optimised with a
# profile of its own data path under load (profile-guided optimisation, PGO).
#
# Why: a sidecar's per-request work is spread thin over pingora, h2, rustls and tokio; no function
# stands out, so what limits it is code layout and inlining across those crates. A profile tells
# the compiler which paths are hot. On the 2-core benchmark machine it cuts a sidecar's CPU per
# request by about a third (docs/benchmarks.md, "Profile-guided build").
#
# Steps
#   1. an llvm-profdata that reads what rustc's instrumentation writes: the newest one installed,
#      else Debian's llvm-19 (rustc 1.95 is LLVM 22; llvm-profdata 19 reads its raw profiles);
#   2. an instrumented release build (target/pgo-instrumented);
#   3. training: bench/pair.sh runs the Palisade pair alone (ONLY=palisade) under three loads —
#      GETs; POSTs with a 1 KB body; GETs against a 20-rule policy and two rate limits with
#      traces, security events and the access log on — and each sidecar writes its profile
#      when it exits (SIGTERM);
#   4. the profiles merged (target/pgo/palisade.profdata);
#   5. the release build that uses them: target/pgo/release/palisade;
#   6. a smoke test: `palisade demo --once` with that binary.
# Cost: two release builds (about 10-12 min on 2 cores) and about 30 s of load; bench/pair.sh
# installs what the training needs (nginx as the app, oha as the load).
#
# Usage: scripts/build-pgo.sh            (then target/pgo/release/palisade)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INSTRUMENTED_DIR="$ROOT/target/pgo-instrumented"
PROFILES="$ROOT/target/pgo-profiles"
PROFDATA="$ROOT/target/pgo/palisade.profdata"
OPTIMISED="$ROOT/target/pgo/release/palisade"

log() { printf '[build-pgo.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The newest llvm-profdata on the machine, as "MAJOR PATH".
find_profdata() {
    local tool major best="" best_major=0
    for tool in /usr/lib/llvm-*/bin/llvm-profdata /usr/bin/llvm-profdata*; do
        [[ -x $tool ]] || continue
        major=$("$tool" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -1)
        if [[ -n $major ]] && (( major > best_major )); then best=$tool; best_major=$major; fi
    done
    [[ -n $best ]] && echo "$best_major $best"
}

cd "$ROOT"
rustc_llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
read -r profdata_major profdata < <(find_profdata || true) || true
if [[ -z ${profdata:-} ]] || (( profdata_major < 19 )); then
    log "installing llvm-19 for llvm-profdata (rustc's LLVM is $rustc_llvm)"
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >/dev/null
    fi
    read -r profdata_major profdata < <(find_profdata) || die "no llvm-profdata after installing llvm-19"
fi
log "llvm-profdata $profdata_major ($profdata), rustc's LLVM $rustc_llvm"

log "2. instrumented build ($INSTRUMENTED_DIR)"
RUSTFLAGS="-Cprofile-generate=$PROFILES" cargo build --release --locked --quiet --target-dir "$INSTRUMENTED_DIR"
# The OTLP receiver the training sends traces to is a plain build.
cargo build --release --locked --quiet --example otlp_sink

log "3. training the profile"
# Build scripts ran instrumented too: only the sidecars' own profiles count.
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
train() {
    log "   $*"
    env "$@" PGO=0 SKIP_BUILD=1 ONLY=palisade PALISADE_BIN="$INSTRUMENTED_DIR/release/palisade" \
        BENCH_OUT="$ROOT/target/pgo-training" WARMUP=1s DURATION=5s "$ROOT/bench/pair.sh" >&2
}
train TELEMETRY=off
train TELEMETRY=off BODY_BYTES=1024
train TELEMETRY=full POLICY_RULES=20
compgen -G "$PROFILES/*.profraw" >/dev/null || die "the training left no profile in $PROFILES"

log "4. merging the profiles"
mkdir -p "$(dirname "$PROFDATA")"
"$profdata" merge -o "$PROFDATA" "$PROFILES" ||
    die "llvm-profdata $profdata_major cannot read the profiles of rustc's LLVM $rustc_llvm: install a newer llvm, or build without PGO (cargo build --release)"

log "5. optimised build ($OPTIMISED)"
RUSTFLAGS="-Cprofile-use=$PROFDATA" cargo build --release --locked --quiet --target-dir "$ROOT/target/pgo"

log "6. smoke test: palisade demo --once"
"$OPTIMISED" demo --once >/dev/null || die "the profile-guided binary failed the demo"
log "done: $OPTIMISED"
