#!/usr/bin/env bash
# The web package's test command: installs what it needs (idempotently), builds the npm
# package, and runs every web suite against the real dev server on 127.0.0.1.
#
#   bindings-wasm/scripts/test.sh [result-file]
#
# Suites (each prints its normal output):
#   1. wasm-bindgen-test under Node           (tests/node.rs)
#   2. wasm-bindgen-test in headless Chromium (tests/browser.rs: store conformance on IndexedDB)
#   3. Node package tests                     (e2e/node-package.test.mjs, pkg/node.mjs)
#  3b. multi-tab relay de-duplication          (e2e/relay.test.mjs, js/core.js, Node)
#   4. Chromium end-to-end via playwright-core (e2e/web-shell.test.mjs, the web shell page)
#   5. Chromium multi-tab via playwright-core (e2e/multi-tab.test.mjs: leader election,
#      hand-off, Web Locks fallback, page lifecycle; its own dev server)
#   6. Chromium dialect F via playwright-core (e2e/fanout.test.mjs: poll route, live events,
#      truncation, poll cadence, auto dialect; its own dev servers)
#   7. TypeScript check of index.d.ts         (e2e/types-check.ts, counts as one test)
# Writes "<passed> <failed>" to the result file (default target/test-results/web) and exits
# non-zero if anything failed. Installs: the wasm32 target, rust-src, wasm-bindgen-cli 0.2.130,
# Debian's chromium + chromium-driver, npm dev dependencies (binaryen, playwright-core,
# typescript). Never downloads browsers from elsewhere.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RESULT=${1:-$ROOT/target/test-results/web}
mkdir -p "$(dirname "$RESULT")" "$ROOT/target/web-test"
LOGS=$ROOT/target/web-test
cd "$ROOT"

PASSED=0
FAILED=0
step() { printf '\n--> web: %s\n' "$*"; }
fail_setup() {
  echo "!! web setup failed: $*" >&2
  echo "$PASSED $((FAILED + 1))" > "$RESULT"
  exit 1
}
# count_rust LOG: adds "test result: ... N passed; M failed" of a cargo/wasm-bindgen run.
count_rust() {
  local line p f
  line=$(grep -E '^test result:' "$1" | tail -1)
  if [ -z "$line" ]; then FAILED=$((FAILED + 1)); return; fi
  p=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line"); f=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")
  PASSED=$((PASSED + ${p:-0})); FAILED=$((FAILED + ${f:-0}))
}
# count_node LOG: adds "# pass N" / "# fail M" of a node --test run.
count_node() {
  local p f
  p=$(sed -nE 's/^# pass ([0-9]+)/\1/p' "$1" | tail -1)
  f=$(sed -nE 's/^# fail ([0-9]+)/\1/p' "$1" | tail -1)
  if [ -z "$p" ]; then FAILED=$((FAILED + 1)); return; fi
  PASSED=$((PASSED + p)); FAILED=$((FAILED + ${f:-0}))
}

step "toolchain (wasm32 target, wasm-bindgen-cli 0.2.130, chromium, node deps)"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown || fail_setup "rustup target add"
fi
if ! rustup component list --installed | grep -q '^rust-src'; then
  # build.sh rebuilds std for the size-first package (-Zbuild-std).
  rustup component add rust-src || fail_setup "rustup component add rust-src"
fi
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen 0.2.130" ]; then
  # Without --locked: its lockfile wants a webpki-roots release this registry lacks.
  cargo install wasm-bindgen-cli --version 0.2.130 || fail_setup "cargo install wasm-bindgen-cli"
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null \
    || fail_setup "apt-get install chromium chromium-driver"
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null || fail_setup "apt-get install nodejs npm"
fi
if [ ! -x "$HERE/node_modules/.bin/wasm-opt" ] || [ ! -d "$HERE/node_modules/playwright-core" ] \
   || [ ! -x "$HERE/node_modules/.bin/tsc" ] || [ "$HERE/package-lock.json" -nt "$HERE/node_modules" ]; then
  (cd "$HERE" && npm ci --no-audit --no-fund) || fail_setup "npm ci"
  touch "$HERE/node_modules"
