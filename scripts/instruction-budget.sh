#!/usr/bin/env bash
# Instructions per operation for the hot paths, counted by valgrind's callgrind, against the
# checked-in budget (benches/instruction-budget.toml). Instruction counts do not swing with
# the machine's load the way wall-clock time does, so a 10% rise is a real change.
#
# Usage: scripts/instruction-budget.sh [--update] [--budget FILE] [--cases "a b ..."]
#   --update        measure and rewrite the budget file with today's counts
#   --budget FILE   compare with (or, with --update, write) FILE instead
#   --cases LIST    only these cases (space-separated); default: every case of the binary
# Exits 1 when a case is more than 10% above its budget (or has none), 2 on a usage or
# tool error. A case more than 10% below its budget is a note: run --update to lock it in.
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET=benches/instruction-budget.toml
UPDATE=0
CASES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --update) UPDATE=1 ;;
    --budget) BUDGET="$2"; shift ;;
    --cases) CASES="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "instruction-budget: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
TOLERANCE_PCT=10
if [ "$UPDATE" = 1 ] && [ -n "$CASES" ]; then
  echo "instruction-budget: --update rewrites every case; run it without --cases" >&2
  exit 2
fi

if ! command -v valgrind >/dev/null 2>&1; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
  if command -v apt-get >/dev/null 2>&1; then
    echo "instruction-budget: valgrind not found; installing it from Debian's packages"
    as_root apt-get install -y -qq valgrind >/dev/null 2>&1 \
      || { as_root apt-get update -qq >/dev/null 2>&1 && as_root apt-get install -y -qq valgrind >/dev/null 2>&1; } || true
  fi
  if ! command -v valgrind >/dev/null 2>&1; then
    echo "instruction-budget: SKIPPED: valgrind is not installed and could not be installed here" \
      "(needs apt-get and root or passwordless sudo). Install valgrind to run this check." >&2
    exit 0
  fi
fi

# The release profile: the counts describe the code we ship.
cargo build --release --locked --quiet -p sapphire-benches --bin instruction_count
BIN=target/release/instruction_count
[ -n "$CASES" ] || CASES="$("$BIN" --list | tr '\n' ' ')"

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# `case = N` lines of the budget file.
budget_of() { [ -f "$BUDGET" ] && awk -F'=' -v c="$1" '$1 ~ "^[ \t]*"c"[ \t]*$" { gsub(/[ \t_]/, "", $2); print $2 }' "$BUDGET" | head -1; }

declare -A MEASURED
for c in $CASES; do
  # Only the calls of measure_<case> (and what they call) are counted.
  ops="$(valgrind --tool=callgrind --collect-atstart=no --toggle-collect="*measure_${c}*" \
    --callgrind-out-file="$OUT/$c.out" "$BIN" "$c" 2>"$OUT/$c.log" | sed -n 's/.* ops=\([0-9]*\)$/\1/p')" || true
  total="$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$OUT/$c.out" 2>/dev/null | head -1)"
  if [ -z "$ops" ] || [ -z "$total" ] || [ "$total" = 0 ]; then
    echo "instruction-budget: case $c did not run under callgrind:" >&2
    tail -20 "$OUT/$c.log" >&2
    exit 2
  fi
  MEASURED[$c]=$(( (total + ops / 2) / ops ))
done

if [ "$UPDATE" = 1 ]; then
  {
    echo "# Instructions per operation: the budget scripts/instruction-budget.sh checks (a case fails"
    echo "# more than ${TOLERANCE_PCT}% above it). Rewrite with: scripts/instruction-budget.sh --update"
    echo "# Measured $(date -u +%Y-%m-%d) with valgrind --tool=callgrind ($(valgrind --version)),"
    echo "# $(rustc --version), cargo's release profile (thin LTO, codegen-units 4), x86_64 $(uname -s):"
    echo "# callgrind --collect-atstart=no --toggle-collect='*measure_<case>*' target/release/instruction_count <case>"
    echo "# (benches/src/bin/instruction_count.rs), total instructions divided by the ops it reports."
    for c in $CASES; do printf '%s = %s\n' "$c" "${MEASURED[$c]}"; done
  } >"$BUDGET.tmp"
  mv "$BUDGET.tmp" "$BUDGET"
  echo "instruction-budget: wrote $BUDGET"
fi

status=0
printf '%-22s %12s %12s %7s\n' case budget measured ratio
for c in $CASES; do
  m=${MEASURED[$c]}
  b="$(budget_of "$c" || true)"
  if [ -z "$b" ] || [ "$b" = 0 ]; then
    printf '%-22s %12s %12s %7s  no budget (run --update)\n' "$c" - "$m" -
    status=1
    continue
  fi
  ratio="$(awk -v m="$m" -v b="$b" 'BEGIN { printf "%.3f", m / b }')"
  note=""
  if [ $(( m * 100 )) -gt $(( b * (100 + TOLERANCE_PCT) )) ]; then
    note="  FAIL: more than ${TOLERANCE_PCT}% above budget"
    status=1
  elif [ $(( m * 100 )) -lt $(( b * (100 - TOLERANCE_PCT) )) ]; then
    note="  note: more than ${TOLERANCE_PCT}% below budget; lock it in with scripts/instruction-budget.sh --update"
  fi
  printf '%-22s %12s %12s %7s%s\n' "$c" "$b" "$m" "$ratio" "$note"
done
if [ "$status" != 0 ]; then
  echo "instruction-budget: over budget or without one ($BUDGET). If the rise is intended, run scripts/instruction-budget.sh --update and commit the file with the change." >&2
fi
exit "$status"
