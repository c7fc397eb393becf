// What the page knows: the fleet, live buses, open alerts, devices, filters.
// Views subscribe with `on(topic, fn)`; topics: fleet, buses, alerts, devices, filters.

const MOVING_KMH = 5; // contract §3: moving means speed ≥ 5 km/h
const GPS_OFFLINE_AFTER_S = 300;
const SEVERITY_RANK = { critical: 0, major: 1, minor: 2 };

const listeners = new Map();

export const state = {
  me: null,
  fleet: null,
  districts: new Map(),
  schools: new Map(),
  operators: new Map(),
  routes: new Map(),
  /** bus id → {id, plate, schoolId, operatorId, deviceId, lon, lat, speedKmh, tsMs, heardAtMs} */
  buses: new Map(),
  /** alert id → alert (active ones only) */
  alerts: new Map(),
  /** device id → device as GET /devices shows it, plus fetchedAtMs */
  devices: new Map(),
  filters: { district: "", school: "", operator: "" },
};

export function on(topic, fn) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(fn);
}

export function emit(topic) {
  for (const fn of listeners.get(topic) ?? []) {
    try {
      fn(state);
    } catch (error) {
      console.error(`view for ${topic} failed`, error);
    }
  }
}

// ---------------------------------------------------------------- fleet
export function setFleet(doc) {
  state.fleet = doc;
  state.districts = new Map(doc.districts.map((d) => [d.id, d]));
  state.schools = new Map(doc.schools.map((s) => [s.id, s]));
  state.operators = new Map(doc.operators.map((o) => [o.id, o]));
  state.routes = new Map(doc.routes.map((r) => [r.id, r]));
  for (const bus of doc.buses) {
    const known = state.buses.get(bus.id);
    const gps = doc.devices.find((d) => d.bus === bus.id && d.kind === "gps");
    state.buses.set(bus.id, {
      ...(known ?? { lon: null, lat: null, speedKmh: null, tsMs: null, heardAtMs: null }),
      id: bus.id,
      plate: bus.plate,
      schoolId: bus.school ?? null,
      operatorId: bus.operator ?? null,
      deviceId: known?.deviceId ?? gps?.id ?? null,
    });
  }
  emit("fleet");
  emit("buses");
}

export function districtOfSchool(schoolId) {
  return state.schools.get(schoolId)?.district ?? null;
}

export function schoolName(schoolId) {
  return state.schools.get(schoolId)?.name ?? schoolId ?? "";
}

export function operatorName(operatorId) {
  return state.operators.get(operatorId)?.name ?? operatorId ?? "";
}

// ----------------------------------------------------------------- buses
/** Rows of GET /live/buses. */
export function setLiveBuses(rows) {
  for (const row of rows) {
    const known = state.buses.get(row.bus_id);
    const tsMs = row.ts ? Date.parse(row.ts) : null;
    const newer = tsMs !== null && (known?.tsMs ?? -Infinity) <= tsMs;
    state.buses.set(row.bus_id, {
      heardAtMs: null,
      ...known,
      id: row.bus_id,
      plate: row.plate,
      schoolId: row.school_id,
      operatorId: row.operator_id,
      deviceId: row.device_id,
      ...(newer || !known
        ? { lon: row.lon, lat: row.lat, speedKmh: row.speed_kmh, tsMs }
        : {}),
    });
  }
  emit("buses");
}

/** One `event: position` from the stream; returns the bus, or null if unknown and unnamed. */
export function applyPosition(p) {
  const known = state.buses.get(p.bus_id);
  if (known && known.tsMs !== null && p.ts_ms < known.tsMs) return known; // late fix: keep newest
  const bus = {
    plate: p.bus_id,
    ...known,
    id: p.bus_id,
    schoolId: p.school_id ?? known?.schoolId ?? null,
    operatorId: p.operator_id ?? known?.operatorId ?? null,
    deviceId: p.device_id ?? known?.deviceId ?? null,
    lon: p.lon,
    lat: p.lat,
    speedKmh: p.speed_kmh,
    tsMs: p.ts_ms,
    heardAtMs: Date.now(),
  };
  state.buses.set(p.bus_id, bus);
  // The terminal was just heard: it is online, whatever the last /devices said.
  const device = state.devices.get(p.device_id);
  if (device) {
    const wasOnline = device.online;
    device.online = true;
    device.last_seen_at = new Date().toISOString();
    device.last_event_at = new Date(p.ts_ms).toISOString();
    if (!wasOnline) emit("devices");
  }
  return bus;
}

