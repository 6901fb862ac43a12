"""The deployment policy over every rendered overlay, and proof that each check can fail."""

from __future__ import annotations

import copy

import pytest

import policy
from conftest import kustomize, load_docs

ENVS = ["dev", "gke"]
# The native sidecar that stands between a pod and Postgres in each environment.
DATABASE_SIDECAR = {"dev": "postgres", "gke": "cloud-sql-proxy"}


def assert_holds(violations: list[str]) -> None:
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("env", ENVS)
def test_postgres_is_reached_only_through_a_native_sidecar(environments, env):
    assert_holds(policy.check_database_sidecar(environments[env], DATABASE_SIDECAR[env]))


def test_every_gke_pod_that_reaches_postgres_has_the_proxy(environments):
    # The check above passes vacuously if nothing uses DATABASE_URL; the core pods (their sink
    # containers) and the migration must do so on GKE, and only those containers.
    users = {(policy.name_of(d), c["name"]) for d, spec in policy.workloads(environments["gke"])
             for c in policy.all_containers(spec) if policy.has_env(c, "DATABASE_URL")}
    assert users == {("StatefulSet/sapphire-core-a", "sink"), ("StatefulSet/sapphire-core-b", "sink"),
                     ("Job/sapphire-migrate", "migrate")}


def test_the_sink_runs_beside_each_engine(environments):
    assert_holds(policy.check_core_sink(environments["gke"]))
    assert not any(d["kind"] == "Deployment" and policy.component_of(d) == "sink" for d in environments["gke"])


def test_dev_migrates_before_the_engine_starts(environments):
    """`sapphire run` refuses a schema that is behind and never migrates: the dev pod runs
    `sapphire migrate` as a plain init container after the postgres sidecar is up, on the URL
    the engine uses."""
    (doc,) = [d for d in environments["dev"] if d["kind"] == "Deployment"]
    spec = doc["spec"]["template"]["spec"]
    inits = spec["initContainers"]
    names = [c["name"] for c in inits]
    assert "migrate" in names and names.index("postgres") < names.index("migrate"), names
    migrate = inits[names.index("migrate")]
    assert migrate["args"] == ["migrate"] and not policy.is_native_sidecar(migrate)
    engine = spec["containers"][0]
    assert engine["args"][0] == "run"
    assert (policy.env_value(environments["dev"], doc, migrate, "DATABASE_URL")
            == policy.env_value(environments["dev"], doc, engine, "DATABASE_URL"))


@pytest.mark.parametrize("env", ENVS)
def test_job_fields_are_in_the_job_spec(environments, env):
    assert_holds(policy.check_jobs(environments[env]))


def test_there_is_a_migration_job(environments):
    jobs = [d for d in environments["gke"] if d["kind"] == "Job"]
    assert [policy.name_of(j) for j in jobs] == ["Job/sapphire-migrate"]
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


@pytest.mark.parametrize("env", ENVS)
def test_every_service_account_resolves(environments, env):
    assert_holds(policy.check_service_accounts(environments[env], workload_identity=(env == "gke")))


def test_workload_identity_uses_one_project(environments):
    assert len(policy.workload_identity_projects(environments["gke"])) == 1


def test_core_is_guaranteed_with_whole_cpus_equal_to_its_pinned_cores(environments):
    assert_holds(policy.check_core_pinning(environments["gke"]))


def test_core_shards_own_disjoint_symbols(environments):
    assert_holds(policy.check_core_shards(environments["gke"]))


@pytest.mark.parametrize("env", ENVS)
def test_every_core_names_its_own_shard_and_the_gateway_and_agents_follow_all(environments, env):
    assert_holds(policy.check_shard_ids(environments[env]))


def set_env(container: dict, name: str, value: str | None) -> None:
    env = [v for v in container.get("env") or [] if v.get("name") != name]
    container["env"] = env + ([{"name": name, "value": value}] if value is not None else [])


