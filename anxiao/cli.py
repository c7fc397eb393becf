"""The ``anxiao`` command line (contract §5).

Each subcommand imports what it needs when it runs, so ``anxiao --help`` and
the light commands stay fast. Output meant for scripts (a token, a device
secret, ``status --json``) goes alone on stdout; everything else on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import AnxiaoError
from core.settings import Settings

__all__ = ["main"]

log = logging.getLogger("anxiao")

#: Subcommands whose arguments belong to another package's own parser.
_DELEGATED = ("simulate", "ingest")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one CLI command and return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args_list and args_list[0] in _DELEGATED:
        return _delegate(args_list[0], args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    handler: Callable[[argparse.Namespace, Settings], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args, Settings())
    except AnxiaoError as exc:
        print(f"anxiao: 错误 error: {exc}", file=sys.stderr)
        return 1


def _delegate(command: str, rest: list[str]) -> int:
    # The package owns its own argument parser: `anxiao simulate` runs
    # simulators.cli.main, `anxiao ingest` runs ingest.cli.main.
    package = {"simulate": "simulators", "ingest": "ingest"}[command]
    try:
        module = importlib.import_module(f"{package}.cli")
    except ModuleNotFoundError as exc:
        print(f"anxiao: 错误 error: {command} is not available: {exc}", file=sys.stderr)
        return 2
    return int(module.main(rest))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anxiao", description="安校 anxiao: 校车与校园安全监测")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    p.set_defaults(handler=_migrate)

    fleet = sub.add_parser("fleet", help="reference data (fleet document)")
    fleet_sub = fleet.add_subparsers(metavar="ACTION")
    p = fleet_sub.add_parser("import", help="upsert a fleet document")
    p.add_argument("file", type=Path)
    p.add_argument("--prune", action="store_true", help="delete ids that the document omits")
    p.set_defaults(handler=_fleet_import)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(metavar="ACTION")
    p = token_sub.add_parser("create", help="print a new API token alone on stdout")
    p.add_argument(
        "--role", required=True, choices=["admin", "bureau", "monitor", "school", "operator"]
    )
    p.add_argument("--scope", help="school id (role school) or operator id (role operator)")
    p.add_argument("--name", default="", help="who or what the token is for")
    p.set_defaults(handler=_token_create)

    device = sub.add_parser("device", help="device credentials")
    device_sub = device.add_subparsers(metavar="ACTION")
    p = device_sub.add_parser("secret", help="print the device's MQTT password alone on stdout")
    p.add_argument("device_id")
    p.add_argument("--rotate", action="store_true", help="issue a new password, revoking the old")
    p.set_defaults(handler=_device_secret)

    p = sub.add_parser("serve", help="ingest + rules + API in the foreground")
    p.add_argument(
        "--clock",
        choices=["live", "event"],
        default="live",
        help="live: wall time drives time-based rules; event: the newest event time (replays)",
    )
    p.set_defaults(handler=_serve)

    p = sub.add_parser("status", help="schema version, TimescaleDB edition, reachability")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_status)

    p = sub.add_parser("retention", help="drop telemetry chunks older than the horizon now")
    p.add_argument("--days", type=int, help="horizon in days (default: ANXIAO_RETENTION_DAYS)")
    p.set_defaults(handler=_retention)

    _closing_parsers(sub)
    sub.add_parser("simulate", help="the simulator (anxiao simulate --help)")
    sub.add_parser("ingest", help="run MQTT ingest alone (anxiao ingest --help)")
    return parser


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from core.migrate import migrate

    applied, version = migrate(database_url=settings.database_url)
    if applied:
        print(f"applied {', '.join(applied)}; schema version {version}", file=sys.stderr)
    else:
        print(f"schema up to date (version {version})", file=sys.stderr)
    return 0


def _fleet_import(args: argparse.Namespace, settings: Settings) -> int:
    from core.fleet import import_fleet, load_document

    document = load_document(args.file)
    summary = import_fleet(document, database_url=settings.database_url, prune=args.prune)
    print(summary.describe(), file=sys.stderr)
    return 0


def _token_create(args: argparse.Namespace, settings: Settings) -> int:
    from core.credentials import create_token

    token = create_token(
        database_url=settings.database_url, role=args.role, scope_id=args.scope, name=args.name
    )
    print(token)
    return 0


def _device_secret(args: argparse.Namespace, settings: Settings) -> int:
    from core.credentials import device_secret

    secret = device_secret(
        database_url=settings.database_url,
        device_id=args.device_id,
        secret_key=settings.secret_key,
        rotate=args.rotate,
        password_file=settings.mqtt_password_file,
        broker_pid_file=settings.mqtt_pid_file,
    )
    print(secret)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from anxiao.serve import main as serve_main

    return serve_main(settings=settings, clock=args.clock)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from anxiao.status import collect_status

    status = collect_status(settings=settings)
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
    else:
        for key, value in status.items():
            print(f"{key}: {value}")
    return 0 if status["database_ok"] and status["broker_ok"] else 1


def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from core.retention import enforce_retention

    days = args.days if args.days is not None else settings.retention_days
    dropped = enforce_retention(database_url=settings.database_url, horizon_days=days)
    print(f"dropped {len(dropped)} chunks older than {days} days", file=sys.stderr)
    return 0


# ---- closing the loop (issue 7): digest, ledger, closing loop, webhook secrets ----
def _closing_parsers(sub: Any) -> None:
    p = sub.add_parser("digest", help="每日通报 the bureau's daily digest of a local date")
    p.add_argument("--date", help="local date YYYY-MM-DD (default: yesterday)")
    p.add_argument("--format", choices=["json", "html", "csv", "xlsx"], default="json")
    p.add_argument("--out", type=Path, help="write to this file (default: stdout; xlsx needs it)")
    p.add_argument(
        "--mail", action="store_true", help="also queue it for ANXIAO_DIGEST_EMAIL_TO (outbox)"
    )
    p.set_defaults(handler=_digest)

    ledger = sub.add_parser("ledger", help="隐患台账 the hazard ledger")
    ledger_sub = ledger.add_subparsers(metavar="ACTION")
    p = ledger_sub.add_parser("export", help="the month's ledger as XLSX (provincial upload)")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--out", type=Path, required=True, help="the .xlsx file to write")
    p.set_defaults(handler=_ledger_export)
    p = ledger_sub.add_parser("scan", help="run the monitoring rules and the overdue check now")
    p.set_defaults(handler=_ledger_scan)

    p = sub.add_parser(
        "closing", help="notices, ledger scans, digests and deliveries alone, in the foreground"
    )
    p.set_defaults(handler=_closing)

    operator = sub.add_parser("operator", help="bus operators")
    operator_sub = operator.add_subparsers(metavar="ACTION")
    p = operator_sub.add_parser(
        "webhook-secret", help="print the operator's webhook signing secret alone on stdout"
    )
    p.add_argument("operator_id")
    p.add_argument("--rotate", action="store_true", help="replace it with a new one")
    p.set_defaults(handler=_webhook_secret)


def _digest(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.closing import cli_digest

    if args.format == "xlsx" and args.out is None:
        print("anxiao: 错误 error: --format xlsx needs --out FILE", file=sys.stderr)
        return 2
    data = cli_digest(settings=settings, day=args.date, fmt=args.format, mail=args.mail)
    if args.out is not None:
        args.out.write_bytes(data)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def _ledger_export(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.closing import cli_ledger_export

    count = cli_ledger_export(settings=settings, month=args.month, out=args.out)
    print(f"wrote {args.out}: {count} entries", file=sys.stderr)
    return 0


def _ledger_scan(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from alerts.closing import ClosingLoop

    report = asyncio.run(ClosingLoop(settings).run_once())
    created = {rule: len(ids) for rule, ids in report.hazards_created.items()}
    print(json.dumps({"created": created, "supervised": len(report.supervised)}))
    return 0


def _closing(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import contextlib
    import signal

    from alerts.closing import ClosingLoop

    async def run() -> None:
        # SIGTERM/SIGINT cancel the loop: an unfinished delivery rolls back and is sent again.
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await ClosingLoop(settings).run()

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per webhook call is noise
    asyncio.run(run())
    log.info("closing loop stopped")
    return 0


def _webhook_secret(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.closing import cli_webhook_secret

    print(cli_webhook_secret(settings=settings, operator_id=args.operator_id, rotate=args.rotate))
    return 0
