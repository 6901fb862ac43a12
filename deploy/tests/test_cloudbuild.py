"""cloudbuild.yaml: loaded by gcloud's own config loader, then checked for what broke the old
platform's builds (unescaped shell variables, undeclared substitutions, steps waiting on
nothing) and for the order test → build → push → migrate → deploy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

import policy
from conftest import REPO, load_docs

BUILTIN_SUBSTITUTIONS = {
    "PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA", "REVISION_ID",
    "SHORT_SHA", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME", "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT",
    # Set by pull-request triggers.
    "_HEAD_BRANCH", "_BASE_BRANCH", "_HEAD_REPO_URL", "_PR_NUMBER",
}
# Values used where the tests play a build through: what a trigger would provide.
SAMPLE_BUILTINS = {"PROJECT_ID": "sapphire-prod", "SHORT_SHA": "abc1234", "BUILD_ID": "00000000-0000-4000-8000-000000000000"}

# The order the build must keep: each step depends (directly or through others) on the one before.
PIPELINE = ["check-revision", "test-rust", "build", "push", "render", "apply-platform", "migrate", "deploy-core",
            "deploy-edge", "rollout-status"]

REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def scan(text: str) -> tuple[list[str], list[str]]:
    """(substitution names referenced, malformed `$` uses) in one string, as Cloud Build reads
    it: `$$` is a literal `$`, `$NAME` and `${NAME}` are substitutions, anything else is wrong."""
    refs, bad, i = [], [], 0
    while i < len(text):
        if text[i] != "$":
            i += 1
        elif text.startswith("$$", i):
            i += 2
        else:
            m = REF.match(text, i)
            if m:
                refs.append(m.group(1) or m.group(2))
                i = m.end()
            else:
                bad.append(text[i:i + 12])
                i += 1
    return refs, bad


def strings(value, skip=("substitutions",)):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, skip)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                yield from strings(v, skip)


def check_substitutions(build: dict) -> list[str]:
    declared = set((build.get("substitutions") or {}).keys())
    used, out = set(), []
    for text in strings(build):
        refs, bad = scan(text)
        for b in bad:
            out.append(f"malformed `$` in {b!r}: write $$ for a literal dollar sign")
        for r in refs:
            used.add(r)
            if r not in declared and r not in BUILTIN_SUBSTITUTIONS:
                out.append(f"${r}: neither a declared substitution nor a built-in one; a shell variable must be written $${r}")
    for name in sorted(declared - used):
        out.append(f"substitution {name} is declared but never used")
    for name in sorted(declared):
        if not re.fullmatch(r"_[A-Z0-9_]+", name):
            out.append(f"substitution {name}: user substitutions are named _UPPER_CASE")
    return out


def check_wait_for(build: dict) -> list[str]:
    out, seen = [], []
    for i, step in enumerate(build.get("steps") or []):
        sid = step.get("id")
        if not sid:
            out.append(f"step {i} has no id, so nothing can wait for it by name")
        elif sid in seen:
            out.append(f"step id {sid} is used twice")
        for target in step.get("waitFor") or []:
            if target != "-" and target not in seen:
                out.append(f"step {sid} waits for {target!r}, which is not an earlier step")
        if sid:
            seen.append(sid)
    return out


def predecessors(build: dict) -> dict[str, set[str]]:
    """Each step's transitive dependencies. A step without waitFor waits for every earlier step."""
    deps: dict[str, set[str]] = {}
    order = []
    for step in build["steps"]:
        sid = step["id"]
        wait = step.get("waitFor")
        direct = set(order) if wait is None else {w for w in wait if w != "-"}
        deps[sid] = set(direct)
        for d in direct:
            deps[sid] |= deps.get(d, set())
        order.append(sid)
    return deps


def substitute(text: str, build: dict) -> str:
    """The string as the step's container receives it."""
    values = dict(SAMPLE_BUILTINS, **(build.get("substitutions") or {}))
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = REF.match(text, i) if text[i] == "$" else None
        if m:
            out.append(values.get(m.group(1) or m.group(2), ""))
            i = m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def step_script(build: dict, sid: str) -> tuple[str, str]:
    step = next(s for s in build["steps"] if s["id"] == sid)
    assert step.get("entrypoint") in ("bash", "sh") and step["args"][0] == "-c", sid
    return step["entrypoint"], substitute(step["args"][1], build)


