// Chambers web UI: sign-in, hash routes, and the chat and admin views.
//   #/login                      sign in
//   #/chat[/<agentDid>[/<id>]]   an agent's sessions, one conversation
//   #/admin/<section>[/<id>]     agents, users, grants, keys, webhooks[/<id>], audit (admins)
import { $, $$, toast } from "./dom.js";
import { ApiError, get, post, setUnauthorizedHandler } from "./api.js";
import { ChatView } from "./chat.js";
import { AdminView } from "./admin.js";

const app = {
  me: null,
  view: null,
  chat: null,
  admin: null,
};
window.chambers = app; // handy in the console

const views = ["login", "chat", "admin", "message"];

function showView(name) {
  for (const view of views) $(`#view-${view}`).hidden = view !== name;
  $(".topbar").hidden = name === "login";
  for (const link of $$(".mainnav a")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const previous = app.view;
  app.view = name;
  if (previous === "chat" && name !== "chat") app.chat?.leave();
  return previous;
}

function isAdmin() {
  return app.me?.role === "admin" || (app.me?.scopes || []).includes("admin");
}

function signedIn(me) {
  app.me = me;
  $("#who-name").textContent = me.name || me.email || me.id;
  const role = $("#who-role");
  role.textContent = me.role || "api key";
  role.className = `badge role-${me.role || "key"}`;
  for (const el of $$("[data-admin]")) el.hidden = !isAdmin();
  app.chat = new ChatView(app);
  app.admin = new AdminView(app);
}

function signedOut() {
  app.chat?.leave();
  app.me = null;
  app.chat = null;
  app.admin = null;
}

function showLogin() {
  showView("login");
  document.title = "Sign in · Chambers";
  const email = $("#login-email");
  if (!email.value) email.focus();
}

async function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const [section, ...rest] = parts;
  if (!app.me) {
    if (section !== "login") history.replaceState(null, "", "#/login");
    showLogin();
    return;
  }
  try {
    if (section === "admin") {
      if (!isAdmin()) {
        showView("message");
        $("#view-message-text").textContent = "These pages are for admins.";
        return;
      }
      showView("admin");
      document.title = "Admin · Chambers";
      await app.admin.show(rest[0] || "agents", rest[1]);
      return;
    }
    if (section !== "chat") {
      location.replace("#/chat");
      return;
    }
    const previous = showView("chat");
    document.title = "Chat · Chambers";
    await app.chat.show(rest[0] || null, rest[1] || null, { reload: previous !== "chat" });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    toast(err.message || String(err));
  }
}

function wireLogin() {
  const form = $("#login-form");
  const error = $("#login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const email = $("#login-email").value.trim();
    const password = $("#login-password").value;
    if (!email || !password) {
      error.textContent = "Enter your email and password.";
      error.hidden = false;
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await post("/api/auth/login", { email, password });
      $("#login-password").value = "";
      signedIn(await get("/api/auth/me"));
      if (!location.hash || location.hash.startsWith("#/login")) location.hash = "#/chat";
      else route();
    } catch (err) {
      error.textContent = err.status === 401 ? "Wrong email or password." : err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  $("#sign-out").addEventListener("click", async () => {
    try {
      await post("/api/auth/logout");
    } catch {
      // signed out either way
    }
    signedOut();
    location.hash = "#/login";
  });
}

async function boot() {
  setUnauthorizedHandler(() => {
    if (!app.me) return;
    signedOut();
    toast("Your sign-in ended. Sign in again.");
    location.hash = "#/login";
  });
  wireLogin();
  // The skip link moves focus; it must not change the hash (the hash is the route).
  $(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    $("#main").focus();
  });
  window.addEventListener("hashchange", route);
  try {
    signedIn(await get("/api/auth/me"));
  } catch {
    // not signed in
  }
  if (app.me && (!location.hash || location.hash.startsWith("#/login"))) {
    location.replace("#/chat");
    return;
  }
  await route();
}

boot();
