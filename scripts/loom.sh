#!/usr/bin/env bash
# Model checking of the lock-free parts under loom (docs/reliability.md):
#   - the ring (claim, publish, gating, close; two producers, two consumers; poll_while) and
#     the market board's seqlock: core/tests/loom.rs, with core's atomics and cells swapped
#     for loom's by `--cfg loom` (core/src/sync.rs);
#   - the journal Tail following a writer that tears records and rolls segments:
#     persistence/tests/loom_tail.rs, `--cfg sapphire_loom` (tokio reads `cfg(loom)` and does
#     not build with it, hence another name).
# Each builds into its own target directory (the flags change every crate's build).
# LOOM_MAX_PREEMPTIONS (default 3 in the tests) bounds the preemptions explored.
# Usage: scripts/loom.sh [core|tail]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
if [[ "$what" == all || "$what" == core ]]; then
  echo "== loom: ring and board"
  RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --locked -p sapphire-core --release --test loom -- --test-threads=1
fi
if [[ "$what" == all || "$what" == tail ]]; then
  echo "== loom: journal tail"
  RUSTFLAGS="--cfg sapphire_loom" CARGO_TARGET_DIR=target/loom-tail \
    cargo test --locked -p sapphire-persistence --release --test loom_tail -- --test-threads=1
fi
