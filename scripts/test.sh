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

say "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doc tests.
  cargo test --workspace --locked --doc
else
  echo "(cargo-nextest not installed: using cargo test)"
  cargo test --workspace --locked --no-fail-fast
fi

# The dashboard in a real headless Chromium against a running `sapphire run` (installs
# Debian's chromium and the pinned playwright-core when absent; SAPPHIRE_SKIP_BROWSER_TEST=1
# skips it). Screenshots: target/browser/.
say "browser"
bash scripts/browser-test.sh

# The latency lab as a smoke run: every case runs and the report is written (it asserts
# nothing about time; a debug build on a busy CI box says nothing about speed).
say "bench smoke"
cargo run --locked --quiet --bin sapphire -- bench --quick --out target/bench-smoke

# --- Deployment (deploy/, Dockerfile, cloudbuild.yaml) -------------------------------------
# Offline: renders the Kustomize overlays and runs kubernetes-validate, yamllint, checkov and
# the policy tests (needs kubectl and gcloud; installs the Python validators into a cached
# virtualenv on first use). SAPPHIRE_SKIP_DEPLOY_CHECK=1 skips it. Its last line is pytest's.
say "deployment"
bash scripts/deploy-check.sh
