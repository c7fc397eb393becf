// Texts in zh-CN (first) and English, time formatting in the fleet's time zone.

const TEXTS = {
  zh: {
    "app.title": "校车与校园安全监控室",
    "app.room": "监控室",
    "login.token": "访问令牌",
    "login.placeholder": "粘贴令牌",
    "login.hint": "令牌由管理员用 anxiao token create --role monitor 生成。",
    "login.submit": "登录",
    "login.logout": "退出",
    "login.bad": "令牌无效或已吊销",
    "login.failed": "无法连接服务：{0}",
    "state.moving": "行驶",
    "state.stopped": "停驶",
    "state.offline": "离线",
    "state.alert": "告警",
    "legend.school": "学校",
    "legend.route": "线路",
    "stream.connecting": "连接中",
    "stream.live": "实时",
    "stream.reconnecting": "重连中",
    "sound.toggle": "报警声音",
    "sound.locked": "点击页面任意处以启用报警声音",
    "filter.district": "片区",
    "filter.school": "学校",
    "filter.operator": "运营单位",
    "filter.all": "全部",
    "map.missing": "地图组件未安装：请运行 scripts/web.sh",
    "map.nobasemap": "底图：无（离线绘制）",
    "alerts.title": "告警队列",
    "alerts.empty": "当前无告警",
    "alerts.ack": "确认",
    "alerts.resolve": "处置",
    "alerts.locate": "定位",
    "alerts.acked": "已确认",
    "alerts.acked_by": "{0} 已确认",
    "alerts.late": "补传",
    "alerts.since": "开始于 {0}",
    "alerts.ack_title": "确认告警",
    "alerts.resolve_title": "处置并关闭告警",
    "alerts.acked_toast": "已确认告警",
    "alerts.resolved_toast": "告警已处置",
    "alerts.forbidden": "当前角色无权处置告警",
    "decision.note": "处置说明",
    "decision.required": "请填写处置说明",
    "decision.cancel": "取消",
    "decision.submit": "提交",
    "severity.critical": "紧急",
    "severity.major": "重要",
    "severity.minor": "一般",
    "kind.speeding": "超速",
    "kind.route_deviation": "偏离线路",
    "kind.out_of_hours": "非规定时段行驶",
    "kind.device_offline": "设备离线",
    "kind.smoke_alarm": "烟感报警",
    "kind.panic_button": "一键报警",
    "kind.device_fault": "设备故障",
    "kind.clock_skew": "时钟偏差",
    "detail.speeding": "最高 {0} km/h，限速 {1} km/h，持续 {2} 秒",
    "detail.route_deviation": "偏离 {0} 米，持续 {1} 秒",
    "detail.out_of_hours": "行驶 {0} 米，持续 {1} 秒",
    "detail.device_offline": "最后在线 {0}",
    "detail.smoke_alarm": "减光率 {0} %/m",
    "detail.panic_button.button": "报警按钮被按下",
    "detail.panic_button.gps_alarm": "车载终端紧急报警",
    "detail.device_fault": "故障：{0}",
    "detail.clock_skew": "时钟偏差 {0} 秒",
    "health.title": "设备联网率",
    "health.offline": "离线设备",
    "health.none_offline": "全部在线",
    "health.rate.gps": "车载定位联网率",
    "health.rate.button": "一键报警联网率",
    "health.rate.smoke": "烟感联网率",
    "health.never": "从未上线",
    "health.more": "另有 {0} 台",
    "kind_device.gps": "定位终端",
    "kind_device.button": "一键报警",
    "kind_device.smoke": "烟感",
    "bus.plate": "车牌",
    "bus.school": "学校",
    "bus.operator": "运营单位",
    "bus.speed": "速度",
    "bus.fix": "定位时间",
    "bus.alerts": "告警",
    "bus.nofix": "暂无定位",
    "playback.open": "轨迹回放",
    "playback.title": "轨迹回放",
    "playback.bus": "校车",
    "playback.since": "开始",
    "playback.until": "结束",
    "playback.load": "加载",
    "playback.play": "播放",
    "playback.pause": "暂停",
    "playback.points": "{0} 个定位点",
    "playback.truncated": "（已截断，请缩短时间段）",
    "playback.empty": "该时间段内无轨迹",
    "playback.at": "{0} · {1} km/h",
    "time.ago.s": "{0} 秒前",
    "time.ago.m": "{0} 分钟前",
    "time.ago.h": "{0} 小时前",
    "time.ago.d": "{0} 天前",
    "error.generic": "操作失败：{0}",
    "role.admin": "管理员",
    "role.bureau": "教育局",
    "role.monitor": "监控室",
    "role.school": "学校",
    "role.operator": "运营单位",
    "lang.other": "English",
  },
  en: {
    "app.title": "School Bus & Campus Safety Monitoring",
    "app.room": "Monitoring room",
    "login.token": "Access token",
    "login.placeholder": "Paste a token",
    "login.hint": "An administrator makes one with anxiao token create --role monitor.",
    "login.submit": "Sign in",
    "login.logout": "Sign out",
    "login.bad": "Unknown or revoked token",
    "login.failed": "Cannot reach the service: {0}",
    "state.moving": "Moving",
    "state.stopped": "Stopped",
    "state.offline": "Offline",
    "state.alert": "In alert",
    "legend.school": "School",
    "legend.route": "Route",
    "stream.connecting": "Connecting",
    "stream.live": "Live",
    "stream.reconnecting": "Reconnecting",
    "sound.toggle": "Alarm sound",
    "sound.locked": "Click anywhere to enable the alarm sound",
    "filter.district": "District",
    "filter.school": "School",
    "filter.operator": "Operator",
    "filter.all": "All",
    "map.missing": "Map library missing: run scripts/web.sh",
    "map.nobasemap": "Basemap: none (drawn offline)",
    "alerts.title": "Alert queue",
    "alerts.empty": "No open alerts",
    "alerts.ack": "Acknowledge",
    "alerts.resolve": "Resolve",
    "alerts.locate": "Locate",
    "alerts.acked": "Acknowledged",
    "alerts.acked_by": "Acknowledged by {0}",
    "alerts.late": "Backfilled",
    "alerts.since": "since {0}",
    "alerts.ack_title": "Acknowledge alert",
    "alerts.resolve_title": "Resolve and close alert",
    "alerts.acked_toast": "Alert acknowledged",
    "alerts.resolved_toast": "Alert resolved",
    "alerts.forbidden": "This role may not decide on alerts",
    "decision.note": "Note",
    "decision.required": "Please write what was done",
    "decision.cancel": "Cancel",
    "decision.submit": "Submit",
    "severity.critical": "Critical",
    "severity.major": "Major",
    "severity.minor": "Minor",
    "kind.speeding": "Speeding",
    "kind.route_deviation": "Route deviation",
    "kind.out_of_hours": "Out of hours",
    "kind.device_offline": "Device offline",
    "kind.smoke_alarm": "Smoke alarm",
    "kind.panic_button": "Panic button",
    "kind.device_fault": "Device fault",
    "kind.clock_skew": "Clock skew",
    "detail.speeding": "max {0} km/h, limit {1} km/h, {2} s",
    "detail.route_deviation": "{0} m off route, {1} s",
    "detail.out_of_hours": "moved {0} m, {1} s",
    "detail.device_offline": "last seen {0}",
    "detail.smoke_alarm": "obscuration {0} %/m",
    "detail.panic_button.button": "emergency button pressed",
    "detail.panic_button.gps_alarm": "vehicle terminal emergency alarm",
    "detail.device_fault": "fault: {0}",
    "detail.clock_skew": "clock off by {0} s",
    "health.title": "Device connectivity",
    "health.offline": "Offline devices",
    "health.none_offline": "All online",
    "health.rate.gps": "Bus GPS online",
    "health.rate.button": "Panic buttons online",
    "health.rate.smoke": "Smoke detectors online",
    "health.never": "never seen",
    "health.more": "{0} more",
    "kind_device.gps": "GPS",
    "kind_device.button": "Button",
    "kind_device.smoke": "Smoke",
    "bus.plate": "Plate",
    "bus.school": "School",
    "bus.operator": "Operator",
    "bus.speed": "Speed",
    "bus.fix": "Fix time",
    "bus.alerts": "Alerts",
    "bus.nofix": "no fix yet",
    "playback.open": "Track playback",
    "playback.title": "Track playback",
    "playback.bus": "Bus",
    "playback.since": "From",
    "playback.until": "To",
    "playback.load": "Load",
    "playback.play": "Play",
    "playback.pause": "Pause",
    "playback.points": "{0} fixes",
    "playback.truncated": " (capped: choose a shorter range)",
    "playback.empty": "No track in this range",
    "playback.at": "{0} · {1} km/h",
    "time.ago.s": "{0} s ago",
    "time.ago.m": "{0} min ago",
    "time.ago.h": "{0} h ago",
    "time.ago.d": "{0} d ago",
    "error.generic": "Failed: {0}",
    "role.admin": "Administrator",
    "role.bureau": "Bureau",
    "role.monitor": "Monitoring room",
    "role.school": "School",
    "role.operator": "Operator",
    "lang.other": "中文",
  },
};