def test_shard_ids_that_would_mix_two_cores_rows_are_refused(environments):
    docs = copy.deepcopy(environments["gke"])
    set_env(core_container(docs, "b", "sink"), "SAPPHIRE_SHARD", "a")
    problems = policy.check_shard_ids(docs)
    assert any("engine and the sink name different shards" in p for p in problems), problems
    docs = copy.deepcopy(environments["gke"])
    for c in ("sapphire", "sink"):
        set_env(core_container(docs, "b", c), "SAPPHIRE_SHARD", "a")
    problems = policy.check_shard_ids(docs)
    assert any("already" in p for p in problems) and any("label" in p for p in problems), problems
    docs = copy.deepcopy(environments["gke"])
    gateway = next(c for c in pod_spec(docs, "Deployment", "sapphire-gateway")["containers"] if c["name"] == "sapphire")
    set_env(gateway, "SAPPHIRE_SHARDS", "a")
    problems = policy.check_shard_ids(docs)
    assert any("does not follow core shard(s) ['b']" in p for p in problems), problems


@pytest.mark.parametrize("env", ENVS)
def test_configuration_files_use_known_keys(environments, env):
    assert_holds(policy.check_config_files(environments[env]))


@pytest.mark.parametrize("env", ENVS)
def test_no_secret_data(environments, env):
    assert_holds(policy.check_no_secrets(environments[env]))


@pytest.mark.parametrize("env", ENVS)
def test_images_have_a_registry_and_a_version(environments, env):
    assert_holds(policy.check_images(environments[env]))


@pytest.mark.parametrize("env", ENVS)
def test_probes(environments, env):
    assert_holds(policy.check_probes(environments[env]))


@pytest.mark.parametrize("env", ENVS)
def test_security_context_is_hardened(environments, env):
    assert_holds(policy.check_security_context(environments[env]))


@pytest.mark.parametrize("env", ENVS)
def test_network_policy_denies_by_default(environments, env):
    assert_holds(policy.check_network_policies(environments[env]))


def test_disruption_budgets_and_autoscalers(environments):
    assert_holds(policy.check_disruption_and_scaling(environments["gke"]))
    hpa_targets = {d["spec"]["scaleTargetRef"]["name"] for d in environments["gke"] if d["kind"] == "HorizontalPodAutoscaler"}
    assert hpa_targets == {"sapphire-gateway"}
    # Each agent id has one producer: one agents replica, and the cores run no in-process agents.
    agents = find_workload(environments["gke"], "Deployment", "sapphire-agents")
    assert agents["spec"]["replicas"] == 1


@pytest.mark.parametrize("env", ENVS)
def test_configmap_references_resolve(environments, env):
    assert_holds(policy.check_references(environments[env]))


def test_sapphire_subcommands_per_workload(environments):
    """The design's roles: core pods run `sapphire core` and `sapphire sink`, the Job
    `sapphire migrate`, dev `sapphire migrate` then `sapphire run`."""
    roles = {}
    for env in ENVS:
        for doc, spec in policy.workloads(environments[env]):
            for c in policy.init_containers(spec) + policy.regular_containers(spec):
                if policy.runs_sapphire(c):
                    roles[(env, policy.component_of(doc), c["name"])] = c["args"][0]
    assert roles == {
        ("dev", "dev", "migrate"): "migrate",
        ("dev", "dev", "sapphire"): "run",
        ("gke", "core", "sapphire"): "core",
        ("gke", "core", "sink"): "sink",
        ("gke", "agents", "sapphire"): "agents",
        ("gke", "gateway", "sapphire"): "gateway",
        ("gke", "migrate", "migrate"): "migrate",
    }


def test_overlays_run_the_same_image_everywhere(renders):
    """The main render and the migration Job run one image name, so one digest covers both."""
    names = set()
    for r in ("gke", "gke-migrate"):
        for doc, spec in policy.workloads(renders[r]):
            for c in policy.all_containers(spec):
                if "/sapphire/sapphire" in c["image"]:
                    names.add(c["image"].split(":")[0].split("@")[0])
    assert len(names) == 1, names


# ---------------------------------------------------------------------------------------------
# Each check catches what it exists for: broken copies of the real GKE render.


def find_workload(docs, kind, name):
    doc = policy.find(docs, kind, name)
    assert doc is not None, f"{kind}/{name} not in the render"
    return doc


def pod_spec(docs, kind, name):
    return find_workload(docs, kind, name)["spec"]["template"]["spec"]


def move_backoff_limit_under_the_pod(docs):
    job = find_workload(docs, "Job", "sapphire-migrate")
    job["spec"]["template"]["spec"]["backoffLimit"] = job["spec"].pop("backoffLimit")


