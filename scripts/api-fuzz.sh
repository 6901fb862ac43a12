#!/usr/bin/env bash
# The HTTP API fuzzed from its OpenAPI document (docs/openapi.json) with schemathesis, against
# a live `sapphire run` (synthetic market, paper trading, a random control token):
#   1. with the right token: every check but ignored_auth (that one sends refused tokens,
#      which the server's per-address throttle would soon answer with 429 for everything);
#   2. without a token and 3. with a wrong one: every check, ignored_auth included;
#   4. by hand: every control route (POST in the document) refuses a missing token (401) and
#      a wrong one (403), each from its own loopback address so the throttle stays out of it,
#      and nothing refused reaches the engine (the journal's control count does not move).
# Each schemathesis run gets a fresh process (the throttle remembers addresses). /ws is left
# out: a 101 turns schemathesis' HTTP connection into a WebSocket it cannot speak (it counts
# the upgrade as a server error); gateway/src/api/tests.rs covers the handshake instead. Passes when
# schemathesis finds no server error and no schema violation, and every refusal holds.
#
# Usage: scripts/api-fuzz.sh [--release] [--max-examples N] [--seed N]
#   (defaults: debug build, 50 examples per operation and mode, a random seed)
# Needs python3 with venv; installs the pinned schemathesis (scripts/api-fuzz-requirements.txt)
# into a cached virtualenv (~/.cache/sapphire/api-fuzz-venv) when missing. Reports (JUnit XML,
# the NDJSON event log) and the servers' logs go to target/api-fuzz/.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

profile=debug
max_examples=50
seed="$RANDOM$RANDOM"
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --max-examples) max_examples="$2"; shift ;;
    --seed) seed="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "api-fuzz: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

requirements="$root/scripts/api-fuzz-requirements.txt"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/sapphire/api-fuzz-venv"
wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/st" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
  echo "api-fuzz: installing schemathesis into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" \
    || ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"; then
    echo "api-fuzz: could not install schemathesis into $venv" >&2
    rm -rf "$venv"
    exit 1
  fi
  echo "$wanted" > "$venv/.requirements.sha256"
fi

build=(cargo build --quiet --bin sapphire)
[ "$profile" = release ] && build+=(--release)
"${build[@]}" || { echo "api-fuzz: the build failed" >&2; exit 1; }
bin="$root/target/$profile/sapphire"

out="$root/target/api-fuzz"
rm -rf "$out"
mkdir -p "$out"
# Never printed, never written to a report: schemathesis sanitizes Authorization in its output.
token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -INT "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=""
  fi
}
trap stop_server EXIT

# Starts `sapphire run` on a free port with its own data directory; sets $url.
start_server() {
  local name="$1" port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  url="http://127.0.0.1:$port"
  SAPPHIRE_API_TOKEN="$token" "$bin" run --quiet --duration 30m --data-dir "$out/$name-data" \
    --http-bind "127.0.0.1:$port" > "$out/$name-server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 300); do
    if curl -fsS "$url/healthz" > /dev/null 2>&1; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "api-fuzz: sapphire run exited; see $out/$name-server.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "api-fuzz: sapphire run did not serve /healthz within 30 s" >&2
  return 1
}

failed=0
# One schemathesis run against a fresh server: name, then extra arguments.
fuzz() {
  local name="$1"; shift
  start_server "$name" || { failed=1; return; }
  echo "== schemathesis: $name (seed $seed, $max_examples examples per operation)"
  # From $out: schemathesis keeps its cache (.schemathesis/) in the working directory.
  (cd "$out" && "$venv/bin/st" --config-file "$root/scripts/api-fuzz.toml" run "$root/docs/openapi.json" --url "$url" --checks all --mode all \
    --max-examples "$max_examples" --seed "$seed" --workers 1 --request-timeout 10 \
    --report junit,ndjson --report-dir "$out/$name-report" --exclude-path /ws "$@") > "$out/$name.log" 2>&1
  local rc=$?
  sed -n '/^=* *SUMMARY/,$p' "$out/$name.log" | grep -v '^ *$' | head -40
  if [ $rc -ne 0 ]; then
    echo "api-fuzz: $name: schemathesis found problems (exit $rc); the whole log: $out/$name.log"
    failed=1
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "api-fuzz: $name: the server died during the run; see $out/$name-server.log"
    failed=1
  fi
  stop_server
}

fuzz with-token -H "Authorization: Bearer $token" --exclude-checks ignored_auth
fuzz without-token
fuzz wrong-token -H "Authorization: Bearer not-the-token"

# Every control route refuses a missing or a wrong token, and the engine sees none of them.
start_server refusals || exit 1
# Operator actions the engine took: its kill/halt/resume/pause/limit alerts in /api/risk.
controls() {
  curl -fsS "$url/api/risk?limit=500" | python3 -c '
import json, sys
acted = {"killed", "halted", "resumed", "agent_paused", "limit_changed", "flattening"}
print(sum(1 for item in json.load(sys.stdin)["items"] if acted & {v for v in item.values() if isinstance(v, str)}))'
}
before="$(controls)"
n=2
mapfile -t routes < <(python3 -c '
import json, sys
doc = json.load(open(sys.argv[1]))
for path, item in sorted(doc["paths"].items()):
    if "post" in item:
        print(path.replace("{id}", "3"))
' "$root/docs/openapi.json")
for route in "${routes[@]}"; do
  for auth in none wrong; do
    header=()
    [ "$auth" = wrong ] && header=(-H "Authorization: Bearer wrong-$RANDOM")
    # A loopback address of its own, so earlier refusals cannot turn this one into a 429.
    status="$(curl -sS -o /dev/null -w '%{http_code}' --interface "127.0.0.$n" -X POST "${header[@]}" \
      -H 'Content-Type: application/json' --data '{"limit":"max_order_usd","value":"1"}' "$url$route")"
    n=$((n + 1))
    want=401
    [ "$auth" = wrong ] && want=403
    if [ "$status" != "$want" ]; then
      echo "api-fuzz: POST $route with $auth token: $status, wanted $want"
      failed=1
    fi
  done
done
sleep 1 # time for the engine to act on anything that got through
after="$(controls)"
echo "== refusals: ${#routes[@]} control routes x (no token, wrong token): $((n - 2)) requests refused; control events before/after: $before/$after"
if [ "$before" != "$after" ]; then
  echo "api-fuzz: a refused request reached the engine"
  failed=1
fi
stop_server

if [ $failed -ne 0 ]; then
  echo "api-fuzz: FAILED (logs in $out)"
  exit 1
fi
echo "api-fuzz: passed (seed $seed)"
