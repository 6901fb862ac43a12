"""deploy/gke: the node system config (loaded by gcloud's own loader) and the node pool script
(its flags checked against the installed gcloud's help, its pools against the core pods)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

import policy
from conftest import GCLOUD_ENV, REPO

NODE_CONFIG = REPO / "deploy/gke/node-system-config.yaml"
SCRIPT = REPO / "deploy/gke/create-node-pools.sh"
# Machine families the latency pool may use (the issue: c3 / c3d / h3), with hardware threads
# per core when SMT is on (h3 has none).
LATENCY_FAMILIES = {"c3": 2, "c3d": 2, "h3": 1}
TOPOLOGY_POLICIES = {"none", "best-effort", "restricted", "single-numa-node"}


@pytest.fixture(scope="module")
def node_config(gcloud_load):
    ok, loaded = gcloud_load("node-system-config", NODE_CONFIG)
    assert ok, f"gcloud refuses {NODE_CONFIG.name}: {loaded}"
    return loaded


def test_kubelet_gives_exclusive_unthrottled_cores(node_config):
    kubelet = node_config["kubeletConfig"]
    assert kubelet["cpuManagerPolicy"] == "static"
    assert kubelet["cpuCfsQuota"] is False
    assert kubelet["topologyManager"]["policy"] in TOPOLOGY_POLICIES
    assert kubelet["topologyManager"]["policy"] != "none"
    assert kubelet["topologyManager"]["scope"] in ("container", "pod")
    assert kubelet["memoryManager"]["policy"] in ("None", "Static")


def test_gcloud_refuses_a_misspelt_node_config(gcloud_load, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(NODE_CONFIG.read_text().replace("cpuManagerPolicy", "cpuManagerPolcy"))
    ok, err = gcloud_load("node-system-config", bad)
    assert not ok and "cpuManagerPolcy" in err


@pytest.fixture(scope="module")
def pool_commands() -> dict[str, list[str]]:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                          env=dict(os.environ, PROJECT="sapphire-prod", DRY_RUN="1"))
    assert done.returncode == 0, done.stderr
    commands = {}
    for line in done.stdout.splitlines():
        argv = shlex.split(line)
        assert argv[:4] == ["gcloud", "container", "node-pools", "create"], line
        commands[argv[4]] = argv
    return commands


def flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for arg in argv[5:]:
        assert arg.startswith("--"), f"positional argument {arg} after the pool name"
        name, _, value = arg.partition("=")
        out[name] = value
    return out


def test_script_is_valid_shell():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_script_creates_a_latency_and_a_general_pool(pool_commands):
    assert set(pool_commands) == {"latency", "general"}


def test_every_flag_exists_in_gcloud(pool_commands):
    help_text = subprocess.run(["gcloud", "container", "node-pools", "create", "--help"], capture_output=True, text=True,
                               env=dict(GCLOUD_ENV, PAGER="cat")).stdout
    help_text = re.sub(r"\x1b\[[0-9;]*m", "", help_text)
    for pool, argv in pool_commands.items():
        for flag in flags(argv):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"{pool}: gcloud has no flag {flag}"


def test_latency_pool(pool_commands, environments):
    f = flags(pool_commands["latency"])
    assert f["--threads-per-core"] == "1"
    assert f["--placement-type"] == "COMPACT"
    assert "," not in f["--node-locations"], "compact placement needs a single zone"
    assert (REPO / "deploy/gke" / f["--system-config-from-file"]).resolve() == NODE_CONFIG
    assert f["--workload-metadata"] == "GKE_METADATA"
    family, _, size = f["--machine-type"].partition("-standard-")
    assert family in LATENCY_FAMILIES, f["--machine-type"]

    # The core pods fit: their toleration matches the taint, their selector the label, and one
    # shard's CPUs (engine, sink, proxy) fit a node with SMT off, leaving a CPU for the kubelet
    # and system.
    cores = [(d, spec) for d, spec in policy.workloads(environments["gke"]) if policy.component_of(d) == "core"]
    assert cores
    taint_key, taint_rest = f["--node-taints"].split("=", 1)
    taint_value, taint_effect = taint_rest.split(":")
    label_key, label_value = f["--node-labels"].split("=", 1)
    node_cpus = int(size) // LATENCY_FAMILIES[family] if f["--threads-per-core"] == "1" else int(size)
    for doc, spec in cores:
        assert {"key": taint_key, "operator": "Equal", "value": taint_value, "effect": taint_effect} in spec["tolerations"]
        assert spec["nodeSelector"] == {label_key: label_value}
        # Every container that runs beside the engine counts: the sink's CPU and the proxy's
        # (a native sidecar) as well as the engine's.
        running = policy.regular_containers(spec) + [c for c in policy.init_containers(spec) if policy.is_native_sidecar(c)]
        cpus = sum(policy.parse_quantity_cpu(c["resources"]["limits"]["cpu"]) for c in running)
        assert cpus + 1 <= node_cpus, f"{policy.name_of(doc)}: {cpus} CPUs do not fit a {node_cpus}-CPU node"
    assert int(f["--num-nodes"]) >= len(cores), "one latency node per core shard"


def test_general_pool_is_untainted_and_autoscaled(pool_commands):
    f = flags(pool_commands["general"])
    assert "--node-taints" not in f
    assert "--enable-autoscaling" in f
    assert f["--workload-metadata"] == "GKE_METADATA"