def proxy_as_regular_container(docs):
    spec = pod_spec(docs, "Job", "sapphire-migrate")
    proxy = spec["initContainers"].pop(0)
    proxy.pop("restartPolicy")
    spec["containers"].append(proxy)


def core_container(docs, shard, name):
    return next(c for c in pod_spec(docs, "StatefulSet", f"sapphire-core-{shard}")["containers"] if c["name"] == name)


def core_proxy(docs, shard="a"):
    return next(c for c in pod_spec(docs, "StatefulSet", f"sapphire-core-{shard}")["initContainers"]
                if c["name"] == "cloud-sql-proxy")


def proxy_without_exit_zero(docs):
    core_proxy(docs)["args"].remove("--exit-zero-on-sigterm")


def proxy_without_health_check(docs):
    core_proxy(docs, "b")["args"].remove("--health-check")


def proxy_probe_on_wrong_path(docs):
    core_proxy(docs)["startupProbe"]["httpGet"]["path"] = "/readiness"


def proxy_probe_on_wrong_port(docs):
    core_proxy(docs)["livenessProbe"]["httpGet"]["port"] = 9090


def proxy_as_plain_init_container(docs):
    core_proxy(docs).pop("restartPolicy")


def core_without_proxy(docs):
    spec = pod_spec(docs, "StatefulSet", "sapphire-core-b")
    spec["initContainers"] = [c for c in spec["initContainers"] if c["name"] != "cloud-sql-proxy"]


def fractional_cpu_proxy(docs):
    core_proxy(docs)["resources"]["requests"]["cpu"] = "100m"


def engine_with_database_url(docs):
    sink = core_container(docs, "a", "sink")
    core_container(docs, "a", "sapphire")["env"].append(next(v for v in sink["env"] if v["name"] == "DATABASE_URL"))


def sink_follows_another_journal(docs):
    core_container(docs, "b", "sink")["args"] = ["sink", "--journal=/var/lib/sapphire/journal/input"]


def sink_on_its_own_volume(docs):
    spec = pod_spec(docs, "StatefulSet", "sapphire-core-a")
    spec["volumes"].append({"name": "scratch", "emptyDir": {}})
    next(m for m in core_container(docs, "a", "sink")["volumeMounts"] if m["name"] == "data")["name"] = "scratch"


def sink_in_a_deployment_of_its_own(docs):
    gateway = find_workload(docs, "Deployment", "sapphire-gateway")
    gateway["spec"]["template"]["spec"]["containers"][0]["args"] = ["sink", "--journal=/var/lib/sapphire/journal/output"]


def sink_without_a_liveness_probe(docs):
    core_container(docs, "a", "sink").pop("livenessProbe")


def sink_user_is_not_the_pods_account(docs):
    cm = policy.find(docs, "ConfigMap", "sapphire-cloudsql")
    cm["data"]["core-database-url"] = cm["data"]["core-database-url"].replace("sapphire-core%40", "sapphire-sink%40")


def drop_migrate_service_account(docs):
    docs.remove(find_workload(docs, "ServiceAccount", "sapphire-migrate"))


def five_cpus_for_six_cores(docs):
    res = pod_spec(docs, "StatefulSet", "sapphire-core-a")["containers"][0]["resources"]
    res["requests"]["cpu"] = res["limits"]["cpu"] = "5"


def burstable_core(docs):
    pod_spec(docs, "StatefulSet", "sapphire-core-b")["containers"][0]["resources"]["requests"]["memory"] = "4Gi"


def config_pins_another_core(docs):
    spec = pod_spec(docs, "StatefulSet", "sapphire-core-a")
    cm = policy.find(docs, "ConfigMap", spec["volumes"][0]["configMap"]["name"])
    cm["data"]["core.toml"] = cm["data"]["core.toml"].replace("engine_cores = [1, 2, 3, 4]", "engine_cores = [1, 2, 3, 4, 6]")


def unknown_config_key(docs):
    spec = pod_spec(docs, "StatefulSet", "sapphire-core-a")
    cm = policy.find(docs, "ConfigMap", spec["volumes"][0]["configMap"]["name"])
    cm["data"]["core.toml"] += "\n[risk]\nmax_leverage = 3\n"


