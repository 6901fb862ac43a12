#!/usr/bin/env bash
# Peer replay: the same market data through hftbacktest, NautilusTrader and `sapphire replay`,
# each with a trivial strategy; prints events/s, ratios and what each engine models.
# Not part of CI. Timing means something only on a quiet machine (check `uptime`).
#
# Usage: benches/peers/run.sh [--quotes N] [--no-recording]
#   --quotes N       synthetic quotes (default 1,000,000; 0 for none)
#   --no-recording   skip the recorded Binance file even when ../shared/data has it
# Environment: PYTHON (default python3.11; hftbacktest needs >= 3.11, and nautilus-trader
# 1.221.0 is the newest release with a CPython 3.11 wheel).
#
# The virtual environment is cached under target/peers/venv; the sapphire binary is built
# with --release.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

QUOTES=1000000
RECORDING="$ROOT/../shared/data/exchange/recorded/hftbacktest/binance_usdm_btcusdt_20240808.gz"
while [ $# -gt 0 ]; do
  case "$1" in
    --quotes) QUOTES="${2:?--quotes needs a number}"; shift 2 ;;
    --no-recording) RECORDING=""; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$QUOTES" in ''|*[!0-9]*) echo "run.sh: --quotes wants a whole number, got $QUOTES" >&2; exit 2 ;; esac
if [ -n "$RECORDING" ] && [ ! -f "$RECORDING" ]; then
  echo "(no recorded file at $RECORDING: synthetic quotes only)"
  RECORDING=""
fi

PYTHON=${PYTHON:-python3.11}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "run.sh: $PYTHON not found; set PYTHON to a CPython 3.11 interpreter" >&2
  exit 1
fi
VENV="$ROOT/target/peers/venv"
STAMP="$VENV/.peers-installed-hftbacktest-2.4.4-nautilus-1.221.0"
if [ ! -f "$STAMP" ]; then
  echo "== installing hftbacktest 2.4.4 and nautilus_trader 1.221.0 into $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "hftbacktest==2.4.4" "nautilus_trader==1.221.0"
  touch "$STAMP"
fi

echo "== building sapphire (release)"
cargo build --release --quiet --bin sapphire
echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(uptime | sed 's/.*load/load/')"

exec "$VENV/bin/python" "$ROOT/benches/peers/peers.py" \
  --quotes "$QUOTES" \
  --recording "$RECORDING" \
  --sapphire "$ROOT/target/release/sapphire" \
  --work "$ROOT/target/peers/work" \
  --json "$ROOT/target/peers/results.json"
