"""deploy/k8s/: the renderer's kustomize semantics, every overlay against the Kubernetes OpenAPI
schemas (kubernetes-validate, offline), and the Deployment against docker-compose.yml and the
repository's own settings, so that a change to one that the other misses fails here."""
import copy
import json
import re

import kubernetes_validate
import pytest
import yaml

from deploy.k8s.render import KustomizeError, merge, render, split_image
from server import install

ROOT = install.REPO_ROOT
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
OVERLAY_IDS = [f"overlays/{o}" for o in OVERLAYS]   # not the bare "gpu": that is the GPU-machine marker
# the oldest Kubernetes release still maintained when this was written, and the newest the validator knows
VERSIONS = ("1.31", kubernetes_validate.latest_version())


def by_kind(resources):
    return {r["kind"]: r for r in resources}


@pytest.fixture(scope="module")
def rendered():
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# ----------------------------------------------------------------------------------------------
# the renderer

def write(folder, files):
    for name, doc in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(yaml.safe_dump_all(doc) if isinstance(doc, list) else yaml.safe_dump(doc))


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
              "spec": {"replicas": 1, "template": {"spec": {
                  "containers": [{"name": "main", "image": "reg:5000/team/app:1.0", "args": ["--a", "--b"],
                                  "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                                  "ports": [{"containerPort": 80, "name": "http"}],
                                  "resources": {"limits": {"cpu": "1"}}},
                                 {"name": "side", "image": "busybox"}],
                  "tolerations": [{"key": "a", "operator": "Exists"}]}}}}


