#!/usr/bin/env bash
# Builds the npm package into bindings-wasm/pkg:
#   pkg/web/   wasm-bindgen --target web    (browsers, workers; ES module)
#   pkg/node/  wasm-bindgen --target nodejs (Node; CommonJS loaded by node.mjs)
#   pkg/index.js, pkg/node.mjs, pkg/core.js, pkg/index.d.ts (hand-written wrapper + types)
# Release build, then wasm-opt -Oz (binaryen from npm; Debian's binaryen 108 breaks
# externref tables, see TOOLCHAINS.md). Prints raw and gzipped sizes.
#
#   scripts/build.sh            # release + wasm-opt
#   scripts/build.sh --dev      # debug build, no wasm-opt (fast iteration)
# Needs: the wasm32 target, wasm-bindgen 0.2.130 and `npm install` (scripts/test.sh does it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PROFILE=release
[ "${1:-}" = "--dev" ] && PROFILE=dev
cd "$ROOT"
if [ "$PROFILE" = release ]; then
  # `wasm-release` (root Cargo.toml): opt-level z, fat LTO, one codegen unit, panic=abort.
  # Only this build uses it; the workspace's `release` profile stays tuned for native.
  # The standard library is rebuilt with the same settings (`-Zbuild-std`, from the `rust-src`
  # component of the pinned stable toolchain; RUSTC_BOOTSTRAP=1 unlocks the -Z flags on
  # stable): `optimize_for_size` std algorithms, `panic=immediate-abort` (a panic traps at
  # once, as `panic=abort` already did on wasm32, without formatting a message) and no
  # caller-location strings, `{:?}` printing nothing (no user-visible message formats with
  # `Debug`: README step 14). See README "Bundle size" for what each saves.
  if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "build.sh: the rust-src component is missing (rustup component add rust-src)" >&2
    exit 1
  fi
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none -Zfmt-debug=none" \
    cargo build -p khala-sync-wasm --target wasm32-unknown-unknown --profile wasm-release --quiet \
    -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size
  WASM=target/wasm32-unknown-unknown/wasm-release/khala_sync_wasm.wasm
else
  cargo build -p khala-sync-wasm --target wasm32-unknown-unknown --quiet
  WASM=target/wasm32-unknown-unknown/debug/khala_sync_wasm.wasm
fi
OUT="$HERE/pkg"
rm -rf "$OUT"; mkdir -p "$OUT"
wasm-bindgen --target web --out-dir "$OUT/web" "$WASM"
wasm-bindgen --target nodejs --out-dir "$OUT/node" "$WASM"
echo '{"type":"commonjs"}' > "$OUT/node/package.json"   # the nodejs target is CommonJS
if [ "$PROFILE" = release ]; then
  OPT="$HERE/node_modules/.bin/wasm-opt"
  # `--flatten --rereloop -Oz -Oz -Oz`: smaller than one `-Oz` (README, size table, steps 3 and 8).
  FLAGS=(--flatten --rereloop -Oz -Oz -Oz --enable-bulk-memory --enable-bulk-memory-opt --enable-nontrapping-float-to-int
         --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue)
  # Last pass: short import/export names; minify-names.mjs rewrites the glue to match
  # (README, size table, step 15).
  for t in web node; do
    f="$OUT/$t/khala_sync_wasm_bg.wasm"
    "$OPT" "${FLAGS[@]}" --strip-debug --strip-producers --minify-imports-and-exports-and-modules \
      "$f" -o "$f.opt" > "$f.names.json"
    mv "$f.opt" "$f"
    node "$HERE/scripts/minify-names.mjs" "$f" "$f.names.json" "$OUT/$t/khala_sync_wasm.js" \
      "$OUT/$t/khala_sync_wasm.d.ts"
    rm "$f.names.json"
  done
fi
cp "$HERE"/js/{core.js,index.js,node.mjs,index.d.ts} "$OUT/"
cp "$OUT/index.d.ts" "$OUT/node.d.mts"
W="$OUT/web/khala_sync_wasm_bg.wasm"
raw=$(stat -c %s "$W")
gz=$(gzip -9 -c "$W" | wc -c)
js=$(cat "$OUT/web/khala_sync_wasm.js" "$OUT"/{core.js,index.js} | gzip -9 | wc -c)
echo "khala-sync web package ($PROFILE): wasm ${raw} bytes raw, ${gz} bytes gzip -9; JS glue ${js} bytes gzipped"
echo "$raw $gz $js" > "$OUT/SIZE"
