"""安校 simulator: a synthetic Suzhou Industrial Park with buses, campus alarms and scenarios.

The stream is a pure function of a :class:`RunSpec` (:func:`simulate`); the
publisher (:mod:`simulators.publisher`) only paces and sends it.
"""

from simulators.city import City, CitySpec, build_city, dump_fleet, fleet_document
from simulators.scenarios import CATALOG, DEFAULT_SCENARIOS, ScenarioInfo
from simulators.stream import DEFAULT_START, Message, RunSpec, Simulation, simulate, topic_for

__all__ = [
    "CATALOG",
    "DEFAULT_SCENARIOS",
    "DEFAULT_START",
    "City",
    "CitySpec",
    "Message",
    "RunSpec",
    "ScenarioInfo",
    "Simulation",
    "build_city",
    "dump_fleet",
    "fleet_document",
    "simulate",
    "topic_for",
]
