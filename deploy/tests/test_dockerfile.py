"""The Dockerfile, checked statically: no Docker engine runs where these tests run, so the image
is never built here (Cloud Build builds it). What can be known without building is checked."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tomllib

import pytest

import policy
from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The stages, each FROM with the global ARGs' defaults substituted (`FROM ${RUST_IMAGE}`
    is checked as the image it defaults to; a FROM naming an ARG without a default keeps the
    `${...}`, which the image checks refuse)."""
    out: list[list[tuple[str, str]]] = []
    args: dict[str, str] = {}
    for ins in instructions(text):
        if ins[0] == "ARG" and not out:
            name, _, default = ins[1].partition("=")
            if default:
                args[name.strip()] = default.strip().strip('"')
        if ins[0] == "FROM":
            ins = (ins[0], re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ins[1]))
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def dockerfile_problems(text: str) -> list[str]:
    out = []
    st = stages(text)
    if len(st) < 2:
        out.append("not multi-stage: the toolchain would ship in the runtime image")
        return out
    for stage in st:
        image = stage[0][1].split()[0]
        out += [f"FROM {p}" for p in policy.image_problems(image)]
    builder, runtime = st[0], st[-1]
    runs = [args for ins, args in builder if ins == "RUN"]
    builds = [r for r in runs if "cargo build" in r]
    if not any("--release" in r and "--locked" in r for r in builds):
        out.append("no `cargo build --release --locked`: the lock file must decide dependency versions")
    # Dependency layer: the first cargo build runs before the sources are copied, after only
    # manifests and the lock file.
    first_build = next((i for i, (ins, args) in enumerate(builder) if ins == "RUN" and "cargo build" in args), None)
    copy_all = next((i for i, (ins, args) in enumerate(builder) if ins == "COPY" and args.split()[0] == "."), None)
    if first_build is None or copy_all is None or first_build > copy_all:
        out.append("no dependency layer: build the dependencies before `COPY . .`")
    else:
        for ins, args in builder[:first_build]:
            if ins == "COPY" and not all(src.endswith(("Cargo.toml", "Cargo.lock")) for src in args.split()[:-1]):
                out.append(f"COPY {args} before the dependency build: only manifests belong there")
    user = [args for ins, args in runtime if ins == "USER"]
    if not user or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user[-1]):
        out.append("the runtime stage has no numeric non-root USER")
    entry = [args for ins, args in runtime if ins == "ENTRYPOINT"]
    if not entry or not entry[-1].startswith("["):
        out.append("ENTRYPOINT is not in exec form (signals would go to a shell)")
    if not any(ins == "ENV" and "SAPPHIRE_DATA_DIR=" in args for ins, args in runtime):
        out.append("the runtime stage does not set SAPPHIRE_DATA_DIR (the only writable place)")
    # The binary's own default is loopback (right on a laptop, unreachable through
    # `docker run -p 8080:8080`): the image moves the default to every interface.
    if not any(ins == "ENV" and re.search(r"\bSAPPHIRE_HTTP_BIND_DEFAULT=0\.0\.0\.0:8080\b", args) for ins, args in runtime):
        out.append("the runtime stage does not set SAPPHIRE_HTTP_BIND_DEFAULT=0.0.0.0:8080 (the API would listen on the "
                   "container's loopback only)")
    if any(ins == "ENV" and re.search(r"\bSAPPHIRE_HTTP_BIND=", args) for ins, args in runtime):
        out.append("the runtime stage sets SAPPHIRE_HTTP_BIND: it would override a configuration file's [api] bind; "
                   "set SAPPHIRE_HTTP_BIND_DEFAULT")
    if not any(ins == "EXPOSE" and "8080" in args.split() for ins, args in runtime):
        out.append("the runtime stage does not EXPOSE 8080 (the API's port)")
    for ins, args in builder + runtime:
        if ins == "ADD":
            out.append(f"ADD {args}: use COPY (ADD fetches URLs and unpacks archives)")
    return out


def workspace_targets() -> tuple[list[str], list[str]]:
    """(manifest paths, source files a manifest requires) of the whole workspace."""
    root = tomllib.loads((REPO / "Cargo.toml").read_text())
    members = root["workspace"]["members"]
    manifests = ["Cargo.toml"] + [f"{m}/Cargo.toml" for m in members]
    required = ["src/main.rs"] if root.get("package") else []
    for m in members:
        crate = tomllib.loads((REPO / m / "Cargo.toml").read_text())
        required.append(f"{m}/src/lib.rs" if (REPO / m / "src/lib.rs").exists() else f"{m}/src/main.rs")
        for kind, folder in (("bench", "benches"), ("bin", "src/bin"), ("example", "examples"), ("test", "tests")):
            for target in crate.get(kind, []):
                required.append(f"{m}/{target.get('path', folder + '/' + target['name'] + '.rs')}")
    return manifests, required


