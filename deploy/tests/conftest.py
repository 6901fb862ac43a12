"""Shared fixtures: the rendered overlays and gcloud's own loaders.

scripts/deploy-check.sh renders every overlay once and passes the directory in
SAPPHIRE_RENDER_DIR; run alone (`pytest deploy/tests`), the tests render for themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[2]

# Every render the repository ships, and the environments they form: an environment is what
# ends up in one cluster (the GKE overlay and its migration Job are applied to the same one).
RENDERS = {
    "dev": "deploy/overlays/dev",
    "gke": "deploy/overlays/gke",
    "gke-migrate": "deploy/overlays/gke/migrate",
}
ENVIRONMENTS = {"dev": ["dev"], "gke": ["gke", "gke-migrate"]}
# gcloud offline: no prompts, no update check.
GCLOUD_ENV = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1", CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1")


def kustomize(path: str) -> str:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not installed: it renders the Kustomize overlays (kubectl kustomize)")
    done = subprocess.run(["kubectl", "kustomize", str(REPO / path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{done.stderr}")
    return done.stdout


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict]]:
    out = {}
    given = os.environ.get("SAPPHIRE_RENDER_DIR")
    for name, path in RENDERS.items():
        if given:
            text = (Path(given) / f"{name}.yaml").read_text()
        else:
            text = kustomize(path)
        out[name] = load_docs(text)
    return out


@pytest.fixture(scope="session")
def environments(renders) -> dict[str, list[dict]]:
    return {env: [d for r in parts for d in renders[r]] for env, parts in ENVIRONMENTS.items()}


@pytest.fixture(scope="session")
def gcloud_sdk() -> tuple[str, str]:
    """(bundled python, SDK lib directory) of the installed Google Cloud SDK."""
    if shutil.which("gcloud") is None:
        pytest.fail("gcloud is not installed: its loaders validate cloudbuild.yaml and the node system config")
    info = subprocess.run(["gcloud", "info", "--format=json"], capture_output=True, text=True, check=True, env=GCLOUD_ENV)
    data = json.loads(info.stdout)
    python = data["basic"]["python_location"]
    lib = str(Path(data["installation"]["sdk_root"]) / "lib")
    return python, lib


@pytest.fixture(scope="session")
def gcloud_load(gcloud_sdk):
    """gcloud_load(kind, path) -> (ok, parsed JSON or error text)."""
    python, lib = gcloud_sdk

    def load(kind: str, path: Path | str):
        env = dict(os.environ, SAPPHIRE_GCLOUD_SDK_LIB=lib, PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run([python, str(Path(__file__).parent / "gcloud_loaders.py"), kind, str(path)],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            return False, done.stderr.strip()
        return True, json.loads(done.stdout)

    return load
