// The page's entry point: login by token, then load, subscribe and keep fresh.
//
// Data: GET /me (what this token may do), GET /fleet (districts, routes,
// schools; admin/bureau/monitor only), GET /live/buses, GET /devices,
// GET /alerts?state=active, and the /stream (positions, alert events). The
// stream keeps everything current; periodic reloads only reconcile.

import { AlertQueue } from "./alerts.js";
import { Api, forgetToken, storedToken, storeToken } from "./api.js";
import { perFrame, toast } from "./dom.js";
import { Filters } from "./filters.js";
import { HealthPanel } from "./health.js";
import { applyTexts, currentLang, onLangChange, setLang, setTimeZone, t } from "./i18n.js";
import { MapView } from "./map.js";
import { Playback } from "./playback.js";
import * as sound from "./sound.js";
import {
  applyAlertEvent,
  applyPosition,
  busState,
  on,
  passes,
  setAlerts,
  setDevices,
  setFleet,
  setLiveBuses,
  state,
} from "./store.js";
import { openStream } from "./stream.js";

const RELOAD_BUSES_MS = 30000;
const RELOAD_DEVICES_MS = 30000;
const RELOAD_ALERTS_MS = 60000;
const ALARM_REPEAT_MS = 8000;

function tileUrl() {
  const value = document.querySelector("meta[name=anxiao-tile-url]")?.content ?? "";
  return value.startsWith("__") ? "" : value; // the placeholder when served as a plain file
}

// ------------------------------------------------------------------ login
function showLogin(message = "") {
  document.getElementById("app").hidden = true;
  document.getElementById("login").hidden = false;
  const error = document.getElementById("login-error");
  error.textContent = message;
  error.hidden = !message;
  document.getElementById("token-input").focus();
}

async function login(event) {
  event.preventDefault();
  sound.unlock(); // a click: the browser lets audio start now
  const token = document.getElementById("token-input").value.trim();
  if (!token) return;
  const button = document.getElementById("login-submit");
  button.disabled = true;
  try {
    await tryStart(token);
  } finally {
    button.disabled = false;
  }
}

async function tryStart(token) {
  const api = new Api(token, { onUnauthorized: () => logout(t("login.bad")) });
  let me;
  try {
    me = await new Api(token).me();
  } catch (failure) {
    forgetToken();
    showLogin(failure.status === 401 ? t("login.bad") : t("login.failed", failure.message));
    return;
  }
  storeToken(token);
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  start(api, me);
}

function logout(message = "") {
  forgetToken();
  if (message) sessionStorage.setItem("anxiao.logoutMessage", message);
  window.location.reload();
}

