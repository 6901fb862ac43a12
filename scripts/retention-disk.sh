#!/usr/bin/env bash
# How much journal a core keeps on its disk with retention on (issue 19's disk target: at most
# two snapshot intervals of journal once the sink is caught up).
#
#   scripts/retention-disk.sh [DURATION] [DATABASE_URL]
#
# Runs the release `sapphire run` at the default rate (synthetic market, 100,000 events/s,
# snapshots every 10 s) for DURATION (default 10m) with an archive in a temporary folder and,
# when DATABASE_URL is given (a migrated database), the in-process Postgres sink; samples the
# data directory's input journal every 2 s and prints the largest and median size against two
# snapshot intervals of journal (measured from the run: bytes per event × events per interval).
# Needs: cargo (builds the release binary; SAPPHIRE_BIN=path uses that one instead), du.
# Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10m}"
database="${2:-}"
bin="${SAPPHIRE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --quiet --bin sapphire
  bin=target/release/sapphire
fi
work="$(mktemp -d /tmp/sapphire-retention-disk.XXXXXX)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
env_db=()
if [ -n "$database" ]; then env_db=(DATABASE_URL="$database"); fi
env -u TRADING_SYMBOLS -u SAPPHIRE_CONFIG "${env_db[@]}" SAPPHIRE_ARCHIVE="$work/archive" SAPPHIRE_HTTP_BIND=127.0.0.1:0 \
  "$bin" run --quiet --duration "$duration" --data-dir "$work/data" >"$work/run.log" 2>&1 &
pid=$!
samples="$work/samples"
: >"$samples"
while kill -0 "$pid" 2>/dev/null; do
  sleep 2
  in=$(du -sb "$work/data/journal/input" 2>/dev/null | cut -f1 || echo 0)
  out=$(du -sb "$work/data/journal/output" 2>/dev/null | cut -f1 || echo 0)
  arch=$(du -sb "$work/archive" 2>/dev/null | cut -f1 || echo 0)
  echo "$in $out $arch" >>"$samples"
done
wait "$pid" || true
grep -E "^summary:|retention:|snapshots:" "$work/run.log" || true
events=$(grep -oE "^summary: [^,]+, [0-9]+ events" "$work/run.log" | grep -oE "[0-9]+ events" | cut -d' ' -f1)
total_in=$(awk 'END { print $1 + $3 }' "$samples")
# Two snapshot intervals: 10 s of events at the run's own rate, in journal bytes.
python3 - "$samples" "$events" "$total_in" "$duration" <<'EOF'
import sys, statistics
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
events, total = int(sys.argv[2] or 0), int(sys.argv[3] or 0)
secs = {"s": 1, "m": 60, "h": 3600}[sys.argv[4][-1]] * float(sys.argv[4][:-1])
# After the first minute (the first snapshot and the first archived segment).
steady = [r[0] for r in rows[30:]] or [r[0] for r in rows]
per_event = total / events if events else 0
interval = per_event * events / secs * 10 if secs else 0
mib = lambda b: b / 2**20
print(f"input journal on disk (every 2 s after the first minute, {len(steady)} samples): median {mib(statistics.median(steady)):.0f} MiB, max {mib(max(steady)):.0f} MiB")
print(f"journal written: {mib(total):.0f} MiB for {events} events ({per_event:.0f} B/event); one snapshot interval (10 s at the run's rate) = {mib(interval):.0f} MiB, two = {mib(2*interval):.0f} MiB")
print(f"max / two intervals = {max(steady) / (2*interval):.2f}" if interval else "no interval")
EOF
