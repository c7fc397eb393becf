"""Pure NumPy/Shapely geofence kernels: arrays in, arrays out.

No I/O, no state (beyond memoizing the national holiday calendar per
year), no asyncio. Positions are projected once to a local
metric frame (:func:`project`); route and zone geometries are prepared once
(:class:`PreparedRoutes`, :class:`PreparedZones`) and then queried for whole
batches of fixes at a time:

* :func:`distance_to_routes`: distance in metres from each fix to the nearest
  route assigned to its bus, and whether it is within that route's corridor;
* :func:`speed_limit_kmh`: the speed limit at each fix's place and time;
* :func:`service_window_mask` and :func:`school_day_mask`: whether each event
  time is inside its bus's service windows, and on a school day
  (:func:`calendar_masks`: both at once).
"""

from geofence._calendar import (
    DEFAULT_TIMEZONE,
    SchoolCalendar,
    ServiceWindows,
    calendar_masks,
    school_day_mask,
    service_window_mask,
)
from geofence._projection import project, project_geometry
from geofence._routes import PreparedRoutes, RouteDistances, RouteSets, distance_to_routes
from geofence._zones import DEFAULT_LIMIT_KMH, PreparedZones, speed_limit_kmh

__all__ = [
    "DEFAULT_LIMIT_KMH",
    "DEFAULT_TIMEZONE",
    "PreparedRoutes",
    "PreparedZones",
    "RouteDistances",
    "RouteSets",
    "SchoolCalendar",
    "ServiceWindows",
    "calendar_masks",
    "distance_to_routes",
    "project",
    "project_geometry",
    "school_day_mask",
    "service_window_mask",
    "speed_limit_kmh",
]