const STORAGE_KEY = "anxiao.lang";
const listeners = new Set();
let lang = localStorage.getItem(STORAGE_KEY) === "en" ? "en" : "zh";
let timeZone = "Asia/Shanghai";

/** The current language, "zh" or "en". */
export function currentLang() {
  return lang;
}

/** The text for `key` with `{0}`, `{1}` … replaced by `args`. */
export function t(key, ...args) {
  const text = TEXTS[lang][key] ?? TEXTS.zh[key] ?? key;
  return text.replace(/\{(\d)\}/g, (_m, i) => String(args[Number(i)] ?? ""));
}

/** Whether a text exists for `key`. */
export function has(key) {
  return key in TEXTS.zh;
}

/** Switch language, re-translate the page and tell listeners. */
export function setLang(next) {
  lang = next === "en" ? "en" : "zh";
  localStorage.setItem(STORAGE_KEY, lang);
  applyTexts(document);
  for (const fn of listeners) fn(lang);
}

/** Call `fn(lang)` after every language switch. */
export function onLangChange(fn) {
  listeners.add(fn);
}

/** Fill every `[data-i18n]` element's text (and `-placeholder`/`-title` attributes). */
export function applyTexts(root) {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.title = lang === "zh" ? "安校 · 监控室" : "anxiao · Monitoring room";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll(".lang-toggle")) el.textContent = t("lang.other");
}

