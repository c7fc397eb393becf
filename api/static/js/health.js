// Device health: online rate per kind (一键报警联网率 = online buttons / all
// buttons) and the offline devices, for the devices that pass the filters.

import { el } from "./dom.js";
import { formatAgo, formatDateTime, formatNumber, onLangChange, t } from "./i18n.js";
import { passes, schoolName, state } from "./store.js";

const KINDS = ["button", "smoke", "gps"];
const SHOWN_OFFLINE = 8;

/** `{kind: {online, total}}` over `devices`. */
export function onlineRates(devices) {
  const rates = Object.fromEntries(KINDS.map((k) => [k, { online: 0, total: 0 }]));
  for (const d of devices) {
    const rate = rates[d.kind];
    if (!rate) continue;
    rate.total += 1;
    if (d.online) rate.online += 1;
  }
  return rates;
}

export class HealthPanel {
  constructor() {
    this.rates = document.getElementById("health-rates");
    this.offline = document.getElementById("health-offline");
    onLangChange(() => this.render());
  }

  visible() {
    return [...state.devices.values()].filter((d) =>
      passes({ schoolId: d.school_id, operatorId: d.operator_id }),
    );
  }

  render() {
    const devices = this.visible();
    const rates = onlineRates(devices);
    this.rates.replaceChildren(
      ...KINDS.filter((k) => rates[k].total > 0).map((kind) => {
        const { online, total } = rates[kind];
        const pct = (100 * online) / total;
        const level = pct >= 100 ? "good" : pct >= 90 ? "warn" : "bad";
        const bar = el("div", { class: "bar" }, el("i", { class: level }));
        bar.firstChild.style.width = `${pct}%`;
        return el("div", { class: `rate rate-${kind}`, dataset: { kind } }, [
          el("div", { class: "rate-head" }, [
            el("span", { class: "rate-label" }, t(`health.rate.${kind}`)),
            el("strong", { class: `rate-value ${level}` }, `${formatNumber(pct, 1)}%`),
          ]),
          bar,
          el("div", { class: "rate-count muted" }, `${online} / ${total}`),
        ]);
      }),
    );
    const offline = devices
      .filter((d) => !d.online)
      .sort((a, b) => Date.parse(b.last_seen_at ?? 0) - Date.parse(a.last_seen_at ?? 0));
    const rows = offline.slice(0, SHOWN_OFFLINE).map((d) =>
      el("li", { dataset: { device: d.id } }, [
        el("span", { class: `kind-tag kind-${d.kind}` }, t(`kind_device.${d.kind}`)),
        el("span", { class: "device-id" }, d.id),
        el("span", { class: "muted where" }, d.bus_id ? (state.buses.get(d.bus_id)?.plate ?? d.bus_id) : schoolName(d.school_id)),
        el(
          "span",
          { class: "muted seen", title: d.last_seen_at ? formatDateTime(d.last_seen_at) : "" },
          d.last_seen_at ? formatAgo(d.last_seen_at) : t("health.never"),
        ),
      ]),
    );
    if (offline.length > SHOWN_OFFLINE) {
      rows.push(el("li", { class: "muted more" }, t("health.more", offline.length - SHOWN_OFFLINE)));
    }
    if (!offline.length) rows.push(el("li", { class: "muted" }, t("health.none_offline")));
    this.offline.replaceChildren(...rows);
  }
}
