#!/usr/bin/env bash
# Conformance run: the core's fixed-point parser and order book over real recorded Binance
# data (examples/conformance.rs). The data stays outside the repository and is read in place.
# Usage: scripts/conformance.sh [exchange data dir]   (default: ../shared/data/exchange)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

dir="${1:-$root/../shared/data/exchange}"
if [[ ! -d "$dir" ]]; then
  # The recordings are not ours to ship, so a checkout without them skips rather than fails.
  echo "conformance: skipped: exchange data directory $dir is absent"
  exit 0
fi

cargo run --release --example conformance -- "$dir"

# The real feed adapter over the same recordings, its events applied to the core's book.
cargo run --release --example feed_conformance -- "$dir"

# Request signing against the venues' own vectors (Binance's documented examples, Bybit's
# reference values): the real signing code must reproduce every verifiable signature.
cargo run --release --example signing_conformance -- "$dir"
