#!/usr/bin/env bash
# Chaos runs: each row injects one fault into real `sapphire` processes and checks what must
# hold afterwards; docs/reliability.md ("Chaos") keeps the table and each row's last result.
#
#   scripts/chaos.sh kill [ITERATIONS]   kill -9 at random points (default 100), then one clean
#                                        run: the output journal equals an uninterrupted replay
#                                        of the input journal, no client order id twice, every
#                                        snapshot equals a replay
#   scripts/chaos.sh disk-full           the data directory on a small tmpfs that fills: the
#                                        engine stops with a clear error, nothing corrupt, a
#                                        restart on a bigger tmpfs carries on
#   scripts/chaos.sh services            Postgres and Redis of their own (other ports, a temp
#                                        dir) stopped and restarted under `sapphire run`:
#                                        Postgres rows and Redis publishes equal the output
#                                        journal afterwards
#   scripts/chaos.sh starve              a busy loop pinned to the engine's core, then to the
#                                        feed's: the summary reports stalls and preemption
#                                        (beside the same run without it), nothing lost
#   scripts/chaos.sh clock [RECORDING]   venue timestamps an hour ahead / behind and a venue
#                                        clock stepping a minute, replayed from a recording
#                                        (default: ../shared/data's Binance BTCUSDT spot day);
#                                        then the wall clock stepped under a live run
#                                        (libfaketime, apt-get install faketime)
#   scripts/chaos.sh all                 every row above
#
# Needs: a release build (`cargo build --release`; SAPPHIRE_BIN=path overrides), bash, python3,
# coreutils (timeout, taskset); disk-full needs root (mount -t tmpfs); services needs
# PostgreSQL's server binaries (/usr/lib/postgresql/*/bin: initdb, pg_ctl) and redis-server,
# never touching the shared ones on 5432/6379. Work files go to CHAOS_DIR (default a new
# directory under /tmp), removed at the end unless CHAOS_KEEP=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SAPPHIRE_BIN:-$root/target/release/sapphire}"
[[ -x "$bin" ]] || { echo "chaos: no $bin: cargo build --release (or SAPPHIRE_BIN=...)" >&2; exit 2; }
work="${CHAOS_DIR:-$(mktemp -d /tmp/sapphire-chaos.XXXXXX)}"
mkdir -p "$work"
cleanup() { [[ "${CHAOS_KEEP:-0}" == 1 ]] || rm -rf "$work"; }
trap cleanup EXIT

# The shell may point at real services or another configuration: each row chooses its own.
unset DATABASE_URL REDIS_URL SAPPHIRE_CONFIG SAPPHIRE_DATA_DIR SAPPHIRE_LAYOUT TRADING_SYMBOLS \
  SAPPHIRE_API_TOKEN BINANCE_API_KEY BINANCE_API_SECRET BYBIT_API_KEY BYBIT_API_SECRET
export SAPPHIRE_HTTP_BIND=127.0.0.1:0

fail() { echo "chaos: FAIL: $*" >&2; exit 1; }
say() { echo "chaos: $*"; }

# Small segments and frequent snapshots, so kills land on segment rolls and snapshot writes.
config() {
  cat >"$work/chaos.toml" <<'EOF'
[journal]
segment_mb = 2

[snapshot]
every_events = 20000
every_secs = 0
keep = 3
EOF
  echo "$work/chaos.toml"
}