// --------------------------------------------------------------- the room
function start(api, me) {
  state.me = me;
  document.body.dataset.role = me.role;
  const who = document.getElementById("who");
  const renderWho = () => {
    who.textContent = `${t(`role.${me.role}`)}${me.scope_id ? ` · ${me.scope_id}` : ""}${me.name ? ` · ${me.name}` : ""}`;
  };
  renderWho();
  onLangChange(renderWho);

  const map = window.L
    ? new MapView(document.getElementById("map"), { tileUrl: tileUrl(), onPlayback: (id) => playback.open(id) })
    : nullMap();
  const filters = new Filters();
  const queue = new AlertQueue({
    api,
    onLocate: (alert) => {
      if (alert.bus_id && map.focusBus(alert.bus_id)) return;
      const where = alert.details?.end ?? alert.details?.start;
      if (where) map.focusPoint(where[0], where[1]);
      else if (alert.school_id) map.focusSchool(alert.school_id);
    },
  });
  const health = new HealthPanel();
  const playback = new Playback({ api, map });
  document.getElementById("playback-open").addEventListener("click", () => playback.open());
  filters.render();

  const summary = () => {
    const counts = { moving: 0, stopped: 0, offline: 0, alert: 0 };
    const now = Date.now();
    for (const bus of state.buses.values()) {
      if (passes({ schoolId: bus.schoolId, operatorId: bus.operatorId })) counts[busState(bus, now)] += 1;
    }
    for (const [key, value] of Object.entries(counts)) {
      document.querySelector(`[data-count=${key}]`).textContent = String(value);
    }
  };
  // A burst of stream events redraws once per frame, not once per event.
  const summarySoon = perFrame(summary);
  const refreshMapSoon = perFrame(() => map.refreshStates());
  const renderQueueSoon = perFrame(() => queue.render());
  const renderHealthSoon = perFrame(() => health.render());

  on("fleet", () => {
    map.drawFleet(state.fleet);
    map.fit(true);
    renderQueueSoon(); // names of schools and plates of buses are known now
    renderHealthSoon();
  });
  on("buses", () => {
    refreshMapSoon();
    summarySoon();
  });
  on("alerts", renderQueueSoon);
  on("devices", renderHealthSoon);
  on("filters", () => {
    map.applyFilters();
    map.fit(true);
    queue.render();
    health.render();
    summary();
  });
  queue.render();

  const reloadAlerts = () => api.activeAlerts().then(setAlerts).catch(warn("alerts"));
  const reloadBuses = () =>
    api
      .liveBuses()
      .then((rows) => {
        setLiveBuses(rows);
        map.fit();
      })
      .catch(warn("live buses"));
  const reloadDevices = () => api.devices().then(setDevices).catch(warn("devices"));

  (async () => {
    if (me.can_read_fleet) {
      try {
        const fleet = await api.fleet();
        setTimeZone(fleet.timezone);
        setFleet(fleet);
      } catch (failure) {
        warn("fleet")(failure);
      }
    }
    await Promise.all([reloadBuses(), reloadDevices()]);
  })();

  const status = document.getElementById("stream-status");
  openStream({
    token: api.token,
    onStatus: (value) => {
      status.dataset.state = value;
      status.querySelector("span").dataset.i18n = `stream.${value}`;
      status.querySelector("span").textContent = t(`stream.${value}`);
    },
    // Subscribed first, loaded second: no alert falls between the two. A
    // resumed stream replays what it missed by Last-Event-ID instead.
    onConnected: (resumed) => {
      if (!resumed) reloadAlerts();
    },
    onUnauthorized: () => logout(t("login.bad")),
    onEvent: (type, data) => {
      if (type === "position") {
        const bus = applyPosition(data);
        map.updateBus(bus);
        summarySoon();
      } else if (type === "alert") {
        const outcome = applyAlertEvent(data);
        if (outcome === "opened" && data.severity === "critical") sound.alarm();
      }
    },
  });

  setInterval(reloadBuses, RELOAD_BUSES_MS);
  setInterval(reloadDevices, RELOAD_DEVICES_MS);
  setInterval(reloadAlerts, RELOAD_ALERTS_MS);
  setInterval(summary, 10000); // buses fall offline with time alone
  // The alarm repeats until every critical alert is acknowledged.
  setInterval(() => {
    if (queue.criticalWaiting()) sound.alarm();
  }, ALARM_REPEAT_MS);
}

function warn(what) {
  return (failure) => {
    console.warn(`loading ${what} failed`, failure);
    toast(t("error.generic", `${what}: ${failure.message}`), { error: true });
  };
}

/** Stands in for the map when Leaflet is missing, so the rest of the room works. */
function nullMap() {
  document.getElementById("map-missing").hidden = false;
  return new Proxy({}, { get: () => () => false });
}

// ------------------------------------------------------------- page chrome
function renderSoundToggle() {
  const button = document.getElementById("sound-toggle");
  button.classList.toggle("muted", sound.isMuted());
  button.setAttribute("aria-pressed", String(!sound.isMuted()));
  button.classList.toggle("locked", !sound.isMuted() && sound.isLocked());
  button.title = sound.isLocked() && !sound.isMuted() ? t("sound.locked") : t("sound.toggle");
}

function boot() {
  applyTexts(document);
  document.addEventListener("click", (event) => {
    const action = event.target.closest("[data-action]")?.dataset.action;
    if (action === "lang") setLang(currentLang() === "zh" ? "en" : "zh");
    else if (action === "logout") logout();
    else if (action === "sound") {
      sound.setMuted(!sound.isMuted());
      renderSoundToggle();
    }
  });
  // Audio may start only after a gesture: the first one unlocks it.
  const unlock = () => {
    sound.unlock();
    setTimeout(renderSoundToggle, 100);
  };
  document.addEventListener("pointerdown", unlock);
  document.addEventListener("keydown", unlock);
  onLangChange(renderSoundToggle);
  renderSoundToggle();
  document.getElementById("login-form").addEventListener("submit", login);

  const message = sessionStorage.getItem("anxiao.logoutMessage") ?? "";
  sessionStorage.removeItem("anxiao.logoutMessage");
  const token = storedToken();
  if (token && !message) tryStart(token);
  else showLogin(message);
}

boot();
