#!/usr/bin/env bash
# Creates Sapphire's two node pools in an existing GKE Standard cluster (regular channel,
# Workload Identity, Dataplane V2; see docs/runbook.md "First deploy"):
#
#   latency  core pods only. C3 with SMT off (--threads-per-core=1: one hardware thread per
#            core, no sibling stealing cycles), compact placement (nodes close together), the
#            static CPU manager without CFS quota (node-system-config.yaml), and a taint so
#            nothing but a core (which tolerates it) lands there.
#   general  agents, gateway, sink, migrations; autoscaled.
#
# Usage: PROJECT=sapphire-prod CLUSTER=sapphire deploy/gke/create-node-pools.sh
#        DRY_RUN=1 prints the commands instead of running them (deploy/tests uses that).
set -euo pipefail
cd "$(dirname "$0")"

PROJECT=${PROJECT:?set PROJECT to the Google Cloud project id}
CLUSTER=${CLUSTER:-sapphire}
REGION=${REGION:-asia-northeast1}
# Compact placement needs a single zone.
ZONE=${ZONE:-${REGION}-a}
# c3-standard-22 has 22 vCPUs = 11 cores; with SMT off the node has 11 CPUs. A core shard
# takes 6 exclusive CPUs for the engine (deploy/base/core/core.toml), 1 for its sink container
# and 0.25 shared for the Cloud SQL proxy; the kubelet and system pods need the rest, so one
# shard per node. c3d-* and h3-standard-88 (no SMT) also fit; see the runbook.
LATENCY_MACHINE_TYPE=${LATENCY_MACHINE_TYPE:-c3-standard-22}
# One node per core shard (deploy/overlays/gke/shards/).
LATENCY_NODES=${LATENCY_NODES:-2}
GENERAL_MACHINE_TYPE=${GENERAL_MACHINE_TYPE:-n2-standard-4}
NODE_SA=${NODE_SA:-sapphire-nodes@${PROJECT}.iam.gserviceaccount.com}

run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

run gcloud container node-pools create latency \
  --project="$PROJECT" \
  --cluster="$CLUSTER" \
  --location="$REGION" \
  --node-locations="$ZONE" \
  --machine-type="$LATENCY_MACHINE_TYPE" \
  --threads-per-core=1 \
  --placement-type=COMPACT \
  --num-nodes="$LATENCY_NODES" \
  --system-config-from-file=node-system-config.yaml \
  --node-labels=sapphire.dev/pool=latency \
  --node-taints=sapphire.dev/pool=latency:NoSchedule \
  --image-type=COS_CONTAINERD \
  --disk-type=pd-balanced \
  --disk-size=100 \
  --enable-gvnic \
  --workload-metadata=GKE_METADATA \
  --service-account="$NODE_SA" \
  --scopes=cloud-platform \
  --shielded-secure-boot \
  --shielded-integrity-monitoring \
  --enable-autorepair \
  --enable-autoupgrade \
  --max-surge-upgrade=1 \
  --max-unavailable-upgrade=0

run gcloud container node-pools create general \
  --project="$PROJECT" \
  --cluster="$CLUSTER" \
  --location="$REGION" \
  --machine-type="$GENERAL_MACHINE_TYPE" \
  --num-nodes=1 \
  --enable-autoscaling \
  --min-nodes=1 \
  --max-nodes=3 \
  --node-labels=sapphire.dev/pool=general \
  --image-type=COS_CONTAINERD \
  --disk-type=pd-balanced \
  --disk-size=100 \
  --enable-gvnic \
  --workload-metadata=GKE_METADATA \
  --service-account="$NODE_SA" \
  --scopes=cloud-platform \
  --shielded-secure-boot \
  --shielded-integrity-monitoring \
  --enable-autorepair \
  --enable-autoupgrade \
  --max-surge-upgrade=1 \
  --max-unavailable-upgrade=0
