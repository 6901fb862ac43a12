"""The deployment policy: checks over rendered Kubernetes manifests.

Every check takes the documents of one environment (all of its renders together, e.g. the GKE
overlay plus its migration Job) and returns a list of violations, one readable sentence each;
an empty list means the policy holds. The tests run every check over the real renders and
over deliberately broken copies, so each check is known to be able to fail.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}

# The Cloud SQL Auth Proxy v2 flags every proxy sidecar must carry (issue 10).
PROXY_REQUIRED_FLAGS = (
    "--health-check",
    "--http-address=0.0.0.0",
    "--exit-zero-on-sigterm",
    "--structured-logs",
    "--private-ip",
)
PROXY_IMAGE = "gcr.io/cloud-sql-connectors/cloud-sql-proxy:"
PROXY_DEFAULT_HTTP_PORT = 9090

# Fields of a Job's spec. Under spec.template.spec they are either refused by the API server
# (backoffLimit, ttlSecondsAfterFinished, ...) or, for activeDeadlineSeconds, silently mean
# something else (a per-pod deadline).
JOB_SPEC_FIELDS = (
    "backoffLimit",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "completions",
    "parallelism",
    "podFailurePolicy",
    "backoffLimitPerIndex",
)
JOB_REQUIRED_FIELDS = ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")

# The subcommands a workload may run. deploy/tests/test_binary.py checks every one that the
# manifests call, with its flags, against the built binary's own --help.
SAPPHIRE_SUBCOMMANDS = {"run", "core", "agents", "gateway", "sink", "migrate", "replay", "report"}
# Subcommands that serve no HTTP (no --http-bind; test_binary.py checks that against --help):
# their containers cannot have HTTP probes, and the kubelet's restart on exit is their liveness.
SUBCOMMANDS_WITHOUT_HTTP = {"migrate"}
# Where `sapphire run`/`core` writes its output journal, under SAPPHIRE_DATA_DIR.
OUTPUT_JOURNAL = "journal/output"
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"
# Accounts of pods that call no Google API, so they get no Google identity at all: Alertmanager
# (it talks to Telegram only).
NO_GOOGLE_IDENTITY = {"sapphire-alertmanager"}
GSA_EMAIL = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]@([a-z][-a-z0-9]{4,28}[a-z0-9])\.iam\.gserviceaccount\.com$")


# ---------------------------------------------------------------------------------------------
# Walking the documents


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def namespace_of(doc: dict) -> str | None:
    return (doc.get("metadata") or {}).get("namespace")


def pod_template(doc: dict) -> dict | None:
    """The pod template (metadata + spec) of a workload, or None."""
    kind = doc.get("kind")
    if kind in POD_TEMPLATE_KINDS:
        return (doc.get("spec") or {}).get("template")
    if kind == "CronJob":
        return ((doc.get("spec") or {}).get("jobTemplate") or {}).get("spec", {}).get("template")
    if kind == "Pod":
        return {"metadata": doc.get("metadata") or {}, "spec": doc.get("spec") or {}}
    return None


def workloads(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload document, pod spec) for every document that creates pods."""
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            yield doc, template.get("spec") or {}


def init_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or [])


def regular_containers(spec: dict) -> list[dict]:
    return list(spec.get("containers") or [])


def all_containers(spec: dict) -> list[dict]:
    return init_containers(spec) + regular_containers(spec) + list(spec.get("ephemeralContainers") or [])


def is_native_sidecar(container: dict) -> bool:
    return container.get("restartPolicy") == "Always"


def labels_of(doc: dict) -> dict:
    return dict((doc.get("metadata") or {}).get("labels") or {})


