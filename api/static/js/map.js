// The Leaflet map: districts, routes and schools drawn from the fleet (so it
// reads well with no basemap), buses coloured by state, campus alarms on the
// schools, and the playback track. Leaflet is the global `L` (vendor script).

import { formatDateTime, formatNumber, t } from "./i18n.js";
import { el } from "./dom.js";
import {
  busAlerts,
  busState,
  filtersActive,
  operatorName,
  passes,
  schoolAlarms,
  schoolName,
  state,
} from "./store.js";

const DEFAULT_VIEW = { center: [31.3, 120.7], zoom: 12 }; // Suzhou Industrial Park
const ROUTE_COLORS = ["#2563eb", "#7c3aed", "#0891b2", "#c2410c", "#4d7c0f", "#be185d"];
const BUS_STYLE = {
  moving: { fillColor: "#16a34a", radius: 7 },
  stopped: { fillColor: "#2563eb", radius: 7 },
  offline: { fillColor: "#9ca3af", radius: 6 },
  alert: { fillColor: "#dc2626", radius: 9 },
};

function colorFor(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return ROUTE_COLORS[h % ROUTE_COLORS.length];
}

export class MapView {
  /** `onPlayback(busId)` runs when a bus popup's playback button is pressed. */
  constructor(container, { tileUrl = "", onPlayback = () => {} } = {}) {
    this.onPlayback = onPlayback;
    this.map = L.map(container, { zoomSnap: 0.25, worldCopyJump: true }).setView(
      DEFAULT_VIEW.center,
      DEFAULT_VIEW.zoom,
    );
    this.map.attributionControl.setPrefix(
      '<a href="https://leafletjs.com" target="_blank" rel="noopener">Leaflet</a>',
    );
    if (tileUrl) {
      L.tileLayer(tileUrl, { maxZoom: 19, crossOrigin: true }).addTo(this.map);
    } else {
      container.classList.add("no-basemap");
      this.map.attributionControl.addAttribution(`<span data-i18n="map.nobasemap">${t("map.nobasemap")}</span>`);
    }
    L.control.scale({ metric: true, imperial: false }).addTo(this.map);
    for (const [name, z] of [["districts", 250], ["routes", 380], ["track", 420], ["schools", 610], ["buses", 640]]) {
      this.map.createPane(name).style.zIndex = String(z);
    }
    this.districtLayers = new Map();
    this.routeLayers = new Map();
    this.schoolMarkers = new Map();
    this.busMarkers = new Map();
    this.track = null;
    this.fitted = false;
  }

  // ------------------------------------------------------------- fleet
  drawFleet(fleet) {
    for (const layers of [this.districtLayers, this.routeLayers, this.schoolMarkers]) {
      for (const layer of layers.values()) layer.remove();
      layers.clear();
    }
    for (const d of fleet.districts) {
      if (!d.area) continue;
      const layer = L.geoJSON(d.area, {
        pane: "districts",
        interactive: false,
        style: { color: "#64748b", weight: 1.5, dashArray: "5 5", fillColor: "#94a3b8", fillOpacity: 0.07 },
      });
      // The name sits inside the top edge, clear of the schools and routes in the middle.
      const bounds = layer.getBounds();
      const label = L.tooltip({ permanent: true, direction: "bottom", className: "district-label", offset: [0, 6] })
        .setLatLng([bounds.getNorth(), bounds.getCenter().lng])
        .setContent(d.name);
      this.districtLayers.set(d.id, L.featureGroup([layer, label]));
    }
    for (const r of fleet.routes) {
      const layer = L.geoJSON(r.path, {
        pane: "routes",
        style: { color: colorFor(r.school ?? r.id), weight: 4, opacity: 0.75, lineCap: "round" },
      });
      layer.bindTooltip(`${schoolName(r.school)} · ${r.id}`, { sticky: true });
      layer.schoolId = r.school ?? null;
      this.routeLayers.set(r.id, layer);
    }
    for (const s of fleet.schools) {
      if (!s.location) continue;
      const icon = L.divIcon({
        className: "school-icon",
        html: `<span class="school-glyph">校</span><span class="school-name"></span>`,
        iconSize: [22, 22],
        iconAnchor: [11, 11],
      });
      const marker = L.marker([s.location[1], s.location[0]], { icon, pane: "schools", keyboard: false });
      marker.schoolId = s.id;
      marker.on("add", () => this.decorateSchool(marker, s));
      marker.bindPopup(() => this.schoolPopup(s));
      this.schoolMarkers.set(s.id, marker);
    }
    this.applyFilters();
  }

