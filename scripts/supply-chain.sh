#!/usr/bin/env bash
# The supply-chain check .ci/run runs: cargo-deny against deny.toml (RustSec advisories, licences,
# duplicate majors and banned crates, crate sources). A new advisory against a crate in
# Cargo.lock, a licence not on the list or a new duplicate major fails it.
#
#   scripts/supply-chain.sh                         # the check
#   scripts/supply-chain.sh --refresh-snapshot DIR  # replace deny/advisory-db.bundle with the
#                                                   # advisory-db checkout in DIR
#
# cargo-deny is built at a pinned version into target/tools, so whatever cargo-deny the machine has
# elsewhere is not used. The advisory database comes from GitHub when the machine reaches it; CI
# machines that reach only the package registries use the snapshot committed in
# deny/advisory-db.bundle (a one-commit git bundle of rustsec/advisory-db, CC0), which deny.toml
# refuses once it is older than `maximum-db-staleness`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
DENY_VERSION=0.20.2
tools="$root/target/tools"
deny="$tools/bin/cargo-deny"
snapshot="$root/deny/advisory-db.bundle"
# cargo-deny keeps each database in a directory named after its URL, under db-path.
dbs="$root/target/advisory-dbs"

if [ "${1:-}" = "--refresh-snapshot" ]; then
  src=${2:?usage: $0 --refresh-snapshot ADVISORY_DB_CHECKOUT}
  commit=$(git -C "$src" rev-parse HEAD)
  date=$(git -C "$src" log -1 --format=%cI HEAD)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  git init -q "$work/db"
  git -C "$src" archive HEAD | tar -x -C "$work/db"
  git -C "$work/db" add -A
  GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" git -C "$work/db" -c user.name=palisade \
    -c user.email=palisade@localhost commit -q -m "rustsec/advisory-db@$commit ($date)"
  git -C "$work/db" bundle create "$snapshot" --all
  echo "supply-chain: deny/advisory-db.bundle is now rustsec/advisory-db@$commit of $date"
  exit 0
fi

if [ "$("$deny" --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
  echo "supply-chain: building cargo-deny $DENY_VERSION into target/tools (once)" >&2
  cargo install --quiet --locked --root "$tools" "cargo-deny@$DENY_VERSION"
fi

# The database, fetched by cargo-deny when GitHub answers; the snapshot otherwise.
offline=()
if ! timeout 20 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  offline=(--offline)
  # Offline, cargo-deny's `cargo metadata` needs every crate of Cargo.lock in cargo's cache, those
  # of other platforms too (windows-sys, ...), which a build here never downloads: the registry is
  # reachable when GitHub is not, so fetch them first.
  cargo fetch --locked --quiet ||
    { echo "supply-chain: GitHub is out of reach and cargo cannot fetch the crates of Cargo.lock either (above); run it where github.com or the crate registry answers, or after 'cargo fetch --locked' on such a machine" >&2; exit 1; }
  # The directory name cargo-deny derives from the URL in deny.toml: learnt from its own error
  # when the directory is missing, so a new cargo-deny that names it differently still works.
  db=$(ls -d "$dbs"/advisory-db-* 2>/dev/null | head -n1 || true)
  if [ -z "$db" ]; then
    said=$("$deny" --offline check advisories 2>&1 || true)
    db=$(sed -n 's/.*\(target\/advisory-dbs\/advisory-db-[0-9a-f]*\).*/\1/p' <<<"$said" | head -n1)
    if [ -z "$db" ]; then
      # Its error is the cause (a crate missing from cargo's cache, a deny.toml it refuses): show it.
      printf '%s\n' "$said" >&2
      echo "supply-chain: cargo-deny did not name the advisory database's directory (its output above); cannot place the snapshot there" >&2
      exit 1
    fi
    db="$root/$db"
  fi
  if [ ! -d "$db/.git" ] || [ "$snapshot" -nt "$db/.git" ]; then
    rm -rf "$db"
    mkdir -p "$dbs"
    git clone -q "$snapshot" "$db"
  fi
  echo "supply-chain: GitHub is out of reach; advisories from the snapshot of $(git -C "$db" log -1 --format=%cs)" >&2
fi
"$deny" "${offline[@]}" check --show-stats