def find(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict | None:
    for doc in docs:
        if doc.get("kind") == kind and (doc.get("metadata") or {}).get("name") == name:
            if namespace is None or namespace_of(doc) in (namespace, None):
                return doc
    return None


def component_of(doc: dict) -> str | None:
    return labels_of(doc).get("app.kubernetes.io/component")


def env_value(docs: list[dict], doc: dict, container: dict, name: str) -> str | None:
    """The value of an environment variable, following configMapKeyRef into the render.
    None when unset or when it comes from a Secret (which the repository never holds)."""
    for var in container.get("env") or []:
        if var.get("name") != name:
            continue
        if "value" in var:
            return str(var["value"])
        ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            cm = find(docs, "ConfigMap", ref.get("name"), namespace_of(doc))
            if cm is not None:
                return (cm.get("data") or {}).get(ref.get("key"))
        return None
    return None


def has_env(container: dict, name: str) -> bool:
    return any(var.get("name") == name for var in container.get("env") or [])


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against a label set."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def resolve_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


# ---------------------------------------------------------------------------------------------
# Images


def image_problems(image: str) -> list[str]:
    """Why an image reference is not acceptable: no explicit registry, no pinned version,
    `latest`, or Bitnami."""
    problems = []
    if "bitnami" in image.lower():
        problems.append(f"{image}: Bitnami images are not used (they moved registries under the old platform)")
    first, _, rest = image.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        problems.append(f"{image}: no explicit registry (write docker.io/library/..., gcr.io/..., ...)")
    name, digest = (image.split("@", 1) + [""])[:2]
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if not tag and not digest:
        problems.append(f"{image}: no tag or digest (that means :latest)")
    if tag == "latest":
        problems.append(f"{image}: :latest is not a version")
    return problems


def check_images(docs: list[dict]) -> list[str]:
    out = []
    for doc, spec in workloads(docs):
        for c in all_containers(spec):
            out += [f"{name_of(doc)} container {c.get('name')}: {p}" for p in image_problems(str(c.get("image", "")))]
    return out


# ---------------------------------------------------------------------------------------------
# Postgres only through a native sidecar


def check_database_sidecar(docs: list[dict], sidecar: str) -> list[str]:
    """Every pod that reaches Postgres (DATABASE_URL) does so through a native sidecar named
    `sidecar` that starts (and is ready) before the container using it: the Cloud SQL Auth
    Proxy v2 on GKE, Postgres itself in the dev pod. No proxy runs as a regular container (it
    would race the app at start and keep a Job from ever finishing)."""
    out = []
    for doc, spec in workloads(docs):
        where = name_of(doc)
        for c in regular_containers(spec):
            if "cloud-sql-proxy" in str(c.get("image", "")) or c.get("name") == "cloud-sql-proxy":
                out.append(f"{where}: the Cloud SQL proxy runs as a regular container; it must be a native sidecar "
                           "(initContainers with restartPolicy: Always)")
        users = [c for c in all_containers(spec) if has_env(c, "DATABASE_URL")]
        if not users:
            continue
        inits = init_containers(spec)
        index = next((i for i, c in enumerate(inits) if c.get("name") == sidecar), None)
        if index is None:
            out.append(f"{where}: reaches Postgres (DATABASE_URL) without the {sidecar} native sidecar in initContainers")
            continue
        side = inits[index]
        if not is_native_sidecar(side):
            out.append(f"{where}: init container {sidecar} lacks restartPolicy: Always (it would block the pod, not run beside it)")
        if not side.get("startupProbe"):
            out.append(f"{where}: {sidecar} has no startupProbe, so the app could start before the database is reachable")
        if not side.get("livenessProbe"):
            out.append(f"{where}: {sidecar} has no livenessProbe")
        for i, c in enumerate(inits):
            if has_env(c, "DATABASE_URL") and i < index:
                out.append(f"{where}: init container {c.get('name')} uses DATABASE_URL before {sidecar} has started")
        listen_port = 5432
        if sidecar == "cloud-sql-proxy":
            out += _check_proxy(where, side)
            listen_port = int(flag_value(side.get("args") or [], "--port") or 5432)
        for c in users:
            url = env_value(docs, doc, c, "DATABASE_URL")
            if url is None:
                continue
            m = re.match(r"^postgres(?:ql)?://(?:[^@/]*@)?([^:/?]+)(?::(\d+))?/", url)
            if not m or m.group(1) not in ("127.0.0.1", "localhost"):
                out.append(f"{where} container {c.get('name')}: DATABASE_URL does not point at the sidecar on 127.0.0.1 ({url})")
            elif int(m.group(2) or 5432) != listen_port:
                out.append(f"{where} container {c.get('name')}: DATABASE_URL port {m.group(2)} is not the sidecar's {listen_port}")
    return out


def _check_proxy(where: str, proxy: dict) -> list[str]:
    out = []
    args = [str(a) for a in proxy.get("args") or []] + [str(a) for a in proxy.get("command") or []]
    if not str(proxy.get("image", "")).startswith(PROXY_IMAGE + "2."):
        out.append(f"{where}: the proxy is not the Cloud SQL Auth Proxy v2 ({PROXY_IMAGE}2.x): {proxy.get('image')}")
    for flag in PROXY_REQUIRED_FLAGS:
        if flag not in args:
            out.append(f"{where}: the proxy lacks {flag}")
    http_port = int(flag_value(args, "--http-port") or PROXY_DEFAULT_HTTP_PORT)
    for probe, path in (("startupProbe", "/startup"), ("livenessProbe", "/liveness")):
        get = (proxy.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path:
            out.append(f"{where}: the proxy's {probe} must GET {path} (has {get.get('path')})")
        elif resolve_port(proxy, get.get("port")) != http_port:
            out.append(f"{where}: the proxy's {probe} probes port {get.get('port')}, not its --http-port {http_port}")
    return out


# ---------------------------------------------------------------------------------------------
# Jobs


def check_jobs(docs: list[dict]) -> list[str]:
    """Job-level fields live in the Job's spec, never in the pod template's spec; every Job has
    a retry limit, a deadline and a TTL; and it can finish by itself (helpers are native
    sidecars, the only regular container is the job's own)."""
    out = []
    for doc in docs:
        if doc.get("kind") != "Job":
            continue
        where = name_of(doc)
        spec = doc.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        for field in JOB_SPEC_FIELDS:
            if field in pod:
                out.append(f"{where}: {field} is under spec.template.spec; it belongs to the Job's spec")
        for field in JOB_REQUIRED_FIELDS:
            value = spec.get(field)
            if not isinstance(value, int) or value < 0 or (field != "backoffLimit" and value == 0):
                out.append(f"{where}: spec.{field} is missing or not a positive whole number ({value!r})")
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            out.append(f"{where}: restartPolicy must be Never or OnFailure")
        if spec.get("podFailurePolicy") and pod.get("restartPolicy") != "Never":
            out.append(f"{where}: podFailurePolicy needs restartPolicy: Never")
        if len(regular_containers(pod)) != 1:
            names = [c.get("name") for c in regular_containers(pod)]
            out.append(f"{where}: {len(names)} regular containers {names}; a Job finishes only when all of them exit, "
                       "so helpers must be native sidecars")
    return out


# ---------------------------------------------------------------------------------------------
# ServiceAccounts


def check_service_accounts(docs: list[dict], workload_identity: bool) -> list[str]:
    """Every pod names a ServiceAccount that the same environment creates, in its namespace;
    no pod mounts an API token; with Workload Identity every account maps to a Google one."""
    out = []
    accounts = {(namespace_of(d), d["metadata"]["name"]): d for d in docs if d.get("kind") == "ServiceAccount"}
    for doc, spec in workloads(docs):
        where = name_of(doc)
        sa = spec.get("serviceAccountName")
        if not sa or sa == "default":
            out.append(f"{where}: no serviceAccountName (the namespace's default account is shared by everything)")
        elif (namespace_of(doc), sa) not in accounts:
            out.append(f"{where}: ServiceAccount {sa} is not created by this environment's manifests, so the pod "
                       "would never be created")
        if spec.get("automountServiceAccountToken") is not False:
            out.append(f"{where}: automountServiceAccountToken must be false")
    for (_, name), sa in accounts.items():
        if sa.get("automountServiceAccountToken") is not False:
            out.append(f"ServiceAccount/{name}: automountServiceAccountToken must be false")
        if workload_identity and name not in NO_GOOGLE_IDENTITY:
            gsa = ((sa.get("metadata") or {}).get("annotations") or {}).get(WORKLOAD_IDENTITY_ANNOTATION, "")
            if not GSA_EMAIL.match(gsa):
                out.append(f"ServiceAccount/{name}: no valid {WORKLOAD_IDENTITY_ANNOTATION} annotation ({gsa!r})")
    return out


def workload_identity_projects(docs: list[dict]) -> set[str]:
    projects = set()
    for d in docs:
        if d.get("kind") == "ServiceAccount":
            gsa = ((d.get("metadata") or {}).get("annotations") or {}).get(WORKLOAD_IDENTITY_ANNOTATION, "")
            m = GSA_EMAIL.match(gsa)
            if m:
                projects.add(m.group(1))
    return projects


# ---------------------------------------------------------------------------------------------
# Core pods: Guaranteed QoS, whole CPUs = pinned cores


def example_config_keys() -> dict[str, set[str]]:
    """Every key of config/sapphire.example.toml by section, the commented-out ones included
    (they are documented keys whose default is computed)."""
    keys: dict[str, set[str]] = {}
    section = None
    for line in (REPO / "config" / "sapphire.example.toml").read_text().splitlines():
        m = re.match(r"^\[([\w.]+)\]", line)
        if m:
            section = m.group(1)
            keys.setdefault(section, set())
            continue
        m = re.match(r"^#?\s*(\w+)\s*=", line)
        if m and section:
            keys[section].add(m.group(1))
    return keys


def toml_key_problems(where: str, text: str) -> list[str]:
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [f"{where}: not valid TOML: {e}"]
    known = example_config_keys()
    out = []

    def check(section: str, values) -> None:
        if section not in known:
            out.append(f"{where}: section [{section}] is not in config/sapphire.example.toml (the binary refuses it)")
            return
        if not isinstance(values, dict):
            out.append(f"{where}: {section} is not a section")
            return
        for key, value in values.items():
            if isinstance(value, dict) and f"{section}.{key}" in known:
                check(f"{section}.{key}", value)  # a sub-table such as [agents.runtime]
            elif key not in known[section]:
                out.append(f"{where}: key {section}.{key} is not in config/sapphire.example.toml (the binary refuses it)")

    for section, values in parsed.items():
        check(section, values)
    return out


def check_config_files(docs: list[dict]) -> list[str]:
    """Every TOML file shipped in a ConfigMap uses only keys the binary knows."""
    out = []
    for doc in docs:
        if doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".toml"):
                    out += toml_key_problems(f"{name_of(doc)} {key}", text)
    return out


def parse_quantity_cpu(value) -> float | None:
    s = str(value)
    try:
        return float(s[:-1]) / 1000 if s.endswith("m") else float(s)
    except ValueError:
        return None


def mounted_config(docs: list[dict], doc: dict, spec: dict, container: dict) -> tuple[str, str] | None:
    """(where, text) of the TOML file SAPPHIRE_CONFIG names, found through the container's
    volume mounts and the pod's ConfigMap volumes."""
    path = env_value(docs, doc, container, "SAPPHIRE_CONFIG")
    if not path:
        return None
    for mount in container.get("volumeMounts") or []:
        mount_path = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(mount_path):
            continue
        key = path[len(mount_path):]
        for vol in spec.get("volumes") or []:
            if vol.get("name") == mount.get("name") and vol.get("configMap"):
                cm = find(docs, "ConfigMap", vol["configMap"]["name"], namespace_of(doc))
                if cm is not None and key in (cm.get("data") or {}):
                    return f"{name_of(cm)} {key}", cm["data"][key]
    return None


def pinned_cores(text: str) -> set[int]:
    engine = tomllib.loads(text).get("engine", {})
    cores = set(engine.get("engine_cores") or [])
    for key in ("journal_core", "edge_core"):
        if key in engine:
            cores.add(engine[key])
    return cores


def check_core_pinning(docs: list[dict]) -> list[str]:
    """A core pod has Guaranteed QoS (every container's requests equal its limits), a whole
    number of CPUs equal to the distinct cores its configuration pins, and lands on the
    latency pool."""
    out = []
    cores_found = 0
    for doc, spec in workloads(docs):
        if component_of(doc) != "core":
            continue
        cores_found += 1
        where = name_of(doc)
        for c in all_containers(spec):
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for r in ("cpu", "memory"):
                if r not in lim or str(req.get(r, lim.get(r))) != str(lim[r]):
                    out.append(f"{where} container {c.get('name')}: {r} requests {req.get(r)} != limits {lim.get(r)} "
                               "(not Guaranteed QoS)")
        engine = next((c for c in regular_containers(spec) if c.get("name") == "sapphire"), None)
        if engine is None:
            out.append(f"{where}: no container named sapphire")
            continue
        cpu = parse_quantity_cpu(((engine.get("resources") or {}).get("limits") or {}).get("cpu"))
        if cpu is None or cpu != int(cpu) or cpu < 1:
            out.append(f"{where}: CPU {cpu} is not a whole number, so the static CPU manager gives no exclusive cores")
            continue
        config = mounted_config(docs, doc, spec, engine)
        if config is None:
            out.append(f"{where}: SAPPHIRE_CONFIG does not name a file of a mounted ConfigMap")
            continue
        config_where, text = config
        out += toml_key_problems(config_where, text)
        cores = pinned_cores(text)
        if not tomllib.loads(text).get("engine", {}).get("engine_cores"):
            out.append(f"{config_where}: engine.engine_cores is not set: a core pod must pin its engine threads")
        if len(cores) != int(cpu):
            out.append(f"{where}: {int(cpu)} CPUs but {config_where} pins {len(cores)} distinct cores {sorted(cores)}")
        if max(cores, default=0) >= int(cpu):
            out.append(f"{config_where}: core numbers {sorted(cores)} do not fit {int(cpu)} CPUs (0..{int(cpu) - 1})")
        if (spec.get("nodeSelector") or {}).get("sapphire.dev/pool") != "latency":
            out.append(f"{where}: not pinned to the latency pool (nodeSelector sapphire.dev/pool: latency)")
        tolerations = spec.get("tolerations") or []
        if not any(t.get("key") == "sapphire.dev/pool" and t.get("value") == "latency" and t.get("effect") == "NoSchedule"
                   for t in tolerations):
            out.append(f"{where}: does not tolerate the latency pool's taint sapphire.dev/pool=latency:NoSchedule")
    return out if cores_found else ["no core workload (app.kubernetes.io/component: core) in the render"]


def check_core_shards(docs: list[dict]) -> list[str]:
    """Each core shard is one replica with its own, non-empty symbol set; no symbol belongs to
    two shards (two engines would both trade it)."""
    out = []
    owner: dict[str, str] = {}
    for doc, spec in workloads(docs):
        if component_of(doc) != "core":
            continue
        where = name_of(doc)
        if (doc.get("spec") or {}).get("replicas", 1) != 1:
            out.append(f"{where}: a core shard runs exactly one replica")
        engine = next((c for c in regular_containers(spec) if c.get("name") == "sapphire"), {})
        symbols = env_value(docs, doc, engine, "TRADING_SYMBOLS")
        listed = [s.strip().upper() for s in (symbols or "").split(",") if s.strip()]
        if not listed:
            out.append(f"{where}: TRADING_SYMBOLS is empty, which means every symbol")
        for s in listed:
            if s in owner:
                out.append(f"{where}: {s} is already traded by {owner[s]}")
            owner[s] = where
    return out


SHARD_ID = re.compile(r"^[a-z0-9-]{1,32}$")


def check_shard_ids(docs: list[dict]) -> list[str]:
    """Each core shard names its shard (SAPPHIRE_SHARD) as its label sapphire.dev/shard says,
    in the engine and in its sink alike, and no two cores name the same shard (their Postgres
    rows and Redis channels would mix); the gateway and the agents follow every core's shard
    (SAPPHIRE_SHARDS, default: the default shard `main`)."""
    out = []
    shards: dict[str, str] = {}
    for doc, spec in workloads(docs):
        if component_of(doc) != "core":
            continue
        where = name_of(doc)
        label = labels_of(doc).get("sapphire.dev/shard")
        named = set()
        for c in regular_containers(spec):
            if c.get("name") not in ("sapphire", "sink"):
                continue
            value = env_value(docs, doc, c, "SAPPHIRE_SHARD") or "main"
            if not SHARD_ID.match(value):
                out.append(f"{where}: container {c.get('name')}: SAPPHIRE_SHARD {value!r} is not 1-32 of a-z, 0-9, -")
            named.add(value)
        if len(named) != 1:
            out.append(f"{where}: the engine and the sink name different shards {sorted(named)}")
            continue
        shard = named.pop()
        if label is not None and label != shard:
            out.append(f"{where}: SAPPHIRE_SHARD {shard!r} differs from its label sapphire.dev/shard {label!r}")
        if shard in shards:
            out.append(f"{where}: shard {shard!r} is already {shards[shard]}'s")
        shards[shard] = where
    for doc, spec in workloads(docs):
        if component_of(doc) not in ("gateway", "agents"):
            continue
        engine = next((c for c in regular_containers(spec) if c.get("name") == "sapphire"), {})
        listed = env_value(docs, doc, engine, "SAPPHIRE_SHARDS")
        follows = {s.strip() for s in (listed or "").split(",") if s.strip()} or {
            env_value(docs, doc, engine, "SAPPHIRE_SHARD") or "main"}
        missing = sorted(set(shards) - follows)
        if missing:
            out.append(f"{name_of(doc)}: does not follow core shard(s) {missing} (SAPPHIRE_SHARDS)")
    return out


# ---------------------------------------------------------------------------------------------
# Secrets


SECRET_NAMES = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIALS)", re.I)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.I)


