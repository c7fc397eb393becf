"""Deployment files: no Docker engine runs here, so check what can be checked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_services_ports_and_healthchecks() -> None:
    services = _compose()["services"]
    assert set(services) == {"db", "mqtt", "anxiao"}
    assert services["db"]["image"].startswith("timescale/timescaledb:")  # TSL edition
    assert services["mqtt"]["image"].startswith("eclipse-mosquitto:2")
    for name, service in services.items():
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] > 0, name
        assert service["ports"], name
    assert "127.0.0.1:55432:5432" in services["db"]["ports"]
    assert "1883:1883" in services["mqtt"]["ports"]
    assert "8420:8420" in services["anxiao"]["ports"]
    for dependency in ("db", "mqtt"):
        assert services["anxiao"]["depends_on"][dependency]["condition"] == "service_healthy"
    env = services["anxiao"]["environment"]
    assert env["ANXIAO_ENV"] == "production"
    assert env["ANXIAO_SECRET_KEY"].startswith("${ANXIAO_SECRET_KEY:?")  # no default secret


def test_compose_mounts_exist() -> None:
    for volume in _compose()["services"]["mqtt"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).is_file(), source


def _rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_broker_policy_matches_the_local_stack() -> None:
    """The deployed ACL and broker limits are the ones the tests run against."""
    local_acl = ROOT / ".stack" / "mqtt" / "acl"
    assert local_acl.is_file(), "make test starts the local stack first"
    assert _rules((ROOT / "deploy/mosquitto/acl").read_text()) == _rules(local_acl.read_text())
    deployed = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    local = (ROOT / ".stack" / "mqtt" / "mosquitto.conf").read_text()
    for key in (
        "persistence",
        "max_inflight_messages",
        "max_queued_messages",
        "max_queued_bytes",
        "persistent_client_expiration",
        "allow_anonymous",
        "max_packet_size",
    ):
        pattern = re.compile(rf"^{key} (\S+)$", re.M)
        assert pattern.findall(deployed) == pattern.findall(local), key


def test_stack_up_again_does_nothing() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/stack.sh"), "up"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "already up, nothing to do" in result.stdout, result.stdout + result.stderr


def test_dockerfile_installs_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("anxiao", "core", "ingest", "geofence", "alerts", "api", "simulators"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_dockerfile_vendors_the_dashboard_without_a_cdn() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ANXIAO_WEB_SKIP_BROWSER=1 bash scripts/web.sh" in dockerfile
    assert "COPY --from=web /src/api/static/vendor ./api/static/vendor" in dockerfile
