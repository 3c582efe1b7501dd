"""The object backends' contract, and the store on top of it, against both backends:
the local directory and a real S3-compatible server (moto's, on localhost).

Conditional writes (put_if_absent, put_if_match) are what every multi-writer structure
of the store rests on, so races are run for real: threads, and separate processes.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from store import ArtifactStore, NotFound, StoreError
from store.backends import LocalBackend, ObjectBackend, open_backend
from store.backends.s3 import S3Backend
from tests.support.moto_s3 import CREDENTIALS, new_bucket

FORK = multiprocessing.get_context("fork")


def make_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> ObjectBackend:
    if kind == "local":
        return LocalBackend(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Backend(new_bucket(endpoint), endpoint_url=endpoint, client_options=CREDENTIALS)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectBackend:
    return make_backend(request.param, tmp_path, request)


def store_on(backend: ObjectBackend, root: Path) -> ArtifactStore:
    """A store on `backend`; for an object store, `root` is this "machine's" cache. Every
    "machine" of a test shares one metadata database (what ZEROUNLEARN_DATABASE_URL
    gives several machines): an SQLite file beside their roots, in the test's tmp_path."""
    shared = f"sqlite:///{Path(root).parent / 'shared-metadata.sqlite3'}"
    if isinstance(backend, LocalBackend):
        return ArtifactStore(backend.root, backend, database_url=shared)
    return ArtifactStore(root, backend, database_url=shared)


def clone(backend: ObjectBackend) -> ObjectBackend:
    """Another client of the same objects (as a second process or machine would have)."""
    if isinstance(backend, LocalBackend):
        return LocalBackend(backend.root)
    assert isinstance(backend, S3Backend)
    return S3Backend(backend.url, endpoint_url=backend.endpoint_url, client_options=CREDENTIALS)


# ------------------------------------------------------------ the primitives
def test_read_put_and_tokens(backend: ObjectBackend) -> None:
    assert backend.read("a/b.json") is None
    backend.put("a/b.json", b"one")
    first = backend.read("a/b.json")
    assert first is not None and first.data == b"one"
    backend.put("a/b.json", b"two")
    second = backend.read("a/b.json")
    assert second is not None and second.data == b"two" and second.token != first.token
    backend.delete("a/b.json")
    backend.delete("a/b.json")  # deleting nothing is fine
    assert backend.read("a/b.json") is None and not backend.exists("a/b.json")


def test_put_if_absent_claims_a_key_once(backend: ObjectBackend) -> None:
    assert backend.put_if_absent("claims/v1", b"mine") is True
    assert backend.put_if_absent("claims/v1", b"theirs") is False
    blob = backend.read("claims/v1")
    assert blob is not None and blob.data == b"mine"


def test_put_if_match_is_compare_and_swap(backend: ObjectBackend) -> None:
    assert backend.put_if_match("cas/x", b"new", "no-such-token") is False
    assert backend.read("cas/x") is None  # a missing object is never "matched"
    backend.put("cas/x", b"v1")
    v1 = backend.read("cas/x")
    assert v1 is not None
    assert backend.put_if_match("cas/x", b"v2", v1.token) is True
    assert backend.put_if_match("cas/x", b"v3", v1.token) is False  # stale token
    now = backend.read("cas/x")
    assert now is not None and now.data == b"v2"


def test_update_loses_no_increment_under_contention(backend: ObjectBackend) -> None:
    other = clone(backend)

    def bump(i: int) -> None:
        target = backend if i % 2 else other
        for _ in range(5):
            target.update("counter", lambda d: str(int(d or b"0") + 1).encode())

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(bump, range(6)))
    blob = backend.read("counter")
    assert blob is not None and blob.data == b"30"
    assert backend.update("counter", lambda d: None) is None  # declining writes nothing


