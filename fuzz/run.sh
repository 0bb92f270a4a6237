#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a short while: fuzz/run.sh [seconds-per-target] [target...]
#
#   fuzz/run.sh            60 s per target
#   fuzz/run.sh 0          no fuzzing: replay the committed seeds and regressions once (a smoke test)
#   fuzz/run.sh 300 sql_guard
#
# Not part of .ci/run: the first build compiles DataFusion, Arrow and tonic with coverage instrumentation
# (about 25 minutes on a 2-core machine), which CI's time budget cannot spare on every submission. Later builds
# reuse $CARGO_TARGET_DIR and take seconds.
#
# cargo-fuzz needs nightly flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them (set below). New inputs
# the fuzzer finds go to fuzz/.work/<target>/ (not committed); crashes go to fuzz/artifacts/<target>/.
set -euo pipefail

seconds=${1:-60}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

export PATH="/root/.cache/vigil-tools/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/root/.cache/vigil-fuzz-target}
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
if ! command -v cargo-fuzz >/dev/null; then
    nice -n 10 cargo install cargo-fuzz --locked --root /root/.cache/vigil-tools
fi

# No sanitizer: the fuzzed code is safe Rust, where ASan finds nothing a panic does not, and it would double
# the build. Debug assertions on, so integer overflow panics. 16 codegen units: see Cargo.toml's profile.
flags=(--sanitizer none --debug-assertions --codegen-units 16)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

nice -n 10 cargo fuzz build "${flags[@]}"

if [ "$seconds" -eq 0 ]; then
    limit=(-runs=0)
else
    limit=(-max_total_time="$seconds")
fi

failed=()
for target in "${targets[@]}"; do
    echo "=== $target (${seconds}s)"
    mkdir -p ".work/$target" "corpus/$target"
    # The first corpus directory receives new inputs, so the committed seeds stay as they are.
    if ! nice -n 10 cargo fuzz run "${flags[@]}" "$target" ".work/$target" "corpus/$target" -- \
        "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets that failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "all ${#targets[@]} fuzz targets ran clean"
