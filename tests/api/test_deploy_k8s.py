"""The Kubernetes manifests (deploy/k8s), checked without a cluster.

Kustomize is rendered by tests/support/kustomize.py (and, where `kubectl` is installed,
compared with `kubectl kustomize`). Every core object is validated against the
Kubernetes schemas that `kubernetes-validate` ships (strict: unknown fields fail), for
the oldest and the newest Kubernetes release we claim; KEDA's objects against the schemas
in deploy/k8s/schemas. Then the wiring: names, secrets, probes, GPU requests, and the
autoscaler's Redis keys, derived from the code that names the queues. NOT shown here:
that a cluster admits and runs them (no API server, no KEDA, no GPU node here).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry
from sqlalchemy.engine import make_url

from app import queue as app_queue
from app.settings import Settings, SettingsError, load_settings
from tests.support.kustomize import object_id, render
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
"""The oldest Kubernetes we claim (autoscaling/v2, policy/v1 are GA long before) and the
newest kubernetes-validate knows."""
TARGETS = ("base", "overlays/cpu-only", "overlays/example")
CLASSES = ("gpu", "cpu")


def rendered(target: str) -> list[dict[str, Any]]:
    return render(K8S / target)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def keda_schema(kind: str) -> dict[str, Any]:
    name = {"ScaledObject": "keda-scaledobject", "TriggerAuthentication":
            "keda-triggerauthentication"}[kind]
    return json.loads((K8S / "schemas" / f"{name}.json").read_text())


def validate(obj: dict[str, Any]) -> None:
    """Raise when obj does not match its schema (Kubernetes' or KEDA's)."""
    if obj["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(obj, keda_schema(obj["kind"]))
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# ----------------------------------------------------------------- schemas
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_against_its_schema(target: str) -> None:
    objects = rendered(target)
    assert len({object_id(o) for o in objects}) == len(objects), "duplicate objects"
    for obj in objects:
        validate(obj)


def test_the_validators_reject_broken_objects() -> None:
    objects = rendered("base")
    api = json.loads(json.dumps(by_kind(objects, "Deployment")["zerounlearn-api"]))
    pod_spec(api)["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(jsonschema.ValidationError):
        validate(api)
    scaled = json.loads(json.dumps(by_kind(objects, "ScaledObject")["zerounlearn-worker-gpu"]))
    del scaled["spec"]["triggers"]
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    scaled = json.loads(json.dumps(by_kind(objects, "ScaledObject")["zerounlearn-worker-gpu"]))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 1  # metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("target", TARGETS)
def test_python_rendering_matches_kubectl_kustomize(target: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / target)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    ours = rendered(target)
    assert sorted(map(object_id, theirs)) == sorted(map(object_id, ours))
    key = {object_id(o): o for o in theirs}
    for obj in ours:
        assert key[object_id(obj)] == obj, object_id(obj)


# ------------------------------------------------------------------ wiring
def test_references_resolve_to_objects_and_keys() -> None:
    objects = rendered("base")
    secret_keys = {n: set(s["stringData"]) for n, s in by_kind(objects, "Secret").items()}
    config_maps = set(by_kind(objects, "ConfigMap"))
    claims = set(by_kind(objects, "PersistentVolumeClaim"))
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False, obj["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            defined: list[str] = []
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_keys[ref["name"]], (obj["metadata"]["name"], ref)
                # $(VAR) expands only from variables defined earlier in the list
                for used in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                    assert used in defined, (obj["metadata"]["name"], env["name"], used)
                defined.append(env["name"])
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in by_kind(objects, "Service").values():  # each Service selects one kind
        selected = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet") and
                    service["spec"]["selector"].items() <=
                    o["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, service["metadata"]["name"]


def test_placeholder_secrets_keep_the_api_from_starting() -> None:
    (secret,) = by_kind(rendered("base"), "Secret").values()
    values = secret["stringData"]
    assert all("CHANGE-ME" in v for v in values.values())
    with pytest.raises(SettingsError, match="ZEROUNLEARN_ADMIN_TOKEN"):
        load_settings(admin_token=values["ZEROUNLEARN_ADMIN_TOKEN"])
    # PostgreSQL: the metadata database every API and worker shares (a placeholder here)
    assert values["ZEROUNLEARN_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "database_url" in Settings.model_fields


DATABASE_URL = "ZEROUNLEARN_DATABASE_URL"


@pytest.mark.parametrize("target", TARGETS)
def test_every_api_and_worker_container_reads_the_database_url(target: str) -> None:
    objects = rendered(target)
    (secret,) = by_kind(objects, "Secret").values()
    containers = [(o["metadata"]["name"], c) for o in objects
                  if o["kind"] in ("Deployment", "StatefulSet")
                  for c in pod_spec(o)["containers"]
                  if c["args"][:3] in (["python", "-m", "app"], ["python", "-m", "worker"])]
    names = {name for name, _ in containers}
    expected = {"zerounlearn-api-cpu", "zerounlearn-worker-cpu"}
    if target != "overlays/cpu-only":
        expected |= {"zerounlearn-api", "zerounlearn-worker-gpu"}
    assert names == expected
    for name, container in containers:
        env = env_of(container)[DATABASE_URL]
        assert env["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                    "key": DATABASE_URL}, name
        assert "value" not in env, name  # the password stays in the Secret


def test_the_placeholder_database_url_is_one_the_loaders_accept() -> None:
    (secret,) = by_kind(rendered("base"), "Secret").values()
    url = secret["stringData"][DATABASE_URL]
    assert Settings(database_url=url).database_url.get_secret_value() == url
    env = {"REDIS_URL": "redis://redis:6379/0", DATABASE_URL: url}
    assert WorkerSettings.from_env(env).database_url == url
    parsed = make_url(url)
    assert parsed.drivername == "postgresql+psycopg" and parsed.database == "zerounlearn"


def test_postgres_is_the_operators_and_no_comment_says_not_read_yet() -> None:
    # PostgreSQL is a managed one or the operator's own chart: the manifests run none
    for target in TARGETS:
        images = [c["image"] for o in rendered(target) if o["kind"] in
                  ("Deployment", "StatefulSet") for c in pod_spec(o)["containers"]]
        assert not [i for i in images if "postgres" in i], target
    secret_text = (K8S / "base" / "secret.yaml").read_text()
    assert "managed" in secret_text and "do not" in secret_text and "start it" in secret_text
    files = [*K8S.rglob("*.yaml"), REPO / "docker-compose.yml"]
    assert len(files) > 10
    stale = [str(p) for p in files if "not read yet" in p.read_text().lower()]
    assert not stale, stale


def test_api_deployments_probe_and_serve_one_queue_each() -> None:
    objects = rendered("base")
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    for name, device_class in (("zerounlearn-api", "gpu"), ("zerounlearn-api-cpu", "cpu")):
        (container,) = pod_spec(deployments[name])["containers"]
        assert container["image"] == "zerounlearn-service:api"
        assert container["args"][:3] == ["python", "-m", "app"]
        assert env_of(container)["ZEROUNLEARN_DEVICE_CLASS"]["value"] == device_class
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        port = container["ports"][0]
        assert port["containerPort"] == 8000 and container["args"][-1] == "8000"
        assert services[name]["spec"]["ports"][0]["targetPort"] == port["name"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployments[name]["spec"]["replicas"] >= 2
        assert by_kind(objects, "PodDisruptionBudget")[name]["spec"]["minAvailable"] == 1


def test_workers_per_device_class() -> None:
    objects = rendered("base")
    deployments = by_kind(objects, "Deployment")
    forget_timeout = Settings().forget_timeout_s
    for device_class, image, device in (("gpu", "cuda", "cuda"), ("cpu", "cpu", "cpu")):
        worker = deployments[f"zerounlearn-worker-{device_class}"]
        spec = pod_spec(worker)
        (container,) = spec["containers"]
        env = env_of(container)
        assert container["image"] == f"zerounlearn-service:{image}"
        assert container["args"] == ["python", "-m", "worker"]
        assert env["ZEROUNLEARN_DEVICE_CLASS"]["value"] == device_class
        assert env["ZEROUNLEARN_DEVICE"]["value"] == device
        assert container["livenessProbe"]["exec"]["command"][-1] == "worker.healthcheck"
        # a stopped worker finishes its job: the grace period covers the longest one
        assert spec["terminationGracePeriodSeconds"] >= forget_timeout
        resources = container["resources"]
        gpus = resources["limits"].get("nvidia.com/gpu")
        if device_class == "gpu":
            assert gpus == 1 and resources["requests"]["nvidia.com/gpu"] == 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
                spec["tolerations"]
        else:
            assert gpus is None and "tolerations" not in spec


def expected_keys(device_class: str) -> set[str]:
    """The Redis keys of the device class's queues, as the code and RQ name them."""
    names = [Settings(device_class=device_class).queue_name]
    suffix = getattr(app_queue, "INTERACTIVE_SUFFIX", None)
    if suffix:
        names.append(names[0] + suffix)
    connection = Redis()  # never connects: RQ only derives the key names
    keys = set()
    for name in names:
        queue = Queue(name, connection=connection)
        keys.add(queue.key)
        keys.add(StartedJobRegistry(queue=queue).key)
    return keys