  decorateSchool(marker, school) {
    const node = marker.getElement();
    if (!node) return;
    node.dataset.school = school.id;
    node.querySelector(".school-name").textContent = school.name;
    node.classList.toggle("alarm", schoolAlarms(school.id).length > 0);
  }

  schoolPopup(school) {
    const alarms = schoolAlarms(school.id);
    return el("div", { class: "popup" }, [
      el("h3", {}, school.name),
      el("p", { class: "muted" }, school.id),
      alarms.length
        ? el("p", { class: "popup-alerts" }, alarms.map((a) => t(`kind.${a.kind}`)).join("、"))
        : null,
    ]);
  }

  /** Show the fleet layers and buses that pass the filters. */
  applyFilters() {
    const f = state.filters;
    for (const [id, layer] of this.districtLayers) {
      this.toggle(layer, !f.district || f.district === id);
    }
    for (const layer of this.routeLayers.values()) {
      this.toggle(layer, passes({ schoolId: layer.schoolId }) && !f.operator);
    }
    for (const marker of this.schoolMarkers.values()) {
      this.toggle(marker, passes({ schoolId: marker.schoolId }) && !f.operator);
    }
    for (const bus of state.buses.values()) this.updateBus(bus);
  }

  toggle(layer, visible) {
    if (visible && !this.map.hasLayer(layer)) layer.addTo(this.map);
    if (!visible && this.map.hasLayer(layer)) layer.remove();
  }

  /** Zoom to what is shown; `force` also after the first time. */
  fit(force = false) {
    if (this.fitted && !force) return;
    const bounds = L.latLngBounds([]);
    const layers = [...this.districtLayers.values(), ...this.routeLayers.values()];
    for (const layer of layers) if (this.map.hasLayer(layer)) bounds.extend(layer.getBounds());
    for (const marker of [...this.schoolMarkers.values(), ...this.busMarkers.values()]) {
      if (this.map.hasLayer(marker)) bounds.extend(marker.getLatLng());
    }
    if (!bounds.isValid()) return;
    this.fitted = true;
    this.map.fitBounds(bounds.pad(filtersActive() ? 0.15 : 0.05), { maxZoom: 16 });
  }

  // ------------------------------------------------------------- buses
  updateBus(bus) {
    let marker = this.busMarkers.get(bus.id);
    const visible =
      bus.lat !== null && bus.lat !== undefined && passes({ schoolId: bus.schoolId, operatorId: bus.operatorId });
    if (!visible) {
      if (marker) this.toggle(marker, false);
      return;
    }
    const busMode = busState(bus);
    const style = BUS_STYLE[busMode];
    if (!marker) {
      marker = L.circleMarker([bus.lat, bus.lon], {
        pane: "buses",
        color: "#ffffff",
        weight: 2,
        fillOpacity: 0.95,
        ...style,
      });
      marker.busId = bus.id;
      marker.bindTooltip(() => state.buses.get(bus.id)?.plate ?? bus.id, { direction: "top", offset: [0, -8] });
      marker.bindPopup(() => this.busPopup(state.buses.get(bus.id)));
      marker.on("add", () => this.tagBus(marker));
      this.busMarkers.set(bus.id, marker);
    } else {
      marker.setLatLng([bus.lat, bus.lon]);
      marker.setStyle(style);
      marker.setRadius(style.radius);
    }
    marker.busMode = busMode;
    this.toggle(marker, true);
    this.tagBus(marker);
    if (busMode === "alert") marker.bringToFront();
  }

