"""Simulator publishing throughput in fast mode, next to a bare paho baseline in the same run.

``single``: N one-fix GPS messages; ``batch``: M messages of 50 fixes each
(the contract's batch form). Both are published by the simulator's own path
(:func:`simulators.publisher.publish_stream` over
:class:`simulators.mqtt.MqttPublisher`, QoS 1, one process) into the local
Mosquitto, timed from the first byte to the last PUBACK. ``baseline_paho``
publishes the same pre-built payloads with a bare paho-mqtt client, QoS 1,
in the fastest way we found for it (one thread, unlimited in-flight so its
per-acknowledgement queue scan is skipped, at most 5,000 unacknowledged).

Payloads are real simulator fixes (a 300-bus city, morning run), generated
before timing starts; ``generate`` reports that generation's own rate.
Topics are ``anxiao/v1/dev/BENCH-SIM-<bus>/gps/bench`` by default: one level
deeper than the contract, so ingest's ``anxiao/v1/dev/+/+`` subscriptions
(persistent sessions) never queue benchmark traffic; ``--contract-topics``
uses the real two-level topics instead, to load-test a running ingest.

    .venv/bin/python bench/simulator.py [--single 200000] [--batch 20000]

Prints one JSON object and writes it to ``bench/results/simulator.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.settings import MqttUrl, Settings  # noqa: E402
from simulators import Message, RunSpec, simulate  # noqa: E402
from simulators.mqtt import MqttPublisher  # noqa: E402
from simulators.publisher import publish_stream  # noqa: E402

FIXES_PER_BATCH = 50
GOAL_SINGLE_MSGS_PER_S = 20_000
GOAL_BATCH_FIXES_PER_S = 500_000
BASELINE_WINDOW = 5_000


def _fixes(buses: int) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """One-fix GPS payloads of a simulated morning, per device, in stream order."""
    spec = RunSpec(buses=buses, schools=max(1, buses // 5), seed=1, scenarios=())
    t0 = time.perf_counter()
    sim = simulate(spec)
    seconds = time.perf_counter() - t0
    fixes: list[tuple[str, bytes]] = []
    for m in sim.messages:
        if m.topic.endswith("/gps") and not m.payload.startswith(b'{"fixes"'):
            fixes.append((m.topic.split("/")[3], m.payload))
    generate = {
        "buses": buses,
        "simulated_s": spec.duration_s,
        "messages": len(sim.messages),
        "seconds": round(seconds, 2),
        "msgs_per_s": round(len(sim.messages) / seconds),
    }
    return fixes, generate


def _topic(device: str, contract: bool) -> str:
    base = f"anxiao/v1/dev/BENCH-SIM-{device}/gps"
    return base if contract else base + "/bench"


def _single(fixes: list[tuple[str, bytes]], n: int, contract: bool) -> list[Message]:
    return [
        Message(k, _topic(fixes[k % len(fixes)][0], contract), fixes[k % len(fixes)][1])
        for k in range(n)
    ]


def _batches(fixes: list[tuple[str, bytes]], n: int, contract: bool) -> list[Message]:
    """``n`` messages of 50 consecutive fixes of one device each."""
    by_device: dict[str, list[bytes]] = {}
    for device, payload in fixes:
        by_device.setdefault(device, []).append(payload)
    groups: list[tuple[str, bytes]] = []
    for device, payloads in by_device.items():
        for i in range(0, len(payloads) - FIXES_PER_BATCH + 1, FIXES_PER_BATCH):
            body = b",".join(payloads[i : i + FIXES_PER_BATCH])
            groups.append((device, b'{"fixes":[' + body + b'],"backfill":false}'))
    return [
        Message(k, _topic(groups[k % len(groups)][0], contract), groups[k % len(groups)][1])
        for k in range(n)
    ]


def _ours(url: MqttUrl, messages: list[Message], fixes_per_message: int) -> dict[str, Any]:
    client = MqttPublisher.for_url(url, client_id=f"bench-sim-{os.getpid()}", window=20_000)
    client.connect()
    try:
        stats = publish_stream(messages, client, speed=None, progress=False)
    finally:
        client.close()
    return _rates(len(messages), fixes_per_message, stats.seconds, stats.bytes_sent)


def _paho(url: MqttUrl, messages: list[Message], fixes_per_message: int) -> dict[str, Any]:
    acked = 0

    def on_publish(*_args: object) -> None:
        nonlocal acked
        acked += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{os.getpid()}")
    client.username_pw_set(url.username, url.password)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(url.host, url.port)
    while not client.is_connected():
        client.loop(0.1)
    n = len(messages)
    t0 = time.perf_counter()
    for published, m in enumerate(messages, start=1):
        client.publish(m.topic, m.payload, qos=1)
        if published - acked >= BASELINE_WINDOW:
            while published - acked > BASELINE_WINDOW // 2:
                client.loop_read(10_000)
    while acked < n:
        client.loop(1.0)
    seconds = time.perf_counter() - t0
    client.disconnect()
    size = sum(len(m.payload) + len(m.topic) + 6 for m in messages)
    return _rates(n, fixes_per_message, seconds, size)


def _rates(n: int, fixes_per_message: int, seconds: float, size: int) -> dict[str, Any]:
    return {
        "messages": n,
        "fixes": n * fixes_per_message,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(n / seconds),
        "fixes_per_s": round(n * fixes_per_message / seconds),
        "mb_per_s": round(size / seconds / 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=200_000, help="one-fix messages")
    parser.add_argument("--batch", type=int, default=20_000, help="50-fix messages")
    parser.add_argument("--baseline-single", type=int, default=50_000)
    parser.add_argument("--baseline-batch", type=int, default=4_000)
    parser.add_argument("--buses", type=int, default=300, help="simulated buses for payloads")
    parser.add_argument(
        "--contract-topics",
        action="store_true",
        help="publish on anxiao/v1/dev/{id}/gps (a running ingest will receive it)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/simulator.json")
    args = parser.parse_args()

    url = Settings().mqtt_gateway
    fixes, generate = _fixes(args.buses)
    single = _single(fixes, args.single, args.contract_topics)
    batch = _batches(fixes, args.batch, args.contract_topics)

    result: dict[str, Any] = {}
    result["single"] = _ours(url, single, 1)
    result["batch"] = _ours(url, batch, FIXES_PER_BATCH)
    result["batch"]["fixes_per_message"] = FIXES_PER_BATCH
    result["baseline_paho"] = {
        "single": _paho(url, single[: args.baseline_single], 1),
        "batch": _paho(url, batch[: args.baseline_batch], FIXES_PER_BATCH),
        "client": f"paho-mqtt {paho.mqtt.__version__}",
        "method": "one thread, QoS 1, max_inflight 0 (unlimited), <= 5000 unacknowledged",
    }
    base = result["baseline_paho"]
    result["ratio_to_paho"] = {
        "single_msgs": round(result["single"]["msgs_per_s"] / base["single"]["msgs_per_s"], 2),
        "batch_fixes": round(result["batch"]["fixes_per_s"] / base["batch"]["fixes_per_s"], 2),
    }
    result["goals"] = {
        "single_msgs_per_s": GOAL_SINGLE_MSGS_PER_S,
        "batch_fixes_per_s": GOAL_BATCH_FIXES_PER_S,
        "met": result["single"]["msgs_per_s"] >= GOAL_SINGLE_MSGS_PER_S
        and result["batch"]["fixes_per_s"] >= GOAL_BATCH_FIXES_PER_S,
    }
    result["generate"] = generate
    result["setup"] = {
        "broker": f"{url.host}:{url.port}",
        "topics": _topic("<bus>", args.contract_topics),
        "qos": 1,
        "processes": 1,
        "payload_bytes_single": round(sum(len(m.payload) for m in single) / len(single)),
        "payload_bytes_batch": round(sum(len(m.payload) for m in batch) / len(batch)),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    text = json.dumps(result, ensure_ascii=False)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