def shards_share_a_symbol(docs):
    env = pod_spec(docs, "StatefulSet", "sapphire-core-b")["containers"][0]["env"]
    next(v for v in env if v["name"] == "TRADING_SYMBOLS")["value"] = "SOLUSDT,BTCUSDT"


def secret_with_data(docs):
    docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sapphire-redis", "namespace": "sapphire"},
                 "stringData": {"url": "redis://:hunter2@10.100.0.3:6379"}})


def password_in_a_url(docs):
    cm = policy.find(docs, "ConfigMap", "sapphire-cloudsql")
    cm["data"]["core-database-url"] = "postgres://sink:hunter2@127.0.0.1:5432/sapphire"


def latest_image(docs):
    pod_spec(docs, "Deployment", "sapphire-gateway")["containers"][0]["image"] = "docker.io/library/redis:latest"


def bitnami_image(docs):
    pod_spec(docs, "Deployment", "sapphire-gateway")["containers"][0]["image"] = "docker.io/bitnami/redis:7.2.4"


def image_without_registry(docs):
    pod_spec(docs, "Deployment", "sapphire-gateway")["containers"][0]["image"] = "redis:7.2.4"


def no_readiness_probe(docs):
    pod_spec(docs, "Deployment", "sapphire-agents")["containers"][0].pop("readinessProbe")


def liveness_on_the_wrong_path(docs):
    pod_spec(docs, "Deployment", "sapphire-agents")["containers"][0]["livenessProbe"]["httpGet"]["path"] = "/readyz"


def writable_root_filesystem(docs):
    core_container(docs, "a", "sink")["securityContext"]["readOnlyRootFilesystem"] = False


def writable_root_filesystem_proxy(docs):
    core_proxy(docs, "b")["securityContext"]["readOnlyRootFilesystem"] = False


def capabilities_kept(docs):
    pod_spec(docs, "StatefulSet", "sapphire-core-a")["containers"][0]["securityContext"].pop("capabilities")


def no_default_deny(docs):
    docs.remove(find_workload(docs, "NetworkPolicy", "default-deny-all"))


def no_pdb_for_gateway(docs):
    docs.remove(find_workload(docs, "PodDisruptionBudget", "sapphire-gateway"))


def token_mounted(docs):
    find_workload(docs, "ServiceAccount", "sapphire-agents")["automountServiceAccountToken"] = True


def missing_workload_identity(docs):
    find_workload(docs, "ServiceAccount", "sapphire-core")["metadata"].pop("annotations")


BROKEN = [
    (move_backoff_limit_under_the_pod, policy.check_jobs, "backoffLimit is under spec.template.spec"),
    (proxy_as_regular_container, policy.check_database_sidecar, "runs as a regular container"),
    (proxy_as_regular_container, policy.check_jobs, "2 regular containers"),
    (proxy_without_exit_zero, policy.check_database_sidecar, "lacks --exit-zero-on-sigterm"),
    (proxy_without_health_check, policy.check_database_sidecar, "sapphire-core-b: the proxy lacks --health-check"),
    (proxy_probe_on_wrong_path, policy.check_database_sidecar, "startupProbe must GET /startup"),
    (proxy_probe_on_wrong_port, policy.check_database_sidecar, "probes port 9090, not its --http-port 9801"),
    (proxy_as_plain_init_container, policy.check_database_sidecar, "lacks restartPolicy: Always"),
    (core_without_proxy, policy.check_database_sidecar, "sapphire-core-b: reaches Postgres (DATABASE_URL) without"),
    (fractional_cpu_proxy, policy.check_core_pinning, "container cloud-sql-proxy: cpu requests 100m != limits 250m"),
    (engine_with_database_url, policy.check_core_sink, "the engine container has DATABASE_URL"),
    (sink_follows_another_journal, policy.check_core_sink, "not the engine's output journal"),
    (sink_on_its_own_volume, policy.check_core_sink, "does not see /var/lib/sapphire/journal/output on the engine's volume"),
    (sink_in_a_deployment_of_its_own, policy.check_core_sink, "Deployment/sapphire-gateway container sapphire: runs `sapphire sink`"),
    (sink_without_a_liveness_probe, policy.check_probes, "container sink: no livenessProbe"),
    (drop_migrate_service_account, policy.check_service_accounts, "ServiceAccount sapphire-migrate is not created"),
    (token_mounted, policy.check_service_accounts, "ServiceAccount/sapphire-agents: automountServiceAccountToken"),
    (missing_workload_identity, policy.check_service_accounts, "iam.gke.io/gcp-service-account"),
    (five_cpus_for_six_cores, policy.check_core_pinning, "5 CPUs but"),
    (burstable_core, policy.check_core_pinning, "not Guaranteed QoS"),
    (config_pins_another_core, policy.check_core_pinning, "pins 7 distinct cores"),
    (unknown_config_key, policy.check_core_pinning, "risk.max_leverage"),
    (shards_share_a_symbol, policy.check_core_shards, "BTCUSDT is already traded"),
    (secret_with_data, policy.check_no_secrets, "a Secret with data"),
    (password_in_a_url, policy.check_no_secrets, "a URL with a password"),
    (latest_image, policy.check_images, ":latest is not a version"),
    (bitnami_image, policy.check_images, "Bitnami"),
    (image_without_registry, policy.check_images, "no explicit registry"),
    (no_readiness_probe, policy.check_probes, "no readinessProbe"),
    (liveness_on_the_wrong_path, policy.check_probes, "livenessProbe must GET /healthz"),
    (writable_root_filesystem, policy.check_security_context, "sapphire-core-a container sink: readOnlyRootFilesystem"),
    (writable_root_filesystem_proxy, policy.check_security_context, "container cloud-sql-proxy: readOnlyRootFilesystem"),
    (capabilities_kept, policy.check_security_context, "capabilities are not all dropped"),
    (no_default_deny, policy.check_network_policies, "no default-deny NetworkPolicy"),
    (no_pdb_for_gateway, policy.check_disruption_and_scaling, "no PodDisruptionBudget"),
]


