#!/usr/bin/env bash
# Store throughput (IndexedDB vs memory) in headless Chromium; prints the BENCH lines.
# Run after scripts/test.sh has installed the toolchain. Takes ~30 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMEDRIVER=$(command -v chromedriver) WASM_BINDGEN_TEST_TIMEOUT=300 \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p khala-sync-wasm --target wasm32-unknown-unknown --release --test bench -- --nocapture 2>&1 \
  | grep -E 'BENCH|test result'
