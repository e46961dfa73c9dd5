#!/usr/bin/env bash
# Builds every fuzz target (`cargo fuzz list`: the virtio ones,
# qcow2_open and domain_xml), then runs each for SECONDS (default 30), one after the other.
# Fails if any target panics, crashes, runs out of memory or hangs (one
# input running longer than 10 s), printing the reproducer.
#
#   fuzz/run.sh [SECONDS]               all targets
#   TARGETS="virtqueue net_rx" fuzz/run.sh 60
#   SANITIZER=none fuzz/run.sh          without AddressSanitizer (faster)
#
# Reproduce:  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET artifacts/TARGET/crash-...
# Minimize:   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin TARGET artifacts/TARGET/crash-...
# Longer runs by hand: the same `cargo fuzz run TARGET` with -- -max_total_time=N,
# or -jobs=2 -workers=2 for both cores.
#
# cargo-fuzz asks for nightly only for its -Z flags (the sanitizer); the
# stable toolchain accepts them with RUSTC_BOOTSTRAP=1, so no second
# toolchain is needed. libFuzzer itself is compiled from source by
# libfuzzer-sys with the machine's C++ compiler.
#
# Seeds (committed, written by `cargo run --example gen_seeds`) are in
# corpus/TARGET; what runs discover goes to target/corpus/TARGET (kept
# between runs, not committed), crashes to artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p target

SECONDS_PER_TARGET="${1:-30}"
SANITIZER="${SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
# As cargo fuzz run sets it (Rust's ASan builds trip the ODR check).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
if ! command -v c++ >/dev/null; then
    echo "== installing g++ (libFuzzer is C++)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends g++
fi

targets="${TARGETS:-$(cargo fuzz list)}"
host=$(rustc -vV | sed -n 's/^host: //p')

echo "== building $(echo $targets) (sanitizer: $SANITIZER)"
start=$(date +%s)
# Built once, then run straight from target/: a change to the sources
# during the runs does not rebuild anything half-way.
for t in $targets; do
    cargo fuzz build --sanitizer "$SANITIZER" "$t" >target/build.log 2>&1 || {
        cat target/build.log
        exit 1
    }
done
echo "   built in $(( $(date +%s) - start )) s"

failed=()
for t in $targets; do
    mkdir -p "target/corpus/$t" "artifacts/$t"
    log="target/fuzz-$t.log"
    echo "== $t: ${SECONDS_PER_TARGET} s"
    # -timeout: one input running 10 s is a hang; -rss_limit_mb: a leak
    # or an allocation the guest controls.
    if "target/$host/release/$t" "target/corpus/$t" "corpus/$t" \
        -artifact_prefix="artifacts/$t/" -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
        echo "   ok: ${execs:-?} runs, ${speed:-?} exec/s, ${cov:-no coverage line}"
    else
        failed+=("$t")
        grep -E 'panicked at|^[^ ].*(assertion|failed)|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' \
            "$log" | head -6 || true
        repro=$(grep -Eo "artifacts/$t/[a-z-]+-[0-9a-f]+" "$log" | tail -1 || true)
        echo "   FAILED; log: fuzz/$log"
        if [ -n "$repro" ]; then
            echo "   reproducer: fuzz/$repro"
            echo "   reproduce:  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t $repro"
        fi
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "== fuzzing found problems in: ${failed[*]}"
    exit 1
fi
echo "== all fuzz targets ran ${SECONDS_PER_TARGET} s without a finding"