def check_no_secrets(docs: list[dict]) -> list[str]:
    """No Secret carries data in the repository; secret-looking variables come from
    secretKeyRef; no URL in a value or a ConfigMap embeds a password."""
    out = []
    for doc in docs:
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            out.append(f"{name_of(doc)}: a Secret with data is in the repository")
        if doc.get("kind") == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if URL_WITH_PASSWORD.search(str(value)):
                    out.append(f"{name_of(doc)} {key}: a URL with a password")
    for doc, spec in workloads(docs):
        for c in all_containers(spec):
            for var in c.get("env") or []:
                value = var.get("value")
                # A *_FILE variable names the file a mounted Secret is at, not the secret itself.
                names_a_file = var.get("name", "").endswith("_FILE") and str(value).startswith("/")
                if value is not None and SECRET_NAMES.search(var.get("name", "")) and not names_a_file:
                    out.append(f"{name_of(doc)} container {c.get('name')}: {var['name']} has a literal value; use secretKeyRef")
                if value is not None and URL_WITH_PASSWORD.search(str(value)):
                    out.append(f"{name_of(doc)} container {c.get('name')}: {var['name']} embeds a password")
    return out


# ---------------------------------------------------------------------------------------------
# Probes and security context


def runs_sapphire(container: dict) -> bool:
    args = container.get("args") or []
    return bool(args) and args[0] in SAPPHIRE_SUBCOMMANDS and "sapphire" in str(container.get("image", ""))