def test_update_and_put_if_absent_racing_on_a_new_key_create_it_once(
    backend: ObjectBackend,
) -> None:
    """An `update` that creates a missing object and put_if_absent race: one of them
    creates it, and no update is lost (locally put_if_absent takes no lock)."""
    other = clone(backend)

    def append(data: bytes | None) -> bytes:
        return b"u" if data is None else data + b"+"

    def work(i: int) -> bool | None:
        target = backend if i % 2 else other
        if i % 3 == 0:
            return target.put_if_absent("born", f"claim{i}".encode())
        target.update("born", append)
        return None

    n = 12
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(work, range(n)))
    updates = sum(1 for i in range(n) if i % 3)
    blob = backend.read("born")
    assert blob is not None
    claims = [i for i, won in enumerate(results) if won]
    if claims:  # a put_if_absent created it; every update came after
        assert len(claims) == 1 and blob.data == f"claim{claims[0]}".encode() + b"+" * updates
    else:  # an update created it
        assert blob.data == b"u" + b"+" * (updates - 1)


def _claim(kind_url: tuple[str, str, str | None], key: str, me: str, at: float) -> bool:
    kind, where, endpoint = kind_url
    backend = _connect(kind, where, endpoint)
    time.sleep(max(0.0, at - time.time()))
    return backend.put_if_absent(key, me.encode())


def _connect(kind: str, where: str, endpoint: str | None) -> ObjectBackend:
    """A backend in a child process, its client made before the race starts."""
    if kind == "local":
        return LocalBackend(where)
    backend = S3Backend(where, endpoint_url=endpoint, client_options=CREDENTIALS)
    assert backend.client is not None
    return backend


def _address(backend: ObjectBackend) -> tuple[str, str, str | None]:
    if isinstance(backend, LocalBackend):
        return ("local", str(backend.root), None)
    assert isinstance(backend, S3Backend)
    return ("s3", backend.url, backend.endpoint_url)


def test_put_if_absent_race_between_processes(backend: ObjectBackend) -> None:
    address = _address(backend)
    with ProcessPoolExecutor(max_workers=4, mp_context=FORK) as pool:
        for round_ in range(4):
            key = f"race/{round_}"
            at = time.time() + 1.5
            wins = list(pool.map(_claim, [address] * 4, [key] * 4,
                                 [f"p{i}" for i in range(4)], [at] * 4))
            assert wins.count(True) == 1, wins
            blob = backend.read(key)
            assert blob is not None and blob.data == f"p{wins.index(True)}".encode()


def test_list_and_children(backend: ObjectBackend) -> None:
    for key in ("m/a.json", "m/b/c.json", "m/b/d/e.json", "n/x.json", "mm.json"):
        backend.put(key, b"{}")
    assert backend.list_keys("m/") == ["m/a.json", "m/b/c.json", "m/b/d/e.json"]
    assert backend.list_keys("m/b/") == ["m/b/c.json", "m/b/d/e.json"]
    assert backend.children("m/") == ["a.json", "b/"]
    assert backend.children("nothing/") == [] and backend.list_keys("nothing/") == []
    if isinstance(backend, LocalBackend):  # temp files and locks are never listed
        (backend.root / "m" / ".tmp-123-a.json").write_text("torn")
        backend.update("m/a.json", lambda d: b"[]")  # makes m/.locks/
        assert backend.list_keys("m/") == ["m/a.json", "m/b/c.json", "m/b/d/e.json"]
        assert backend.children("m/") == ["a.json", "b/"]


