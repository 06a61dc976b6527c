#!/usr/bin/env bash
# Runs each fuzz target for a set time, one after another, and prints per
# target the executions, exec/s, corpus size and crashes. Not run in CI.
#
#   fuzz/run.sh                         # every target, 600 s each
#   SECONDS_PER_TARGET=60 fuzz/run.sh store_readers
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain the
# nightly flags it passes are allowed with RUSTC_BOOTSTRAP=1, set here.
#
# One fuzzing process at a time (`-fork=1`: a single child, restarted
# after a crash, so one run reports every distinct crash it finds rather
# than stopping at the first). New inputs are added to fuzz/corpus/TARGET;
# crashing inputs are kept in fuzz/artifacts/TARGET/. Logs go to
# fuzz/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
secs=${SECONDS_PER_TARGET:-600}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(project_toml template_analysis store_readers)
mkdir -p logs

# default: optimised with debug assertions and overflow checks on, so an
# overflow counts as a crash; FUZZ_BUILD_FLAGS=-O turns them off
# shellcheck disable=SC2086
cargo fuzz build ${FUZZ_BUILD_FLAGS:-} >logs/build.log 2>&1 || { tail -20 logs/build.log; exit 1; }
bin_dir=target/$(rustc -vV | sed -n 's/^host: //p')/release

summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    log=logs/$t.log
    echo "== $t: ${secs} s" >&2
    # -timeout: a single input taking 10 s is a hang worth reporting;
    # -malloc_limit_mb: an allocation sized from a corrupt length field
    # shows up as a crash, not as a slow machine
    "$bin_dir/$t" "corpus/$t" -fork=1 -ignore_crashes=1 -ignore_ooms=1 \
        -ignore_timeouts=1 -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || true
    # fork mode's status lines: "#RUNS: cov: .. corp: N exec/s: E oom/timeout/crash: a/b/c time: Ts"
    last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
    execs=$(sed -nE 's/^#([0-9]+):.*/\1/p' <<<"$last")
    # the status line's exec/s is the last job's; report the whole run's
    took=$(sed -nE 's/.* time: ([0-9]+)s.*/\1/p' <<<"$last")
    rate=$([ -n "$execs" ] && [ "${took:-0}" -gt 0 ] && echo $((execs / took)) || true)
    otc=$(sed -nE 's/.*oom\/timeout\/crash: ([0-9\/]+).*/\1/p' <<<"$last")
    corpus=$(find "corpus/$t" -type f | wc -l)
    new=$(($(find "artifacts/$t" -type f | wc -l) - before))
    summary+=("$(printf '%-18s %12s %8s %8s  %-18s %s' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "${otc:-?}" "$new")")
done

printf '%-18s %12s %8s %8s  %-18s %s\n' target executions exec/s corpus oom/timeout/crash "new artifacts"
printf '%s\n' "${summary[@]}"
