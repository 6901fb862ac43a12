"""The dashboard on GKE: an HTTPS Ingress with a Google-managed certificate and Identity-Aware
Proxy in front of the gateway, and nothing else reaching the gateway's port.

kubernetes-validate has no schema for ManagedCertificate, BackendConfig and FrontendConfig
(GKE's own kinds), so their structure is checked here, with each check shown able to fail."""

from __future__ import annotations

import copy
import json

import pytest

# Google Front Ends and their health checks: the only sources of load-balanced traffic.
GFE_RANGES = {"130.211.0.0/22", "35.191.0.0/16"}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, name: str) -> dict | None:
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"] == name), None)


def dashboard_problems(docs: list[dict]) -> list[str]:
    out = []
    ingresses = by_kind(docs, "Ingress")
    if len(ingresses) != 1:
        return [f"expected one Ingress for the dashboard, found {len(ingresses)}"]
    ing = ingresses[0]
    ann = ing["metadata"].get("annotations") or {}
    if ann.get("kubernetes.io/ingress.class") != "gce":
        out.append("the Ingress is not GKE's external load balancer (kubernetes.io/ingress.class: gce)")
    if ann.get("kubernetes.io/ingress.allow-http") != "false":
        out.append("the Ingress serves plain HTTP (kubernetes.io/ingress.allow-http must be \"false\")")
    if not ann.get("kubernetes.io/ingress.global-static-ip-name"):
        out.append("the Ingress has no static IP (its DNS record would break on re-creation)")
    if ing["spec"].get("tls"):
        out.append("the Ingress names TLS secrets: the certificate is Google-managed (ManagedCertificate)")
    # Every backend is the gateway's http port; every host is on the managed certificate.
    hosts, backends = set(), []
    for rule in ing["spec"].get("rules", []):
        if not rule.get("host"):
            out.append("an Ingress rule without a host")
        hosts.add(rule.get("host"))
        backends += [p["backend"] for p in rule.get("http", {}).get("paths", [])]
    if ing["spec"].get("defaultBackend"):
        backends.append(ing["spec"]["defaultBackend"])
    for b in backends:
        svc = b.get("service", {})
        if svc.get("name") != "sapphire-gateway" or svc.get("port") not in ({"name": "http"}, {"number": 8080}):
            out.append(f"an Ingress backend other than the gateway's http port: {b}")
    cert_names = [c.strip() for c in ann.get("networking.gke.io/managed-certificates", "").split(",") if c.strip()]
    if not cert_names:
        out.append("the Ingress names no ManagedCertificate (networking.gke.io/managed-certificates)")
    domains = set()
    for name in cert_names:
        cert = one(docs, "ManagedCertificate", name)
        if cert is None:
            out.append(f"ManagedCertificate {name} named by the Ingress does not exist")
            continue
        if cert.get("apiVersion") != "networking.gke.io/v1":
            out.append(f"ManagedCertificate {name}: apiVersion {cert.get('apiVersion')}")
        domains |= set(cert.get("spec", {}).get("domains", []))
    if hosts - domains:
        out.append(f"hosts without a managed certificate: {sorted(h for h in hosts - domains if h)}")
    frontend = ann.get("networking.gke.io/v1beta1.FrontendConfig")
    fc = one(docs, "FrontendConfig", frontend) if frontend else None
    if fc is None or not fc.get("spec", {}).get("sslPolicy"):
        out.append("no FrontendConfig with an SSL policy (TLS 1.2 or newer) on the Ingress")
    # The gateway's Service: container-native, with the BackendConfig that turns IAP on.
    svc = one(docs, "Service", "sapphire-gateway")
    sann = (svc or {}).get("metadata", {}).get("annotations") or {}
    try:
        neg = json.loads(sann.get("cloud.google.com/neg", "{}"))
        bc_names = json.loads(sann.get("cloud.google.com/backend-config", "{}"))
    except json.JSONDecodeError as e:
        return out + [f"the gateway Service's annotations are not JSON: {e}"]
    if neg.get("ingress") is not True:
        out.append("the gateway Service is not container-native (cloud.google.com/neg: {\"ingress\": true})")
    bc_name = bc_names.get("default") or (bc_names.get("ports") or {}).get("http")
    bc = one(docs, "BackendConfig", bc_name) if bc_name else None
    if bc is None:
        out.append("the gateway Service names no BackendConfig (cloud.google.com/backend-config)")
    else:
        spec = bc.get("spec", {})
        if bc.get("apiVersion") != "cloud.google.com/v1":
            out.append(f"BackendConfig {bc_name}: apiVersion {bc.get('apiVersion')}")
        if (spec.get("iap") or {}).get("enabled") is not True:
            out.append("Identity-Aware Proxy is not enabled on the gateway's backend (BackendConfig iap.enabled)")
        creds = (spec.get("iap") or {}).get("oauthclientCredentials")
        if creds is not None and set(creds) != {"secretName"}:
            out.append("IAP OAuth client credentials must come from a Secret (secretName), never inline")
        if int(spec.get("timeoutSec", 30)) < 600:
            out.append("the backend timeout is under 10 minutes: the dashboard's WebSocket (/ws) would be cut")
        hc = spec.get("healthCheck") or {}
        if hc.get("requestPath") not in ("/healthz", "/readyz") or hc.get("port") != 8080:
            out.append("the load balancer's health check is not /healthz or /readyz on 8080")
    # Only the load balancer reaches the gateway's port: nothing can go around IAP.
    np = one(docs, "NetworkPolicy", "gateway")
    for rule in (np or {}).get("spec", {}).get("ingress", []):
        sources = rule.get("from")
        cidrs = {s.get("ipBlock", {}).get("cidr") for s in sources or []}
        if not sources or cidrs - GFE_RANGES or any("namespaceSelector" in s or "podSelector" in s for s in sources):
            out.append(f"the gateway's NetworkPolicy lets more than the load balancer in: {rule}")
    if np is None:
        out.append("no NetworkPolicy for the gateway")
    # Behind IAP, control still needs the API token.
    gw = one(docs, "Deployment", "sapphire-gateway")
    envs = [e["name"] for c in (gw or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            for e in c.get("env", [])]
    if "SAPPHIRE_API_TOKEN" not in envs:
        out.append("the gateway has no SAPPHIRE_API_TOKEN: control behind IAP would be refused for everyone, or open")
    return out


def test_the_dashboard_is_https_behind_iap(environments):
    assert dashboard_problems(environments["gke"]) == []


def test_the_dev_overlay_has_no_ingress(environments):
    assert by_kind(environments["dev"], "Ingress") == []


def _mutate(docs, kind, name, change):
    docs = copy.deepcopy(docs)
    change(one(docs, kind, name))
    return docs


def _ann(d):
    return d["metadata"]["annotations"]


BREAKAGES = [
    ("Ingress", "sapphire-dashboard", lambda d: _ann(d).pop("kubernetes.io/ingress.allow-http"), "plain HTTP"),
    ("Ingress", "sapphire-dashboard", lambda d: _ann(d).pop("networking.gke.io/managed-certificates"), "no ManagedCertificate"),
    ("Ingress", "sapphire-dashboard", lambda d: d["spec"]["rules"][0].update(host="other.example.org"), "without a managed certificate"),
    ("Ingress", "sapphire-dashboard",
     lambda d: d["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(name="sapphire-core-a"), "other than the gateway"),
    ("Ingress", "sapphire-dashboard", lambda d: _ann(d).pop("networking.gke.io/v1beta1.FrontendConfig"), "SSL policy"),
    ("BackendConfig", "sapphire-gateway", lambda d: d["spec"]["iap"].update(enabled=False), "Identity-Aware Proxy"),
    ("BackendConfig", "sapphire-gateway",
     lambda d: d["spec"]["iap"].update(oauthclientCredentials={"clientID": "x", "clientSecret": "y"}), "from a Secret"),
    ("BackendConfig", "sapphire-gateway", lambda d: d["spec"].pop("timeoutSec"), "WebSocket"),
    ("Service", "sapphire-gateway", lambda d: _ann(d).pop("cloud.google.com/backend-config"), "names no BackendConfig"),
    ("Service", "sapphire-gateway", lambda d: _ann(d).pop("cloud.google.com/neg"), "container-native"),
    ("NetworkPolicy", "gateway", lambda d: d["spec"]["ingress"][0].pop("from"), "more than the load balancer"),
    ("NetworkPolicy", "gateway",
     lambda d: d["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "10.0.0.0/8"}}), "more than the load balancer"),
]


@pytest.mark.parametrize("kind, name, change, expected", BREAKAGES, ids=[f"{b[0]}-{b[3]}" for b in BREAKAGES])
def test_each_dashboard_check_can_fail(environments, kind, name, change, expected):
    broken = _mutate(environments["gke"], kind, name, change)
    problems = dashboard_problems(broken)
    assert any(expected in p for p in problems), problems
