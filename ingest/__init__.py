"""Ingest: MQTT messages in, validated column arrays out, stored with no loss and no doubles.

Public surface:

* :class:`Ingestor` and :class:`IngestConfig` -- run one ingest worker
  (``anxiao ingest`` runs it alone, ``anxiao serve`` with the rest);
* :class:`IngestBatch` and its column sets (:class:`GpsColumns`,
  :class:`HeartbeatColumns`, :class:`SmokeColumns`, :class:`ButtonColumns`),
  and :class:`RulesHook` -- the hand-off to the alerts engine after each
  commit; :func:`no_rules` is the default hook;
* :class:`IngestMetrics` and :func:`render_metrics` -- Prometheus text for
  ``/metrics``;
* :func:`decode_messages`, :class:`Limits`, :data:`REASONS` -- the wire
  contract's decoder on its own (no I/O), for replays and tests.
"""

from ingest.columns import (
    BUTTON_EVENTS,
    SMOKE_STATES,
    ButtonColumns,
    GpsColumns,
    HeartbeatColumns,
    IngestBatch,
    RulesHook,
    SmokeColumns,
    no_rules,
)
from ingest.decode import CHANNELS, REASONS, DeadLetters, Decoded, Limits, decode_messages
from ingest.metrics import IngestMetrics, render_metrics
from ingest.service import IngestConfig, Ingestor

__all__ = [
    "BUTTON_EVENTS",
    "CHANNELS",
    "REASONS",
    "SMOKE_STATES",
    "ButtonColumns",
    "DeadLetters",
    "Decoded",
    "GpsColumns",
    "HeartbeatColumns",
    "IngestBatch",
    "IngestConfig",
    "IngestMetrics",
    "Ingestor",
    "Limits",
    "RulesHook",
    "SmokeColumns",
    "decode_messages",
    "no_rules",
    "render_metrics",
]
