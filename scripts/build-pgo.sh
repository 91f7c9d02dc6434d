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
#      GETs; POSTs with a 1 KB body; POSTs of 1 KB JSON with every protection on (a JWT checked
#      against a JWKS, the WAF blocking at paranoia 1 over a ten-parameter query and the body, a
#      20-rule policy and two rate limits, traces, security events and the access log) — and
#      each sidecar writes its profile when it exits (SIGTERM). Code no load ran is laid out
#      cold: an API-protection product trains its API protection;
#   4. the profiles merged (target/pgo/palisade.profdata);
#   5. the release build that uses them, linked with its relocations kept (for step 6);
#   6. post-link layout with BOLT (llvm-bolt, Debian's bolt-19 installed when there is none): the
#      binary instrumented, trained again under the same loads, and rewritten with its hot code
#      packed together. A sidecar's resident size is mostly the pages of code it touches; packing
#      the hot code cuts about 1-2 MB of it and a few percent of the CPU (docs/benchmarks.md). Any
#      failure in this step keeps the step-5 binary and says so; it never fails the build;
#   7. a smoke test: `palisade demo --once` with target/pgo/release/palisade.
# Cost: two release builds (about 10-12 min on 2 cores) and about a minute of load; bench/pair.sh
# installs what the training needs (nginx as the app, oha as the load). BOLT=0 skips step 6.
#
# Usage: scripts/build-pgo.sh                  (then target/pgo/release/palisade)
#        scripts/build-pgo.sh --find-profdata  (step 1 only, installs nothing; prints "MAJOR PATH")
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INSTRUMENTED_DIR="$ROOT/target/pgo-instrumented"
PROFILES="$ROOT/target/pgo-profiles"
PROFDATA="$ROOT/target/pgo/palisade.profdata"
OPTIMISED="$ROOT/target/pgo/release/palisade"
BOLT_DIR="$ROOT/target/pgo-bolt"

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
# The training loads, run with the binary $1 (PGO's instrumented build, then BOLT's).
train_with() {
    local binary=$1 load
    for load in "TELEMETRY=off" "TELEMETRY=off BODY_BYTES=1024" "TELEMETRY=full API_PROTECTION=1 BODY_BYTES=1024"; do
        log "   $load"
        # shellcheck disable=SC2086 # each load is words for env
        env $load PGO=0 SKIP_BUILD=1 ONLY=palisade PALISADE_BIN="$binary" \
            BENCH_OUT="$ROOT/target/pgo-training" WARMUP=1s DURATION=5s "$ROOT/bench/pair.sh" >&2
    done
}
train_with "$INSTRUMENTED_DIR/release/palisade"
compgen -G "$PROFILES/*.profraw" >/dev/null || die "the training left no profile in $PROFILES"

log "4. merging the profiles"
mkdir -p "$(dirname "$PROFDATA")"
"$profdata" merge -o "$PROFDATA" "$PROFILES" ||
    die "llvm-profdata $profdata_major cannot read the profiles of rustc's LLVM $rustc_llvm: install a newer llvm, or build without PGO (cargo build --release)"

log "5. optimised build ($OPTIMISED)"
# --emit-relocs: BOLT moves functions only in a binary that kept its relocations (they take disk,
# not memory: they are never loaded).
RUSTFLAGS="-Cprofile-use=$PROFDATA -Clink-arg=-Wl,--emit-relocs" \
    cargo build --release --locked --quiet --target-dir "$ROOT/target/pgo"

# Every llvm-bolt on the machine, newest LLVM first, as "MAJOR BOLT MERGE-FDATA": Debian's
# /usr/lib/llvm-*/bin, then one on PATH with its merge-fdata beside it. BOLT reads the binary, not
# rustc's profiles, so any version that runs will do; one whose --version fails is skipped.
bolt_tools() {
    local bolt major
    {
        compgen -G "/usr/lib/llvm-*/bin/llvm-bolt" || true
        command -v llvm-bolt || true
    } | while IFS= read -r bolt; do
        [[ -x $bolt && -x "$(dirname "$bolt")/merge-fdata" ]] || continue
        major=$("$bolt" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9][0-9]*\).*/\1/p' | sed -n 1p) || continue
        [[ -n $major ]] && echo "$major $bolt $(dirname "$bolt")/merge-fdata"
    done | sort -rn -k1,1
}

# Step 6 as a whole; returns non-zero (and leaves $OPTIMISED as step 5 built it) on any failure.
bolt_layout() {
    local found major bolt merge
    found=$(bolt_tools | sed -n 1p)
    if [[ -z $found ]]; then
        log "   installing bolt-19 for llvm-bolt"
        if [[ $(id -u) == 0 ]]; then
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bolt-19 >/dev/null; } || return 1
        else
            { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bolt-19 >/dev/null; } || return 1
        fi
        found=$(bolt_tools | sed -n 1p)
        [[ -n $found ]] || return 1
    fi
    read -r major bolt merge <<<"$found"
    log "   llvm-bolt $major ($bolt)"
    rm -rf "$BOLT_DIR" && mkdir -p "$BOLT_DIR/profiles"
    "$bolt" "$OPTIMISED" -instrument -o "$BOLT_DIR/palisade-instrumented" \
        --instrumentation-file="$BOLT_DIR/profiles/prof" --instrumentation-file-append-pid \
        >"$BOLT_DIR/instrument.log" 2>&1 || return 1
    train_with "$BOLT_DIR/palisade-instrumented" || return 1
    compgen -G "$BOLT_DIR/profiles/*.fdata" >/dev/null || return 1
    "$merge" "$BOLT_DIR"/profiles/*.fdata >"$BOLT_DIR/merged.fdata" 2>"$BOLT_DIR/merge.log" || return 1
    "$bolt" "$OPTIMISED" -o "$BOLT_DIR/palisade" -data="$BOLT_DIR/merged.fdata" \
        -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
        -icf=1 -use-gnu-stack >"$BOLT_DIR/optimise.log" 2>&1 || return 1
    "$BOLT_DIR/palisade" demo --once >/dev/null 2>&1 || return 1
    cp "$BOLT_DIR/palisade" "$OPTIMISED"
}

if [[ ${BOLT:-1} == 0 ]]; then
    log "6. BOLT skipped (BOLT=0)"
else
    log "6. BOLT: the hot code packed together"
    bolt_layout || log "   BOLT did not finish (logs in $BOLT_DIR); the profile-guided binary of step 5 ships as it is"
fi

log "7. smoke test: palisade demo --once"
"$OPTIMISED" demo --once >/dev/null || die "the profile-guided binary failed the demo"
log "done: $OPTIMISED"
