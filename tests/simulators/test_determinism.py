"""Same seed, same bytes: fleet document, publish stream and ground truth.

Each run is a separate interpreter with a different ``PYTHONHASHSEED``, so
set iteration order or ``hash()`` of strings could not hide in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

ARGS = ["--buses", "6", "--schools", "3", "--duration", "3h", "--seed", "11", "--no-publish"]


def _run(out: Path, hash_seed: str, *extra: str) -> dict[str, bytes]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    cmd = [sys.executable, "-m", "anxiao", "simulate", *ARGS, *extra]
    cmd += ["--out", str(out), "--stream-out", str(out / "stream.jsonl")]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_same_seed_gives_identical_files(tmp_path):
    first = _run(tmp_path / "a", "1")
    second = _run(tmp_path / "b", "2")
    assert sorted(first) == ["filings.json", "fleet.json", "ground_truth.jsonl", "stream.jsonl"]
    for name in first:
        assert first[name] == second[name], name
    assert len(first["stream.jsonl"].splitlines()) > 1000
    assert len(first["ground_truth.jsonl"].splitlines()) >= 20


def test_other_seed_gives_another_run(tmp_path):
    first = _run(tmp_path / "a", "1")
    other = _run(tmp_path / "b", "1", "--seed", "12")
    assert first["fleet.json"] != other["fleet.json"]
    assert first["stream.jsonl"] != other["stream.jsonl"]


def test_stream_file_is_the_publish_stream(tmp_path):
    files = _run(tmp_path / "a", "3")
    lines = [orjson.loads(line) for line in files["stream.jsonl"].splitlines()]
    sends = [line["send_ms"] for line in lines]
    assert sends == sorted(sends)
    topics = {line["topic"].split("/")[-1] for line in lines}
    assert topics == {"gps", "heartbeat", "smoke", "button"}
    assert all(line["topic"].startswith("anxiao/v1/dev/") for line in lines)
    assert all("ts" in line["payload"] or "fixes" in line["payload"] for line in lines)
