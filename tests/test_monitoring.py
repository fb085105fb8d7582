"""deploy/monitoring/ checked offline: promtool on the config and rules (and their unit tests),
the alerts' shape, the generated dashboard against its generator, and the compose `monitoring`
profile's wiring. The queries themselves run against a real Triton in test_monitoring_e2e.py."""
import json
import re
import subprocess

import pytest
import yaml

from contract import metrics
from server import install, monitor

ROOT = install.REPO_ROOT
MONITORING = ROOT / "deploy" / "monitoring"


@pytest.fixture(scope="module")
def promtool():
    install.install_prometheus(log=lambda *_: None)
    return str(install.prometheus_tool("promtool"))


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}:\n{out.stdout}{out.stderr}"
    return out.stdout + out.stderr


def test_promtool_accepts_the_config_and_every_rule_file(promtool):
    text = run([promtool, "check", "config", MONITORING / "prometheus.yml"])
    assert f"{len(monitor.rule_files())} rule files found" in text
    run([promtool, "check", "rules", *monitor.rule_files()])


def test_promtool_unit_tests_of_the_rules_pass(promtool):
    tests = sorted((MONITORING / "tests").glob("*.yml"))
    assert tests
    assert "SUCCESS" in run([promtool, "test", "rules", *tests])


def test_every_alert_has_a_threshold_a_duration_a_severity_and_a_reason():
    alerts = monitor.rules("alert")
    assert len(alerts) >= 7
    tested = "\n".join(p.read_text() for p in (MONITORING / "tests").glob("*.yml"))
    for a in alerts:
        # `<series> <op> <number>`: test_monitoring_e2e.py checks that <series> exists on a real Triton
        assert re.match(r"^.+?\s*(==|!=|>=|<=|>|<)\s*[-+0-9.eE]+$", a["expr"].strip()), a["alert"]
        assert a.get("for") and a["labels"]["severity"] in {"critical", "warning", "info"}, a["alert"]
        assert {"summary", "threshold", "why"} <= set(a["annotations"]), a["alert"]
        assert f'alertname="{a["alert"]}"' in tested, f"{a['alert']} has no promtool unit test"


def test_every_rule_keeps_the_model_and_version_labels():
    for rule in monitor.rules("record"):
        assert rule["record"].split(":")[0].startswith("model"), rule["record"]
        assert "by (model, version" in rule["expr"], rule["record"]


def test_the_dashboard_is_what_its_generator_builds():
    from deploy.monitoring import dashboard

    committed = (MONITORING / "grafana/dashboards/triton.json").read_text()
    assert dashboard.render() == committed, "run `python -m deploy.monitoring.dashboard` and commit"
    doc = json.loads(committed)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == dashboard.UID and doc["editable"] is False
    titles = {p["title"] for p in doc["panels"]}
    assert {"Failures by reason", "Queue vs compute time per request", "Pending requests",
            "CPU utilisation", "GPU utilisation", "Tokens per text", "Predicted label mix"} <= titles
    exprs = "\n".join(dashboard.expressions(doc))
    for m in metrics.ALL:      # every metric our models publish is on the dashboard
        assert m.name in exprs or any(m.name in r["expr"] for r in monitor.rules("record")), m.name


def test_a_recorded_series_the_rules_lack_fails_the_generator():
    from deploy.monitoring import dashboard

    with pytest.raises(SystemExit, match="records no series"):
        dashboard.recorded("model:nv_inference_requests:rate5m")


def test_compose_monitoring_profile_is_wired_to_the_repository_files():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prom, grafana = compose["services"]["prometheus"], compose["services"]["grafana"]
    assert prom["profiles"] == grafana["profiles"] == ["monitoring"]
    mounts = {v["target"]: v for s in (prom, grafana) for v in s["volumes"] if isinstance(v, dict)}
    for target, source in {"/etc/prometheus/prometheus.yml": "deploy/monitoring/prometheus.yml",
                           "/etc/prometheus/rules": "deploy/monitoring/rules",
                           "/etc/grafana/provisioning": "deploy/monitoring/grafana/provisioning",
                           "/var/lib/grafana/dashboards": "deploy/monitoring/grafana/dashboards"}.items():
        assert mounts[target]["source"] == f"./{source}" and mounts[target]["read_only"] is True
        assert (ROOT / source).exists()
    # Prometheus scrapes the triton service's metrics port; its rules are the ones tested here
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == monitor.TRITON_JOB]
    assert job["static_configs"][0]["targets"] == ["triton:8002"]
    assert any(p.endswith(":8002") for p in compose["services"]["triton"]["ports"])
    # Grafana: anonymous read-only viewers, no admin user, no login form, no sign-up
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert env["GF_AUTH_DISABLE_LOGIN_FORM"] == "true" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert not any("PASSWORD" in k for k in env)
    # the provisioned datasource is the uid every panel names, at the prometheus service
    source = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (ds,) = source["datasources"]
    from deploy.monitoring import dashboard
    assert ds["uid"] == dashboard.DATASOURCE.uid and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/triton.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == "/var/lib/grafana/dashboards/triton.json"