# The output journal equals the first records of a replay of the input journal (the replay
# then adds its closing PnL snapshot), and no client order id is used twice.
check_against_replay() { # data_dir config
  local data="$1" cfg="$2"
  rm -rf "$work/replayed"
  "$bin" replay "$data/journal/input" --config "$cfg" --json --out "$work/replayed" >"$work/replay.json"
  "$bin" journal dump "$data/journal/output" >"$work/live.jsonl"
  "$bin" journal dump "$work/replayed" >"$work/replayed.jsonl"
  python3 - "$work/live.jsonl" "$work/replayed.jsonl" <<'EOF'
import json, sys
live = open(sys.argv[1]).read().splitlines()
again = open(sys.argv[2]).read().splitlines()
if len(live) < 2:
    sys.exit(f"only {len(live)} outputs: the runs traded nothing")
if again[:len(live)] != live:
    first = next(i for i, (a, b) in enumerate(zip(live, again)) if a != b) if len(again) >= len(live) else len(again)
    sys.exit(f"output journal differs from the uninterrupted replay at record {first}:\n live:   {live[first] if first < len(live) else None}\n replay: {again[first] if first < len(again) else None}")
rest = again[len(live):]
if not rest or any('"kind":"pnl"' not in r and '"kind":"agent_pnl"' not in r for r in rest):
    sys.exit(f"the replay's extra records are not only its closing snapshot: {rest[:3]}")
ids = {}
orders = 0
for line in live:
    r = json.loads(line)
    if r.get("kind") == "order" and r.get("action") in ("new", "place", None):
        orders += 1
        cid = r.get("client_order_id")
        if cid in ids:
            sys.exit(f"client order id {cid} twice: {ids[cid]} and {line}")
        ids[cid] = line
if orders == 0:
    sys.exit("no new orders in the output journal")
print(f"{len(live)} outputs equal the replay's first {len(live)}; {orders} new orders, every client order id once")
EOF
}

