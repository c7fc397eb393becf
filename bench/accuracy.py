"""Alert accuracy: a simulated scenario day replayed through ``anxiao serve --clock event``.

Every default scenario (near-misses included) with the simulator's
impairments — 5 m GNSS noise, ~0.4 % loss outside scenarios, duplicates,
reordering within 30 s and blind-area backfill — is published over MQTT to a
real ``anxiao serve`` on a throwaway database; the stored alerts are scored
against ``ground_truth.jsonl`` (see :mod:`simulators.score`). Prints
``{"kinds": {kind: {"precision", "recall", "start_error_s_max", ...}}, ...}``
and writes it to ``bench/results/accuracy.json``. The baseline is the ground
truth itself: the goal is precision and recall 1.0 for every kind.

    .venv/bin/python bench/accuracy.py [--buses 40] [--schools 8] [--duration 60h] [--start T]

The default run starts on Saturday 2026-11-21 at 06:00 and lasts 60 h, so the
weekend (out-of-hours on a non-school day, with and without a filing) and a
school day (every other scenario) are both in it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.migrate import migrate  # noqa: E402
from core.settings import Settings  # noqa: E402
from simulators.accuracy import replay_and_score  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buses", type=int, default=40)
    parser.add_argument("--schools", type=int, default=8)
    parser.add_argument("--duration", default="60h", help="from a Saturday 06:00: weekend + Monday")
    parser.add_argument("--start", default="2026-11-21T06:00:00+08:00", help="RFC 3339, a Saturday")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    admin = Settings().database_url
    name = f"anxiao_accuracy_{os.getpid()}_{secrets.token_hex(3)}"
    url = urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate(database_url=url)
        with tempfile.TemporaryDirectory() as tmp:
            result = replay_and_score(
                url,
                workdir=Path(tmp),
                buses=args.buses,
                schools=args.schools,
                duration=args.duration,
                start=args.start,
                seed=args.seed,
            )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for miss in result["misses"]:
        print("miss:", json.dumps(miss, ensure_ascii=False), file=sys.stderr)
    for line in result["serve_errors"]:
        print("serve:", line, file=sys.stderr)
    for fp in result["false_positives"]:
        print("false positive:", json.dumps(fp, ensure_ascii=False), file=sys.stderr)
    out = ROOT / "bench" / "results" / "accuracy.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    print(json.dumps({"kinds": result["kinds"]}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