@pytest.mark.parametrize("breakage, check, expected", BROKEN, ids=[f"{b.__name__}-{c.__name__}" for b, c, _ in BROKEN])
def test_each_check_catches_its_breakage(environments, breakage, check, expected):
    docs = copy.deepcopy(environments["gke"])
    args = {
        policy.check_database_sidecar: ("cloud-sql-proxy",),
        policy.check_service_accounts: (True,),
    }.get(check, ())
    assert_holds(check(docs, *args))  # the real render passes ...
    breakage(docs)
    found = check(docs, *args)  # ... and the broken copy does not
    assert any(expected in v for v in found), f"expected a violation mentioning {expected!r}, got {found}"


def test_the_base_alone_names_no_registry():
    """deploy/base is not deployable by itself: its image is the bare name the overlays
    replace, and the image check says so."""
    docs = load_docs(kustomize("deploy/base"))
    found = policy.check_images(docs)
    assert found and all("sapphire: no explicit registry" in v or "sapphire: no tag" in v for v in found), found


def test_database_users_are_the_pods_own_google_accounts(environments):
    check_database_users(environments["gke"])


def test_database_users_check_can_fail(environments):
    docs = copy.deepcopy(environments["gke"])
    sink_user_is_not_the_pods_account(docs)
    with pytest.raises(AssertionError, match="sapphire-sink@sapphire-prod.iam is not sapphire-core@"):
        check_database_users(docs)


def check_database_users(docs):
    """With IAM database authentication the proxy logs in as the pod's Google service account,
    so the user in DATABASE_URL must be exactly that account (sapphire-x@project.iam), and the
    Cloud SQL instance must be in the same project."""
    from urllib.parse import unquote

    checked = 0
    for doc, spec in policy.workloads(docs):
        for c in policy.regular_containers(spec):
            url = policy.env_value(docs, doc, c, "DATABASE_URL")
            if url is None:
                continue
            user = unquote(url.split("://", 1)[1].split("@", 1)[0])
            sa = policy.find(docs, "ServiceAccount", spec["serviceAccountName"])
            gsa = sa["metadata"]["annotations"][policy.WORKLOAD_IDENTITY_ANNOTATION]
            assert user == gsa.removesuffix(".gserviceaccount.com"), f"{policy.name_of(doc)}: {user} is not {gsa}"
            checked += 1
    assert checked == 3  # the sink containers of core-a and core-b, and the migration
    instance = policy.find(docs, "ConfigMap", "sapphire-cloudsql")["data"]["instance"]
    assert instance.split(":")[0] in policy.workload_identity_projects(docs)
