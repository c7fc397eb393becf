"""Core: settings, database access, migrations, domain types, fleet registry, calendar.

Knows nothing of MQTT, HTTP or the packages above it.
"""

__all__: list[str] = []
