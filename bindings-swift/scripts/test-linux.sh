#!/usr/bin/env bash
# Linux test of the KhalaSync Swift package with the real Swift compiler, plus the iOS cargo checks.
#
#   bindings-swift/scripts/test-linux.sh [result-file]
#
# 1. builds the crate's uniffi-bindgen (feature `bindgen`), the Rust library (`khala-sync-ffi`,
#    without the bindgen) and the dev server (`khala-dev-server`);
# 2. generates the Swift bindings with the crate's `uniffi-bindgen` from the built library
#    (generated files are not in git; they are rewritten only when they change);
# 3. ensures a cached Debian trixie chroot with Swift 6 (~/.cache/khala-sync/swift-trixie,
#    see scripts/swift-chroot.sh), stages the package into it with only the static library in
#    lib/, and runs `swift build --build-tests` and `swift test`, both with -warnings-as-errors;
#    the XCTest suite spawns the real dev server (KHALA_DEV_SERVER) once per test on loopback;
#    then type-checks the example app's model (examples/ios) against the built module;
# 4. `cargo check -p khala-sync-ffi` for aarch64-apple-ios and aarch64-apple-ios-sim (the latter
#    with -Zbuild-std when rustup has no prebuilt std for it, as on this machine's mirror).
#
# Writes "<passed> <failed>" to the result file: the XCTest counts from `swift test`'s summary,
# plus one for the example type-check and one per iOS cargo check. A failing step that runs no
# tests (build, bindgen, chroot, `swift build`) counts as one failure. Exits non-zero if anything failed. Runs as root (the
# chroot needs mount/chroot); installs what it needs idempotently.
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
PKG_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
REPO=$(cd "$PKG_DIR/.." && pwd)
RESULT_FILE=${1:-$REPO/target/test-results/swift}
mkdir -p "$(dirname "$RESULT_FILE")"
RESULT_FILE=$(cd "$(dirname "$RESULT_FILE")" && pwd)/$(basename "$RESULT_FILE")

# shellcheck source=swift-chroot.sh
source "$SCRIPT_DIR/swift-chroot.sh"
set +e

PASSED=0
FAILED=0
step() { printf '\n--> [swift] (%ss) %s\n' "$SECONDS" "$*"; }
fail_step() { echo "!! [swift] $*" >&2; FAILED=$((FAILED + 1)); }
SWIFT_SUMMARY="(swift test did not run)"
finish() {
  echo "$PASSED $FAILED" > "$RESULT_FILE"
  echo "swift test: ${SWIFT_SUMMARY//$'\t'/}"
  echo "swift suite: $PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
  exit $?
}

cd "$REPO"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | sed -nE 's/.*"target_directory":"([^"]+)".*/\1/p')
TARGET_DIR=${TARGET_DIR:-$REPO/target}

# --- 1. Rust library + dev server -----------------------------------------------------------
# The bindgen binary with uniffi's `cli` (feature `bindgen`) first, then the library without it
# (what apps link), so target/debug/libkhala_sync_ffi.{a,so} are the latter.
step "cargo build: uniffi-bindgen (--features bindgen), khala-sync-ffi --lib, khala-dev-server"
if ! { cargo build -p khala-sync-ffi --features bindgen --bin uniffi-bindgen &&
       cargo build -p khala-sync-ffi --lib &&
       cargo build -p khala-dev-server --bin khala-dev-server; }; then
  fail_step "cargo build failed"
  finish
fi

# --- 2. bindings ------------------------------------------------------------------------------
step "uniffi-bindgen generate (Swift) from target/debug/libkhala_sync_ffi.so"
GEN=$TARGET_DIR/khala-swift-gen
rm -rf "$GEN"
if ! (cd "$PKG_DIR" && "$TARGET_DIR/debug/uniffi-bindgen" generate \
      --library "$TARGET_DIR/debug/libkhala_sync_ffi.so" --language swift \
      --out-dir "$GEN" --no-format); then
  fail_step "uniffi-bindgen failed"
  finish
