// The alert queue: open alerts that pass the filters, unacknowledged first,
// with acknowledge / resolve (a note each) for roles that may decide.

import { ApiError } from "./api.js";
import { el, toast } from "./dom.js";
import { formatAgo, formatDateTime, formatNumber, has, onLangChange, t } from "./i18n.js";
import { applyDecision, compareAlerts, passes, schoolName, state } from "./store.js";

/** One line saying what the alert's details mean (contract §3 details by kind). */
export function describe(alert) {
  const d = alert.details ?? {};
  const n = (v, digits = 0) => formatNumber(v, digits);
  switch (alert.kind) {
    case "speeding":
      return t("detail.speeding", n(d.max_speed_kmh, 1), n(d.limit_kmh), n(d.duration_s));
    case "route_deviation":
      return t("detail.route_deviation", n(d.max_distance_m), n(d.duration_s));
    case "out_of_hours":
      return t("detail.out_of_hours", n(d.distance_m), n(d.duration_s));
    case "device_offline":
      return t("detail.device_offline", d.last_seen_at ? formatDateTime(d.last_seen_at) : t("health.never"));
    case "smoke_alarm":
      return d.obscuration === undefined ? "" : t("detail.smoke_alarm", n(d.obscuration, 2));
    case "panic_button":
      return has(`detail.panic_button.${d.source}`) ? t(`detail.panic_button.${d.source}`) : "";
    case "device_fault":
      return d.fault ? t("detail.device_fault", d.fault) : "";
    case "clock_skew":
      return t("detail.clock_skew", n(d.skew_s));
    default:
      return "";
  }
}

/** Where the alert is: the bus's plate or the school's name. */
function subject(alert) {
  if (alert.bus_id) return state.buses.get(alert.bus_id)?.plate ?? alert.bus_id;
  return schoolName(alert.school_id) || alert.device_id;
}

export class AlertQueue {
  /** `onLocate(alert)` pans the map to it. */
  constructor({ api, onLocate }) {
    this.api = api;
    this.onLocate = onLocate;
    this.list = document.getElementById("alert-queue");
    this.count = document.getElementById("alert-count");
    this.empty = document.getElementById("alert-empty");
    this.dialog = document.getElementById("decision");
    this.pending = null;
    document.getElementById("decision-form").addEventListener("submit", (e) => this.submit(e));
    this.dialog
      .querySelector("[data-action=decision-cancel]")
      .addEventListener("click", () => this.dialog.close());
    onLangChange(() => this.render());
    setInterval(() => this.render(), 30000); // "3 分钟前" keeps counting
  }

  canDecide() {
    return Boolean(state.me?.can_decide);
  }

  visible() {
    return [...state.alerts.values()]
      .filter((a) => passes({ schoolId: a.school_id, operatorId: a.operator_id, districtId: a.district_id }))
      .sort(compareAlerts);
  }

  render() {
    const alerts = this.visible();
    this.count.textContent = String(alerts.length);
    this.count.classList.toggle("hot", alerts.some((a) => a.severity === "critical" && !a.acknowledged));
    this.empty.hidden = alerts.length > 0;
    this.list.replaceChildren(...alerts.map((a) => this.item(a)));
  }

  item(alert) {
    const actions = [
      this.button("alerts.locate", "locate", () => this.onLocate(alert), "link"),
    ];
    if (this.canDecide()) {
      if (!alert.acknowledged) actions.push(this.button("alerts.ack", "ack", () => this.ask(alert, "ack")));
      actions.push(this.button("alerts.resolve", "resolve", () => this.ask(alert, "resolve"), "primary"));
    }
    const detail = describe(alert);
    return el(
      "li",
      {
        class: `alert sev-${alert.severity}${alert.acknowledged ? " acked" : ""}`,
        dataset: { alertId: alert.id, kind: alert.kind, acknowledged: String(alert.acknowledged) },
      },
      [
        el("div", { class: "alert-head" }, [
          el("span", { class: `severity sev-${alert.severity}` }, t(`severity.${alert.severity}`)),
          el("strong", { class: "kind" }, t(`kind.${alert.kind}`)),
          alert.acknowledged
            ? el("span", { class: "badge acked-badge" }, alert.acknowledged_by ? t("alerts.acked_by", alert.acknowledged_by) : t("alerts.acked"))
            : null,
          alert.late ? el("span", { class: "badge" }, t("alerts.late")) : null,
          el("time", { class: "ago", datetime: alert.started_at, title: formatDateTime(alert.started_at) }, formatAgo(alert.started_at)),
        ]),
        el("div", { class: "alert-subject" }, [
          el("span", {}, subject(alert)),
          el("span", { class: "muted" }, ` · ${alert.device_id}`),
        ]),
        detail ? el("div", { class: "alert-detail" }, detail) : null,
        el("div", { class: "alert-time muted" }, t("alerts.since", formatDateTime(alert.started_at))),
        el("div", { class: "alert-actions" }, actions),
      ],
    );
  }

  button(label, action, onClick, kind = "secondary") {
    const b = el("button", { type: "button", class: `${kind} small`, "data-action": action }, t(label));
    b.addEventListener("click", onClick);
    return b;
  }

  /** Open the note dialog for an acknowledgement or a resolution. */
  ask(alert, action) {
    this.pending = { alert, action };
    document.getElementById("decision-title").textContent = t(
      action === "ack" ? "alerts.ack_title" : "alerts.resolve_title",
    );
    document.getElementById("decision-subject").textContent =
      `${t(`kind.${alert.kind}`)} · ${subject(alert)} · ${formatDateTime(alert.started_at)}`;
    const note = document.getElementById("decision-note");
    note.value = "";
    // What was done is the record of a resolution: a note is required (checked in submit).
    note.dataset.required = String(action === "resolve");
    document.getElementById("decision-error").hidden = true;
    this.dialog.dataset.action = action;
    this.dialog.showModal();
    note.focus();
  }

  async submit(event) {
    event.preventDefault();
    if (!this.pending) return;
    const { alert, action } = this.pending;
    const note = document.getElementById("decision-note").value.trim();
    const error = document.getElementById("decision-error");
    if (action === "resolve" && !note) {
      error.textContent = t("decision.required");
      error.hidden = false;
      return;
    }
    const submit = document.getElementById("decision-submit");
    submit.disabled = true;
    try {
      const updated = await this.api.decide(alert.id, action, note);
      this.pending = null;
      this.dialog.close();
      applyDecision(updated);
      toast(t(action === "ack" ? "alerts.acked_toast" : "alerts.resolved_toast"));
    } catch (failure) {
      error.textContent =
        failure instanceof ApiError && failure.status === 403
          ? t("alerts.forbidden")
          : t("error.generic", failure.message);
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  }

  /** Whether an unacknowledged critical alert is waiting (the alarm keeps sounding). */
  criticalWaiting() {
    return this.visible().some((a) => a.severity === "critical" && !a.acknowledged);
  }
}
