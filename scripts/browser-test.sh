#!/usr/bin/env bash
# The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright
# (playwright-core, pinned in tests/browser/package-lock.json; Playwright's own browsers are
# never downloaded) against a running `sapphire run`. See tests/browser/dashboard.test.mjs.
#
# Installs what is missing (Chromium with apt-get, the npm packages with `npm ci`), builds
# the debug binary, runs the test. Exits non-zero on failure. Artifacts: target/browser/
# (dashboard.png, dashboard-killed.png, failure.png on failure, the server's logs).
# Usage: scripts/browser-test.sh   (SAPPHIRE_SKIP_BROWSER_TEST=1 skips it)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

if [ "${SAPPHIRE_SKIP_BROWSER_TEST:-}" = 1 ]; then
  echo "browser test skipped (SAPPHIRE_SKIP_BROWSER_TEST=1)"
  exit 0
fi

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  say "installing chromium (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
"$CHROMIUM" --version 2>/dev/null | grep -v '^\[' || true

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "scripts/browser-test.sh: node and npm are needed (Node 20 or newer)." >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "scripts/browser-test.sh: Node $(node --version) is too old; playwright-core needs Node 20 or newer." >&2
  exit 1
fi

# SAPPHIRE_BIN names a binary already built (scripts/test.sh passes the one its test build
# made, so the dependency tree is not built a second time with other features).
if [ -z "${SAPPHIRE_BIN:-}" ]; then
  say "build"
  cargo build --locked --bin sapphire
  SAPPHIRE_BIN="$PWD/target/debug/sapphire"
fi
[ -x "$SAPPHIRE_BIN" ] || { echo "scripts/browser-test.sh: no binary at $SAPPHIRE_BIN" >&2; exit 1; }

say "npm ci (tests/browser)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

say "browser test"
mkdir -p target/browser
CHROMIUM="$CHROMIUM" SAPPHIRE_BIN="$SAPPHIRE_BIN" \
  node --test --test-reporter=spec tests/browser/dashboard.test.mjs
echo "screenshots: target/browser/dashboard.png, target/browser/dashboard-killed.png"