def serves_no_http(container: dict) -> bool:
    return runs_sapphire(container) and container["args"][0] in SUBCOMMANDS_WITHOUT_HTTP


def check_probes(docs: list[dict]) -> list[str]:
    """Long-running containers have readiness and liveness probes (Sapphire's on /readyz and
    /healthz); native sidecars have a startup and a liveness probe. A Sapphire subcommand that
    serves no HTTP (`migrate`) has no HTTP probe: one would fail forever and restart it."""
    out = []
    for doc, spec in workloads(docs):
        where = name_of(doc)
        for c in init_containers(spec):
            if is_native_sidecar(c):
                for probe in ("startupProbe", "livenessProbe"):
                    if not c.get(probe):
                        out.append(f"{where} sidecar {c.get('name')}: no {probe}")
        if doc.get("kind") not in LONG_RUNNING_KINDS:
            continue
        for c in regular_containers(spec):
            if serves_no_http(c):
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if (c.get(probe) or {}).get("httpGet"):
                        out.append(f"{where} container {c.get('name')}: {probe} is HTTP, but `sapphire {c['args'][0]}` "
                                   "serves no HTTP")
                continue
            # The sink beside an engine is "ready" while alive: its /readyz follows Postgres, and
            # a database that is away must not take the engine's pod out of its Service.
            ready_path = "/healthz" if runs_sapphire(c) and c["args"][0] == "sink" else "/readyz"
            for probe, path in (("readinessProbe", ready_path), ("livenessProbe", "/healthz")):
                p = c.get(probe)
                if not p:
                    out.append(f"{where} container {c.get('name')}: no {probe}")
                elif runs_sapphire(c) and ((p.get("httpGet") or {}).get("path") != path):
                    out.append(f"{where} container {c.get('name')}: {probe} must GET {path}")
    return out