/** Show times in the fleet's time zone (contract: local time is Asia/Shanghai by default). */
export function setTimeZone(zone) {
  if (zone) timeZone = zone;
}

export function getTimeZone() {
  return timeZone;
}

function locale() {
  return lang === "zh" ? "zh-CN" : "en-GB";
}

/** "2026-11-23 07:31:05" in the fleet's zone. */
export function formatDateTime(value) {
  if (value === null || value === undefined) return "—";
  const date = value instanceof Date ? value : new Date(value);
  const parts = zoneParts(date, timeZone);
  const pad = (n) => String(n).padStart(2, "0");
  return `${parts.year}-${pad(parts.month)}-${pad(parts.day)} ${pad(parts.hour)}:${pad(parts.minute)}:${pad(parts.second)}`;
}

/** "07:31:05" in the fleet's zone. */
export function formatTime(value) {
  return formatDateTime(value).slice(11);
}

/** "3 分钟前" / "3 min ago". */
export function formatAgo(value, nowMs = Date.now()) {
  const s = Math.max(0, Math.round((nowMs - new Date(value).getTime()) / 1000));
  if (s < 60) return t("time.ago.s", s);
  if (s < 3600) return t("time.ago.m", Math.floor(s / 60));
  if (s < 86400) return t("time.ago.h", Math.floor(s / 3600));
  return t("time.ago.d", Math.floor(s / 86400));
}

/** A number in the current locale with at most `digits` decimals. */
export function formatNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(value);
}

const partFormats = new Map();

/** Calendar fields of `date` as seen in `zone`. */
export function zoneParts(date, zone) {
  let format = partFormats.get(zone);
  if (!format) {
    format = new Intl.DateTimeFormat("en-US", {
      timeZone: zone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    partFormats.set(zone, format);
  }
  const out = {};
  for (const p of format.formatToParts(date)) {
    if (p.type !== "literal") out[p.type] = Number(p.value);
  }
  return out;
}

/** `YYYY-MM-DDTHH:MM[:SS]` (a datetime-local value) read as wall time in the fleet's zone. */
export function zonedToDate(local) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(local);
  if (!m) return null;
  const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] ?? 0));
  // The zone's offset at that instant; a second pass settles DST boundaries.
  let guess = wall;
  for (let i = 0; i < 2; i += 1) {
    const p = zoneParts(new Date(guess), timeZone);
    const seen = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second);
    guess = wall - (seen - guess);
  }
  return new Date(guess);
}

/** A datetime-local value showing `date` as wall time in the fleet's zone. */
export function dateToZoned(date) {
  return formatDateTime(date).replace(" ", "T");
}
