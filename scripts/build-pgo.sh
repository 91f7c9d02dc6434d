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
#   1. an llvm-profdata that reads what rustc's instrumentation writes, checked by merging a
#      probe profile: rustc's own LLVM major first, then newer, then older ones; tools whose
#      --version fails are skipped. None: Debian's llvm-19 is installed (rustc 1.95 is LLVM 22;
#      llvm-profdata 19 reads its raw profiles);
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
# Usage: scripts/build-pgo.sh                  (then target/pgo/release/palisade)
#        scripts/build-pgo.sh --find-profdata  (step 1 only, installs nothing; prints "MAJOR PATH")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INSTRUMENTED_DIR="$ROOT/target/pgo-instrumented"
PROFILES="$ROOT/target/pgo-profiles"
PROFDATA="$ROOT/target/pgo/palisade.profdata"
OPTIMISED="$ROOT/target/pgo/release/palisade"

log() { printf '[build-pgo.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Every llvm-profdata on the machine, one path a line: rustup's llvm-tools (built from rustc's own
# LLVM), then each one on PATH, then Debian's /usr/lib/llvm-*.
profdata_candidates() {
    local dir sysroot
    sysroot=$(rustc --print sysroot 2>/dev/null) || sysroot=""
    # `|| true`: under `set -e` a glob that matches nothing (compgen's exit 1) would end the search.
    [[ -z $sysroot ]] || compgen -G "$sysroot/lib/rustlib/*/bin/llvm-profdata" || true
    local -a dirs
    IFS=: read -ra dirs <<<"$PATH"
    for dir in "${dirs[@]}"; do
        [[ -z $dir ]] || compgen -G "$dir/llvm-profdata*" || true
    done
    compgen -G "/usr/lib/llvm-*/bin/llvm-profdata" || true
}

# The LLVM major version a tool reports, or nothing. Some builds answer `--version` with an error
# (Debian's llvm-profdata-14: "Unknown command!", exit 1) but answer `merge --version`; a tool that
# fails both is skipped, never fatal.
profdata_major() {
    local out
    out=$("$1" --version 2>/dev/null) || out=$("$1" merge --version 2>/dev/null) || return 1
    sed -n 's/.*LLVM version \([0-9][0-9]*\).*/\1/p' <<<"$out" | sed -n 1p
}

# A raw profile written by this rustc, so that each candidate is tried on what it will be given:
# the raw format changes between LLVM majors and an old llvm-profdata refuses a newer one
# ("unsupported instrumentation profile format version"). A trivial program, well under a second.
make_probe_profile() {
    local dir=$1
    printf 'fn main() {}\n' >"$dir/probe.rs"
    rustc -Cprofile-generate="$dir/raw" -o "$dir/probe" "$dir/probe.rs" 2>/dev/null &&
        "$dir/probe" && compgen -G "$dir/raw/*.profraw" >/dev/null
}

# The llvm-profdata to use, as "MAJOR PATH": one that merges a raw profile of rustc's LLVM
# ($1, its major). Tried in order: the same major as rustc, then newer ones, then older ones (newest
# first); each is checked by merging the probe profile, so a tool that cannot read rustc's format
# is passed over whatever its version says. Returns 1 when none works.
find_profdata() {
    local want=$1 tool real major probe rank
    local -A seen=()
    local -a ranked=()
    probe=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: the path is local
    trap "rm -rf '$probe'" RETURN
    if ! make_probe_profile "$probe"; then
        log "rustc could not write a probe profile (no profiler runtime in this toolchain?)"
        return 1
    fi
    while IFS= read -r tool; do
        [[ -x $tool && ! -d $tool ]] || continue
        real=$(readlink -f "$tool") || real=$tool
        [[ -z ${seen[$real]:-} ]] || continue
        seen[$real]=1
        if ! major=$(profdata_major "$tool") || [[ -z $major ]]; then
            log "   skipping $tool: its --version fails"
            continue
        fi
        # Sort key: 0 for rustc's major, 1 for newer, 2 for older; newest first within each.
        if ((major == want)); then rank=0; elif ((major > want)); then rank=1; else rank=2; fi
        ranked+=("$rank $((1000 - major)) $major $tool")
    done < <(profdata_candidates)
    while read -r _ _ major tool; do
        [[ -n ${tool:-} ]] || continue
        if "$tool" merge -o "$probe/probe.profdata" "$probe/raw" >/dev/null 2>&1; then
            echo "$major $tool"
            return 0
        fi
        log "   skipping $tool (LLVM $major): it cannot read rustc's LLVM $want profiles"
    done < <(printf '%s\n' "${ranked[@]}" | sort -n -k1,1 -k2,2)
    return 1
}

cd "$ROOT"
rustc_llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $rustc_llvm ]] || die "rustc -vV does not say its LLVM version"

# `--find-profdata`: only step 1, without installing anything; prints "MAJOR PATH" (exit 1 if none).
if [[ ${1:-} == --find-profdata ]]; then
    find_profdata "$rustc_llvm" || die "no llvm-profdata reads rustc's LLVM $rustc_llvm profiles"
    exit 0
fi

profdata="" profdata_major=""
if found=$(find_profdata "$rustc_llvm"); then
    read -r profdata_major profdata <<<"$found"
else
    log "installing llvm-19 for llvm-profdata (rustc's LLVM is $rustc_llvm)"
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >/dev/null
    fi
    found=$(find_profdata "$rustc_llvm") || die "no llvm-profdata reads rustc's LLVM $rustc_llvm profiles after installing llvm-19 (try: rustup component add llvm-tools)"
    read -r profdata_major profdata <<<"$found"
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