def check_security_context(docs: list[dict]) -> list[str]:
    """Non-root, no privilege escalation, every capability dropped, read-only root filesystem,
    the runtime's default seccomp profile; no host namespaces."""
    out = []
    for doc, spec in workloads(docs):
        where = name_of(doc)
        pod = spec.get("securityContext") or {}
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host):
                out.append(f"{where}: {host} is on")
        if pod.get("runAsUser") == 0:
            out.append(f"{where}: the pod runs as root")
        for c in all_containers(spec):
            sc = c.get("securityContext") or {}
            cw = f"{where} container {c.get('name')}"
            if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
                out.append(f"{cw}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod.get("runAsUser")) == 0:
                out.append(f"{cw}: runs as root")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                out.append(f"{cw}: privileged")
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{cw}: readOnlyRootFilesystem is not true")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                out.append(f"{cw}: capabilities are not all dropped")
            if caps.get("add"):
                out.append(f"{cw}: adds capabilities {caps['add']}")
            seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                out.append(f"{cw}: seccompProfile is not RuntimeDefault")
    return out


# ---------------------------------------------------------------------------------------------
# Network policy, disruption budgets, autoscaling, references


def is_default_deny(doc: dict) -> bool:
    spec = doc.get("spec") or {}
    return (doc.get("kind") == "NetworkPolicy" and spec.get("podSelector") in ({}, None)
            and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or [])
            and not spec.get("ingress") and not spec.get("egress"))


