"""The LLM agents on GKE: they run in the agents Deployment (never in a core pod), with a
provider configured in one step by the environment, keys from a Secret and never literal."""

from __future__ import annotations

import copy
import tomllib

import pytest

import policy

# The variables that configure a provider (agents/src/config.rs, AgentsConfig::apply_env).
PROVIDER_VARS = {"ENABLE_VERTEX_AI", "XAI_API_KEY", "GROK4_API_KEY", "OPENAI_BASE_URL"}
KEY_VARS = {"XAI_API_KEY", "GROK4_API_KEY", "OPENAI_API_KEY"}


def llm_problems(docs: list[dict]) -> list[str]:
    out = []
    agents = policy.find(docs, "Deployment", "sapphire-agents")
    if agents is None:
        return ["no agents Deployment"]
    spec = agents["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if policy.runs_sapphire(c)]
    env = {e["name"]: e for e in c.get("env") or []}
    if not PROVIDER_VARS & set(env):
        out.append("the agents Deployment configures no LLM provider (ENABLE_VERTEX_AI, XAI_API_KEY, OPENAI_BASE_URL)")
    if "ENABLE_VERTEX_AI" in env and not policy.env_value(docs, agents, c, "GOOGLE_CLOUD_PROJECT"):
        out.append("Vertex AI without GOOGLE_CLOUD_PROJECT")
    for name in KEY_VARS & set(env):
        ref = (env[name].get("valueFrom") or {}).get("secretKeyRef")
        if not ref or ref.get("name") != "sapphire-llm":
            out.append(f"{name} does not come from the Secret sapphire-llm")
    # The cores run no in-process agents: the LLM agents' one producer is this Deployment.
    for doc, pod in policy.workloads(docs):
        if policy.component_of(doc) != "core":
            continue
        for cc in policy.regular_containers(pod):
            found = policy.mounted_config(docs, doc, pod, cc) if policy.runs_sapphire(cc) and cc["args"][0] == "core" else None
            if found and tomllib.loads(found[1]).get("agents", {}).get("runtime", {}).get("enabled", True):
                out.append(f"{policy.name_of(doc)}: runs agents in process ([agents.runtime] enabled)")
            if PROVIDER_VARS & {e["name"] for e in cc.get("env") or []}:
                out.append(f"{policy.name_of(doc)}: an LLM provider in a core pod")
    return out


def test_llm_agents_run_in_the_agents_deployment_with_keys_from_a_secret(environments):
    assert llm_problems(environments["gke"]) == []


def _agents_env(docs):
    d = policy.find(docs, "Deployment", "sapphire-agents")
    return next(c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "sapphire")["env"]


@pytest.mark.parametrize("change, expected", [
    (lambda docs: _agents_env(docs).__setitem__(slice(None), [e for e in _agents_env(docs) if e["name"] not in PROVIDER_VARS]),
     "configures no LLM provider"),
    (lambda docs: [e.update(value="xai-literal", valueFrom=None) or e.pop("valueFrom") for e in _agents_env(docs)
                   if e["name"] == "XAI_API_KEY"], "does not come from the Secret"),
])
def test_each_llm_check_can_fail(environments, change, expected):
    docs = copy.deepcopy(environments["gke"])
    change(docs)
    problems = llm_problems(docs)
    assert any(expected in p for p in problems), problems
