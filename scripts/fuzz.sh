#!/usr/bin/env bash
# Coverage-guided fuzzing of every place outside bytes enter (fuzz/, libFuzzer via cargo-fuzz,
# nightly; docs/reliability.md lists the targets, what each checks, and their last runs).
#
#   scripts/fuzz.sh TARGET [SECONDS]    run one target (default 60 s) from the committed seeds
#                                       (fuzz/corpus/TARGET) into a working corpus
#                                       (fuzz/target/corpus/TARGET, not committed)
#   scripts/fuzz.sh --list              the targets
#   scripts/fuzz.sh --smoke [SECONDS]   every target for SECONDS (default 3) each; what
#                                       scripts/conformance.sh runs when the toolchain is there
#   scripts/fuzz.sh --shared-corpus     build more seeds from ../shared/data (recordings and
#                                       venue samples) into fuzz/target/shared-corpus, which
#                                       later runs also read; NEVER committed (not ours to ship)
#
# A crash leaves its input in fuzz/artifacts/TARGET/; `cargo +nightly fuzz run TARGET FILE`
# replays it. Each fix gets a regression test in the normal test suite.
# Needs: `rustup toolchain install nightly` and `cargo install cargo-fuzz`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

have_toolchain() {
  cargo +nightly --version >/dev/null 2>&1 && cargo +nightly fuzz --version >/dev/null 2>&1
}

targets() { cargo +nightly fuzz list; }

# Seeds from ../shared/data, one directory per target that has matching data.
shared_corpus() {
  local data="$root/../shared/data/exchange" out="$root/fuzz/target/shared-corpus"
  [[ -d "$data" ]] || { echo "fuzz: no $data: no shared seeds" >&2; return 0; }
  rm -rf "$out"; mkdir -p "$out"/{binance_frames,bybit_frames,venue_responses,book_sync}
  local n=0 f
  # Binance recordings (`ts frame` lines, gzip): runs of 20 frames, spot (mode byte 0) or USD-M (1).
  for f in "$data"/recorded/*/*.gz; do
    [[ -e "$f" ]] || continue
    local mode='\x00'; [[ "$f" == *usdm* ]] && mode='\x01'
    zcat "$f" 2>/dev/null | head -2000 | cut -d' ' -f2- | split -l 20 - "$out/binance_frames/$(basename "$f" .gz)-" || true
    for s in "$out"/binance_frames/"$(basename "$f" .gz)"-*; do
      { printf "$mode"; cat "$s"; } >"$s.seed" && rm "$s"
    done
  done
  # Bybit samples: stream messages to bybit_frames (linear), REST answers to venue_responses.
  while IFS= read -r -d '' f; do
    n=$((n + 1))
    case "$(basename "$f")" in
      ws_*) { printf '\x01'; tr -d '\n' <"$f"; } >"$out/bybit_frames/$n" ;;
      http_*) { printf '\x01'; cat "$f"; } >"$out/venue_responses/$n"; { printf '\x05'; cat "$f"; } >"$out/venue_responses/$n-info" ;;
    esac
  done < <(find "$data" -name '*.json' -print0)
  echo "$out"
}

run() {
  local target="$1" secs="${2:-60}" extra=()
  mkdir -p "target/corpus/$target" "corpus/$target"
  [[ -d "target/shared-corpus/$target" ]] && extra+=("target/shared-corpus/$target")
  # -rss_limit_mb: the default 2 GB is fine for these; -timeout catches a hang (10 s an input).
  cargo +nightly fuzz run -O "$target" "target/corpus/$target" "corpus/$target" "${extra[@]}" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 -print_pcs=0
}

case "${1:-}" in
  "" | -h | --help)
    sed -n '2,20p' "$root/scripts/fuzz.sh"
    exit 0
    ;;
esac
if ! have_toolchain; then
  echo "fuzz: skipped: needs the nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
  exit 2
fi
case "$1" in
  --list) targets ;;
  --shared-corpus)
    shared_corpus
    ;;
  --smoke)
    secs="${2:-3}"
    cargo +nightly fuzz build -O
    for t in $(targets); do
      mkdir -p "target/smoke/$t" "corpus/$t"
      # A fresh working corpus each time: the committed seeds, then SECONDS of mutation.
      rm -rf "target/smoke/$t"/*
      rc=0
      cargo +nightly fuzz run -O "$t" "target/smoke/$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 >"target/smoke/$t.log" 2>&1 || rc=$?
      printf 'fuzz smoke: %-16s %s\n' "$t" "$(grep -E '^Done [0-9]+ runs' "target/smoke/$t.log" | tail -1)"
      if [[ "$rc" != 0 ]]; then
        tail -40 "target/smoke/$t.log" >&2
        echo "fuzz smoke: $t FAILED (exit $rc; the input is in fuzz/artifacts/$t)" >&2
        exit 1
      fi
    done
    ;;
  *)
    run "$@"
    ;;
esac
