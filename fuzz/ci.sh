#!/usr/bin/env bash
# CI's fuzz check: builds the fuzz targets and runs each one briefly on its
# committed corpus, so that a change which makes a reader panic on an input
# the corpus already holds (or one close to it) fails CI. Long campaigns
# that grow the corpus are fuzz/run.sh's job.
#
#   fuzz/ci.sh                           # every target, 20 s each
#   SECONDS_PER_TARGET=5 fuzz/ci.sh store_readers
#
# Needs cargo-fuzz; a stable toolchain takes its nightly flags with
# RUSTC_BOOTSTRAP=1, set here. Unlike run.sh it stops at the first crash,
# timeout or out-of-memory and exits 1, and it writes new inputs to a temp
# directory: the committed corpus is read, never changed. A crashing input
# is kept in fuzz/artifacts/TARGET/, the log in fuzz/logs/ci-TARGET.log.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
secs=${SECONDS_PER_TARGET:-20}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
mkdir -p logs

# The dev profile (unoptimised, with debug assertions and the address
# sanitizer) builds in about a third of the release profile's CPU time
# (4.6 against 12.6 CPU-minutes here), and 20 s of it still replay the
# whole corpus and try some 4,000 new inputs per target. FUZZ_RELEASE=1
# builds the release profile, as run.sh does.
if [ -n "${FUZZ_RELEASE:-}" ]; then profile=(); out=release; else profile=(--dev); out=debug; fi
# shellcheck disable=SC2086
cargo fuzz build "${profile[@]}" ${FUZZ_BUILD_FLAGS:-} >logs/ci-build.log 2>&1 || { tail -20 logs/ci-build.log; exit 1; }
bin_dir=target/$(rustc -vV | sed -n 's/^host: //p')/$out
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for t in "${targets[@]}"; do
    [ -n "$(ls -A "corpus/$t" 2>/dev/null)" ] || { echo "fuzz/corpus/$t is empty or missing" >&2; exit 1; }
    mkdir -p "$scratch/$t" "artifacts/$t"
    log=logs/ci-$t.log
    # the first directory receives new inputs, the second is only read;
    # limits as in run.sh
    if ! "$bin_dir/$t" "$scratch/$t" "corpus/$t" -max_total_time="$secs" \
        -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/, the log in fuzz/$log" >&2
        exit 1
    fi
    echo "$t: $(grep -E '^#[0-9]+' "$log" | tail -1 | cut -c1-100)"
done
