// Playback of one bus's track over a chosen time range
// (GET /api/v1/buses/{id}/track), animated at ×1 … ×300 track time.

import { el, toast } from "./dom.js";
import { dateToZoned, formatDateTime, formatNumber, t, zonedToDate } from "./i18n.js";
import { passes, state } from "./store.js";

const DEFAULT_SPAN_MS = 60 * 60 * 1000;

export class Playback {
  constructor({ api, map }) {
    this.api = api;
    this.map = map;
    this.panel = document.getElementById("playback");
    this.bus = document.getElementById("playback-bus");
    this.since = document.getElementById("playback-since");
    this.until = document.getElementById("playback-until");
    this.play = document.getElementById("playback-play");
    this.slider = document.getElementById("playback-slider");
    this.rate = document.getElementById("playback-rate");
    this.info = document.getElementById("playback-info");
    this.points = [];
    this.index = 0;
    this.playing = false;
    this.clockMs = 0;
    this.frame = null;
    document.getElementById("playback-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.load();
    });
    this.panel.querySelector("[data-action=playback-close]").addEventListener("click", () => this.close());
    this.play.addEventListener("click", () => (this.playing ? this.pause() : this.start()));
    this.slider.addEventListener("input", () => {
      this.pause();
      this.seek(Number(this.slider.value));
    });
  }

  /** Show the panel; with `busId`, load that bus's last hour at once. */
  open(busId = null) {
    const buses = [...state.buses.values()]
      .filter((b) => passes({ schoolId: b.schoolId, operatorId: b.operatorId }))
      .sort((a, b) => String(a.plate).localeCompare(String(b.plate), "zh-CN"));
    const chosen = busId ?? this.bus.value;
    this.bus.replaceChildren(...buses.map((b) => el("option", { value: b.id }, `${b.plate} · ${b.id}`)));
    if (chosen && buses.some((b) => b.id === chosen)) this.bus.value = chosen;
    if (!this.since.value || busId) {
      // The hour up to the bus's latest fix: under a replay (serve --clock event)
      // event time is in the past, and "the last hour" of the wall clock is empty.
      const latest = Math.max(0, ...buses.map((b) => b.tsMs ?? 0));
      const anchorMs = state.buses.get(this.bus.value)?.tsMs ?? (latest || Date.now());
      this.until.value = dateToZoned(new Date(anchorMs + 60 * 1000));
      this.since.value = dateToZoned(new Date(anchorMs - DEFAULT_SPAN_MS));
    }
    this.panel.hidden = false;
    if (busId) this.load();
  }

  close() {
    this.pause();
    this.panel.hidden = true;
    this.points = [];
    this.map.clearTrack();
    this.info.textContent = "";
    this.panel.dataset.points = "0";
  }

  async load() {
    this.pause();
    const busId = this.bus.value;
    const since = zonedToDate(this.since.value);
    const until = zonedToDate(this.until.value);
    if (!busId || !since || !until || since >= until) return;
    try {
      const track = await this.api.track(busId, since, until);
      this.points = track.items.map((p) => ({ ...p, tsMs: Date.parse(p.ts) }));
      this.panel.dataset.points = String(this.points.length);
      this.panel.dataset.bus = busId;
      if (!this.points.length) {
        this.map.clearTrack();
        this.info.textContent = t("playback.empty");
        this.enable(false);
        return;
      }
      this.map.showTrack(this.points);
      this.slider.max = String(this.points.length - 1);
      this.enable(true);
      this.seek(0);
      this.summary = t("playback.points", this.points.length) + (track.next ? t("playback.truncated") : "");
      this.describe();
    } catch (failure) {
      toast(t("error.generic", failure.message), { error: true });
    }
  }

  enable(on) {
    this.play.disabled = !on;
    this.slider.disabled = !on;
  }

  seek(index) {
    this.index = Math.max(0, Math.min(index, this.points.length - 1));
    const point = this.points[this.index];
    if (!point) return;
    this.clockMs = point.tsMs;
    this.slider.value = String(this.index);
    this.map.setTrackCursor(point);
    this.describe();
  }

  describe() {
    const point = this.points[this.index];
    if (!point) return;
    const speed = point.speed_kmh === null ? "—" : formatNumber(point.speed_kmh, 1);
    this.info.textContent = `${this.summary ?? ""} · ${t("playback.at", formatDateTime(point.tsMs), speed)}`;
  }

  start() {
    if (!this.points.length) return;
    if (this.index >= this.points.length - 1) this.seek(0);
    this.playing = true;
    this.play.textContent = t("playback.pause");
    let last = performance.now();
    const step = (now) => {
      if (!this.playing) return;
      this.clockMs += (now - last) * Number(this.rate.value);
      last = now;
      let i = this.index;
      while (i < this.points.length - 1 && this.points[i + 1].tsMs <= this.clockMs) i += 1;
      if (i !== this.index) {
        this.index = i;
        this.slider.value = String(i);
        this.describe();
      }
      const a = this.points[i];
      const b = this.points[i + 1];
      if (!b) {
        this.map.setTrackCursor(a);
        this.pause();
        return;
      }
      // Between fixes the cursor moves in a straight line, in track time.
      const f = Math.min(1, Math.max(0, (this.clockMs - a.tsMs) / Math.max(1, b.tsMs - a.tsMs)));
      this.map.setTrackCursor({ lat: a.lat + (b.lat - a.lat) * f, lon: a.lon + (b.lon - a.lon) * f });
      this.frame = requestAnimationFrame(step);
    };
    this.frame = requestAnimationFrame(step);
  }

  pause() {
    this.playing = false;
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = null;
    this.play.textContent = t("playback.play");
  }
}
