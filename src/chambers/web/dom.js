// Small DOM helpers. Text always goes in as text (textContent), never as HTML: the only HTML the UI
// inserts is Markdown that DOMPurify has sanitised (markdown.js).

/**
 * h("button.primary", {type: "button", onclick}, "Send") -> an element.
 * Attributes: `class`, `dataset`, `on<event>` handlers, booleans (true sets, false/null omits), others as strings.
 * Children: strings (as text), nodes, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.classList.add(...String(value).split(/\s+/).filter(Boolean));
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** "12:04" today, "3 Mar 12:04" this year, else "3 Mar 2025". */
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const now = new Date();
  const time = date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  if (date.toDateString() === now.toDateString()) return time;
  const day = date.toLocaleDateString(undefined, { day: "numeric", month: "short" });
  if (date.getFullYear() === now.getFullYear()) return `${day} ${time}`;
  return date.toLocaleDateString(undefined, { day: "numeric", month: "short", year: "numeric" });
}

export function fullTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** Micro-dollars as dollars: 90 -> "$0.000090", 1234567 -> "$1.2346". */
export function dollars(micros) {
  const value = (Number(micros) || 0) / 1e6;
  if (value === 0) return "$0";
  return "$" + value.toFixed(value < 0.01 ? 6 : 4);
}

export function tokens(n) {
  return `${(Number(n) || 0).toLocaleString("en-US")} tokens`;
}

/** `did:key:z6MkabcdefghijklmnopqrstuvwxyzABCDE` -> `did:key:z6Mkab…BCDE`. */
export function shortDid(did) {
  if (!did || did.length < 24) return did || "";
  return `${did.slice(0, 14)}…${did.slice(-4)}`;
}

let toastTimer = null;
/** A short message in the page's alert region. */
export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, 6000);
}
