#!/usr/bin/env bash
# The dashboard's browser-side set-up, idempotent:
#   1. npm dependencies from package-lock.json (Leaflet) into node_modules/;
#   2. their files copied into api/static/vendor/ (served by the API, no CDN);
#   3. Debian's chromium (the end-to-end test's headless browser) and a CJK
#      font (so Chinese text renders in screenshots), if missing.
# Prints "web: nothing to do" when everything was already in place.
#
# Settings (environment): ANXIAO_WEB_SKIP_BROWSER=1 skips step 3 (a server
# that only serves the dashboard needs no browser).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENDOR=$ROOT/api/static/vendor
DEBIAN_PACKAGES=(chromium fonts-wqy-microhei)

say() { printf 'web: %s\n' "$*"; }
die() { printf 'web: error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
changed=0

# ------------------------------------------------------------- npm packages
npm_install() {
    local stamp=$ROOT/node_modules/.anxiao-lock.sha1 want
    want=$(sha1sum "$ROOT/package-lock.json" | cut -c1-40)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && [ -f "$ROOT/node_modules/leaflet/dist/leaflet.js" ]; then
        return 0
    fi
    command -v npm >/dev/null || die "npm not found: install Node.js 18+ (Debian: apt-get install nodejs npm)"
    say "installing npm packages (npm ci)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
    changed=1
}

# --------------------------------------------------- vendor copy for serving
# copy SRC DEST: only when missing or different, so a second run changes nothing.
copy() {
    if ! cmp -s "$1" "$2"; then
        mkdir -p "$(dirname "$2")"
        cp "$1" "$2"
        changed=1
    fi
}

vendor() {
    local src=$ROOT/node_modules/leaflet/dist f
    copy "$src/leaflet.js" "$VENDOR/leaflet/leaflet.js"
    copy "$src/leaflet.css" "$VENDOR/leaflet/leaflet.css"
    for f in "$src"/images/*.png; do
        copy "$f" "$VENDOR/leaflet/images/$(basename "$f")"
    done
    copy "$ROOT/node_modules/leaflet/LICENSE" "$VENDOR/leaflet/LICENSE"
}

# --------------------------------------------------------- Debian packages
debian_packages() {
    [ "${ANXIAO_WEB_SKIP_BROWSER:-0}" = 1 ] && return 0
    local missing="" p
    for p in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    is_root || die "missing Debian packages (run as root or install them):$missing"
    say "installing Debian packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    changed=1
}

npm_install
vendor
debian_packages
if [ "$changed" = 0 ]; then
    say "nothing to do"
else
    say "dashboard assets ready in ${VENDOR#"$ROOT"/}"
fi
