"""The dashboard page, its assets and ``GET /me`` over HTTP (no browser)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.routes.dashboard import STATIC_DIR
from tests.api.conftest import get


def test_page_is_served_at_root_with_a_strict_policy(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN">' in r.text
    assert "监控室" in r.text
    # No basemap configured: the meta tag is empty and images come from here only.
    assert '<meta name="anxiao-tile-url" content="">' in r.text
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "img-src 'self' data:;" in policy
    assert r.headers["cache-control"] == "no-cache"
    # Everything the page loads is local (no CDN).
    assert "https://" not in r.text.replace('href="https://leafletjs.com"', "")


def test_basemap_setting_reaches_the_page_escaped(database_url: str) -> None:
    from api import create_app

    app = create_app(database_url=database_url)
    app.state.basemap_tile_url = 'https://{s}.tiles.example.cn/{z}/{x}/{y}.png?a=1&b="2"'
    page = TestClient(app).get("/")  # the page needs no database: no lifespan here
    assert (
        'content="https://{s}.tiles.example.cn/{z}/{x}/{y}.png?a=1&amp;b=&quot;2&quot;"'
        in page.text
    )
    assert "img-src 'self' data: https:;" in page.headers["content-security-policy"]


@pytest.mark.parametrize(
    "asset",
    ["js/app.js", "js/map.js", "js/stream.js", "css/dashboard.css", "favicon.svg"],
)
def test_static_assets_are_served_and_revalidated(client: TestClient, asset: str) -> None:
    r = client.get(f"/static/{asset}")
    assert r.status_code == 200, asset
    assert r.headers["cache-control"] == "no-cache"
    assert r.content == (STATIC_DIR / asset).read_bytes()


def test_every_module_the_page_imports_exists() -> None:
    import re

    modules = STATIC_DIR / "js"
    for source in modules.glob("*.js"):
        for name in re.findall(r'from "\./([\w-]+\.js)"', source.read_text(encoding="utf-8")):
            assert (modules / name).is_file(), f"{source.name} imports missing {name}"


def test_leaflet_is_served_locally_once_web_sh_ran(client: TestClient) -> None:
    r = client.get("/static/vendor/leaflet/leaflet.js")
    assert r.status_code == 200, "run `bash scripts/web.sh` (copies Leaflet from node_modules)"
    assert b"Leaflet" in r.content[:400]
    assert client.get("/static/vendor/leaflet/leaflet.css").status_code == 200


def test_missing_asset_is_404_in_the_error_shape(client: TestClient) -> None:
    r = client.get("/static/js/nope.js")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("who", "role", "decide", "fleet"),
    [
        ("admin", "admin", True, True),
        ("bureau", "bureau", False, True),
        ("monitor", "monitor", True, True),
        ("school_a", "school", False, False),
        ("operator_a", "operator", False, False),
    ],
)
def test_me_says_what_the_token_may_do(
    client: TestClient, world: dict[str, Any], who: str, role: str, decide: bool, fleet: bool
) -> None:
    me = get(client, world["tokens"][who], "/api/v1/me").json()
    assert (me["role"], me["can_decide"], me["can_read_fleet"]) == (role, decide, fleet)
    if role == "school":
        assert me["scope_id"] == f"S001-{world['a']}"
    # What /me promises is what the API does.
    status = get(client, world["tokens"][who], "/api/v1/fleet").status_code
    assert status == (200 if fleet else 403)


def test_me_needs_a_token(client: TestClient) -> None:
    r = client.get("/api/v1/me")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
