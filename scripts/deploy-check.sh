#!/usr/bin/env bash
# Offline validation of the deployment: the Kustomize overlays, the Dockerfile, cloudbuild.yaml
# and the GKE node pool configuration. Nothing here needs a cluster, a registry, a Docker
# engine or Google credentials. Usage: scripts/deploy-check.sh (scripts/test.sh runs it).
#
#   1. render every overlay with `kubectl kustomize`
#   2. kubernetes-validate --strict against the Kubernetes version pinned below
#   3. yamllint (deploy/.yamllint)
#   4. checkov --skip-download (deploy/.checkov.yaml: every skipped check says why)
#   5. the project's policy tests (deploy/tests, pytest), which also load cloudbuild.yaml and
#      the node system config with gcloud's own loaders
#
# Needs kubectl, gcloud (google-cloud-cli) and python3 with venv; installs Debian's
# prometheus-alertmanager when missing (as root, with apt). The Python validators are
# installed, pinned (deploy/tests/requirements.txt), into a cached virtualenv when missing.
# SAPPHIRE_SKIP_DEPLOY_CHECK=1 skips everything (Cloud Build's Rust step, which runs this
# script in a step of its own).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# The Kubernetes version GKE's regular release channel runs (default for new clusters in
# November 2026: 1.35). Change it here only.
KUBERNETES_VERSION=1.35.0
# Kinds that are not built into Kubernetes (Managed Service for Prometheus; GKE's Ingress
# companions), as `Kind apiVersion`; no schema for them ships with kubernetes-validate, so
# deploy/tests/test_monitoring.py and test_dashboard.py check their structure.
CUSTOM_KINDS=(
  'PodMonitoring monitoring.googleapis.com/v1'
  'Rules monitoring.googleapis.com/v1'
  'ManagedCertificate networking.gke.io/v1'
  'FrontendConfig networking.gke.io/v1beta1'
  'BackendConfig cloud.google.com/v1'
)
# The one warning each of them may raise (a typo in apiVersion or kind must still fail).
custom_kind_warnings=$(for k in "${CUSTOM_KINDS[@]}"; do
  printf "Couldn't find schema for kind %s with api version %s \n" "${k%% *}" "${k#* }"
done)

if [ "${SAPPHIRE_SKIP_DEPLOY_CHECK:-0}" = 1 ]; then
  echo "deploy-check: skipped (SAPPHIRE_SKIP_DEPLOY_CHECK=1)"
  exit 0
fi

say() { printf '\n== deploy-check: %s\n' "$*"; }
started=$SECONDS
passed=0
failed=()
result() { # name, exit status
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed+=("$1"); fi
}

missing=()
for tool in kubectl gcloud python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deploy-check: ${missing[*]} not found. Install kubectl and google-cloud-cli (Google's apt repository" >&2
  echo "  packages.cloud.google.com: kubectl, google-cloud-cli) and python3, or set SAPPHIRE_SKIP_DEPLOY_CHECK=1." >&2
  exit 1
fi

# Alertmanager runs deploy/monitoring's configuration against a local Telegram Bot API
# (deploy/tests/test_alerting.py): Debian's package, installed when missing.
if ! command -v prometheus-alertmanager >/dev/null 2>&1 && ! command -v alertmanager >/dev/null 2>&1; then
  say "alertmanager (Debian's prometheus-alertmanager)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager; } \
      >/dev/null 2>&1 || echo "deploy-check: could not install prometheus-alertmanager; test_alerting.py will say so" >&2
  else
    echo "deploy-check: install prometheus-alertmanager (apt) for test_alerting.py" >&2
  fi
fi

say "validators (virtualenv)"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/sapphire/deploy-venv"
requirements=deploy/tests/requirements.txt
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
  echo "installing $(grep -c '==' "$requirements") pinned packages into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" \
    || ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"; then
    echo "deploy-check: could not install the validators into $venv" >&2
    rm -rf "$venv"
    exit 1
  fi
  echo "$wanted" > "$venv/.requirements.sha256"
else
  echo "reusing $venv"
fi

render_dir=$(mktemp -d)
trap 'rm -rf "$render_dir"' EXIT

say "render (kubectl kustomize)"
status=0
for overlay in dev gke gke/migrate; do
  out="$render_dir/${overlay//\//-}.yaml"
  if kubectl kustomize "deploy/overlays/$overlay" > "$out"; then
    printf '%-28s %3d objects\n' "deploy/overlays/$overlay" "$(grep -c '^kind:' "$out")"
  else
    echo "deploy-check: kubectl kustomize deploy/overlays/$overlay failed" >&2
    status=1
  fi
done
result render "$status"

say "kubernetes-validate --strict (Kubernetes $KUBERNETES_VERSION)"
status=0
"$venv/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$render_dir"/*.yaml > "$render_dir/validate.log" 2>&1 || status=1
# A kind without a schema is only a warning to kubernetes-validate; here only the known
# custom kinds may lack one (a typo in apiVersion or kind must fail).
if grep -v -F "$custom_kind_warnings" \
  "$render_dir/validate.log" | grep -E '^(WARN|ERROR)'; then
  status=1
fi
objects=$(cat "$render_dir"/*.yaml | grep -c '^kind:')
unschemed=$(grep -c "Couldn't find schema" "$render_dir/validate.log")
echo "$objects objects checked; $unschemed of custom kinds (${CUSTOM_KINDS[*]%% *}) have no schema here"
result kubernetes-validate "$status"

say "yamllint"
"$venv/bin/yamllint" --strict -c deploy/.yamllint deploy cloudbuild.yaml
status=$?
[ "$status" -eq 0 ] && echo "cloudbuild.yaml and $(find deploy -name "*.yaml" -o -name .yamllint | wc -l) YAML files under deploy/: clean"
result yamllint "$status"

say "checkov --skip-download"
checkov_files=()
for f in "$render_dir"/dev.yaml "$render_dir"/gke.yaml "$render_dir"/gke-migrate.yaml Dockerfile; do
  checkov_files+=(-f "$f")
done
"$venv/bin/checkov" --config-file deploy/.checkov.yaml --skip-download "${checkov_files[@]}" > "$render_dir/checkov.log" 2>&1
status=$?
grep -E '^(kubernetes|dockerfile) scan results|^Passed checks|^Check: |FAILED for resource' "$render_dir/checkov.log" || cat "$render_dir/checkov.log"
echo "skipped, each with its reason in deploy/.checkov.yaml: $(grep -oE '^ *- CKV_[A-Z0-9_]+' deploy/.checkov.yaml | tr -d ' -' | paste -sd' ')"
result checkov "$status"

say "policy tests (pytest deploy/tests)"
if [ ${#failed[@]} -eq 0 ]; then
  echo "deploy-check validators: $passed passed, 0 failed ($((SECONDS - started))s so far)"
else
  echo "deploy-check validators: $passed passed, ${#failed[@]} failed: ${failed[*]}" >&2
fi
# Last, so that pytest's summary line closes the output.
SAPPHIRE_RENDER_DIR="$render_dir" PYTHONDONTWRITEBYTECODE=1 \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider deploy/tests
status=$?
if [ ${#failed[@]} -gt 0 ]; then
  exit 1
fi
exit "$status"
