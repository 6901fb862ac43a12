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

# Fuzz smoke (docs/reliability.md): every fuzz target for a few seconds from its committed
# seeds plus seeds built from the recordings (fuzz/target/shared-corpus, never committed).
# Here rather than in scripts/test.sh: building the targets (nightly, AddressSanitizer, the
# whole dependency tree again) takes far longer than CI can give it. Needs nightly and
# cargo-fuzz; skipped with a message otherwise.
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  bash scripts/fuzz.sh --shared-corpus >/dev/null
  bash scripts/fuzz.sh --smoke "${SAPPHIRE_FUZZ_SMOKE_SECS:-5}"
else
  echo "conformance: fuzz smoke skipped: needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)"
fi

# Chaos, the fast part (docs/reliability.md, "Chaos"; about 30 s once built): ten kill -9 at
# random points, then the output journal must equal an uninterrupted replay; and venue
# timestamps an hour ahead / behind replayed from the BTCUSDT recording (the wall-clock step
# under libfaketime runs when it is installed). `scripts/chaos.sh all` runs every row.
if command -v python3 >/dev/null; then
  cargo build --release --bin sapphire
  bash scripts/chaos.sh kill 10
  bash scripts/chaos.sh clock "$dir/recorded/hftbacktest/binance_spot_btcusdt_20240808.gz"
else
  echo "conformance: chaos skipped: scripts/chaos.sh needs python3"
fi