def check_network_policies(docs: list[dict]) -> list[str]:
    """Each namespace with pods has a default-deny policy for both directions, and every pod is
    also selected by a policy of its own (its explicit allows)."""
    out = []
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    for ns in sorted({namespace_of(d) for d, _ in workloads(docs)}, key=str):
        if not any(is_default_deny(p) and namespace_of(p) == ns for p in policies):
            out.append(f"namespace {ns}: no default-deny NetworkPolicy (podSelector {{}}, Ingress and Egress, no rules)")
    for doc, _ in workloads(docs):
        labels = (pod_template(doc).get("metadata") or {}).get("labels") or {}
        own = [p for p in policies if namespace_of(p) == namespace_of(doc) and (p["spec"].get("podSelector") or {})
               and selector_matches(p["spec"]["podSelector"], labels)]
        if not own:
            out.append(f"{name_of(doc)}: no NetworkPolicy of its own selects its pods")
    return out


def check_disruption_and_scaling(docs: list[dict]) -> list[str]:
    """Every Deployment and StatefulSet is covered by a PodDisruptionBudget; a Deployment
    without a fixed replica count has an HPA, and one with an HPA has no replica count (an
    apply would reset the autoscaler's choice)."""
    out = []
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    hpas = [d for d in docs if d.get("kind") == "HorizontalPodAutoscaler"]
    for doc in docs:
        if doc.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        labels = (pod_template(doc).get("metadata") or {}).get("labels") or {}
        if not any(namespace_of(p) == namespace_of(doc) and selector_matches(p["spec"].get("selector"), labels) for p in pdbs):
            out.append(f"{name_of(doc)}: no PodDisruptionBudget selects its pods")
        scaled = [h for h in hpas if (h["spec"].get("scaleTargetRef") or {}).get("name") == doc["metadata"]["name"]
                  and h["spec"]["scaleTargetRef"].get("kind") == doc["kind"]]
        if doc["kind"] == "Deployment":
            if scaled and "replicas" in doc["spec"]:
                out.append(f"{name_of(doc)}: has an HPA and a replicas field")
            if not scaled and "replicas" not in doc["spec"]:
                out.append(f"{name_of(doc)}: neither a replica count nor an HPA")
    for h in hpas:
        ref = h["spec"].get("scaleTargetRef") or {}
        if find(docs, ref.get("kind"), ref.get("name")) is None:
            out.append(f"{name_of(h)}: scales {ref.get('kind')}/{ref.get('name')}, which is not in the render")
    return out


