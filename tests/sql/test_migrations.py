"""The schema comes from the migrations alone, and is exactly the models' schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from store.sql.engine import make_engine
from store.sql.migrate import current, head, upgrade
from store.sql.schema import metadata


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_migrations_create_exactly_the_models_schema(empty_url: str) -> None:
    assert current(empty_url) is None
    assert len(_diff(empty_url)) >= len(metadata.tables)  # the comparison sees tables
    upgrade(empty_url)
    assert current(empty_url) == head()
    assert _diff(empty_url) == []
    engine = make_engine(empty_url)
    try:
        tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()
    assert tables == set(metadata.tables)
    upgrade(empty_url)  # at head already: nothing to do, nothing breaks
    assert _diff(empty_url) == []


def test_sqlite_pragmas(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    try:
        with engine.connect() as conn:
            pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                      for name in ("journal_mode", "foreign_keys", "secure_delete",
                                   "busy_timeout", "synchronous")}
    finally:
        engine.dispose()
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "secure_delete": 1,
                      "busy_timeout": 30000, "synchronous": 2}


def test_url_password_never_shown() -> None:
    from store.sql import Database, safe_url

    url = "postgresql+psycopg://svc:s3cret-pw@db.example:5432/zu"
    assert "s3cret-pw" not in safe_url(url)
    assert "s3cret-pw" not in Database(url).describe()


def test_the_sql_layer_imports_no_torch() -> None:
    code = ("import sys, store.sql, store.sql.migrate, store.sql.import_data_dir; "
            "print(sorted(m for m in ('torch', 'fastapi', 'rq', 'redis') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