fi
# install_if_changed SRC DST: keeps DST's mtime when the content is the same (incremental builds).
install_if_changed() {
  mkdir -p "$(dirname "$2")"
  cmp -s "$1" "$2" || cp "$1" "$2"
}
install_if_changed "$GEN/khala_sync_ffi.swift" "$PKG_DIR/Sources/KhalaSyncFFI/khala_sync_ffi.swift"
install_if_changed "$GEN/khala_sync_ffiFFI.h" "$PKG_DIR/Sources/khala_sync_ffiFFI/khala_sync_ffiFFI.h"
install_if_changed "$GEN/khala_sync_ffiFFI.modulemap" "$PKG_DIR/Sources/khala_sync_ffiFFI/module.modulemap"

# --- 3. Swift in the trixie chroot -------------------------------------------------------------
step "Swift chroot ($SWIFT_ROOT)"
if ! ensure_swift_chroot; then
  fail_step "could not build the Swift chroot"
  finish
fi
STAGE=$SWIFT_ROOT/khala/KhalaSync
mkdir -p "$STAGE/lib" "$SWIFT_ROOT/khala/bin"
# Sources are copied with their mtimes (cp -a) so SwiftPM rebuilds only what changed; .build
# stays in the cached chroot. Only the .a goes into lib/ (with a .so there the linker would
# prefer it and the test binary would not start).
rm -rf "$STAGE/Sources" "$STAGE/Tests" "$STAGE/lib/"*
cp -a "$PKG_DIR/Package.swift" "$PKG_DIR/Sources" "$PKG_DIR/Tests" "$STAGE/"
cp -al "$TARGET_DIR/debug/libkhala_sync_ffi.a" "$STAGE/lib/" 2>/dev/null \
  || cp -a "$TARGET_DIR/debug/libkhala_sync_ffi.a" "$STAGE/lib/"
# SwiftPM does not track a library passed by -L/-l: when the Rust library changed, delete the
# linked test bundle so `swift build` relinks it (otherwise the tests would run old Rust code).
LIB_STAMP=$(stat -c '%i %s %Y' "$TARGET_DIR/debug/libkhala_sync_ffi.a")
if [ "$(cat "$STAGE/.lib-stamp" 2>/dev/null)" != "$LIB_STAMP" ]; then
  rm -rf "$STAGE/.build/x86_64-pc-linux-gnu/debug/KhalaSyncPackageTests.xctest"
  echo "$LIB_STAMP" > "$STAGE/.lib-stamp"
fi
rm -f "$SWIFT_ROOT/khala/bin/khala-dev-server"
cp -al "$TARGET_DIR/debug/khala-dev-server" "$SWIFT_ROOT/khala/bin/" 2>/dev/null \
  || cp -a "$TARGET_DIR/debug/khala-dev-server" "$SWIFT_ROOT/khala/bin/"

MOUNTED_PROC=0
cleanup() {
  if [ "$MOUNTED_PROC" = 1 ]; then umount "$SWIFT_ROOT/proc" 2>/dev/null || umount -l "$SWIFT_ROOT/proc"; fi
}
trap cleanup EXIT
if ! mountpoint -q "$SWIFT_ROOT/proc"; then
  mount -t proc proc "$SWIFT_ROOT/proc" && MOUNTED_PROC=1
fi
in_chroot() {
  chroot "$SWIFT_ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 TMPDIR=/tmp KHALA_DEV_SERVER=/khala/bin/khala-dev-server \
    /bin/sh -c "cd /khala/KhalaSync && $*"
}

step "swift --version"
in_chroot "swift --version"

step "swift build --build-tests -Xswiftc -warnings-as-errors"
if ! in_chroot "swift build --build-tests -Xswiftc -warnings-as-errors"; then
  fail_step "swift build failed"
  finish_swift=0
else
  finish_swift=1
fi