def check_references(docs: list[dict]) -> list[str]:
    """Every ConfigMap a pod reads (volume, configMapKeyRef) is in the environment's render,
    with the key it asks for. Secrets are created in the cluster, never in the repository,
    so secretKeyRef is not followed."""
    out = []
    for doc, spec in workloads(docs):
        ns = namespace_of(doc)
        for vol in spec.get("volumes") or []:
            if vol.get("configMap") and find(docs, "ConfigMap", vol["configMap"]["name"], ns) is None:
                out.append(f"{name_of(doc)}: volume {vol['name']} names ConfigMap {vol['configMap']['name']}, not in the render")
        for c in all_containers(spec):
            for var in c.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
                if not ref:
                    continue
                cm = find(docs, "ConfigMap", ref["name"], ns)
                if cm is None or ref["key"] not in (cm.get("data") or {}):
                    out.append(f"{name_of(doc)} container {c.get('name')}: {var['name']} reads "
                               f"{ref['name']}/{ref['key']}, not in the render")
    return out


# ---------------------------------------------------------------------------------------------
# The sink beside its engine


def volume_at(container: dict, path: str) -> tuple[str, str, bool] | None:
    """(volume name, mount path, read-only) of the mount that holds `path` in a container."""
    best = None
    for m in container.get("volumeMounts") or []:
        mount = m["mountPath"].rstrip("/")
        if (path == mount or path.startswith(mount + "/")) and (best is None or len(mount) > len(best[1])):
            best = (m["name"], mount, bool(m.get("readOnly")))
    return best


