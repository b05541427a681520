#!/usr/bin/env bash
# Runs every khala-sync test suite on a fresh machine. Installs what it needs, idempotently.
#
#   scripts/test.sh               # everything (what CI runs)
#   scripts/test.sh --no-lint     # skip fmt/clippy/doc (local iteration)
#   scripts/test.sh --skip-swift  # skip the Swift package suite (Debian chroot + swift test)
#   scripts/test.sh --skip-web    # skip the wasm suites (Node + headless Chromium)
#   scripts/test.sh --skip-fuzz   # skip the cargo-fuzz runs (10 s per decoder target)
#   scripts/test.sh --skip-bench  # skip the benchmark smoke run (khala-sync-bench --quick)
#
# Every suite writes "<passed> <failed>" to target/test-results/<suite>; the script ends with
# the totals line "N passed, N failed" over all suites (Rust nextest, Swift, web, ...).
set -uo pipefail
cd "$(dirname "$0")/.."

LINT=1
SWIFT=1
WEB=1
FUZZ=1
BENCH=1
for arg in "$@"; do
  case "$arg" in
    --no-lint) LINT=0 ;;
    --skip-swift) SWIFT=0 ;;
    --skip-web) WEB=0 ;;
    --skip-fuzz) FUZZ=0 ;;
    --skip-bench) BENCH=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
RESULTS=target/test-results
rm -rf "$RESULTS"; mkdir -p "$RESULTS"
FAILED_STEPS=()
# run_step NAME CMD...: a failing setup/lint step counts as one failure in the totals.
run_step() {
  local name=$1; shift
  if ! "$@"; then
    echo "!! step failed: $name" >&2
    FAILED_STEPS+=("$name")
  fi
}

step "toolchain"
rustup show active-toolchain >/dev/null   # installs the pinned toolchain + components if missing
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

step "python interop client (websockets) for the dev-server interop test"
if ! python3 -c 'import websockets' 2>/dev/null; then
  python3 -m pip install --quiet websockets
fi

if [ "$LINT" = 1 ]; then
  step "cargo fmt --check"
  run_step fmt cargo fmt --all --check
  step "cargo clippy -D warnings"
  run_step clippy cargo clippy --workspace --all-targets -- -D warnings
  step "cargo doc (every public item documented)"
  run_step doc env RUSTDOCFLAGS="-D warnings -D missing_docs" cargo doc --workspace --no-deps --quiet
fi

step "doc tests (README quick-start and API examples)"
run_step doctests cargo test --workspace --doc --quiet

# Platform suites: each script installs its own toolchain idempotently and writes its result file.
if [ "$SWIFT" = 1 ] && [ -x bindings-swift/scripts/test-linux.sh ]; then
  step "Swift package (uniffi) + iOS cargo checks"
  run_step swift bindings-swift/scripts/test-linux.sh "$RESULTS/swift"
fi
if [ "$WEB" = 1 ] && [ -x bindings-wasm/scripts/test.sh ]; then
  step "web package (wasm-bindgen): Node + headless Chromium"
  run_step web bindings-wasm/scripts/test.sh "$RESULTS/web"
fi

if [ "$FUZZ" = 1 ]; then
  step "cargo-fuzz: every inbound decoder, 10 s each"
  run_step fuzz scripts/fuzz.sh 10 "$RESULTS/fuzz"
fi

if [ "$BENCH" = 1 ]; then
  step "benchmark smoke run: khala-sync-bench --quick (asserts every copy equals the server's)"
  if cargo run --release --quiet -p khala-sync-bench -- --quick; then
    echo "1 0" > "$RESULTS/bench"
  else
    echo "0 1" > "$RESULTS/bench"
  fi
fi

step "unit + integration tests (cargo nextest; reliability figure lines print at the end)"
NEXTEST_LOG=$RESULTS/nextest.log
cargo nextest run --workspace --no-fail-fast --profile ci 2>&1 | tee "$NEXTEST_LOG"
summary=$(grep -E '^ *Summary' "$NEXTEST_LOG" | tail -1)
np=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary"); np=${np:-0}
nf=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary"); nf=${nf:-0}
if [ -z "$summary" ]; then nf=1; fi
echo "$np $nf" > "$RESULTS/rust"

step "totals"
total_p=0; total_f=${#FAILED_STEPS[@]}
for f in "$RESULTS"/*; do
  case "$f" in *.log) continue ;; esac
  read -r p fl < "$f" || continue
  printf '  %-8s %s passed, %s failed\n' "$(basename "$f")" "$p" "$fl"
  total_p=$((total_p + p)); total_f=$((total_f + fl))
done
for s in "${FAILED_STEPS[@]}"; do printf '  step failed: %s\n' "$s"; done
echo "$total_p passed, $total_f failed"
[ "$total_f" = 0 ]
