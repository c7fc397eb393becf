"""``anxiao simulate``: write the fleet document and ground truth, then publish the stream.

Examples::

    anxiao simulate --buses 5 --schools 2 --duration 2h --fast --out /tmp/sim
    anxiao simulate --buses 200 --schools 40 --duration 2h --speed 60x --out /tmp/demo
    anxiao simulate --start now --duration 8h --speed 1x --out /tmp/live
    anxiao simulate --list-scenarios
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from simulators._time import (
    format_rfc3339,
    local_datetime,
    parse_duration_s,
    parse_speed_factor,
)
from simulators.scenarios import CATALOG, DEFAULT_SCENARIOS
from simulators.stream import DEFAULT_START, RunSpec, Simulation, simulate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anxiao simulate",
        description=(
            "安校模拟器：苏州工业园区的校车、校园报警设备与脚本化违规场景。"
            " Simulator: buses, campus alarms and scripted scenarios with ground truth."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "输出 outputs (in --out): fleet.json (contract §2), ground_truth.jsonl"
            " (one episode per line), filings.json (POST /filings bodies)."
        ),
    )
    p.add_argument("--buses", type=int, default=5, help="校车数量 number of buses (default 5)")
    p.add_argument("--schools", type=int, default=2, help="学校数量 number of schools (default 2)")
    p.add_argument("--duration", default="2h", help="模拟时长 simulated duration, e.g. 90m, 2h, 1d")
    p.add_argument(
        "--start",
        default=DEFAULT_START,
        help=f"事件时间起点 RFC 3339 start, 'today' (06:00) or 'now' (default {DEFAULT_START})",
    )
    p.add_argument("--seed", type=int, default=7, help="随机种子 seed (default 7)")
    p.add_argument(
        "--scenarios",
        default="default",
        help="场景 scenarios: default | none | 逗号分隔的名称 comma-separated names",
    )
    p.add_argument("--list-scenarios", action="store_true", help="列出场景 list scenarios and exit")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", default="1x", help="实时倍速 real-time factor, e.g. 1x, 60x (default 1x)"
    )
    pace.add_argument("--fast", action="store_true", help="尽快发布 publish as fast as possible")
    p.add_argument(
        "--batch", type=int, default=1, help="每条 gps 消息的定位点数 fixes per gps message"
    )
    p.add_argument(
        "--batch-window",
        default="30s",
        help="批次最长等待 send a batch once its oldest fix is this old (default 30s)",
    )
    p.add_argument(
        "--no-impairments",
        action="store_true",
        help="不丢包、不重复、不迟到 no drops, duplicates, late or random backfill",
    )
    p.add_argument("--id-prefix", default="", help="所有编号的前缀 prefix for every id")
    p.add_argument(
        "--out", type=Path, help="输出目录 directory for fleet.json, ground truth, filings"
    )
    p.add_argument(
        "--stream-out",
        type=Path,
        help="把发布流写成 JSON lines write the publish stream ({send_ms, topic, payload})",
    )
    p.add_argument("--no-publish", action="store_true", help="只写文件 only write the files")
    p.add_argument(
        "--mqtt-url", help="代理地址 mqtt://user:pass@host:port (default: the gateway account)"
    )
    p.add_argument(
        "--client-id", default="", help="客户端标识 MQTT client id (default anxiao-sim-PID)"
    )
    p.add_argument("--window", type=int, default=20_000, help="未确认消息上限 max unacknowledged")
    p.add_argument("--quiet", action="store_true", help="不显示进度 no progress line")
    return p


def _scenarios(text: str) -> tuple[str, ...]:
    if text == "default":
        return DEFAULT_SCENARIOS
    if text == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in DEFAULT_SCENARIOS]
    if unknown:
        raise ValueError(f"未知场景 unknown scenarios: {', '.join(unknown)} (see --list-scenarios)")
    return names


def main(argv: list[str]) -> int:
    """Run ``anxiao simulate`` with ``argv`` (without the subcommand); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_scenarios:
        for s in CATALOG:
            print(f"{s.name:28} {s.kind:16} {s.expected:6} {s.description}")
        return 0
    try:
        start = args.start
        if start == "now":
            start = format_rfc3339(int(time.time()) * 1000)
        elif start == "today":
            today = local_datetime(int(time.time()) * 1000).date()
            start = f"{today.isoformat()}T06:00:00+08:00"
        spec = RunSpec(
            buses=args.buses,
            schools=args.schools,
            seed=args.seed,
            start=start,
            duration_s=parse_duration_s(args.duration),
            scenarios=_scenarios(args.scenarios),
            batch=args.batch,
            batch_window_s=parse_duration_s(args.batch_window),
            impairments=not args.no_impairments,
            id_prefix=args.id_prefix,
        )
        speed = None if args.fast else parse_speed_factor(args.speed)
        spec.start_ms  # noqa: B018 - validate the start now, not after the simulation
    except ValueError as exc:
        parser.error(str(exc))
    t0 = time.monotonic()
    try:
        sim = simulate(spec)
    except ValueError as exc:
        parser.error(str(exc))
    _summary(sim, time.monotonic() - t0)
    if args.out is not None:
        for path in sim.write(args.out):
            print(f"写入 wrote {path}", file=sys.stderr)
    if args.stream_out is not None:
        args.stream_out.parent.mkdir(parents=True, exist_ok=True)
        with args.stream_out.open("wb") as fh:
            fh.writelines(sim.stream_lines())
        print(f"写入 wrote {args.stream_out}", file=sys.stderr)
    if args.no_publish:
        return 0
    return _publish(sim, args, speed)


