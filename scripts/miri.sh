#!/usr/bin/env bash
# The ring's unsafe code (and the board beside it) under Miri: undefined behaviour, data races
# and aliasing violations in the ring's tests, run by the interpreter (smaller runs under
# cfg(miri)). Needs nightly with the miri component:
#   rustup +nightly component add miri rust-src
# Usage: scripts/miri.sh [TEST FILTER]   (default: the ring's and the board's tests)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "miri: skipped: no cargo-miri for nightly (rustup +nightly component add miri rust-src)" >&2
  exit 2
fi
filters=("${@:-ring::}")
[[ $# -eq 0 ]] && filters=(ring:: board::)
CARGO_TARGET_DIR=target/miri cargo +nightly miri test --locked -p sapphire-core --lib -- "${filters[@]}"
