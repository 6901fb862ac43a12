"""The manifests call only what the binary has: every `sapphire` subcommand and flag that a
container runs is checked against the built binary's own `--help`.

The binary is $SAPPHIRE_BIN, else the newer of target/debug/sapphire and
target/release/sapphire. scripts/test.sh builds it before it runs scripts/deploy-check.sh; run
alone without a build (or with a build older than the sources), these tests are skipped and
say so, rather than judge the manifests by a stale --help.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

import policy
from conftest import REPO

ENVS = ["dev", "gke"]

# Subcommands the manifests call that the binary may not have yet, each with the reason. While
# one is missing from --help its test is an expected failure (reported as xfail, not hidden);
# once the binary has it, its flags are checked like any other, and the entry should go.
PENDING: dict[str, str] = {}

# The sources whose change can change --help: a binary older than any of them is stale.
SOURCES = ("src", "gateway/src", "agents/src", "persistence/src", "core/src")


def binary() -> Path | None:
    given = os.environ.get("SAPPHIRE_BIN")
    if given:
        return Path(given)
    # The debug binary is what the test suite builds (scripts/test.sh runs this after the
    # tests); a release binary left by a benchmark may be older in content though newer on disk.
    for p in (REPO / "target/debug/sapphire", REPO / "target/release/sapphire"):
        if p.is_file():
            return p
    return None


def newest_source() -> tuple[float, Path]:
    files = [p for d in SOURCES for p in (REPO / d).rglob("*.rs")]
    files += [REPO / "Cargo.toml", REPO / "Cargo.lock"]
    return max((p.stat().st_mtime, p) for p in files if p.exists())


@pytest.fixture(scope="module")
def sapphire() -> Path:
    path = binary()
    if path is None or not path.is_file():
        pytest.skip("no built sapphire binary (cargo build --bin sapphire, or set SAPPHIRE_BIN)")
    if "SAPPHIRE_BIN" not in os.environ:
        mtime, newest = newest_source()
        if path.stat().st_mtime < mtime:
            pytest.skip(f"{path.relative_to(REPO)} is older than {newest.relative_to(REPO)}: rebuild it "
                        "(cargo build --bin sapphire) so that its --help is the current one")
    return path


@cache
def help_text(path: Path, *subcommand: str) -> str | None:
    """--help of the binary or of one subcommand; None when the subcommand does not exist."""
    done = subprocess.run([str(path), *subcommand, "--help"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    return done.stdout


def subcommands(text: str) -> set[str]:
    """The `Commands:` section of clap's help."""
    section = text.split("Commands:", 1)[1].split("\n\n", 1)[0] if "Commands:" in text else ""
    return {m.group(1) for m in re.finditer(r"^\s{2}([a-z][a-z0-9-]*)\b", section, re.M)} - {"help"}


def long_flags(text: str) -> set[str]:
    """The long options of a subcommand's help (`--journal <JOURNAL>`, `-h, --help`)."""
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", text, re.M))


def manifest_calls(environments) -> dict[str, list[tuple[str, list[str]]]]:
    """subcommand -> [(where, args)] for every container, init containers included, that runs
    the Sapphire image."""
    calls: dict[str, list[tuple[str, list[str]]]] = {}
    for env in ENVS:
        for doc, spec in policy.workloads(environments[env]):
            for c in policy.all_containers(spec):
                if "sapphire" not in str(c.get("image", "")).rsplit("/", 1)[-1]:
                    continue
                args = [str(a) for a in c.get("args") or []]
                where = f"{env} {policy.name_of(doc)} container {c.get('name')}"
                calls.setdefault(args[0] if args else "", []).append((where, args))
    return calls


def test_every_sapphire_container_names_a_subcommand(environments):
    calls = manifest_calls(environments)
    assert "" not in calls, f"containers that rely on the image's CMD: {calls.get('')}"
    assert set(calls) <= policy.SAPPHIRE_SUBCOMMANDS, set(calls) - policy.SAPPHIRE_SUBCOMMANDS
    assert set(PENDING) <= policy.SAPPHIRE_SUBCOMMANDS


def called_subcommands() -> list[str]:
    # Parametrized from the sources, not the renders (collection happens before fixtures):
    # every subcommand a workload may call; those no manifest calls are skipped.
    return sorted(policy.SAPPHIRE_SUBCOMMANDS)


@pytest.mark.parametrize("subcommand", called_subcommands())
def test_the_binary_has_each_called_subcommand_and_flag(environments, sapphire, subcommand):
    calls = manifest_calls(environments).get(subcommand)
    if not calls:
        pytest.skip(f"no manifest runs `sapphire {subcommand}`")
    top = help_text(sapphire, )
    assert top is not None, f"{sapphire} --help failed"
    listed = subcommands(top)
    assert listed, f"no Commands: section in {sapphire} --help"
    text = help_text(sapphire, subcommand)
    if text is None:
        if subcommand in PENDING:
            pytest.xfail(f"`sapphire {subcommand}` is not in this build yet: {PENDING[subcommand]}; "
                         f"called by {[w for w, _ in calls]}")
        pytest.fail(f"`sapphire {subcommand}` does not exist (the binary has {sorted(listed)}), "
                    f"but {[w for w, _ in calls]} run it")
    flags = long_flags(text)
    for where, args in calls:
        for arg in args[1:]:
            if not arg.startswith("--"):
                continue
            flag = arg.split("=", 1)[0]
            assert flag in flags, f"{where}: `sapphire {subcommand} {flag}` is not an option (it has {sorted(flags)})"
    if subcommand in policy.SUBCOMMANDS_WITHOUT_HTTP:
        assert "--http-bind" not in flags, (f"`sapphire {subcommand}` has --http-bind now: drop it from "
                                            "policy.SUBCOMMANDS_WITHOUT_HTTP and give its containers HTTP probes")
    elif any(policy.runs_sapphire({"args": a, "image": "sapphire"}) for _, a in calls):
        assert "--http-bind" in flags, f"`sapphire {subcommand}` serves no HTTP, yet its containers are probed over HTTP"


def test_help_parsing_can_fail():
    """The parsers find what clap prints, and nothing else."""
    top = "Usage: sapphire <COMMAND>\n\nCommands:\n  run      Run\n  sink     Sink\n  help     Print\n\nOptions:\n  -h, --help\n"
    assert subcommands(top) == {"run", "sink"}
    sub = ("Options:\n      --journal <JOURNAL>            The output journal\n"
           "      --database-url <DATABASE_URL>  Postgres URL [env: DATABASE_URL]\n  -h, --help  Print help\n")
    assert long_flags(sub) == {"--journal", "--database-url", "--help"}
    assert "--http-bind" not in long_flags(sub)