def check_core_sink(docs: list[dict]) -> list[str]:
    """The Postgres sink runs in each core pod, beside the engine whose output journal it reads:
    one `sapphire sink` container following SAPPHIRE_DATA_DIR/journal/output on the engine's own
    data volume, with DATABASE_URL, while the engine container has none (with it the engine
    would run a second, in-process sink). No sink runs anywhere else (a pod without the
    journal's volume has nothing to read)."""
    out = []
    for doc, spec in workloads(docs):
        where = name_of(doc)
        sinks = [c for c in regular_containers(spec) if runs_sapphire(c) and c["args"][0] == "sink"]
        if component_of(doc) != "core":
            out += [f"{where} container {c.get('name')}: runs `sapphire sink` away from any engine's journal" for c in sinks]
            continue
        engine = next((c for c in regular_containers(spec) if c.get("name") == "sapphire"), None)
        if engine is None:
            out.append(f"{where}: no engine container named sapphire")
            continue
        if has_env(engine, "DATABASE_URL"):
            out.append(f"{where}: the engine container has DATABASE_URL, so it would run a second, in-process sink")
        if len(sinks) != 1:
            out.append(f"{where}: {len(sinks)} `sapphire sink` containers; a core pod needs exactly one")
            continue
        sink = sinks[0]
        if not has_env(sink, "DATABASE_URL"):
            out.append(f"{where}: the sink container has no DATABASE_URL")
        data_dir = env_value(docs, doc, engine, "SAPPHIRE_DATA_DIR")
        if not data_dir:
            out.append(f"{where}: the engine has no SAPPHIRE_DATA_DIR")
            continue
        journal = data_dir.rstrip("/") + "/" + OUTPUT_JOURNAL
        followed = flag_value([str(a) for a in sink["args"]], "--journal")
        if followed is None or followed.rstrip("/") != journal:
            out.append(f"{where}: the sink follows {followed}, not the engine's output journal {journal}")
            continue
        engine_vol, sink_vol = volume_at(engine, journal), volume_at(sink, journal)
        if engine_vol is None or sink_vol is None or engine_vol[0] != sink_vol[0]:
            out.append(f"{where}: the sink does not see {journal} on the engine's volume "
                       f"(engine {engine_vol}, sink {sink_vol})")
        elif engine_vol[1] != sink_vol[1]:
            out.append(f"{where}: the sink mounts the data volume at {sink_vol[1]}, the engine at {engine_vol[1]}")
    return out