row_kill() {
  local n="${1:-100}" data="$work/kill/data" cfg during_start=0 during_trading=0 i ms out
  cfg="$(config)"
  mkdir -p "$work/kill"
  for ((i = 1; i <= n; i++)); do
    # 30 ms to 1.5 s after the start: before the journals are open, during recovery, while
    # trading (segment rolls every ~2 MB, a snapshot every 20,000 events).
    ms=$((30 + RANDOM % 1470))
    out="$work/kill/run-$i.out"
    "$bin" run --config "$cfg" --events-per-sec 20000 --wait yield --data-dir "$data" >"$out" 2>"$out.err" &
    local pid=$!
    sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
    kill -KILL "$pid" 2>/dev/null || fail "iteration $i: the run had already exited: $(cat "$out.err")"
    wait "$pid" 2>/dev/null || true
    if grep -q '^recovered: \|^journal: ' "$out"; then during_trading=$((during_trading + 1)); else during_start=$((during_start + 1)); fi
  done
  say "kill: $n kills (30-1500 ms after start): $during_start before the journals were open, $during_trading after"
  # One clean run on what the kills left: it must recover and trade.
  out="$work/kill/final.out"
  "$bin" run --config "$cfg" --duration 2s --events-per-sec 20000 --wait yield --data-dir "$data" >"$out" 2>"$out.err" ||
    fail "the clean run after the kills failed: $(cat "$out.err")"
  grep '^recovered: ' "$out" || fail "no recovery line: $(cat "$out")"
  grep '^journal: ' "$out" || true
  check_against_replay "$data" "$cfg"
  "$bin" journal snapshots --verify --config "$cfg" "$data" >"$work/verify.out" 2>&1 || fail "snapshots --verify: $(cat "$work/verify.out")"
  grep '^verify: ' "$work/verify.out" || fail "no verify line: $(cat "$work/verify.out")"
  grep -h 'passed over\|torn\|cut ' "$work"/kill/*.err "$work"/kill/*.out 2>/dev/null | sed 's/[0-9]\{6,\}/N/g' | sort | uniq -c | sort -rn | head -5 || true
  say "kill: PASS"
}

# The last `  <name>: ...` summary line of a run's output.
summary_line() { grep "^  $2: " "$1" | tail -1; }

row_disk_full() {
  [[ "$(id -u)" == 0 ]] || fail "disk-full mounts a tmpfs: run as root"
  local mnt="$work/full" cfg out rc=0
  cfg="$(config)"
  mkdir -p "$mnt"
  mount -t tmpfs -o size=24m tmpfs "$mnt"
  # shellcheck disable=SC2064 # expand now: the trap must unmount this mount point
  trap "umount '$mnt' 2>/dev/null || true; cleanup" EXIT
  local data="$mnt/data"
  out="$work/full.out"
  # 100,000 events/s: about 9 MB of input journal a second, so 24 MB fill in a few seconds.
  timeout 60 "$bin" run --config "$cfg" --events-per-sec 100000 --wait yield --data-dir "$data" >"$out" 2>"$out.err" || rc=$?
  [[ "$rc" == 1 ]] || fail "expected an error exit (1) when the disk filled, got $rc: $(tail -5 "$out.err")"
  local first
  first="$(grep -m1 '^error:' "$out.err" || true)"
  [[ -n "$first" ]] || fail "no error line: $(tail -5 "$out.err")"
  say "disk-full: exit $rc; first error: $first"
  grep -q 'No space left on device' "$out.err" || fail "the cause (ENOSPC) is not said: $(cat "$out.err")"
  df -k "$mnt" | tail -1
  # No corrupt segment: both journals read to their end (a torn tail is all a full disk may leave).
  local j
  for j in input output; do
    "$bin" journal dump "$data/journal/$j" >"$work/full-$j.jsonl" 2>"$work/full-$j.err" ||
      fail "the $j journal does not read after the disk filled: $(cat "$work/full-$j.err")"
    "$bin" journal repair --dry-run "$data/journal/$j" >"$work/full-$j.repair" 2>&1 ||
      fail "repair --dry-run on the $j journal: $(cat "$work/full-$j.repair")"
    say "disk-full: $j journal: $(wc -l <"$work/full-$j.jsonl") records readable; $(head -1 "$work/full-$j.err")$(head -1 "$work/full-$j.repair")"
  done
  # Nothing decided on an event the input journal does not hold left the core.
  python3 - "$work/full-input.jsonl" "$work/full-output.jsonl" <<'EOF2'
import json, sys
last = max((json.loads(l)["journal_seq"] for l in open(sys.argv[1])), default=-1)
outs = [json.loads(l) for l in open(sys.argv[2])]
bad = [o for o in outs if o.get("inbound_seq", -1) > last]
if bad:
    sys.exit(f"{len(bad)} outputs caused by events after the input journal's last ({last}): {bad[0]}")
print(f"disk-full: {len(outs)} outputs, each caused by an event the input journal holds (last {last})")
EOF2
  # Space returns: the same files on a bigger filesystem, and a clean restart carries on.
  mount -o remount,size=256m "$mnt"
  out="$work/full-restart.out"
  "$bin" run --config "$cfg" --duration 2s --events-per-sec 20000 --wait yield --data-dir "$data" >"$out" 2>"$out.err" ||
    fail "the restart once space returned failed: $(cat "$out.err")"
  grep '^recovered: ' "$out" || fail "no recovery line: $(cat "$out")"
  check_against_replay "$data" "$cfg"
  umount "$mnt"
  trap cleanup EXIT
  say "disk-full: PASS"
}

# PostgreSQL and Redis of this run's own, on other ports, stopped and restarted under a run.
row_services() {
  # Globals, not locals: the EXIT trap that stops the servers runs after this function's
  # scope is gone.
  pg_port="${CHAOS_PG_PORT:-55432}" redis_port="${CHAOS_REDIS_PORT:-56379}"
  pgbin="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -1)"
  [[ -x "$pgbin/initdb" ]] || fail "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
  command -v redis-server >/dev/null || fail "no redis-server (apt-get install redis-server)"
  pgdir="$work/pg" as_pg=()
  mkdir -p "$pgdir" "$work/redis"
  # initdb refuses root: the cluster belongs to the postgres user when run as root.
  if [[ "$(id -u)" == 0 ]]; then
    chmod 755 "$work"
    chown postgres "$pgdir"
    as_pg=(runuser -u postgres --)
  fi
  "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U postgres --auth=trust >"$work/initdb.log" 2>&1 || fail "initdb: $(tail -3 "$work/initdb.log")"
  pg() { "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -o "-p $pg_port -k $pgdir -c listen_addresses=127.0.0.1" -w "$@" >/dev/null; }
  redis_up() { redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis" --daemonize yes --pidfile "$work/redis/pid" >/dev/null; }
  redis_down() { kill -KILL "$(cat "$work/redis/pid")"; rm -f "$work/redis/pid"; }
  # shellcheck disable=SC2317 # called by the trap
  services_down() { pg stop -m immediate 2>/dev/null || true; [[ -f "$work/redis/pid" ]] && redis_down; cleanup; }
  trap services_down EXIT
  pg start
  redis_up
  export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres" REDIS_URL="redis://127.0.0.1:$redis_port"
  "$bin" migrate >"$work/migrate.out" 2>&1 || fail "migrate: $(cat "$work/migrate.out")"
  local data="$work/services/data" out="$work/services.out"
  "$bin" run --config "$(config)" --duration 24s --events-per-sec 20000 --wait yield --data-dir "$data" >"$out" 2>"$out.err" &
  local pid=$!
  sleep 4; pg stop -m immediate; say "services: postgres stopped (immediate: a crash)"
  sleep 5; pg start; say "services: postgres started"
  sleep 3; redis_down; say "services: redis killed"
  sleep 5; redis_up; say "services: redis started"
  wait "$pid" || fail "the run failed: $(tail -5 "$out.err")"
  summary_line "$out" postgres
  summary_line "$out" redis
  "$bin" journal dump "$data/journal/output" >"$work/services.jsonl"
  local q=("${as_pg[@]}" "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -tA -c)
  local counts
  counts="$("${q[@]}" "select (select count(*) from orders), (select count(*) from executions), (select count(*) from signals), (select count(*) from risk_events), (select count(*) from pnl_snapshots), (select count(*) from agent_margin), (select next_seq from sink_cursor where name = 'output')")"
  python3 - "$work/services.jsonl" "$counts" "$(summary_line "$out" redis)" <<'EOF2'
import json, sys, re
recs = [json.loads(l) for l in open(sys.argv[1])]
kinds = {}
for r in recs:
    kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
orders, execs, signals, risk, pnl, margin, cursor = (int(x) for x in sys.argv[2].split("|"))
got = {"orders": orders, "executions": execs, "signals": signals, "risk_events": risk, "pnl_snapshots": pnl, "agent_margin": margin}
print(f"services: output journal {len(recs)} records {dict(sorted(kinds.items()))}; postgres rows {got}, sink cursor {cursor}")
if cursor != len(recs):
    sys.exit(f"the sink's cursor {cursor} is not the journal's end {len(recs)}")
want = {"orders": kinds.get("order", 0), "signals": kinds.get("signal", 0),
        "pnl_snapshots": kinds.get("pnl", 0) + kinds.get("agent_pnl", 0), "agent_margin": kinds.get("agent_pnl", 0)}
for table, n in want.items():
    if got[table] != n:
        sys.exit(f"{table}: {got[table]} rows for {n} journal records")
if orders + execs + signals + risk + pnl != len(recs):
    sys.exit(f"postgres holds {orders + execs + signals + risk + pnl} journal-fed rows for {len(recs)} records")
m = re.search(r"(\d+) outputs published", sys.argv[3])
if not m or int(m.group(1)) != len(recs):
    sys.exit(f"redis published {m.group(1) if m else '?'} outputs of {len(recs)}")
EOF2
  say "services: PASS"
}

# A busy loop on the engine's core, then on the feed's (the synthetic market's thread and
# everything else share the other cores): the summary says the engine was preempted.
row_starve() {
  command -v taskset >/dev/null || fail "no taskset (util-linux)"
  local cpus last data="$work/starve/data" out="$work/starve.out" hog
  cpus="$(nproc)"
  [[ "$cpus" -ge 2 ]] || fail "needs 2 or more CPUs (the engine takes the last one)"
  last=$((cpus - 1))
  # The same run without the busy loop first: on a shared machine the engine's core is
  # contended anyway, and the two summaries side by side say how much the loop added.
  "$bin" run --config "$(config)" --duration 12s --events-per-sec 20000 --data-dir "$work/starve/quiet" >"$work/quiet.out" 2>&1 ||
    fail "the run without the busy loop failed: $(tail -5 "$work/quiet.out")"
  "$bin" run --config "$(config)" --duration 12s --events-per-sec 20000 --data-dir "$data" >"$out" 2>"$out.err" &
  local pid=$!
  sleep 3
  # shellcheck disable=SC2016 # expanded by the busy loop's own shell
  taskset -c "$last" bash -c 'end=$((SECONDS + 3)); while ((SECONDS < end)); do :; done' &
  hog=$!
  wait "$hog"
  # shellcheck disable=SC2016 # expanded by the busy loop's own shell
  taskset -c 0 bash -c 'end=$((SECONDS + 3)); while ((SECONDS < end)); do :; done' &
  hog=$!
  wait "$hog"
  wait "$pid" || fail "the run failed: $(tail -5 "$out.err")"
  grep 'engine core:' "$out" || true
  python3 - "$data/last-run.json" "$work/starve/quiet/last-run.json" <<'EOF2'
import json, sys
v = json.load(open(sys.argv[1]))
q = json.load(open(sys.argv[2]))
print(f"starve: without the loop: engine_stalls {q['engine_stalls']} ({q['engine_stalled_ns']/1e6:.1f} ms), engine_preemptions {q['engine_preemptions']} ({q['engine_preempted_ns']/1e6:.1f} ms), events {q['events']}, orders {q['orders']}")
print(f"starve: with the loop:    engine_stalls {v['engine_stalls']} ({v['engine_stalled_ns']/1e6:.1f} ms), engine_preemptions {v['engine_preemptions']} ({v['engine_preempted_ns']/1e6:.1f} ms), events {v['events']}, orders {v['orders']}")
if v["engine_preemptions"] == 0 and v["engine_stalls"] == 0:
    sys.exit("a busy loop on the engine's core for 3 s and the summary reports neither stalls nor preemptions")
# Nothing lost: the market keeps its 20,000 events/s schedule through the starvation (a late
# producer catches up), and the engine takes every event it publishes.
if v["events"] < 0.95 * q["events"]:
    sys.exit(f"the starved run took {v['events']} events against {q['events']} without the loop")
EOF2
  check_against_replay "$data" "$(config)"
  say "starve: PASS"
}

# Venue timestamps that jump (one frame an hour ahead or behind, the venue's clock stepping a
# minute ahead), replayed from a real recording; then the machine's wall clock stepped back
# and forward under a live run (libfaketime).
row_clock() {
  local rec="${1:-$root/../shared/data/exchange/recorded/hftbacktest/binance_spot_btcusdt_20240808.gz}"
  [[ -f "$rec" ]] || fail "no recording $rec (give one: scripts/chaos.sh clock FILE.gz)"
  zcat -f "$rec" >"$work/base.txt"
  python3 - "$work" <<'EOF2'
import re, sys
work = sys.argv[1]
lines = open(f"{work}/base.txt").read().splitlines(True)
at = next(i for i in range(len(lines) // 2, len(lines)) if '"depthUpdate"' in lines[i])
def shifted(name, delta_ms, frames):
    out = list(lines)
    for i in frames:
        out[i] = re.sub(r'"E":(\d+)', lambda m: '"E":%d' % (int(m.group(1)) + delta_ms), out[i], count=1)
    open(f"{work}/{name}.txt", "w").write("".join(out))
shifted("ahead", 3_600_000, [at])
shifted("behind", -3_600_000, [at])
shifted("step", 60_000, range(at, len(lines)))
print(f"clock: {len(lines)} frames; the jumps at frame {at}")
EOF2
  local f
  for f in base ahead behind step; do
    "$bin" replay "$work/$f.txt" --json >"$work/$f.json" 2>"$work/$f.err" || fail "replay $f: $(cat "$work/$f.err")"
  done
  python3 - "$work" <<'EOF2'
import json, sys
work = sys.argv[1]
v = {f: json.load(open(f"{work}/{f}.json")) for f in ("base", "ahead", "behind", "step")}
for f, s in v.items():
    print(f"clock: {f:6}: orders {s['orders']}, fills {s['fills']}, refusals {s['refusals']}, pnl {s['pnl']}")
for f in ("ahead", "behind"):
    if v[f]["orders"] != v["base"]["orders"]:
        sys.exit(f"one frame stamped an hour {f} changed the orders: {v[f]['orders']} against {v['base']['orders']}")
if v["step"]["orders"] < v["base"]["orders"] * 9 // 10:
    sys.exit(f"a venue clock stepping a minute ahead cut the orders to {v['step']['orders']} of {v['base']['orders']}")
EOF2
  # The wall clock stepped an hour back, then an hour ahead, under a live run: the engine's
  # times come from the monotonic clock anchored once, so nothing it stamps moves.
  local lib
  lib="$(find /usr/lib -path '*/faketime/libfaketimeMT.so.1' 2>/dev/null | head -1 || true)"
  if [[ -z "$lib" ]]; then
    say "clock: no libfaketime (apt-get install faketime): the wall-clock step is not run"
  else
    local data="$work/wall/data" out="$work/wall.out" cfg
    cfg="$(config)"
    echo "+0" >"$work/faketime"
    LD_PRELOAD="$lib" FAKETIME_TIMESTAMP_FILE="$work/faketime" FAKETIME_CACHE_DURATION=1 DONT_FAKE_MONOTONIC=1 \
      "$bin" run --config "$cfg" --duration 9s --events-per-sec 20000 --wait yield --data-dir "$data" >"$out" 2>"$out.err" &
    local pid=$!
    sleep 3; echo "-1h" >"$work/faketime"; say "clock: wall clock an hour back"
    sleep 3; echo "+1h" >"$work/faketime"; say "clock: wall clock an hour ahead"
    wait "$pid" || fail "the run under a stepping wall clock failed: $(tail -5 "$out.err")"
    grep -q "snapshots: .* written" "$out" || true
    "$bin" journal dump "$data/journal/output" >"$work/wall.jsonl"
    python3 - "$work/wall.jsonl" <<'EOF2'
import json, sys
ts = [json.loads(l)["ts_event"] for l in open(sys.argv[1]) if '"kind":"order"' in l]
if len(ts) < 2:
    sys.exit(f"{len(ts)} orders in 9 s under a stepping wall clock")
span = (ts[-1] - ts[0]) / 1e9
# An order takes its cause's time: a signal stamped a little before the market event ahead of
# it in the ring is normal; a step back of a second or more is not.
back = sum(1 for a, b in zip(ts, ts[1:]) if b + 1_000_000_000 <= a)
print(f"clock: wall clock stepped -1 h and +1 h: {len(ts)} orders, their event times span {span:.1f} s, {back} steps back of 1 s or more")
if span > 60 or back:
    sys.exit("the wall clock's step reached the engine's event times")
EOF2
    check_against_replay "$data" "$cfg"
  fi
  say "clock: PASS"
}

row="${1:-}"
shift || true
case "$row" in
  kill) row_kill "$@" ;;
  disk-full) row_disk_full ;;
  services) row_services ;;
  starve) row_starve ;;
  clock) row_clock "$@" ;;
  all) row_kill && row_disk_full && row_services && row_starve && row_clock ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
