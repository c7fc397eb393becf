// Filters by district, school and operator, filled from the fleet document.

import { el } from "./dom.js";
import { onLangChange, t } from "./i18n.js";
import { on, setFilter, state } from "./store.js";

const byName = (a, b) => String(a.name ?? a.id).localeCompare(String(b.name ?? b.id), "zh-CN");

export class Filters {
  constructor() {
    this.selects = {
      district: document.getElementById("filter-district"),
      school: document.getElementById("filter-school"),
      operator: document.getElementById("filter-operator"),
    };
    for (const [name, select] of Object.entries(this.selects)) {
      select.addEventListener("change", () => setFilter(name, select.value));
    }
    on("fleet", () => this.render());
    on("filters", () => this.render());
    onLangChange(() => this.render());
  }

  render() {
    const hasFleet = Boolean(state.fleet);
    for (const select of Object.values(this.selects)) select.closest("label").hidden = !hasFleet;
    if (!hasFleet) return;
    const f = state.filters;
    const schools = [...state.schools.values()].filter((s) => !f.district || s.district === f.district);
    this.fill(this.selects.district, [...state.districts.values()], f.district);
    this.fill(this.selects.school, schools, f.school);
    this.fill(this.selects.operator, [...state.operators.values()], f.operator);
  }

  fill(select, rows, value) {
    const options = [el("option", { value: "" }, t("filter.all"))];
    for (const row of [...rows].sort(byName)) options.push(el("option", { value: row.id }, row.name ?? row.id));
    select.replaceChildren(...options);
    select.value = rows.some((r) => r.id === value) ? value : "";
  }
}
