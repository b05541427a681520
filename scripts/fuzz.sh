#!/usr/bin/env bash
# Runs every cargo-fuzz target (tests/fuzz) for a fixed time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [RESULT_FILE]     # default 15 s each
#
# Installs cargo-fuzz if missing. Stable toolchain + RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z
# sanitizer flags; this machine only has stable). A crash leaves its input under
# tests/fuzz/artifacts/<target>/ and fails the script; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz -O <target> <artifact>
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
RESULT=${2:-}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build --fuzz-dir tests/fuzz -O || { [ -n "$RESULT" ] && echo "0 1" > "$RESULT"; exit 1; }
pass=0; fail=0
for t in $(cargo fuzz list --fuzz-dir tests/fuzz); do
  mkdir -p "tests/fuzz/corpus/$t"
  if out=$(cargo fuzz run --fuzz-dir tests/fuzz -O "$t" -- -max_total_time="$SECS" -max_len=65536 2>&1); then
    echo "fuzz $t: $(grep -E '^Done [0-9]+ runs' <<<"$out" | tail -1)"
    pass=$((pass + 1))
  else
    echo "fuzz $t: FAILED"; tail -40 <<<"$out"
    fail=$((fail + 1))
  fi
done
echo "fuzz targets: $pass passed, $fail failed"
[ -n "$RESULT" ] && echo "$pass $fail" > "$RESULT"
[ "$fail" = 0 ]
