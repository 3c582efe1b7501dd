"""A data directory written before metadata moved to SQL (tests/fixtures/datadir-v1):
the API and the worker refuse to start on it with the import command in the message
(rather than serve an empty service); after the operator's import they start, and the
old data is served. No Redis traffic: the refusal comes before any."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from store import ArtifactStore
from store.sql.startup import NotImported
from tests.support.datadir_v1 import copy_datadir_v1
from tests.support.redis_dbs import NEVER_CONTACTED
from worker.context import WorkerContext
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
MODEL = "m-00000000f1a0"
UNUSED_REDIS = NEVER_CONTACTED  # create_app connects lazily


def test_old_data_dir_is_refused_until_imported(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    copy_datadir_v1(data_dir)
    settings = Settings(redis_url=UNUSED_REDIS, data_dir=data_dir, auth="disabled")
    with pytest.raises(NotImported, match=r"python -m cli\.admin import-data-dir"):
        create_app(settings)
    with pytest.raises(NotImported, match="import it first"):
        WorkerContext.from_settings(WorkerSettings(redis_url="", data_dir=data_dir))
    done = subprocess.run([sys.executable, "-m", "cli.admin", "import-data-dir",
                           "--data-dir", str(data_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    create_app(settings)  # starts now
    WorkerContext.from_settings(WorkerSettings(redis_url="", data_dir=data_dir))
    store = ArtifactStore(data_dir)
    try:
        assert store.get_model(MODEL)["status"] == "ready"
        assert [v["id"] for v in store.list_versions(MODEL)] == ["v0", "v1"]
        assert len(store.list_jobs(MODEL)) == 5
        assert store.audit.verify()["valid"]
    finally:
        store.close()


def test_an_empty_data_dir_starts(tmp_path: Path) -> None:
    settings = Settings(redis_url=UNUSED_REDIS, data_dir=tmp_path / "fresh", auth="disabled")
    create_app(settings)
    store = ArtifactStore(tmp_path / "fresh")  # the database the app was given
    try:
        if store.database_url.startswith("sqlite"):  # the default: in the data directory
            assert (tmp_path / "fresh" / "metadata.sqlite3").is_file()
        assert store.list_models() == [] and store.audit.verify()["valid"]
    finally:
        store.close()
