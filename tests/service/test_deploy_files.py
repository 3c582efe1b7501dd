"""Static checks of the Dockerfile and docker-compose.yml (no Docker engine runs here).

The compose file is parsed with yaml.safe_load and checked for the production shape the
README promises; the Dockerfile is read instruction by instruction. What these tests do
NOT show: that the images build and the containers start (that needs a Docker engine).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction; joins continued lines."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(REPO / "Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------ Dockerfile
def test_dockerfile_base_and_known_instructions(dockerfile: list[tuple[str, str]]) -> None:
    known = {
        "FROM", "ARG", "ENV", "WORKDIR", "RUN", "COPY", "USER", "VOLUME", "EXPOSE",
        "HEALTHCHECK", "CMD", "LABEL", "ENTRYPOINT",
    }
    assert all(word in known for word, _ in dockerfile), [w for w, _ in dockerfile]
    froms = [args for word, args in dockerfile if word == "FROM"]
    assert froms == ["python:3.11-slim"]
    assert dockerfile[0][0] in ("FROM", "ARG")


def test_dockerfile_installs_torch_explicitly_with_an_index_build_arg(
    dockerfile: list[tuple[str, str]],
) -> None:
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in dockerfile if w == "ARG"}
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"].endswith("/cpu")
    runs = [a for w, a in dockerfile if w == "RUN"]
    torch_runs = [r for r in runs if "torch==" in r]
    assert torch_runs and "${TORCH_INDEX_URL}" in torch_runs[0]
    install_project = [i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r)]
    assert install_project and runs.index(torch_runs[0]) < install_project[0]


def test_dockerfile_copy_sources_exist(dockerfile: list[tuple[str, str]]) -> None:
    copies = [a for w, a in dockerfile if w == "COPY"]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} does not exist"
    ignored = (REPO / ".dockerignore").read_text().split()
    for args in copies:
        for source in [p for p in shlex.split(args) if not p.startswith("--")][:-1]:
            assert source not in ignored, f"COPY source {source} is in .dockerignore"


def test_dockerfile_runs_as_non_root_with_healthcheck_and_cmd(
    dockerfile: list[tuple[str, str]],
) -> None:
    words = [w for w, _ in dockerfile]
    users = [a for w, a in dockerfile if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    # the last USER comes before the CMD and after every RUN
    assert max(i for i, w in enumerate(words) if w == "RUN") < words.index("USER")
    health = [a for w, a in dockerfile if w == "HEALTHCHECK"]
    assert len(health) == 1 and "CMD" in health[0] and "/healthz" in health[0]
    cmds = [a for w, a in dockerfile if w == "CMD"]
    assert len(cmds) == 1 and words[-1] == "CMD"
    assert cmds[0].startswith("[") and '"app"' in cmds[0]  # exec form: signals reach python


# -------------------------------------------------------------- docker compose
def test_compose_services_and_commands(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "api", "worker"}
    assert services["api"]["command"][:3] == ["python", "-m", "app"]
    assert services["worker"]["command"] == ["python", "-m", "worker"]


def test_compose_redis_persists_with_aof(compose: dict) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    assert "--appendonly" in words and words[words.index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]


def test_compose_every_service_has_a_healthcheck(compose: dict) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no":  # a one-shot job (creates the bucket)
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert compose["services"]["worker"]["healthcheck"]["test"][-1] == "worker.healthcheck"


def test_compose_app_services_wait_for_a_healthy_redis(compose: dict) -> None:
    for name in ("api", "worker"):
        depends = compose["services"][name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name


def test_compose_shares_one_artifacts_volume(compose: dict) -> None:
    volumes = compose["volumes"]
    mounts = {}
    for name in ("api", "worker"):
        service = compose["services"][name]
        (mount,) = [v for v in service["volumes"] if v.split(":")[1] == "/data"]
        mounts[name] = mount.split(":")[0]
        assert service["environment"]["ZEROUNLEARN_DATA_DIR"] == "/data"
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert mounts["api"] == mounts["worker"] and mounts["api"] in volumes


def test_compose_api_and_worker_share_a_queue(compose: dict) -> None:
    api = compose["services"]["api"]["environment"]
    worker = compose["services"]["worker"]["environment"]
    assert api["ZEROUNLEARN_DEVICE_CLASS"] == worker["ZEROUNLEARN_DEVICE_CLASS"]


def test_compose_worker_reserves_one_gpu(compose: dict) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device.get("device_ids") == ["0"] or device.get("count") == 1
    assert worker["environment"]["ZEROUNLEARN_DEVICE"] == "cuda"
    assert "download.pytorch.org/whl/cu" in worker["build"]["args"]["TORCH_INDEX_URL"]


def test_compose_explains_how_to_add_a_second_gpu() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert re.search(r"second GPU.*\n.*device_ids", text)


# ------------------------------------------------ several machines (profile multi)
APP_SERVICES = ("api", "worker", "api-cpu", "worker-gpu", "worker-cpu")
STORE_SETTINGS = ("ZEROUNLEARN_STORE_URL", "ZEROUNLEARN_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY")


def test_compose_multi_profile_has_an_object_store_and_both_device_classes(
    compose: dict,
) -> None:
    services = compose["services"]
    for name in ("minio", "minio-init", "api-cpu", "worker-gpu", "worker-cpu"):
        assert services[name]["profiles"] == ["multi"], name
    for name in ("redis", "api", "worker"):  # the single-machine shape runs without it
        assert "profiles" not in services[name], name
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing store/zerounlearn" in init["command"][0]
    for name in ("api-cpu", "worker-gpu", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["minio-init"]["condition"] == "service_completed_successfully", name
    for name in ("api", "worker"):  # wait for the bucket when the profile is on
        depends = services[name]["depends_on"]["minio-init"]
        assert depends["required"] is False, name


def test_compose_every_app_service_uses_the_same_store(compose: dict) -> None:
    services = compose["services"]
    for setting in STORE_SETTINGS:
        values = {services[n]["environment"][setting] for n in APP_SERVICES}
        assert len(values) == 1 and "${" + setting in values.pop(), setting
    env = services["api"]["environment"]
    assert env["ZEROUNLEARN_STORE_URL"] == "${ZEROUNLEARN_STORE_URL:-}"  # default: local


def test_compose_multi_machine_services_keep_their_own_cache(compose: dict) -> None:
    services = compose["services"]
    caches = []
    for name in ("api-cpu", "worker-gpu", "worker-cpu"):
        (mount,) = [v for v in services[name]["volumes"] if v.split(":")[1] == "/data"]
        caches.append(mount.split(":")[0])
        assert services[name]["environment"]["ZEROUNLEARN_DATA_DIR"] == "/data"
    assert len(set(caches)) == 3 and "artifacts" not in caches
    assert set(caches) <= set(compose["volumes"])


def test_compose_every_worker_queue_has_an_api(compose: dict) -> None:
    services = compose["services"]
    apis = {services[n]["environment"]["ZEROUNLEARN_DEVICE_CLASS"] for n in ("api", "api-cpu")}
    assert apis == {"gpu", "cpu"}
    workers = {n: services[n]["environment"] for n in ("worker", "worker-gpu", "worker-cpu")}
    for name, env in workers.items():
        assert env["ZEROUNLEARN_DEVICE_CLASS"] in apis, name
    assert workers["worker-gpu"]["ZEROUNLEARN_DEVICE_CLASS"] == "gpu"
    assert workers["worker-cpu"]["ZEROUNLEARN_DEVICE_CLASS"] == "cpu"
    assert workers["worker-cpu"]["ZEROUNLEARN_DEVICE"] == "cpu"
    assert "deploy" not in services["worker-cpu"]
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert workers["worker-gpu"]["ZEROUNLEARN_DEVICE"] == "cuda"
    # statistics are shared only between workers that compute the same ones
    assert len({env["ZEROUNLEARN_STATS_SAMPLES"] for env in workers.values()}) == 1