def test_big_files_round_trip(backend: ObjectBackend, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: a multipart upload on S3
    backend.upload_file(src, "blobs/one.bin")
    dst = tmp_path / "out" / "one.bin"
    backend.download_file("blobs/one.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    with pytest.raises(FileNotFoundError):
        backend.download_file("blobs/none.bin", tmp_path / "none.bin")
    assert not (tmp_path / "none.bin").exists()


def test_keys_are_checked(backend: ObjectBackend) -> None:
    for bad in ("", "/abs", "a/../b", "a/.hidden", "a//b"):
        with pytest.raises(ValueError):
            backend.put(bad, b"x")


def test_open_backend_from_a_url(tmp_path: Path) -> None:
    assert isinstance(open_backend(None, tmp_path), LocalBackend)
    assert isinstance(open_backend("", tmp_path), LocalBackend)
    s3 = open_backend("s3://bucket/some/prefix", tmp_path, s3_endpoint_url="http://x:1")
    assert isinstance(s3, S3Backend) and s3.bucket == "bucket" and s3.prefix == "some/prefix/"
    assert s3.location("exports/m") == "s3://bucket/some/prefix/exports/m"
    with pytest.raises(ValueError):
        open_backend("ftp://host/x", tmp_path)


# -------------------------------------------------------- the store on top
@pytest.fixture
def store(backend: ObjectBackend, tmp_path: Path) -> ArtifactStore:
    return store_on(backend, tmp_path / "machine-a")


@pytest.fixture
def model(store: ArtifactStore) -> dict:
    doc = store.create_model({"name": "tiny", "source": "/models/tiny"})
    store.publish_version(doc["id"], {"parent": None}, None)
    return doc


def test_a_crash_between_patch_and_manifest_publishes_nothing(
    store: ArtifactStore, model: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch = tmp_path / "p.safetensors"
    patch.write_bytes(b"patch bytes")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("power cut")

    with monkeypatch.context() as m:  # the manifest's transaction is the step that fails
        m.setattr(store.meta.versions, "publish", crash)
        with pytest.raises(OSError):
            store.publish_version(model["id"], {"parent": "v0"}, patch)
    if True:  # the patch blob was uploaded first: it is there, unreferenced
        assert store.backend.list_keys(f"models/{model['id']}/patches/")
    assert [v["id"] for v in store.list_versions(model["id"])] == ["v0"]
    with pytest.raises(NotFound):
        store.get_version(model["id"], "v1")
    assert store.publish_version(model["id"], {"parent": "v0"}, patch)["id"] == "v1"


def test_versions_are_immutable(store: ArtifactStore, model: dict, tmp_path: Path) -> None:
    patch = tmp_path / "p.safetensors"
    patch.write_bytes(b"first")
    v1 = store.publish_version(model["id"], {"parent": "v0"}, patch)
    claim = {**v1, "id": "v1", "patch": None, "metrics": {"forged": True}}
    assert store.publish_version(model["id"], claim, None)["id"] == "v2"
    assert store.get_version(model["id"], "v1") == v1


def test_another_machine_reads_versions_and_patches(
    backend: ObjectBackend, store: ArtifactStore, model: dict, tmp_path: Path
) -> None:
    content = b"the patch" * 1000
    patch = tmp_path / "p.safetensors"
    patch.write_bytes(content)
    store.publish_version(model["id"], {"parent": "v0"}, patch)
    other = store_on(clone(backend), tmp_path / "machine-b")
    assert [v["id"] for v in other.list_versions(model["id"])] == ["v0", "v1"]
    path = other.patch_path(model["id"], "v1")
    assert path.read_bytes() == content
    if store.shared:
        assert path.is_relative_to(tmp_path / "machine-b")  # downloaded into B's cache
        path.write_bytes(b"short")  # a damaged cache copy is fetched again
        assert other.patch_path(model["id"], "v1").read_bytes() == content
        sha = hashlib.sha256(content).hexdigest()
        backend.put(f"models/{model['id']}/patches/{sha}.safetensors", b"x" * len(content))
        path.unlink()
        with pytest.raises(StoreError, match="sha256"):  # a tampered object is refused
            other.patch_path(model["id"], "v1")


def _transition(address: tuple[str, str, str | None], root: str, job_id: str, to: str,
                at: float) -> bool:
    store = store_on(_connect(*address), Path(root))
    time.sleep(max(0.0, at - time.time()))
    return store.transition_job(job_id, ["queued"], to) is not None


def test_only_one_of_two_racing_processes_moves_a_job(
    backend: ObjectBackend, store: ArtifactStore, model: dict, tmp_path: Path
) -> None:
    address = _address(backend)
    with ProcessPoolExecutor(max_workers=2, mp_context=FORK) as pool:
        for _ in range(5):
            job = store.create_job({"kind": "forget", "model_id": model["id"], "version": "v0"})
            at = time.time() + 1.5
            wins = list(pool.map(_transition, [address] * 2,
                                 [str(tmp_path / "p0"), str(tmp_path / "p1")],
                                 [job["id"]] * 2, ["running", "cancelled"], [at] * 2))
            assert wins.count(True) == 1, wins
            status = store.get_job(job["id"])["status"]
            assert status == ("running" if wins[0] else "cancelled")


def test_audit_chain_from_two_clients_stays_one_chain(
    backend: ObjectBackend, store: ArtifactStore, tmp_path: Path
) -> None:
    other = store_on(clone(backend), tmp_path / "machine-b")

    def log(i: int) -> int:
        target = store if i % 2 else other
        return target.audit.append("system", "test.event", detail={"i": i})["seq"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        seqs = list(pool.map(log, range(20)))
    assert sorted(seqs) == list(range(1, 21))
    report = other.audit.verify()
    assert report["valid"] and report["entries"] == 20
    items, after = store.audit.page(after=5, limit=10)
    assert [e["seq"] for e in items] == list(range(6, 16)) and after == 15


def test_documents_and_secrets_are_shared(
    backend: ObjectBackend, store: ArtifactStore, model: dict, tmp_path: Path
) -> None:
    other = store_on(clone(backend), tmp_path / "machine-b")
    assert other.secret("record-salt") == store.secret("record-salt")
    doc, token = store.keys.create("operator", [model["id"]], created_by=None)
    assert other.keys.authenticate(token)["id"] == doc["id"]
    other.keys.revoke(doc["id"])
    assert store.keys.authenticate(token) is None
    job = other.create_job({"kind": "export", "model_id": model["id"], "version": "v0"})
    store.requests.create({"job_id": job["id"], "kind": "export", "task_args": ["x"]})
    assert [r["job_id"] for r in other.requests.list()] == [job["id"]]
    other.requests.purge(job["id"])
    store.requests.settle(job["id"])
    assert other.requests.list() == [] and other.requests.get(job["id"])["task_args"] is None
    assert store.idempotency.insert_or_get("ab" * 32, job["id"], "cd" * 32)[1]
    seen, mine = other.idempotency.insert_or_get("ab" * 32, "j-" + "0" * 16, "cd" * 32)
    assert not mine and seen["job_id"] == job["id"]
    assert [m["id"] for m in other.list_models()] == [model["id"]]
    assert [j["id"] for j in store.list_jobs(model["id"])] == [job["id"]]


def test_statistics_and_exports_reach_another_machine(
    backend: ObjectBackend, store: ArtifactStore, tmp_path: Path
) -> None:
    other = store_on(clone(backend), tmp_path / "machine-b")
    (store.stats_dir / "second_moment-L001-abc.safetensors").write_bytes(b"C")
    (store.stats_dir / ".lock-abc").write_bytes(b"")
    pushed = store.push_stats()
    fetched = other.pull_stats()
    assert (other.stats_dir / "second_moment-L001-abc.safetensors").read_bytes() == b"C"
    assert not (other.stats_dir / ".lock-abc").exists() or not store.shared
    if store.shared:
        assert pushed == fetched == ["second_moment-L001-abc.safetensors"]
        assert other.pull_stats() == [] and store.push_stats() == []  # nothing new
    else:  # one directory: nothing to copy
        assert pushed == fetched == []
    export = store.exports_dir / "m-0123456789ab" / "v1"
    (export / "sub").mkdir(parents=True)
    (export / "sub" / "weights.bin").write_bytes(b"w")
    (export / "done.json").write_text("{}")
    where = store.publish_export("m-0123456789ab", "v1", export, "done.json")
    if store.shared:
        assert where.startswith("s3://") and where.endswith("exports/m-0123456789ab/v1")
        assert backend.list_keys("exports/") == ["exports/m-0123456789ab/v1/done.json",
                                            "exports/m-0123456789ab/v1/sub/weights.bin"]
    else:
        assert where == str(export)