# --- label selectors as kubectl apply -l reads them ---------------------------------------


def selector_terms(selector: str) -> list[tuple[str, str, list[str]]]:
    terms = []
    for m in re.finditer(r"\s*([\w./-]+)\s*(?:(!=|==|=)\s*([\w./-]+)|\s+(in|notin)\s+\(([^)]*)\))\s*(?:,|$)", selector):
        if m.group(2):
            terms.append((m.group(1), m.group(2), [m.group(3)]))
        else:
            terms.append((m.group(1), m.group(4), [v.strip() for v in m.group(5).split(",")]))
    return terms


def selector_selects(selector: str, labels: dict) -> bool:
    for key, op, values in selector_terms(selector):
        value = labels.get(key)
        if op in ("=", "==", "in") and value not in values:
            return False
        if op in ("!=", "notin") and value in values:
            return False
    return True


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build(gcloud_load):
    ok, loaded = gcloud_load("cloudbuild", REPO / "cloudbuild.yaml")
    assert ok, f"gcloud refuses cloudbuild.yaml: {loaded}"
    return loaded


def test_gcloud_loads_the_build_config(build):
    assert [s["id"] for s in build["steps"]][0] == "check-revision"


def test_substitutions_are_declared_used_and_shell_variables_escaped(build):
    assert check_substitutions(build) == []


def test_every_wait_for_names_an_earlier_step(build):
    assert check_wait_for(build) == []


def test_pipeline_order(build):
    deps = predecessors(build)
    for before, after in zip(PIPELINE, PIPELINE[1:]):
        assert before in deps[after], f"{after} does not wait for {before}"
    assert "test-deploy" in deps["build"]


def test_nothing_is_deployed_before_the_push(build):
    deps = predecessors(build)
    for step in build["steps"]:
        text = " ".join(step.get("args") or [])
        if re.search(r"kubectl\s+(apply|create|replace|set|rollout)", text):
            assert "push" in deps[step["id"]], f"step {step['id']} deploys before the image is pushed"


def test_build_options(build):
    assert build["serviceAccount"].startswith("projects/") and "/serviceAccounts/sapphire-deployer@" in build["serviceAccount"]
    assert build["options"]["logging"] in ("CLOUD_LOGGING_ONLY", "GCS_ONLY", "LEGACY")
    # Cloud Build itself refuses undeclared or unused substitutions.
    assert build["options"]["substitutionOption"] == "MUST_MATCH"


def test_step_images_have_a_registry_and_a_version(build):
    problems = [p for s in build["steps"] for p in policy.image_problems(s["name"])]
    assert problems == []
    # Images a step starts by itself (the BuildKit daemon) follow the same rule.
    _, script = step_script(build, "build")
    started = re.findall(r"image=(\S+)", script)
    assert started and [p for i in started for p in policy.image_problems(i)] == []


def test_migration_is_a_fresh_job_per_commit_and_fails_the_build(build):
    _, script = step_script(build, "migrate")
    assert 'JOB="sapphire-migrate-abc1234"' in script
    assert "wait --for=condition=complete" in script
    assert re.search(r"status\.succeeded.*\n(.*\n){0,3}.*exit 1", script), "a Job that did not succeed must exit 1"


def test_scripts_are_valid_shell(build, tmp_path):
    for step in build["steps"]:
        if step.get("entrypoint") not in ("bash", "sh"):
            continue
        shell, script = step_script(build, step["id"])
        path = tmp_path / f"{step['id']}.sh"
        path.write_text(script)
        checker = ["bash", "-n", str(path)] if shell == "bash" else [shutil.which("dash") or "sh", "-n", str(path)]
        done = subprocess.run(checker, capture_output=True, text=True)
        assert done.returncode == 0, f"step {step['id']}: {done.stderr}"


def test_every_object_is_applied_by_some_step(build, renders):
    selectors = []
    for step in build["steps"]:
        if step.get("entrypoint") in ("bash", "sh"):
            _, script = step_script(build, step["id"])
            selectors += re.findall(r"kubectl apply -f \S+/app\.yaml -l '([^']+)'", script)
    assert len(selectors) >= 3, selectors
    missed = [policy.name_of(d) for d in renders["gke"] if not any(selector_selects(s, policy.labels_of(d)) for s in selectors)]
    assert missed == [], f"no deploy step applies {missed}"