fi
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
NODE_WS=""
[ "$NODE_MAJOR" -lt 22 ] && NODE_WS="--experimental-websocket"   # global WebSocket on Node 20

step "build: dev server + npm package (release, wasm-opt -Oz)"
cargo build -p khala-dev-server --quiet || fail_setup "cargo build khala-dev-server"
"$HERE/scripts/build.sh" || fail_setup "scripts/build.sh"

export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export WASM_BINDGEN_TEST_TIMEOUT=120

step "1/7 wasm-bindgen-test under Node (against a dev server on loopback)"
SERVER_LOG=$LOGS/dev-server.log
KHALA_DEV_WEB_ROOT="$ROOT" target/debug/khala-dev-server --port 0 --seed-docs 40 >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null' EXIT
BASE=""
for _ in $(seq 1 100); do
  BASE=$(sed -nE 's/^khala dev server: (http:\/\/127\.0\.0\.1:[0-9]+).*/\1/p' "$SERVER_LOG" | head -1)
  [ -n "$BASE" ] && break
  sleep 0.1
done
[ -n "$BASE" ] || fail_setup "dev server did not start (see $SERVER_LOG)"
KHALA_TEST_SERVER=$BASE NODE_OPTIONS="$NODE_WS" \
  cargo test -p khala-sync-wasm --target wasm32-unknown-unknown --test node 2>&1 | tee "$LOGS/node-unit.log"
count_rust "$LOGS/node-unit.log"
kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; trap - EXIT

step "2/7 wasm-bindgen-test in headless Chromium (IndexedDB store conformance)"
(cd "$HERE" && CHROMEDRIVER=$(command -v chromedriver) \
  cargo test -p khala-sync-wasm --target wasm32-unknown-unknown --test browser) 2>&1 | tee "$LOGS/browser-unit.log"
count_rust "$LOGS/browser-unit.log"

step "3/7 npm package under Node"
NODE_OPTIONS="$NODE_WS" node --test --test-reporter=tap "$HERE/e2e/node-package.test.mjs" 2>&1 | tee "$LOGS/node-package.log"
count_node "$LOGS/node-package.log"

step "3b/7 multi-tab relay de-duplication under Node (js/core.js against a stand-in client)"
node --test --test-reporter=tap "$HERE/e2e/relay.test.mjs" 2>&1 | tee "$LOGS/node-relay.log"
count_node "$LOGS/node-relay.log"

step "4/7 web shell in headless Chromium (playwright-core)"
node --test --test-reporter=tap "$HERE/e2e/web-shell.test.mjs" 2>&1 | tee "$LOGS/chromium-e2e.log"
count_node "$LOGS/chromium-e2e.log"

step "5/7 multi-tab in headless Chromium (one context, several web shell pages)"
node --test --test-reporter=tap "$HERE/e2e/multi-tab.test.mjs" 2>&1 | tee "$LOGS/chromium-multi-tab.log"
count_node "$LOGS/chromium-multi-tab.log"

step "6/7 dialect F (runtime fanout, poll route) in headless Chromium"
node --test --test-reporter=tap "$HERE/e2e/fanout.test.mjs" 2>&1 | tee "$LOGS/chromium-fanout.log"
count_node "$LOGS/chromium-fanout.log"

step "7/7 TypeScript: index.d.ts"
if (cd "$HERE" && node_modules/.bin/tsc --noEmit --strict --target es2022 --module es2022 \
      --moduleResolution bundler --lib es2022,dom e2e/types-check.ts); then
  echo "types-check: ok"; PASSED=$((PASSED + 1))
else
  echo "types-check: FAILED"; FAILED=$((FAILED + 1))
fi

read -r RAW GZ JSGZ < "$HERE/pkg/SIZE"
echo
echo "web package size: wasm ${RAW} B raw / ${GZ} B gzip -9, JS glue ${JSGZ} B gzipped"
echo "web suites: $PASSED passed, $FAILED failed"
echo "$PASSED $FAILED" > "$RESULT"
[ "$FAILED" -eq 0 ]
