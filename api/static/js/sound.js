// The alarm sound: a WebAudio beep, no audio file. Browsers start audio only
// after a user gesture, so `unlock()` runs on the first click or key press.

const MUTE_KEY = "anxiao.muted";
let context = null;
let muted = localStorage.getItem(MUTE_KEY) === "1";
let beeps = 0;

function audioContext() {
  if (!context) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    context = new Context();
  }
  return context;
}

/** Resume audio after a user gesture; returns whether sound can play now. */
export function unlock() {
  const ctx = audioContext();
  if (ctx && ctx.state === "suspended") ctx.resume().catch(() => {});
  return Boolean(ctx) && ctx.state !== "suspended";
}

export function isLocked() {
  return !context || context.state === "suspended";
}

export function isMuted() {
  return muted;
}

export function setMuted(value) {
  muted = Boolean(value);
  localStorage.setItem(MUTE_KEY, muted ? "1" : "0");
}

/**
 * Three short two-tone beeps (about 1 s): the critical-alert sound. The count
 * is kept on <body data-beeps> so a test can see that the alarm sounded.
 */
export function alarm() {
  if (muted) return false;
  beeps += 1;
  document.body.dataset.beeps = String(beeps);
  const ctx = audioContext();
  if (!ctx) return false;
  const start = ctx.currentTime + 0.02;
  for (let i = 0; i < 3; i += 1) {
    const at = start + i * 0.3;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.setValueAtTime(988, at);
    osc.frequency.setValueAtTime(784, at + 0.1);
    gain.gain.setValueAtTime(0.0001, at);
    gain.gain.exponentialRampToValueAtTime(0.25, at + 0.01);
    gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.2);
    osc.connect(gain).connect(ctx.destination);
    osc.start(at);
    osc.stop(at + 0.22);
  }
  return true;
}
