#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (issue 3: request parsing and CDB
# decoding; issue 4: fault plans). Usage: scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]
# (default 60 seconds, every target).
# Corpora grow in fuzz/corpus/<target> (not committed); fuzz/seeds/<target> seeds them.
# FUZZ_RUNS=N also ends each target after N executions (for a campaign of a given size).
# Exits non-zero if a target finds a crash, naming the artifact.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
    ''|*[!0-9]*|0) echo "fuzz.sh: SECONDS_PER_TARGET must be a positive integer, got '$secs'" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"
export CARGO_TARGET_DIR="$fuzz/target"
all_targets=(request cdb plan)
targets=("${@:2}")
if ((${#targets[@]} == 0)); then
    targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
    case " ${all_targets[*]} " in
        *" $t "*) ;;
        *) echo "fuzz.sh: no target '$t' (targets: ${all_targets[*]})" >&2; exit 2 ;;
    esac
done

# cargo-fuzz needs nightly (-Z sanitizer flags). RUSTUP_AUTO_INSTALL=0 stops rustup from
# fetching it implicitly, so install it here when it is missing.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing the nightly toolchain (needed by cargo-fuzz)"
    if ! rustup toolchain install nightly --profile minimal; then
        echo "fuzz.sh: could not install nightly. Run this, then retry:" >&2
        echo "    rustup toolchain install nightly --profile minimal" >&2
        exit 1
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    if ! cargo install cargo-fuzz --locked; then
        echo "fuzz.sh: could not install cargo-fuzz. Run this, then retry:" >&2
        echo "    cargo install cargo-fuzz --locked" >&2
        exit 1
    fi
fi

# ASan's detection of stack use after return puts every large stack frame on a heap-like
# fake stack: it nearly halved the executions per second of `request`, for a bug class
# that safe Rust rules out. Everything else ASan checks stays on. A caller's ASAN_OPTIONS
# win.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_stack_use_after_return=0}"
runs=()
if [[ -n "${FUZZ_RUNS:-}" ]]; then
    runs=(-runs="$FUZZ_RUNS")
fi

cd "$fuzz"
# -O: optimised; -a: with debug assertions and overflow checks, so that arithmetic a guest
# or a plan can overflow is found too (a release build would wrap silently).
cargo +nightly fuzz build -O -a

failed=()
for t in "${targets[@]}"; do
    corpus="$fuzz/corpus/$t"
    artifacts="$fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    log="$fuzz/artifacts/$t.log"
    echo "fuzz.sh: $t for ${secs}s (log: $log)"
    # -timeout: an input taking over 10 s is a hang, reported like a crash.
    if cargo +nightly fuzz run -O -a "$t" "$corpus" "$fuzz/seeds/$t" -- \
        -max_total_time="$secs" "${runs[@]}" -timeout=10 -max_len=16384 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1; then
        # The last status line (coverage, features, corpus) and the final counters.
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | sed "s/^/    $t /" || true
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$log" \
            | sed "s/^/    $t /" || true
    else
        echo "fuzz.sh: $t FAILED; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        while IFS= read -r a; do
            echo "fuzz.sh: $t artifact: $a" >&2
        done < <(grep -oE "Test unit written to [^ ]+" "$log" | sed 's/Test unit written to //')
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz.sh: crashes in: ${failed[*]} (reproduce: cd fuzz && cargo +nightly fuzz run -O -a <target> <artifact>)" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${targets[*]} (${secs}s each)"