function busOnline(bus, nowMs) {
  const device = bus.deviceId ? state.devices.get(bus.deviceId) : null;
  const afterMs = (device?.offline_after_s ?? GPS_OFFLINE_AFTER_S) * 1000;
  if (bus.heardAtMs !== null && bus.heardAtMs !== undefined && nowMs - bus.heardAtMs <= afterMs) {
    return true;
  }
  if (device) {
    // The server's verdict, aged by the time since it was fetched.
    const seenMs = device.last_seen_at ? Date.parse(device.last_seen_at) : null;
    return seenMs !== null && nowMs - seenMs <= afterMs + 1000;
  }
  return bus.tsMs !== null && bus.tsMs !== undefined && nowMs - bus.tsMs <= afterMs;
}

/** "alert" | "offline" | "moving" | "stopped". */
export function busState(bus, nowMs = Date.now()) {
  if (busAlerts(bus.id).length) return "alert";
  if (!busOnline(bus, nowMs)) return "offline";
  return (bus.speedKmh ?? 0) >= MOVING_KMH ? "moving" : "stopped";
}

export function busAlerts(busId) {
  const out = [];
  for (const alert of state.alerts.values()) if (alert.bus_id === busId) out.push(alert);
  return out;
}

export function schoolAlarms(schoolId) {
  const out = [];
  for (const alert of state.alerts.values()) {
    if (alert.school_id === schoolId && !alert.bus_id) out.push(alert);
  }
  return out;
}

// ---------------------------------------------------------------- alerts
export function setAlerts(items) {
  state.alerts = new Map(items.filter((a) => a.state === "active").map((a) => [a.id, a]));
  emit("alerts");
  emit("buses");
}

/**
 * One `event: alert` from the stream. Returns "opened" for a newly seen active
 * alert, "closed" when it left the queue, "changed" otherwise.
 */
export function applyAlertEvent(event) {
  const { event_id: _id, action: _action, at: _at, ...alert } = event;
  const known = state.alerts.get(alert.id);
  let outcome = "changed";
  if (alert.state === "active") {
    if (!known) outcome = "opened";
    state.alerts.set(alert.id, { ...known, ...alert });
  } else {
    if (known) outcome = "closed";
    state.alerts.delete(alert.id);
  }
  emit("alerts");
  emit("buses");
  return outcome;
}

/** The alert after a decision answered by the API (POST …/ack|resolve). */
export function applyDecision(alert) {
  if (alert.state === "active") state.alerts.set(alert.id, alert);
  else state.alerts.delete(alert.id);
  emit("alerts");
  emit("buses");
}

/** Queue order: not yet acknowledged first, then by severity, then newest. */
export function compareAlerts(a, b) {
  return (
    Number(a.acknowledged) - Number(b.acknowledged) ||
    SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity] ||
    Date.parse(b.started_at) - Date.parse(a.started_at)
  );
}

// --------------------------------------------------------------- devices
export function setDevices(items) {
  const fetchedAtMs = Date.now();
  state.devices = new Map(items.map((d) => [d.id, { ...d, fetchedAtMs }]));
  emit("devices");
  emit("buses");
}

// --------------------------------------------------------------- filters
export function setFilter(name, value) {
  state.filters[name] = value;
  if (name === "district" && value && state.filters.school) {
    if (districtOfSchool(state.filters.school) !== value) state.filters.school = "";
  }
  emit("filters");
}

/** Whether a row with these ids passes the district / school / operator filters. */
export function passes({ schoolId = null, operatorId = null, districtId = null }) {
  const f = state.filters;
  const district = districtId ?? (schoolId ? districtOfSchool(schoolId) : null);
  if (f.district && district !== f.district) return false;
  if (f.school && schoolId !== f.school) return false;
  if (f.operator && operatorId !== f.operator) return false;
  return true;
}

export function filtersActive() {
  const f = state.filters;
  return Boolean(f.district || f.school || f.operator);
}
