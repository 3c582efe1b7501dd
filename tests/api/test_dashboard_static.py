"""The dashboard's files as the API serves them: local only (no CDN), every asset found,
and the role endpoint the page relies on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.routes.observe import STATIC_DIR
from app.settings import Settings
from tests.support.redis_dbs import NEVER_CONTACTED

ADMIN = "dashboard-admin-token-0123456789abcdef"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    # Redis is not needed for these routes (the connection is lazy)
    settings = Settings(redis_url=NEVER_CONTACTED, data_dir=tmp_path / "data",
                        admin_token=ADMIN)
    with TestClient(create_app(settings)) as c:
        yield c


def test_every_asset_is_local_and_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = set(re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text))
    for source in STATIC_DIR.rglob("*.js"):
        text = source.read_text()
        assets |= {f"/ui/static/js/{m}" for m in re.findall(r'from "\./([\w.]+)"', text)}
    assert {"/ui/static/style.css", "/ui/static/js/app.js", "/ui/static/js/api.js"} <= assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    for source in STATIC_DIR.rglob("*"):
        if source.is_file():
            text = source.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), source
    assert client.get("/ui").status_code in (200, 307)


def test_keys_me_tells_the_role(client: TestClient) -> None:
    assert client.get("/v1/keys/me").status_code == 401
    me = client.get("/v1/keys/me", headers={"Authorization": f"Bearer {ADMIN}"})
    assert me.status_code == 200 and me.json()["role"] == "admin" and me.json()["models"] is None