def test_renderer_merges_patches_as_kustomize_does(tmp_path):
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
             "spec": {"replicas": None, "template": {"spec": {
                 "containers": [{"name": "main", "args": ["--c"], "env": [{"name": "Y", "value": "3"}],
                                 "ports": [{"containerPort": 81, "name": "grpc"}],
                                 "resources": {"limits": {"memory": "1Gi"}}},
                                {"name": "new", "image": "new:1"}],
                 "tolerations": [{"key": "b", "operator": "Exists"}]}}}}
    write(tmp_path, {"base/kustomization.yaml": {"resources": ["app.yaml"]}, "base/app.yaml": [DEPLOYMENT],
                     "over/kustomization.yaml": {"resources": ["../base"], "patches": [{"path": "p.yaml"}],
                                                 "images": [{"name": "reg:5000/team/app", "newTag": "2.0"},
                                                            {"name": "busybox", "newName": "mirror/busybox",
                                                             "digest": "sha256:abc"}]},
                     "over/p.yaml": [patch]})
    (out,) = render(tmp_path / "over")
    spec = out["spec"]["template"]["spec"]
    main, side, new = spec["containers"]
    assert "replicas" not in out["spec"]                               # null deletes
    assert main["args"] == ["--c"]                                     # a list without merge key: replaced
    assert main["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}]   # merged by name
    assert [p["containerPort"] for p in main["ports"]] == [80, 81]     # merged by containerPort
    assert main["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}}
    assert main["image"] == "reg:5000/team/app:2.0" and side["image"] == "mirror/busybox@sha256:abc"
    assert new["image"] == "new:1" and spec["tolerations"] == [{"key": "b", "operator": "Exists"}]
    assert DEPLOYMENT["spec"]["replicas"] == 1                          # inputs are left alone


def test_split_image_keeps_a_registry_port():
    assert split_image("reg:5000/a/b:1.2") == ("reg:5000/a/b", "1.2")
    assert split_image("reg:5000/a/b") == ("reg:5000/a/b", None)
    assert split_image("b@sha256:00") == ("b", None)


@pytest.mark.parametrize("kustomization, patch, message", [
    ({"resources": ["app.yaml"], "namePrefix": "x-"}, None, "namePrefix"),
    ({"resources": ["app.yaml"], "patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]}, None,
     "only `path:`"),
    ({"resources": ["app.yaml"], "patches": [{"path": "p.yaml"}]},
     {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "other"}}, "matches 0 resources"),
    ({"resources": ["app.yaml"], "patches": [{"path": "p.yaml"}]},
     {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"}, "$patch": "delete"}, "directive"),
])
def test_renderer_refuses_what_it_does_not_implement(tmp_path, kustomization, patch, message):
    write(tmp_path, {"kustomization.yaml": kustomization, "app.yaml": [DEPLOYMENT], "p.yaml": [patch or {}]})
    with pytest.raises(KustomizeError, match=re.escape(message)):
        render(tmp_path)


# ----------------------------------------------------------------------------------------------
# schemas

@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
@pytest.mark.parametrize("version", VERSIONS)
def test_overlay_validates_against_the_kubernetes_schemas(rendered, overlay, version):
    kinds = [r["kind"] for r in rendered[overlay]]
    assert sorted(kinds) == sorted(["ServiceAccount", "Deployment", "Service", "NetworkPolicy",
                                    "PodDisruptionBudget", "HorizontalPodAutoscaler"])
    for resource in rendered[overlay]:
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_validator_rejects_a_broken_deployment(rendered):
    broken = copy.deepcopy(by_kind(rendered["cpu"])["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


# ----------------------------------------------------------------------------------------------
# the Deployment against docker-compose.yml: one source for image, flags, ports and the admin key

def entrypoint_key_path():
    script = (ROOT / "docker" / "triton-entrypoint.sh").read_text()
    (path,) = set(re.findall(r"(/run/secrets/\w+)", script))
    return path


def compose_mismatches(compose, deployment, image_must_match=True):
    """What the Deployment's triton container does differently from compose's triton service."""
    service = compose["services"]["triton"]
    pod = deployment["spec"]["template"]["spec"]
    (triton,) = [c for c in pod["containers"] if c["name"] == "triton"]
    problems = []
    if image_must_match and triton["image"] != service["image"]:
        problems.append(f"image {triton['image']} vs compose {service['image']}")
    if triton.get("args") != service["command"]:
        problems.append(f"args {triton.get('args')} vs compose command {service['command']}")
    compose_ports = sorted(int(p.rsplit(":", 1)[1]) for p in service["ports"])
    if sorted(p["containerPort"] for p in triton["ports"]) != compose_ports:
        problems.append(f"ports {triton['ports']} vs compose {compose_ports}")
    # the admin key: compose's secret lands where the entrypoint reads it; so must the Secret volume
    key_path = entrypoint_key_path()
    if f"/run/secrets/{service['secrets'][0]}" != key_path:
        problems.append(f"compose secret {service['secrets']} is not {key_path}")
    mounts = {m["name"]: m for m in triton["volumeMounts"]}
    paths = [f"{mounts[v['name']]['mountPath']}/{item['path']}" for v in pod["volumes"] if "secret" in v
             for item in v["secret"].get("items", []) if v["name"] in mounts]
    if paths != [key_path]:
        problems.append(f"the admin-key Secret is mounted at {paths}, the entrypoint reads {key_path}")
    # the repository: mounted read-only where --model-repository points
    (repo,) = [a.split("=", 1)[1] for a in service["command"] if a.startswith("--model-repository=")]
    if not any(m["mountPath"] == repo and m.get("readOnly") for m in triton["volumeMounts"]):
        problems.append(f"no read-only volume at {repo}")
    shm = [v for v in pod["volumes"] if v["name"] == mounts.get("dshm", {}).get("name")]
    if service.get("shm_size") != "1gb" or not shm or shm[0]["emptyDir"].get("sizeLimit") != "1Gi":
        problems.append(f"/dev/shm {shm} vs compose shm_size {service.get('shm_size')}")
    return problems


def test_base_deployment_runs_what_compose_runs(compose):
    deployment = by_kind(render(K8S / "base"))["Deployment"]
    assert compose_mismatches(compose, deployment) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_overlays_keep_compose_flags_ports_and_key(rendered, compose, overlay):
    deployment = by_kind(rendered[overlay])["Deployment"]
    assert compose_mismatches(compose, deployment, image_must_match=overlay == "gpu") == []


@pytest.mark.parametrize("change", [
    lambda s: s["command"].append("--exit-on-error=true"),
    lambda s: s["command"].remove("--strict-readiness=true"),
    lambda s: s.update(image="bert-triton/tritonserver:25.01-py3"),
    lambda s: s["ports"].append("127.0.0.1:8003:8003"),
    lambda s: s.update(secrets=["other_key"]),
])
def test_a_compose_change_the_deployment_misses_fails(rendered, compose, change):
    changed = copy.deepcopy(compose)
    change(changed["services"]["triton"])
    assert compose_mismatches(changed, by_kind(rendered["gpu"])["Deployment"])


def test_cpu_image_is_built_for_the_same_triton_and_entrypoint(rendered):
    dockerfile = (K8S / "overlays/cpu/triton-cpu.Dockerfile").read_text()
    (triton,) = by_kind(rendered["cpu"])["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert f"-t {triton['image']} ." in dockerfile     # the build command names the overlay's image
    assert 'ENTRYPOINT ["/usr/local/bin/triton-entrypoint.sh"]' in dockerfile
    assert "COPY docker/triton-entrypoint.sh /usr/local/bin/triton-entrypoint.sh" in dockerfile
    assert "USER 1000" in dockerfile
    # every package it takes from requirements.lock is pinned there (the image installs those pins)
    lock = (ROOT / "requirements.lock").read_text()
    (names,) = re.findall(r"grep -E '\^\(([^)]+)\)=='", dockerfile)
    for name in names.split("|"):
        assert re.search(rf"^{re.escape(name)}==", lock, re.M), name
    assert {"nvidia-pytriton", "onnxruntime", "torch", "tokenizers", "numpy"} <= set(names.split("|"))
    assert f"nvidia-pytriton=={install.PYTRITON_VERSION}" in lock


# ----------------------------------------------------------------------------------------------
# the rest of the issue's list, per overlay

@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_repository_target_and_model_settings(rendered, overlay):
    from build.repository import TARGETS

    pod = by_kind(rendered[overlay])["Deployment"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["MODEL_REPOSITORY_TARGET"] == overlay and overlay in TARGETS
    # the init container's check reads build.json as build/repository.py writes it
    written = json.dumps({"target": overlay}, indent=2)
    assert '"target": "$MODEL_REPOSITORY_TARGET"'.replace("$MODEL_REPOSITORY_TARGET", overlay) in written
    assert '\\"target\\": \\"$MODEL_REPOSITORY_TARGET\\"' in init["args"][0]
    assert "/models" in init["args"][0] and "$MODEL_REPOSITORY_URI" in init["args"][0]
    gpus = pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == (1 if overlay == "gpu" else None)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_security_probes_rollout_and_disruption(rendered, overlay):
    r = by_kind(rendered[overlay])
    deployment, pod = r["Deployment"], r["Deployment"]["spec"]["template"]["spec"]
    labels = pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], c["name"]
    (triton,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe"):
        assert triton[probe]["httpGet"]["port"] == "http", probe
    assert triton["startupProbe"]["periodSeconds"] * triton["startupProbe"]["failureThreshold"] >= 120
    # a failed model keeps readiness false: only readiness may look at it, or the pod restarts in a loop
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # liveness sends a real text (a dead Python stub leaves its model READY) with what the image has
    probe = triton["livenessProbe"]["exec"]["command"]
    assert probe[0] == "triton-probe" and "--ignore-readiness" in probe
    image = "overlays/cpu/triton-cpu.Dockerfile" if overlay == "cpu" else "../../docker/triton.Dockerfile"
    assert "COPY server/probe.py /usr/local/bin/triton-probe" in (K8S / image).read_text()
    assert triton["livenessProbe"]["timeoutSeconds"] > float(probe[probe.index("--timeout") + 1])
    # zero-downtime rollouts: no pod goes before its replacement is ready, and a stopping pod is
    # out of the Service before SIGTERM and then has time for its in-flight requests
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    sleep = int(triton["lifecycle"]["preStop"]["exec"]["command"][1])
    (exit_timeout,) = [int(a.split("=")[1]) for a in triton["args"] if a.startswith("--exit-timeout-secs=")]
    assert pod["terminationGracePeriodSeconds"] >= sleep + exit_timeout
    # every selector picks the pods
    for kind in ("Service", "PodDisruptionBudget"):
        sel = r[kind]["spec"]["selector"]
        assert (sel.get("matchLabels") or sel).items() <= labels.items(), kind
    assert r["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # the Service and the NetworkPolicy expose exactly the container's ports
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert {p["name"]: p["port"] for p in r["Service"]["spec"]["ports"]} == ports
    allowed = sorted(p["port"] for rule in r["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"])
    assert allowed == sorted(ports.values())
    # a drain leaves a replica serving
    assert r["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert r["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_the_autoscaler_reads_the_adapter_metric(rendered, overlay):
    hpa = by_kind(rendered[overlay])["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    (metric,) = hpa["spec"]["metrics"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter/values.yaml").read_text())
    assert metric["pods"]["metric"]["name"] in [r["name"]["as"] for r in adapter["rules"]["custom"]]
    assert metric["pods"]["target"]["type"] == "AverageValue" and int(metric["pods"]["target"]["averageValue"]) > 0
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_the_pod_monitor_scrapes_the_metrics_port_as_job_triton(rendered):
    from server.monitor import TRITON_JOB

    monitor = yaml.safe_load((K8S / "monitoring/podmonitor.yaml").read_text())
    pod = by_kind(rendered["cpu"])["Deployment"]["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"][monitor["spec"]["jobLabel"]] == TRITON_JOB
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
