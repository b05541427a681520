#!/usr/bin/env bash
# Debian trixie chroot with Swift 6 (`swiftlang`), cached under ~/.cache/khala-sync/.
# Sourced by test-linux.sh; also runnable alone: `swift-chroot.sh ensure` prints the root path.
#
# Recipe: /work/shared/TOOLCHAINS.md "Swift" (bookworm has no Swift; trixie has swiftlang 6.0.3).
set -euo pipefail

KHALA_CACHE=${KHALA_CACHE:-$HOME/.cache/khala-sync}
SWIFT_ROOT=${SWIFT_ROOT:-$KHALA_CACHE/swift-trixie}

# The Debian mirror the host's apt already uses (main archive, not -security), from deb822
# `.sources` files or one-line `.list` entries.
debian_mirror() {
  local f url
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    while read -r url; do
      case "$url" in
        */debian|*/debian/) echo "${url%/}"; return 0 ;;
      esac
    done < <(sed -nE 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f" | tr ' ' '\n')
  done
  echo "no Debian mirror found in /etc/apt sources" >&2
  return 1
}

swift_chroot_ok() {
  # usr/bin/swift is an absolute symlink (to /usr/libexec/swift/bin/swift): test the link itself.
  [ -f "$SWIFT_ROOT/.khala-ready" ] && [ -L "$SWIFT_ROOT/usr/bin/swift" ] &&
    [ -x "$SWIFT_ROOT/usr/libexec/swift/bin/swift" ]
}

ensure_swift_chroot() {
  if swift_chroot_ok; then
    return 0
  fi
  command -v mmdebstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq mmdebstrap; }
  local mirror tmp
  mirror=$(debian_mirror)
  mkdir -p "$KHALA_CACHE"
  tmp="$SWIFT_ROOT.tmp"
  rm -rf "$tmp"
  echo "building Swift chroot (trixie, swiftlang) from $mirror into $SWIFT_ROOT (~1-4 min, once)"
  mmdebstrap --variant=apt --include=swiftlang,libc6-dev trixie "$tmp" "$mirror"
  touch "$tmp/.khala-ready"
  rm -rf "$SWIFT_ROOT"
  mv "$tmp" "$SWIFT_ROOT"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-ensure}" in
    ensure) ensure_swift_chroot; echo "$SWIFT_ROOT" ;;
    mirror) debian_mirror ;;
    *) echo "usage: $0 [ensure|mirror]" >&2; exit 2 ;;
  esac
fi
