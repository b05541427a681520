#!/usr/bin/env bash
# Builds khala_sync_ffiFFI.xcframework (static library + C header + module map for iOS devices,
# iOS simulators and macOS) and the generated Swift sources, so the KhalaSync package links the
# Rust SDK as a binary target.
#
#   bindings-swift/scripts/build-xcframework.sh [--debug]
#
# Needs macOS with Xcode (xcodebuild, lipo) and rustup. NOT RUN in this repository's CI: CI is
# Linux (see README.md, "What was verified"). Output, in bindings-swift/:
#   khala_sync_ffiFFI.xcframework/           (Package.swift switches to it when present)
#   Sources/KhalaSyncFFI/khala_sync_ffi.swift (uniffi-generated, not in git)
#   build/KhalaSync-<version>.zip + .sha256  (for a remote `.binaryTarget(url:checksum:)`)
set -euo pipefail

PROFILE=release
[ "${1:-}" = "--debug" ] && PROFILE=debug
CARGO_PROFILE_FLAG=(--release)
[ "$PROFILE" = debug ] && CARGO_PROFILE_FLAG=()

[ "$(uname -s)" = Darwin ] || { echo "build-xcframework.sh needs macOS + Xcode" >&2; exit 1; }
command -v xcodebuild >/dev/null || { echo "xcodebuild not found (install Xcode)" >&2; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
PKG_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
REPO=$(cd "$PKG_DIR/.." && pwd)
TARGET_DIR="$REPO/target"
LIB=libkhala_sync_ffi.a
OUT="$PKG_DIR/build"
XCF="$PKG_DIR/khala_sync_ffiFFI.xcframework"

TARGETS=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
installed=$(rustup target list --installed)
for t in "${TARGETS[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

cd "$REPO"
export IPHONEOS_DEPLOYMENT_TARGET=15.0 MACOSX_DEPLOYMENT_TARGET=12.0
for t in "${TARGETS[@]}"; do
  echo "==> cargo build -p khala-sync-ffi --lib --target $t ($PROFILE)"
  cargo build -p khala-sync-ffi --lib --target "$t" "${CARGO_PROFILE_FLAG[@]}"
done

# Swift sources + header + module map, generated from the host (macOS) dylib.
echo "==> uniffi-bindgen generate (Swift)"
cargo build -p khala-sync-ffi --features bindgen "${CARGO_PROFILE_FLAG[@]}"
rm -rf "$OUT/gen" "$OUT/headers"
mkdir -p "$OUT/gen" "$OUT/headers"
(cd "$PKG_DIR" && "$TARGET_DIR/$PROFILE/uniffi-bindgen" generate \
   --library "$TARGET_DIR/$PROFILE/libkhala_sync_ffi.dylib" --language swift \
   --out-dir "$OUT/gen")
mkdir -p "$PKG_DIR/Sources/KhalaSyncFFI"
cp "$OUT/gen/khala_sync_ffi.swift" "$PKG_DIR/Sources/KhalaSyncFFI/"
cp "$OUT/gen/khala_sync_ffiFFI.h" "$OUT/headers/"
cp "$OUT/gen/khala_sync_ffiFFI.modulemap" "$OUT/headers/module.modulemap"

# One library per platform variant: fat (lipo) where two architectures share a platform.
echo "==> lipo"
mkdir -p "$OUT/ios-sim" "$OUT/macos"
lipo -create "$TARGET_DIR/aarch64-apple-ios-sim/$PROFILE/$LIB" "$TARGET_DIR/x86_64-apple-ios/$PROFILE/$LIB" \
  -output "$OUT/ios-sim/$LIB"
lipo -create "$TARGET_DIR/aarch64-apple-darwin/$PROFILE/$LIB" "$TARGET_DIR/x86_64-apple-darwin/$PROFILE/$LIB" \
  -output "$OUT/macos/$LIB"

echo "==> xcodebuild -create-xcframework"
rm -rf "$XCF"
xcodebuild -create-xcframework \
  -library "$TARGET_DIR/aarch64-apple-ios/$PROFILE/$LIB" -headers "$OUT/headers" \
  -library "$OUT/ios-sim/$LIB" -headers "$OUT/headers" \
  -library "$OUT/macos/$LIB" -headers "$OUT/headers" \
  -output "$XCF"

VERSION=$(sed -nE 's/^version = "([^"]+)".*/\1/p' "$REPO/Cargo.toml" | head -1)
ZIP="$OUT/KhalaSync-$VERSION.xcframework.zip"
rm -f "$ZIP"
(cd "$PKG_DIR" && ditto -c -k --sequesterRsrc --keepParent "$(basename "$XCF")" "$ZIP")
swift package compute-checksum "$ZIP" > "$ZIP.sha256"
echo "==> $XCF"
echo "==> $ZIP (checksum $(cat "$ZIP.sha256"))"
echo "Verify: (cd $PKG_DIR && swift build && xcodebuild -scheme KhalaSync -destination 'generic/platform=iOS' build)"
