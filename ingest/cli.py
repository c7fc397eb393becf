"""``anxiao ingest``: run one ingest worker in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from typing import Any

from core.errors import AnxiaoError
from core.settings import Settings
from ingest.service import IngestConfig, Ingestor

__all__ = ["main"]

log = logging.getLogger("anxiao.ingest")
_GROUP = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEFAULT_CLIENT_ID = Settings.model_fields["ingest_client_id"].default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anxiao ingest",
        description="MQTT → TimescaleDB ingest (settings: ANXIAO_* environment variables).",
    )
    parser.add_argument("--client-id", help="MQTT client id (ANXIAO_INGEST_CLIENT_ID)")
    parser.add_argument(
        "--group",
        type=_group,
        help="shared-subscription group to split the load with other workers"
        " (give each worker its own, stable --client-id)",
    )
    parser.add_argument("--topic", help="topic filter (default anxiao/v1/dev/+/+)")
    parser.add_argument("--batch-messages", type=int, help="messages per batch at most")
    parser.add_argument("--batch-age-ms", type=int, help="oldest message's age that flushes")
    parser.add_argument(
        "--session-expiry-s", type=int, help="how long the broker keeps the session"
    )
    parser.add_argument(
        "--metrics-on-exit",
        action="store_true",
        help="print the metrics (Prometheus text) on stdout when stopping",
    )
    return parser


def _group(value: str) -> str:
    if not _GROUP.fullmatch(value):
        raise argparse.ArgumentTypeError("a group name is 1-64 of [A-Za-z0-9_.-]")
    return value


def main(argv: list[str]) -> int:
    """Run ingest; return the exit status."""
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for option, name in (
        ("client_id", "client_id"),
        ("group", "share_group"),
        ("topic", "topic"),
        ("batch_messages", "batch_max_messages"),
        ("batch_age_ms", "batch_max_age_ms"),
        ("session_expiry_s", "session_expiry_s"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[name] = value
    try:
        config = IngestConfig.from_settings(Settings(), **overrides)
        return asyncio.run(_run(config, metrics_on_exit=args.metrics_on_exit))
    except AnxiaoError as exc:
        print(f"anxiao ingest: 错误 error: {exc}", file=sys.stderr)
        return 1


async def _run(config: IngestConfig, *, metrics_on_exit: bool) -> int:
    if config.share_group and config.client_id == _DEFAULT_CLIENT_ID:
        # Two workers with one client id take each other's session over and over.
        log.warning(
            "shared group %s with the default client id: give each worker its own",
            config.share_group,
        )
    ingestor = Ingestor(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, ingestor.stop)
    log.info(
        "ingest %s: %s:%d %s → database",
        config.client_id,
        config.mqtt.host,
        config.mqtt.port,
        config.topic_filter,
    )
    await ingestor.run()
    metrics = ingestor.metrics
    log.info(
        "ingest stopped: %d messages received, %d acknowledged, %d readings stored,"
        " %d duplicates, %d dead letters",
        metrics.messages_received,
        metrics.messages_acked,
        sum(metrics.readings_stored.values()),
        sum(metrics.duplicates.values()),
        sum(metrics.dead_letters.values()),
    )
    if metrics_on_exit:
        sys.stdout.write(metrics.render())
        sys.stdout.flush()
    return 0