if [ "$finish_swift" = 1 ]; then
  step "swift test -Xswiftc -warnings-as-errors (real dev server per test)"
  LOG=$TARGET_DIR/khala-swift-test.log
  in_chroot "swift test -Xswiftc -warnings-as-errors" 2>&1 | tee "$LOG"
  test_rc=${PIPESTATUS[0]}
  # XCTest's last summary line is the total: "Executed N tests, with F failures ..." where F
  # counts failed *assertions*; tests are counted from the per-test "passed"/"failed" lines.
  summary=$(grep -E 'Executed [0-9]+ tests?, with [0-9]+ failures?' "$LOG" | tail -1)
  n=$(sed -nE 's/.*Executed ([0-9]+) tests?.*/\1/p' <<<"$summary")
  tp=$(grep -cE "^Test Case '.*' passed" "$LOG")
  tf=$(grep -cE "^Test Case '.*' failed" "$LOG")
  [ -n "$summary" ] && SWIFT_SUMMARY=$summary
  if [ -z "$summary" ]; then
    fail_step "no XCTest summary in swift test output (exit $test_rc)"
  else
    PASSED=$((PASSED + tp))
    FAILED=$((FAILED + tf))
    if [ $((tp + tf)) != "$n" ]; then
      fail_step "XCTest ran $n tests but reported $tp passed + $tf failed"
    fi
    if [ "$test_rc" != 0 ] && [ "$tf" = 0 ]; then
      fail_step "swift test exited $test_rc with no failing test"
    fi
  fi
fi
if [ "$finish_swift" = 1 ]; then
  # The example app's model uses only the public API; SwiftUI is not on Linux, so the view file
  # cannot be compiled here, but the model is type-checked against the built module.
  step "type-check examples/ios model against the KhalaSync module (Swift 6)"
  mkdir -p "$SWIFT_ROOT/khala/example"
  cp "$REPO/examples/ios/KhalaSyncExample/RunSummaries.swift" "$SWIFT_ROOT/khala/example/"
  if in_chroot "swiftc -typecheck -swift-version 6 -warnings-as-errors \
        -I .build/x86_64-pc-linux-gnu/debug/Modules -I Sources/khala_sync_ffiFFI \
        /khala/example/RunSummaries.swift"; then
    PASSED=$((PASSED + 1))
  else
    fail_step "examples/ios model does not type-check"
  fi
fi
cleanup
MOUNTED_PROC=0

# --- 4. iOS cargo checks ------------------------------------------------------------------------
step "rustup targets for iOS"
installed=$(rustup target list --installed)
declare -A BUILD_STD=()
for t in aarch64-apple-ios aarch64-apple-ios-sim; do
  grep -qx "$t" <<<"$installed" && continue
  if ! rustup target add "$t" >/dev/null 2>&1; then
    # Some rustup mirrors lack the prebuilt std of a tier-2 target (aarch64-apple-ios-sim
    # answers 404 here): check against std built from rust-src instead (-Zbuild-std, enabled
    # on the stable toolchain with RUSTC_BOOTSTRAP=1 for this one command).
    echo "rustup has no prebuilt std for $t here; using -Zbuild-std with rust-src"
    rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
    BUILD_STD[$t]=1
  fi
done
# rusqlite's bundled SQLite (and other build scripts) want a C cross-compiler for Apple, which
# Linux lacks; a *check* never links, so /bin/true stands in (TOOLCHAINS.md).
# A fixed (empty) SDKROOT: a new temp dir per run would change build-script inputs and make
# every run re-check from scratch.
FAKE_SDK=$TARGET_DIR/khala-fake-apple-sdk
mkdir -p "$FAKE_SDK"
for t in aarch64-apple-ios aarch64-apple-ios-sim; do
  v=${t//-/_}
  extra=()
  # Own target dir for -Zbuild-std: RUSTC_BOOTSTRAP=1 changes the fingerprints of the host
  # build dependencies, which would otherwise be rebuilt on every alternation of the two checks.
  if [ -n "${BUILD_STD[$t]:-}" ]; then
    extra=(-Zbuild-std=std,panic_abort --target-dir "$TARGET_DIR/khala-build-std")
  fi
  step "cargo check -p khala-sync-ffi --target $t ${extra[*]}"
  if env "CC_$v=/bin/true" "AR_$v=/bin/true" SDKROOT="$FAKE_SDK" \
       ${BUILD_STD[$t]:+RUSTC_BOOTSTRAP=1} \
       cargo check -p khala-sync-ffi --lib --target "$t" "${extra[@]}"; then
    PASSED=$((PASSED + 1))
  else
    fail_step "cargo check --target $t failed"
  fi
done

finish