def test_dockerfile_policy():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_runtime_is_distroless_nonroot():
    runtime = stages(DOCKERFILE.read_text())[-1]
    assert runtime[0][1].startswith("gcr.io/distroless/cc-debian12:nonroot")


def test_builder_is_rust_185_or_newer():
    image = stages(DOCKERFILE.read_text())[0][0][1].split()[0]
    m = re.match(r"docker\.io/library/rust:1\.(\d+)", image)
    assert m and int(m.group(1)) >= 85, image


def test_dependency_layer_covers_every_manifest_and_target(tmp_path):
    """Plays the dependency layer as the image build would: only the COPYed manifests in an
    empty directory, then the stand-in RUN under /bin/sh with Debian's awk (mawk), a fake
    cargo checking that every source file the manifests require exists when it runs. A new
    crate or target that the Dockerfile does not cover fails here, naming the file."""
    text = DOCKERFILE.read_text()
    manifests, required = workspace_targets()
    builder = stages(text)[0]
    first_build = next(i for i, (ins, args) in enumerate(builder) if ins == "RUN" and "cargo build" in args)
    copied = [src for ins, args in builder[:first_build] if ins == "COPY" for src in args.split()[:-1]]
    for m in manifests:
        assert m in copied, f"Dockerfile: add `COPY {m} {m}` before the dependency build"
    src = tmp_path / "src"
    for m in copied:
        (src / m).parent.mkdir(parents=True, exist_ok=True)
        (src / m).write_bytes((REPO / m).read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    awk = shutil.which("mawk") or shutil.which("awk")
    (bin_dir / "awk").symlink_to(awk)
    checks = "\n".join(f'[ -f "{path}" ] || {{ echo "Dockerfile: no stand-in for {path}" >&2; exit 1; }}' for path in required)
    (bin_dir / "cargo").write_text(f"#!/bin/sh\n{checks}\necho cargo-ran > {tmp_path}/cargo-ran\n")
    (bin_dir / "cargo").chmod(0o755)
    shell = shutil.which("dash") or "/bin/sh"
    script = builder[first_build][1].replace("/tmp/", f"{tmp_path}/")
    done = subprocess.run([shell, "-c", script], cwd=src, capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    missing = [line for line in done.stderr.splitlines() if line.startswith("Dockerfile: no stand-in")]
    assert done.returncode == 0, "\n".join(missing) or done.stderr[-2000:]
    assert (tmp_path / "cargo-ran").exists()
    left = [p for p in required if (src / p).exists()]
    assert left == [], f"stand-ins left behind for COPY . . to trip over: {left}"
    assert set((tmp_path / "stand-ins").read_text().split()) == set(required)


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1))
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_reads_and_drops_the_rest():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    manifests, required = workspace_targets()
    for path in manifests + required + ["Cargo.lock"]:
        assert not dockerignored(path, patterns), f".dockerignore drops {path}, which the build needs"
    for path in ["target/release/sapphire", ".git/HEAD", "deploy/base/kustomization.yaml", "data/journal"]:
        assert dockerignored(path, patterns), f".dockerignore keeps {path} in the build context"


@pytest.mark.parametrize("change, expected", [
    (lambda t: t.replace("rust:1.95-bookworm", "rust:latest"), ":latest"),
    (lambda t: t.replace("docker.io/library/rust", "rust"), "no explicit registry"),
    (lambda t: t.replace("ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm", "ARG RUST_IMAGE"), "no explicit registry"),
    (lambda t: t.replace("--release --locked --bin sapphire;", "--release --bin sapphire;"), "--locked"),
    (lambda t: t.replace("USER 65532:65532", "USER root"), "numeric non-root USER"),
    (lambda t: t.replace('ENTRYPOINT ["/usr/local/bin/sapphire"]', "ENTRYPOINT /usr/local/bin/sapphire"), "exec form"),
    (lambda t: t.replace("COPY core/Cargo.toml core/Cargo.toml", "COPY core core"), "only manifests"),
    (lambda t: t.replace("SAPPHIRE_HTTP_BIND_DEFAULT=0.0.0.0:8080", "SAPPHIRE_HTTP_BIND_DEFAULT=127.0.0.1:8080"),
     "SAPPHIRE_HTTP_BIND_DEFAULT"),
    (lambda t: t.replace("SAPPHIRE_HTTP_BIND_DEFAULT=0.0.0.0:8080", "SAPPHIRE_HTTP_BIND=0.0.0.0:8080"), "override"),
    (lambda t: t.replace("EXPOSE 8080\n", ""), "EXPOSE 8080"),
])
def test_each_dockerfile_check_can_fail(change, expected):
    broken = change(DOCKERFILE.read_text())
    assert broken != DOCKERFILE.read_text()
    assert any(expected in p for p in dockerfile_problems(broken)), dockerfile_problems(broken)