  /** Data attributes on the marker's SVG path: state and position, for people and tests. */
  tagBus(marker) {
    const node = marker.getElement();
    if (!node) return;
    const { lat, lng } = marker.getLatLng();
    node.dataset.bus = marker.busId;
    node.dataset.state = marker.busMode;
    node.dataset.lat = String(lat);
    node.dataset.lon = String(lng);
    node.classList.add("bus-marker");
    node.classList.toggle("alerting", marker.busMode === "alert");
  }

  busPopup(bus) {
    if (!bus) return "";
    const alerts = busAlerts(bus.id);
    const row = (label, value) => el("tr", {}, [el("th", {}, t(label)), el("td", {}, value)]);
    const button = el("button", { class: "secondary small", type: "button" }, t("playback.open"));
    button.addEventListener("click", () => {
      this.map.closePopup();
      this.onPlayback(bus.id);
    });
    return el("div", { class: "popup" }, [
      el("h3", {}, bus.plate),
      el("p", { class: "muted" }, bus.id),
      el("table", {}, [
        row("bus.school", schoolName(bus.schoolId)),
        row("bus.operator", operatorName(bus.operatorId)),
        row("bus.speed", bus.speedKmh === null ? "—" : `${formatNumber(bus.speedKmh, 1)} km/h`),
        row("bus.fix", bus.tsMs ? formatDateTime(bus.tsMs) : t("bus.nofix")),
        alerts.length ? row("bus.alerts", alerts.map((a) => t(`kind.${a.kind}`)).join("、")) : null,
      ]),
      button,
    ]);
  }

  /** Recolour every bus and school (after alerts or device health changed). */
  refreshStates() {
    for (const bus of state.buses.values()) this.updateBus(bus);
    for (const [id, marker] of this.schoolMarkers) {
      marker.getElement()?.classList.toggle("alarm", schoolAlarms(id).length > 0);
    }
  }

  focusBus(busId) {
    const marker = this.busMarkers.get(busId);
    if (!marker || !this.map.hasLayer(marker)) return false;
    this.map.setView(marker.getLatLng(), Math.max(this.map.getZoom(), 15));
    marker.openPopup();
    return true;
  }

  focusSchool(schoolId) {
    const marker = this.schoolMarkers.get(schoolId);
    if (!marker) return false;
    this.toggle(marker, true);
    this.map.setView(marker.getLatLng(), Math.max(this.map.getZoom(), 15));
    return true;
  }

  focusPoint(lon, lat) {
    this.map.setView([lat, lon], Math.max(this.map.getZoom(), 15));
  }

  // ------------------------------------------------------------- track
  showTrack(points) {
    this.clearTrack();
    if (!points.length) return;
    const latlngs = points.map((p) => [p.lat, p.lon]);
    const line = L.polyline(latlngs, { pane: "track", color: "#f59e0b", weight: 5, opacity: 0.9 });
    const start = L.circleMarker(latlngs[0], { pane: "track", radius: 5, color: "#15803d", fillOpacity: 1 });
    const end = L.circleMarker(latlngs.at(-1), { pane: "track", radius: 5, color: "#991b1b", fillOpacity: 1 });
    const cursor = L.circleMarker(latlngs[0], {
      pane: "buses",
      radius: 8,
      color: "#111827",
      weight: 3,
      fillColor: "#f59e0b",
      fillOpacity: 1,
      className: "track-cursor",
    });
    this.track = L.layerGroup([line, start, end, cursor]).addTo(this.map);
    this.track.cursor = cursor;
    line.getElement()?.classList.add("track-line");
    // Room at the bottom for the playback panel that covers the map there.
    this.map.fitBounds(line.getBounds(), {
      paddingTopLeft: [40, 40],
      paddingBottomRight: [40, 220],
      maxZoom: 17,
    });
  }

  setTrackCursor(point) {
    if (!this.track) return;
    this.track.cursor.setLatLng([point.lat, point.lon]);
  }

  clearTrack() {
    if (this.track) this.track.remove();
    this.track = null;
  }
}
