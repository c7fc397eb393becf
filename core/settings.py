"""The one settings object, read from ``ANXIAO_*`` environment variables.

Only entry points (the CLI, ``serve``, benchmarks) construct :class:`Settings`;
everything below them takes plain keyword arguments. Defaults point at the
local stack that ``make stack-up`` starts; ``.stack/env`` (written by it) is
read too, so a checkout's commands find its broker password file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

__all__ = ["DEV_PLACEHOLDERS", "MqttUrl", "Settings"]

#: Secrets that only the local development stack may use.
DEV_PLACEHOLDERS = frozenset({"anxiao-dev", "anxiao-dev-secret", "changeme", ""})


class MqttUrl:
    """A parsed ``mqtt://user:pass@host:port`` URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    def __repr__(self) -> str:
        return f"MqttUrl(host={self.host!r}, port={self.port}, username={self.username!r})"


class Settings(BaseSettings):
    """Every setting of the service, with its unit in its name."""

    model_config = SettingsConfigDict(
        env_prefix="ANXIAO_", env_file=".stack/env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production"] = "development"
    database_url: str = "postgresql://anxiao:anxiao-dev@127.0.0.1:55432/anxiao"
    mqtt_url: str = "mqtt://svc~anxiao:anxiao-dev@127.0.0.1:51883"
    #: Account that may publish for any device: the simulator, a JT/T 808 gateway.
    mqtt_gateway_url: str = "mqtt://gw~anxiao:anxiao-dev@127.0.0.1:51883"
    #: Mosquitto password file that ``anxiao device secret`` provisions devices in.
    mqtt_password_file: Path | None = None
    #: Mosquitto's pid file: a SIGHUP makes it reload the password file.
    mqtt_pid_file: Path | None = None
    #: Map tile URL template for the dashboard (e.g. a Tianditu layer); empty draws
    #: districts, routes and schools from the fleet alone, which works offline.
    basemap_tile_url: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8420, ge=1, le=65535)
    #: Key for deriving device MQTT passwords; must be set in production.
    secret_key: str = "anxiao-dev-secret"
    #: Local time zone of service windows and digests until a fleet document sets one.
    timezone: str = "Asia/Shanghai"
    #: Telemetry older than this is dropped chunk by chunk.
    retention_days: int = Field(default=183, ge=1)
    #: How often the service enforces retention itself (Apache edition).
    retention_interval_s: int = Field(default=3600, ge=60)
    # Validity of readings (contract §1).
    max_past_s: int = Field(default=7 * 86400, ge=0)
    max_future_s: int = Field(default=300, ge=0)
    max_speed_kmh: float = Field(default=250.0, gt=0)
    #: Event-time lateness tolerated without changing alerts (contract §3).
    allowed_lateness_s: float = Field(default=30.0, ge=0)

    # ---- rules (block owned by alerts/engine.py; contract §3 defaults) ----
    speeding_open_s: float = Field(default=10.0, ge=0)
    speeding_close_s: float = Field(default=10.0, ge=0)
    #: Limit where no speed zone applies.
    default_limit_kmh: float = Field(default=60.0, gt=0)
    deviation_open_s: float = Field(default=30.0, ge=0)
    deviation_close_s: float = Field(default=30.0, ge=0)
    out_of_hours_open_s: float = Field(default=60.0, ge=0)
    out_of_hours_close_s: float = Field(default=120.0, ge=0)
    #: At or above this speed a bus is moving (out_of_hours).
    moving_kmh: float = Field(default=5.0, gt=0)
    clock_skew_max_s: float = Field(default=300.0, gt=0)
    #: An active speeding, deviation or out-of-hours alert's progress (duration, end,
    #: distance) is written at most once per this many seconds of its duration; a
    #: new maximum, an earlier start or the close is written at once. 0: every fix.
    progress_every_s: float = Field(default=15.0, ge=0)
    #: Live clock: how often silent devices are checked (offline, closing episodes).
    rules_tick_s: float = Field(default=1.0, gt=0)
    #: After a restart, readings this far back are replayed to rebuild rule state.
    rules_rebuild_lookback_s: float = Field(default=900.0, ge=0)

    # ---- ingest (block owned by ingest/; see ingest/service.py) ----------
    #: MQTT client id of this ingest worker; give each worker of a shared group its own,
    #: stable id (its persistent session holds its share of in-flight messages).
    ingest_client_id: str = Field(default="anxiao-ingest", min_length=1, max_length=128)
    #: Shared-subscription group: several workers split ``$share/<group>/<topic>``.
    ingest_share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ingest_topic: str = "anxiao/v1/dev/+/+"
    #: How long the broker keeps the session (and queues messages) while ingest is away.
    ingest_session_expiry_s: int = Field(default=7 * 86400, ge=0, le=0xFFFFFFFF)
    #: Unacknowledged QoS 1 messages the broker may have in flight to us (MQTT 5
    #: Receive Maximum); without it Mosquitto falls back to ``max_inflight_messages``.
    ingest_receive_maximum: int = Field(default=20000, ge=1, le=65535)
    #: A batch is written when it holds this many messages, this many payload bytes,
    #: or its oldest message is this old, whichever comes first.
    ingest_batch_max_messages: int = Field(default=5000, ge=1)
    ingest_batch_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    ingest_batch_max_age_ms: int = Field(default=50, ge=1)
    #: Larger payloads become ``too_large`` dead letters (contract §1: 256 KiB).
    ingest_max_payload_bytes: int = Field(default=256 * 1024, ge=1)
    #: The device directory (id -> key) is reloaded at least this often.
    ingest_device_refresh_s: float = Field(default=60.0, gt=0)
    ingest_keepalive_s: int = Field(default=30, ge=5, le=65535)
    #: Reconnect backoff (broker and database): capped, jittered exponential.
    ingest_backoff_initial_s: float = Field(default=0.1, gt=0)
    ingest_backoff_max_s: float = Field(default=10.0, gt=0)
    #: On SIGTERM, how long to keep trying to commit what is held before giving up
    #: (what is not committed is not acknowledged, so the broker redelivers it).
    ingest_shutdown_timeout_s: float = Field(default=30.0, gt=0)
    # ---- end of the ingest block -------------------------------------------

    # ---- closing the loop (block owned by alerts/closing.py: ledger, notices,
    # ---- outbox, digests; see docs/closing.md) -----------------------------
    #: Local time (HH:MM, in the fleet's timezone) at which yesterday's digest is built and mailed.
    digest_local_time: str = Field(default="07:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    #: Bureau addresses the daily digest is mailed to (comma-separated); empty: not mailed.
    digest_email_to: str = ""
    #: SMTP relay for notices and digests; an empty host leaves e-mails pending in the outbox.
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "anxiao@localhost"
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    #: Ordinary violations of one operator are collected this long into one notice.
    notice_batch_window_s: int = Field(default=3600, ge=0)
    #: An operator has this long to answer a notice before it escalates into the ledger.
    notice_answer_window_s: int = Field(default=48 * 3600, ge=60)
    #: Speeding this far over the limit (0.5 = 50 %) is critical: its notice goes at once.
    notice_critical_over_ratio: float = Field(default=0.5, gt=0)
    #: Outbox delivery: attempts before giving up, and the capped exponential backoff.
    outbox_max_attempts: int = Field(default=8, ge=1)
    outbox_backoff_initial_s: float = Field(default=30.0, gt=0)
    outbox_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    #: How often the loop looks for work (outbox rows, notices, ledger scans).
    closing_poll_s: float = Field(default=5.0, gt=0)
    #: How often the ledger's monitoring rules and the overdue check run.
    ledger_scan_interval_s: float = Field(default=600.0, gt=0)
    #: Monitoring-rule thresholds of automatic ledger entries.
    ledger_offline_after_s: int = Field(default=24 * 3600, ge=60)
    ledger_repeat_violations: int = Field(default=3, ge=1)
    ledger_repeat_window_days: int = Field(default=7, ge=1)
    ledger_button_test_days: int = Field(default=90, ge=1)
    #: Days an automatic entry gets to be rectified (its deadline).
    ledger_auto_deadline_days: int = Field(default=7, ge=1)
    # ---- end of the closing block ------------------------------------------

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.env == "production":
            weak = [
                name
                for name, value in (
                    ("ANXIAO_SECRET_KEY", self.secret_key),
                    ("ANXIAO_DATABASE_URL password", _password(self.database_url)),
                    ("ANXIAO_MQTT_URL password", _password(self.mqtt_url)),
                )
                if value in DEV_PLACEHOLDERS
            ]
            if weak:
                raise ValueError(
                    "development placeholder secrets refused in production: " + ", ".join(weak)
                )
        return self

    @property
    def mqtt(self) -> MqttUrl:
        """The service's broker connection."""
        return MqttUrl(self.mqtt_url)

    @property
    def mqtt_gateway(self) -> MqttUrl:
        """The gateway account's broker connection."""
        return MqttUrl(self.mqtt_gateway_url)


def _password(url: str) -> str:
    parts = urlsplit(url)
    return unquote(parts.password) if parts.password else ""
