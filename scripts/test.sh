#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of every crate.
# CI runs exactly this (see .ci/run). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo not found. Install Rust 1.85 or newer (https://rustup.rs) and run again." >&2
  exit 1
fi

# Real servers for the persistence tests: PostgreSQL and Redis are started (and installed
# from Debian's packages) when absent, at the addresses the tests use.
say "services"
source scripts/services.sh

say "format"
cargo fmt --all -- --check

say "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Supply chain: licences, banned crates, duplicate versions (warnings) and sources by
# deny.toml; advisories too where the RustSec database can be fetched (it lives on GitHub,
# which this machine and CI cannot reach: then a message says so). cargo-deny is installed
# when absent (once per machine, ~6-12 min on 2 cores; kept in ~/.cargo/bin for later runs);
# SAPPHIRE_SKIP_DENY=1 skips the check.
say "supply chain (cargo deny)"
if [[ "${SAPPHIRE_SKIP_DENY:-}" == 1 ]]; then
  echo "(cargo deny skipped: SAPPHIRE_SKIP_DENY=1)"
else
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "(cargo-deny not installed: installing it, at most 15 min)"
    timeout 900 cargo install cargo-deny --locked --quiet || echo "(could not install cargo-deny)"
  fi
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "cargo deny: skipped: cargo-deny is not installed (cargo install cargo-deny --locked)"
  elif timeout 60 cargo deny fetch db >/dev/null 2>&1; then
    cargo deny --locked check
  else
    echo "(cargo deny: the RustSec advisory database cannot be fetched from here: advisories NOT checked; licences, bans, sources are)"
    # --offline reads the crate graph for every target platform from the local registry: fetch
    # it first (a fresh machine has only what its builds downloaded, not e.g. wasm or android
    # crates, and the offline check then fails).
    cargo fetch --locked --quiet
    cargo deny --offline --locked check licenses bans sources
  fi
fi

# Not here, each needing its own build of the dependency tree (minutes each on 2 cores):
# fuzzing (scripts/fuzz.sh; its smoke runs from scripts/conformance.sh), the loom models
# (scripts/loom.sh) and Miri (scripts/miri.sh). docs/reliability.md has their last runs.

say "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doc tests.
  cargo test --workspace --locked --doc
else
  echo "(cargo-nextest not installed: using cargo test)"
  cargo test --workspace --locked --no-fail-fast
fi

# Instructions per operation on the hot paths (engine events, Binance frames, order signing)
# counted by callgrind against benches/instruction-budget.toml: fails when a case is more
# than 10% above its budget (installs valgrind when absent). Builds one release binary.
say "instruction budget"
bash scripts/instruction-budget.sh
# The check can fail: one case against a budget of 1 instruction must be refused.
if command -v valgrind >/dev/null 2>&1; then
  printf 'binance_trade = 1\n' >target/instruction-budget-tiny.toml
  rc=0
  bash scripts/instruction-budget.sh --budget target/instruction-budget-tiny.toml --cases binance_trade >/dev/null 2>&1 || rc=$?
  if [ "$rc" != 1 ]; then
    echo "instruction budget: a case far over a tiny budget should fail the check (exit 1), got exit $rc" >&2
    exit 1
  fi
  echo "(a case over its budget fails the check: ok)"
fi

# The test build above made target/debug/sapphire (the integration tests run it); the browser
# test and the bench smoke use that binary rather than building the dependency tree again
# without the test-only features (a second tree: minutes, and GBs of CI's disk).
bin="$PWD/target/debug/sapphire"
if [ ! -x "$bin" ]; then cargo build --locked --bin sapphire; fi

# The dashboard in a real headless Chromium against a running `sapphire run` (installs
# Debian's chromium and the pinned playwright-core when absent; SAPPHIRE_SKIP_BROWSER_TEST=1
# skips it). Screenshots: target/browser/.
say "browser"
SAPPHIRE_BIN="$bin" bash scripts/browser-test.sh

# The latency lab as a smoke run: every case runs and the report is written (it asserts
# nothing about time; a debug build on a busy CI box says nothing about speed).
say "bench smoke"
"$bin" bench --quick --out target/bench-smoke

# --- Deployment (deploy/, Dockerfile, cloudbuild.yaml) -------------------------------------
# Offline: renders the Kustomize overlays and runs kubernetes-validate, yamllint, checkov and
# the policy tests (needs kubectl and gcloud; installs the Python validators into a cached
# virtualenv on first use). SAPPHIRE_SKIP_DEPLOY_CHECK=1 skips it. Its last line is pytest's.
say "deployment"
bash scripts/deploy-check.sh
