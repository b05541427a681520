#!/usr/bin/env bash
# Runs every khala-sync test suite on a fresh machine. Installs what it needs, idempotently.
#
#   scripts/test.sh            # everything (what CI runs)
#   scripts/test.sh --no-lint  # skip fmt/clippy/doc (local iteration)
#
# Ends with the nextest summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

LINT=1
for arg in "$@"; do
  case "$arg" in
    --no-lint) LINT=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
rustup show active-toolchain >/dev/null   # installs the pinned toolchain + components if missing
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

step "python interop client (websockets) for the dev-server interop test"
if ! python3 -c 'import websockets' 2>/dev/null; then
  python3 -m pip install --quiet websockets
fi

if [ "$LINT" = 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all --check
  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
  step "cargo doc (every public item documented)"
  RUSTDOCFLAGS="-D warnings -D missing_docs" cargo doc --workspace --no-deps --quiet
fi

step "doc tests (README quick-start and API examples)"
cargo test --workspace --doc --quiet

step "unit + integration tests (cargo nextest)"
cargo nextest run --workspace --no-fail-fast --profile ci
