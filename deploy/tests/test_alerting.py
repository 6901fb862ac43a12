"""Alerts reach someone: the rules' alerts go through Sapphire's Alertmanager to Telegram.

The configuration (deploy/monitoring/alertmanager-config.yaml) is checked against the
manifests (the token file is the mounted Secret, the config file the mounted ConfigMap, the
rule evaluator points at the Service), then run in a real Alertmanager (Debian's
prometheus-alertmanager; scripts/deploy-check.sh installs it) against a local server speaking
Telegram's Bot API: an alert posted to it must arrive as a sendMessage to the team's chat."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

import policy
from conftest import REPO

MONITORING = REPO / "deploy/monitoring"
CONFIG = MONITORING / "alertmanager-config.yaml"
# Alertmanager learned telegram_configs.bot_token_file in v0.26.
BOT_TOKEN_FILE_SINCE = (0, 26)


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def alertmanager(docs):
    dep = policy.find(docs, "Deployment", "sapphire-alertmanager")
    assert dep is not None, "no Deployment sapphire-alertmanager in the GKE render"
    spec = dep["spec"]["template"]["spec"]
    return dep, spec, spec["containers"][0]


def receivers_reached(route: dict) -> set[str]:
    out = {route.get("receiver")} if route.get("receiver") else set()
    for r in route.get("routes") or []:
        out |= receivers_reached(r)
    return out


def alerting_problems(docs: list[dict], config: dict, patch: dict) -> list[str]:
    out = []
    _, spec, c = alertmanager(docs)
    # The image can read the token from a file.
    m = re.search(r":v(\d+)\.(\d+)\.\d+$", c["image"])
    if not m or (int(m[1]), int(m[2])) < BOT_TOKEN_FILE_SINCE:
        out.append(f"{c['image']}: Alertmanager before v0.26 has no telegram bot_token_file")
    # The config file is the generated ConfigMap, mounted where --config.file says.
    config_file = policy.flag_value(c.get("args") or [], "--config.file")
    mount = policy.volume_at(c, config_file or "/nonexistent")
    vol = next((v for v in spec["volumes"] if mount and v["name"] == mount[0]), {})
    cm = policy.find(docs, "ConfigMap", (vol.get("configMap") or {}).get("name", ""))
    if cm is None or Path(config_file).name not in (cm.get("data") or {}):
        out.append(f"--config.file={config_file} is not the sapphire-alertmanager ConfigMap's key")
    elif yaml.safe_load(cm["data"][Path(config_file).name]) != config:
        out.append("the ConfigMap is not alertmanager-config.yaml")
    # Every route ends at a Telegram receiver whose token is the mounted Secret's file.
    receivers = {r["name"]: r for r in config.get("receivers", [])}
    for name in receivers_reached(config["route"]):
        tgs = (receivers.get(name) or {}).get("telegram_configs") or []
        if not tgs:
            out.append(f"route to receiver {name}, which has no telegram_configs")
        for tg in tgs:
            if "bot_token" in tg:
                out.append(f"receiver {name}: bot_token inline; the token must come from the mounted Secret (bot_token_file)")
            path = tg.get("bot_token_file", "")
            mnt = policy.volume_at(c, path)
            secret = next((v.get("secret") for v in spec["volumes"] if mnt and v["name"] == mnt[0]), None)
            items = {i["path"]: i["key"] for i in (secret or {}).get("items", [])}
            rel = path[len(mnt[1]) + 1:] if mnt else ""
            if not secret or secret.get("secretName") != "sapphire-telegram" or items.get(rel, rel) != "bot-token":
                out.append(f"receiver {name}: bot_token_file {path!r} is not the Secret sapphire-telegram's key bot-token")
            if not isinstance(tg.get("chat_id"), int):
                out.append(f"receiver {name}: chat_id must be an integer (Alertmanager refuses a string)")
            if tg.get("send_resolved") is not True:
                out.append(f"receiver {name}: resolved alerts are not sent")
    # The rule evaluator sends to this Alertmanager's Service.
    svc = policy.find(docs, "Service", "sapphire-alertmanager")
    targets = ((patch.get("rules") or {}).get("alerting") or {}).get("alertmanagers") or []
    if svc is None or not any(t.get("name") == svc["metadata"]["name"] and t.get("namespace") == svc["metadata"].get("namespace")
                              and t.get("port") in [p["port"] for p in svc["spec"]["ports"]] for t in targets):
        out.append("gmp-operatorconfig-patch.yaml does not point the rule evaluator at the sapphire-alertmanager Service")
    # Who may send alerts to it, and where it may send them.
    np = policy.find(docs, "NetworkPolicy", "alertmanager")
    if np is None:
        out.append("no NetworkPolicy for Alertmanager")
    else:
        ingress = np["spec"].get("ingress") or []
        if not ingress or any(not r.get("from") for r in ingress):
            out.append("Alertmanager's NetworkPolicy takes alerts from anywhere (only gmp-system's rule evaluator sends them)")
    return out


@pytest.fixture(scope="module")
def patch() -> dict:
    return yaml.safe_load((MONITORING / "gmp-operatorconfig-patch.yaml").read_text())


def test_alerts_route_to_telegram_with_the_token_from_the_mounted_secret(environments, config, patch):
    assert alerting_problems(environments["gke"], config, patch) == []


def _break_inline_token(docs, config, patch):
    config["receivers"][0]["telegram_configs"][0]["bot_token"] = "123:abc"


def _break_token_path(docs, config, patch):
    config["receivers"][0]["telegram_configs"][0]["bot_token_file"] = "/etc/alertmanager/config/token"


def _break_old_image(docs, config, patch):
    alertmanager(docs)[2]["image"] = "quay.io/prometheus/alertmanager:v0.25.0"


def _break_patch(docs, config, patch):
    patch["rules"]["alerting"]["alertmanagers"][0]["port"] = 9094


def _break_chat_id(docs, config, patch):
    config["receivers"][0]["telegram_configs"][0]["chat_id"] = "-100"


def _break_open_ingress(docs, config, patch):
    policy.find(docs, "NetworkPolicy", "alertmanager")["spec"]["ingress"][0].pop("from")


@pytest.mark.parametrize("breakage, expected", [
    (_break_inline_token, "bot_token inline"),
    (_break_token_path, "is not the Secret sapphire-telegram"),
    (_break_old_image, "before v0.26"),
    (_break_patch, "rule evaluator"),
    (_break_chat_id, "integer"),
    (_break_open_ingress, "from anywhere"),
])
def test_each_alerting_check_can_fail(environments, config, patch, breakage, expected):
    import copy
    docs, cfg, p = copy.deepcopy(environments["gke"]), copy.deepcopy(config), copy.deepcopy(patch)
    breakage(docs, cfg, p)
    problems = alerting_problems(docs, cfg, p)
    assert any(expected in x for x in problems), problems


# ---------------------------------------------------------------------------------------------
# The configuration in a real Alertmanager, against a local Telegram Bot API.


def alertmanager_binary() -> tuple[str, tuple[int, int]]:
    for name in ("alertmanager", "prometheus-alertmanager"):
        path = shutil.which(name)
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True)
            m = re.search(r"version (\d+)\.(\d+)", out.stdout + out.stderr)
            return path, (int(m[1]), int(m[2])) if m else (0, 0)
    pytest.fail("no Alertmanager binary: scripts/deploy-check.sh installs Debian's prometheus-alertmanager "
                "(apt-get install prometheus-alertmanager)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeTelegram(BaseHTTPRequestHandler):
    received: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if "json" in self.headers.get("Content-Type", ""):
            fields = json.loads(body)
        else:
            fields = {k: v[0] for k, v in parse_qs(body).items()}
        FakeTelegram.received.append((self.path, fields))
        answer = json.dumps({"ok": True, "result": {"message_id": len(FakeTelegram.received), "date": 0,
                                                      "chat": {"id": int(fields.get("chat_id", 0)), "type": "group"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_an_alert_reaches_a_local_telegram_through_alertmanager(tmp_path, config):
    binary, version = alertmanager_binary()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTelegram)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeTelegram.received = []
    token = "4242:local-test-token"
    cfg = json.loads(json.dumps(config))
    for r in cfg["receivers"]:
        for tg in r.get("telegram_configs", []):
            tg["api_url"] = f"http://127.0.0.1:{server.server_port}"
            token_file = tmp_path / "bot-token"
            token_file.write_text(token + "\n")
            if version >= BOT_TOKEN_FILE_SINCE:
                tg["bot_token_file"] = str(token_file)
            else:  # an older local Alertmanager: the same receiver with the token inline
                del tg["bot_token_file"]
                tg["bot_token"] = token
    # The deployed waits (30 s before the first message) shortened for the test.
    for route in [cfg["route"]] + cfg["route"].get("routes", []):
        route["group_wait"] = "0s"
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(cfg))
    amtool = shutil.which("amtool")
    if amtool:
        check = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={path}", f"--storage.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "Alertmanager did not start"
                time.sleep(0.2)
        alert = [{"labels": {"alertname": "PortfolioDrawdownHalt", "severity": "critical", "shard": "a"},
                  "annotations": {"summary": "Drawdown 26% on shard a: new exposure refused"}}]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/alerts", data=json.dumps(alert).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        assert urllib.request.urlopen(req, timeout=5).status == 200
        deadline = time.time() + 30
        while not FakeTelegram.received:
            assert time.time() < deadline and proc.poll() is None, "no message reached the local Telegram API"
            time.sleep(0.2)
    finally:
        proc.terminate()
        logs = proc.communicate(timeout=10)[0]
        server.shutdown()
    sent_path, fields = FakeTelegram.received[0]
    assert sent_path == f"/bot{token}/sendMessage", sent_path
    assert str(fields["chat_id"]) == str(config["receivers"][0]["telegram_configs"][0]["chat_id"])
    assert "PortfolioDrawdownHalt" in fields["text"], fields
    assert token not in logs, "Alertmanager printed the bot token"


# ---------------------------------------------------------------------------------------------
# The daily report and the engine's own alerts in the GKE deployment.


def core_telegram_problems(docs: list[dict]) -> list[str]:
    import tomllib
    out = []
    cores = [(d, s) for d, s in policy.workloads(docs) if policy.component_of(d) == "core"]
    if not cores:
        return ["no core StatefulSet in the render"]
    for doc, spec in cores:
        where = policy.name_of(doc)
        engine = next(c for c in policy.regular_containers(spec) if policy.runs_sapphire(c) and c["args"][0] == "core")
        found = policy.mounted_config(docs, doc, spec, engine)
        cfg = tomllib.loads(found[1]) if found else {}
        report, alerts = cfg.get("report", {}), cfg.get("alerts", {})
        if not report.get("daily_at") or report.get("telegram") is not True:
            out.append(f"{where}: the daily report is off or not sent ([report] daily_at and telegram = true)")
        if alerts.get("telegram") is not True:
            out.append(f"{where}: the engine's alerts are not sent ([alerts] telegram = true)")
        env = {e["name"]: e for e in engine.get("env") or []}
        if "TELEGRAM_BOT_TOKEN" in env:
            out.append(f"{where}: TELEGRAM_BOT_TOKEN in the environment; mount the Secret and name the file (TELEGRAM_BOT_TOKEN_FILE)")
        path = (env.get("TELEGRAM_BOT_TOKEN_FILE") or {}).get("value", "")
        mnt = policy.volume_at(engine, path) if path else None
        secret = next((v.get("secret") for v in spec.get("volumes") or [] if mnt and v["name"] == mnt[0]), None)
        items = {i["path"]: i["key"] for i in (secret or {}).get("items", [])}
        rel = path[len(mnt[1]) + 1:] if mnt else ""
        if not secret or secret.get("secretName") != "sapphire-telegram" or items.get(rel, rel) != "bot-token" or not mnt[2]:
            out.append(f"{where}: TELEGRAM_BOT_TOKEN_FILE is not the Secret sapphire-telegram's bot-token, mounted read-only")
        chat = ((env.get("TELEGRAM_CHAT_ID") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if chat.get("name") != "sapphire-telegram" or chat.get("key") != "chat-id":
            out.append(f"{where}: TELEGRAM_CHAT_ID does not come from the Secret sapphire-telegram (key chat-id)")
    return out


def test_gke_cores_send_the_daily_report_and_their_alerts_with_the_token_from_a_secret(environments):
    assert core_telegram_problems(environments["gke"]) == []


def _core_engine(docs):
    sts = next(d for d in docs if d.get("kind") == "StatefulSet" and policy.component_of(d) == "core")
    return sts["spec"]["template"]["spec"], next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "sapphire")


def _report_off(docs):
    for d in docs:
        if d.get("kind") == "ConfigMap" and "core.toml" in (d.get("data") or {}):
            d["data"]["core.toml"] = d["data"]["core.toml"].replace('daily_at = "00:05"', 'daily_at = ""')


def _token_in_env(docs):
    _core_engine(docs)[1]["env"].append({"name": "TELEGRAM_BOT_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}})


def _token_from_elsewhere(docs):
    spec, _ = _core_engine(docs)
    next(v for v in spec["volumes"] if v["name"] == "telegram")["secret"]["secretName"] = "other"


@pytest.mark.parametrize("breakage, expected", [
    (_report_off, "daily report is off"),
    (_token_in_env, "TELEGRAM_BOT_TOKEN in the environment"),
    (_token_from_elsewhere, "is not the Secret sapphire-telegram"),
])
def test_each_core_telegram_check_can_fail(environments, breakage, expected):
    import copy
    docs = copy.deepcopy(environments["gke"])
    breakage(docs)
    problems = core_telegram_problems(docs)
    assert any(expected in p for p in problems), problems
