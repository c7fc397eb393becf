"""The settings object."""

from __future__ import annotations

import pydantic
import pytest

from core.errors import ConfigError
from core.settings import MqttUrl, Settings


def _settings_without_env_file(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setitem(Settings.model_config, "env_file", None)
    return Settings()


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ANXIAO_DATABASE_URL", "ANXIAO_MQTT_URL", "ANXIAO_HTTP_PORT"):
        monkeypatch.delenv(key, raising=False)
    s = _settings_without_env_file(monkeypatch)
    assert "127.0.0.1:55432" in s.database_url
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.username) == ("127.0.0.1", 51883, "svc~anxiao")


def test_production_refuses_placeholder_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANXIAO_ENV", "production")
    with pytest.raises(pydantic.ValidationError, match="ANXIAO_SECRET_KEY"):
        _settings_without_env_file(monkeypatch)
    monkeypatch.setenv("ANXIAO_SECRET_KEY", "a-real-secret-of-some-length")
    monkeypatch.setenv("ANXIAO_DATABASE_URL", "postgresql://anxiao:s3cret@db:5432/anxiao")
    monkeypatch.setenv("ANXIAO_MQTT_URL", "mqtt://svc~anxiao:s3cret@broker:1883")
    assert _settings_without_env_file(monkeypatch).env == "production"


def test_mqtt_url_parsing() -> None:
    url = MqttUrl("mqtt://gw~anxiao:p%40ss@broker.local:2883")
    assert (url.host, url.port, url.username, url.password, url.tls) == (
        "broker.local",
        2883,
        "gw~anxiao",
        "p@ss",
        False,
    )
    assert MqttUrl("mqtts://h").port == 8883
    with pytest.raises(ConfigError):
        MqttUrl("http://h:1")