def test_build_matches_the_gke_overlay(build, environments):
    subs = build["substitutions"]
    (project,) = policy.workload_identity_projects(environments["gke"])
    assert build["serviceAccount"] == f"projects/{project}/serviceAccounts/sapphire-deployer@{project}.iam.gserviceaccount.com"
    overlay = yaml.safe_load((REPO / "deploy/overlays/gke/kustomization.yaml").read_text())
    assert overlay["images"][0]["newName"] == f"{subs['_REGION']}-docker.pkg.dev/{project}/{subs['_REPOSITORY']}/sapphire"
    assert overlay["namespace"] == subs["_NAMESPACE"]


def play_render_step(build, tmp_path, region_override=None):
    """Runs the render step as Cloud Build would, in a temporary /workspace with a fake
    gcloud, and returns (exit code, output, workspace)."""
    if region_override:
        build = dict(build, substitutions=dict(build["substitutions"], _REGION=region_override))
    workspace = tmp_path / "workspace"
    shutil.copytree(REPO / "deploy", workspace / "deploy", ignore=shutil.ignore_patterns("tests"))
    subs = build["substitutions"]
    image = f"{subs['_REGION']}-docker.pkg.dev/{SAMPLE_BUILTINS['PROJECT_ID']}/{subs['_REPOSITORY']}/sapphire"
    digest = "sha256:" + "5a" * 32
    (workspace / "image-ref.txt").write_text(f"{image}@{digest}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/gcloud-args\n")
    fake.chmod(0o755)
    _, script = step_script(build, "render")
    script = script.replace("/workspace", str(workspace))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    return done, workspace, f"{image}@{digest}"


def test_render_step_deploys_exactly_the_pushed_digest(build, tmp_path):
    done, workspace, ref = play_render_step(build, tmp_path)
    assert done.returncode == 0, done.stderr
    app = load_docs((workspace / ".deploy-build/app.yaml").read_text())
    job = load_docs((workspace / ".deploy-build/migrate.yaml").read_text())
    ours = [c["image"] for d, spec in policy.workloads(app + job) for c in policy.all_containers(spec) if "/sapphire/sapphire" in c["image"]]
    assert ours and set(ours) == {ref}
    assert [d["metadata"]["name"] for d in job] == ["sapphire-migrate-abc1234"]
    assert "container clusters get-credentials sapphire" in (tmp_path / "gcloud-args").read_text()


def test_render_step_refuses_an_overlay_that_runs_another_image(build, tmp_path):
    # Pushed to another region than the overlay names: the digest would not be applied.
    done, _, _ = play_render_step(build, tmp_path, region_override="europe-west1")
    assert done.returncode != 0 and "is not europe-west1-docker.pkg.dev" in done.stderr


# --- the checks catch what they exist for ----------------------------------------------------


def test_checks_catch_a_broken_build():
    broken = {
        "substitutions": {"_REGION": "x", "_UNUSED": "y"},
        "steps": [
            {"id": "a", "name": "gcr.io/x/y:1", "args": ["bash", "-c", "echo $HOME ${_REGION} $$OK $(date)"]},
            {"id": "b", "name": "gcr.io/x/y:1", "waitFor": ["c"]},
            {"id": "c", "name": "gcr.io/x/y:1", "args": ["${_TYPO}"]},
        ],
    }
    subs = check_substitutions(broken)
    assert any("$HOME" in v for v in subs)
    assert any("$_TYPO" in v for v in subs)
    assert any("_UNUSED is declared but never used" in v for v in subs)
    assert any("malformed" in v and "$(date)" in v for v in subs)
    assert check_wait_for(broken) == ["step b waits for 'c', which is not an earlier step"]


def test_gcloud_refuses_what_cloud_build_would(gcloud_load, tmp_path):
    good = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    for name, mutate, expected in [
        ("unknown field", lambda b: b["steps"][0].update(waitFr=["-"]), "waitFr"),
        ("bad substitution key", lambda b: b["substitutions"].update(REGION="x"), "does not respect format"),
        ("bad logging mode", lambda b: b["options"].update(logging="CLOUD_ONLY"), "logging"),
    ]:
        b = yaml.safe_load(yaml.safe_dump(good))
        mutate(b)
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(b))
        ok, err = gcloud_load("cloudbuild", path)
        assert not ok and expected in err, f"{name}: {err}"
