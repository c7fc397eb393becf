"""Alerts: rules as episode detectors, alert store, hazard ledger, notices, digests."""

__all__: list[str] = []
