"""Ingest metrics, rendered in the Prometheus text exposition format (version 0.0.4).

Written by hand (the format is a few lines of text) so that ingest needs no
client library; the API serves :func:`render_metrics` on ``/metrics``.
Counters only grow for the life of the process, as Prometheus expects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from ingest.decode import CHANNELS, REASONS

__all__ = ["Histogram", "IngestMetrics", "render_metrics"]

_BATCH_BUCKETS: Final = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000)
_SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Histogram:
    """A Prometheus histogram with fixed upper bounds (``le``)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, values: ArrayLike) -> None:
        """Record one value or an array of values."""
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if array.shape[0] == 0:
            return
        slots = np.searchsorted(self.bounds, array, side="left")
        self.counts += np.bincount(slots, minlength=self.counts.shape[0])
        self.total += float(array.sum())
        self.count += int(array.shape[0])

    def lines(self, name: str) -> Iterable[str]:
        """Exposition lines of the histogram's samples."""
        cumulative = np.cumsum(self.counts)
        for bound, count in zip(self.bounds.tolist(), cumulative[:-1].tolist(), strict=True):
            yield f'{name}_bucket{{le="{_number(bound)}"}} {count}'
        yield f'{name}_bucket{{le="+Inf"}} {int(cumulative[-1])}'
        yield f"{name}_sum {_number(self.total)}"
        yield f"{name}_count {self.count}"


class IngestMetrics:
    """Every number ingest reports about itself."""

    def __init__(self) -> None:
        self.messages_received = 0
        self.messages_acked = 0
        #: Messages committed whose connection closed before the ack (the broker redelivers).
        self.acks_dropped = 0
        self.readings_stored = dict.fromkeys(CHANNELS, 0)
        self.duplicates = dict.fromkeys(CHANNELS, 0)
        self.dead_letters = dict.fromkeys(REASONS, 0)
        self.batches = 0
        self.batch_messages = Histogram(_BATCH_BUCKETS)
        self.commit_seconds = Histogram(_SECONDS_BUCKETS)
        self.ack_lag_seconds = Histogram(_SECONDS_BUCKETS)
        self.store_retries = 0
        self.hook_errors = 0
        self.reconnects = {"mqtt": 0, "database": 0}
        self.mqtt_connected = False
        self.database_connected = False
        self.pending_messages = 0

    def render(self) -> str:
        """The metrics in Prometheus text format."""
        return render_metrics(self)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _family(name: str, kind: str, text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples]


def render_metrics(metrics: IngestMetrics) -> str:
    """Render ingest's metrics in the Prometheus text exposition format."""
    p = "anxiao_ingest_"
    lines: list[str] = []
    lines += _family(
        f"{p}messages_received_total",
        "counter",
        "MQTT messages received.",
        [f"{p}messages_received_total {metrics.messages_received}"],
    )
    lines += _family(
        f"{p}messages_acked_total",
        "counter",
        "Messages acknowledged to the broker after their batch committed.",
        [f"{p}messages_acked_total {metrics.messages_acked}"],
    )
    lines += _family(
        f"{p}acks_dropped_total",
        "counter",
        "Committed messages not acknowledged because their connection closed first "
        "(the broker redelivers them; the natural key absorbs the copies).",
        [f"{p}acks_dropped_total {metrics.acks_dropped}"],
    )
    lines += _family(
        f"{p}readings_stored_total",
        "counter",
        "Readings inserted, by channel.",
        [
            f'{p}readings_stored_total{{channel="{c}"}} {n}'
            for c, n in metrics.readings_stored.items()
        ],
    )
    lines += _family(
        f"{p}duplicates_total",
        "counter",
        "Readings already stored (absorbed by the natural key), by channel.",
        [f'{p}duplicates_total{{channel="{c}"}} {n}' for c, n in metrics.duplicates.items()],
    )
    lines += _family(
        f"{p}dead_letters_total",
        "counter",
        "Messages or GPS fixes stored as dead letters, by reason.",
        [f'{p}dead_letters_total{{reason="{r}"}} {n}' for r, n in metrics.dead_letters.items()],
    )
    lines += _family(
        f"{p}batches_total",
        "counter",
        "Batches committed.",
        [f"{p}batches_total {metrics.batches}"],
    )
    lines += _family(
        f"{p}batch_messages",
        "histogram",
        "Messages per committed batch.",
        metrics.batch_messages.lines(f"{p}batch_messages"),
    )
    lines += _family(
        f"{p}commit_seconds",
        "histogram",
        "Time to write and commit one batch.",
        metrics.commit_seconds.lines(f"{p}commit_seconds"),
    )
    lines += _family(
        f"{p}ack_lag_seconds",
        "histogram",
        "Time from receiving a message to acknowledging it.",
        metrics.ack_lag_seconds.lines(f"{p}ack_lag_seconds"),
    )
    lines += _family(
        f"{p}store_retries_total",
        "counter",
        "Batch writes retried after a database error.",
        [f"{p}store_retries_total {metrics.store_retries}"],
    )
    lines += _family(
        f"{p}hook_errors_total",
        "counter",
        "Rules hook calls that raised.",
        [f"{p}hook_errors_total {metrics.hook_errors}"],
    )
    lines += _family(
        f"{p}reconnects_total",
        "counter",
        "Connections re-established after a loss, by target.",
        [f'{p}reconnects_total{{target="{t}"}} {n}' for t, n in metrics.reconnects.items()],
    )
    lines += _family(
        f"{p}connected",
        "gauge",
        "1 while the connection is up, by target.",
        [
            f'{p}connected{{target="mqtt"}} {int(metrics.mqtt_connected)}',
            f'{p}connected{{target="database"}} {int(metrics.database_connected)}',
        ],
    )
    lines += _family(
        f"{p}pending_messages",
        "gauge",
        "Messages received and not yet acknowledged or given up.",
        [f"{p}pending_messages {metrics.pending_messages}"],
    )
    return "\n".join(lines) + "\n"