def test_keda_scales_each_worker_class_on_its_rq_queues() -> None:
    objects = rendered("base")
    scaled = by_kind(objects, "ScaledObject")
    deployments = by_kind(objects, "Deployment")
    redis_service = by_kind(objects, "Service")["zerounlearn-redis"]
    address = f"{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}"
    auths = by_kind(objects, "TriggerAuthentication")
    secret_keys = {n: set(s["stringData"]) for n, s in by_kind(objects, "Secret").items()}
    for device_class in CLASSES:
        obj = scaled[f"zerounlearn-worker-{device_class}"]
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        lists = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            meta = trigger["metadata"]
            assert meta["address"] == address and meta["databaseIndex"] == "0"
            assert int(meta["listLength"]) >= 1
            lists.add(meta["listName"])
            (ref,) = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            assert ref["parameter"] == "password" and ref["key"] in secret_keys[ref["name"]]
        assert lists == expected_keys(device_class)
    # the queues' Redis database is the one in the pods' REDIS_URL
    api = pod_spec(deployments["zerounlearn-api"])["containers"][0]
    assert env_of(api)["REDIS_URL"]["value"].endswith(f"@{address}/0")


def test_cpu_only_overlay_asks_for_no_gpu() -> None:
    objects = rendered("overlays/cpu-only")
    text = yaml.safe_dump_all(objects)
    assert "nvidia.com/gpu" not in text and "zerounlearn-gpu" not in text
    assert set(by_kind(objects, "Deployment")) == {"zerounlearn-api-cpu",
                                                    "zerounlearn-worker-cpu"}
    assert set(by_kind(objects, "ScaledObject")) == {"zerounlearn-worker-cpu"}


def test_example_overlay_sets_namespace_and_registry_images() -> None:
    objects = rendered("overlays/example")
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "zerounlearn", object_id(obj)
    images = {c["image"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")
              for c in pod_spec(o)["containers"]}
    assert not any(i.startswith("zerounlearn-service:") for i in images)
    assert all(":" in i and not i.endswith(":latest") for i in images)