def _summary(sim: Simulation, seconds: float) -> None:
    city = sim.city
    alerts = sum(1 for r in sim.ground_truth if r["expected"] == "alert")
    print(
        f"城市 city: {len(city.buses)} 辆校车 buses, {len(city.schools)} 所学校 schools,"
        f" {len(city.devices)} 台设备 devices, {len(city.zones)} 个限速区 speed zones;"
        f" {len(sim.messages):,} 条消息 messages generated in {seconds:.1f} s",
        file=sys.stderr,
    )
    print(
        f"场景 scenarios: {len(sim.ground_truth)} placed ({alerts} expect an alert,"
        f" {len(sim.ground_truth) - alerts} near-misses), {len(sim.skipped)} skipped;"
        f" {len(sim.filings)} 条报备 filings",
        file=sys.stderr,
    )
    for name, reason in sim.skipped:
        print(f"  跳过 skipped {name}: {reason}", file=sys.stderr)
    for record in sim.ground_truth:
        if "intended" in record:
            print(
                f"  注意 note: {record['scenario']} on {record['device']} shows"
                f" {record['expected']} in the emitted data (intended {record['intended']})",
                file=sys.stderr,
            )


def _publish(sim: Simulation, args: argparse.Namespace, speed: float | None) -> int:
    from core.errors import AnxiaoError
    from core.settings import MqttUrl, Settings
    from simulators.mqtt import MqttPublisher
    from simulators.publisher import publish_stream

    url = MqttUrl(args.mqtt_url) if args.mqtt_url else Settings().mqtt_gateway
    client = MqttPublisher.for_url(
        url, client_id=args.client_id or f"anxiao-sim-{os.getpid()}", window=args.window
    )
    mode = "尽快 fast" if speed is None else f"实时 real time × {speed:g}"
    print(f"发布 publishing to {url.host}:{url.port} ({mode})", file=sys.stderr)
    try:
        client.connect()
        stats = publish_stream(sim.messages, client, speed=speed, progress=not args.quiet)
    except AnxiaoError as exc:
        print(f"anxiao simulate: 错误 error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n中断 interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()
    print(
        f"完成 done: {stats.messages:,} messages, {stats.bytes_sent / 1e6:.1f} MB"
        f" in {stats.seconds:.1f} s ({stats.msgs_per_s:,.0f} msg/s)",
        file=sys.stderr,
    )
    return 0
