// The chat view: agent picker, the user's sessions with that agent, and one conversation.
//
// How a conversation stays exact:
// - History comes from GET /agent/v1/chat/:id/messages (finished turns).
// - Everything live comes from ONE feed, GET /agent/v1/chat/:id/stream, opened with Last-Event-ID: 0
//   (the server replays its buffer, then goes live). Events of turns already in the history are skipped,
//   except `session.usage`, which gives those turns their token and cost figures.
// - The feed keeps the id of the last event; after a dropped connection it reconnects with
//   Last-Event-ID, so the server sends exactly the missed events, and an event is never applied twice.
// - A text part is always set to the event's full `text` (never appended to), so even a repeated
//   event could not duplicate text.
// - Sending uses POST .../respond only for its answer (errors, X-Turn-Id); its body is not read, as
//   the feed carries the same events. A new session's first message goes to POST /api/chat (the only
//   public way to start a session with a chosen agent), then the conversation opens as above.
import { $, clear, dollars, fullTime, h, toast, tokens, when } from "./dom.js";
import { ApiError, EventFeed, del, get, post, query } from "./api.js";
import { highlightJson, renderMarkdown } from "./markdown.js";

const STATUS_TEXT = {
  running: "The agent is working…",
  restoring: "Restoring the session's sandbox…",
  waiting_for_input: "The agent is waiting for your answer.",
};

const chatPath = (id, rest = "") => `/agent/v1/chat/${encodeURIComponent(id)}${rest}`;

function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2);
}

export class ChatView {
  constructor(app) {
    this.app = app;
    this.agents = [];
    this.agent = null;
    this.sessionId = null;
    this.session = null;
    this.conversation = null;
    this.sending = false;
    this.els = {
      picker: $("#agent-picker"),
      agentInfo: $("#agent-info"),
      newSession: $("#new-session"),
      sessions: $("#sessions"),
      sessionsEmpty: $("#sessions-empty"),
      sidebar: $("#sidebar"),
      backdrop: $("#sidebar-backdrop"),
      menu: $("#menu-toggle"),
      title: $("#chat-title"),
      meta: $("#chat-meta"),
      badge: $("#chat-status-badge"),
      total: $("#chat-total"),
      end: $("#end-session"),
      messages: $("#messages"),
      status: $("#chat-status"),
      composer: $("#composer"),
      prompt: $("#prompt"),
      send: $("#send"),
      stop: $("#stop"),
    };
    this.wire();
  }

  wire() {
    const els = this.els;
    els.picker.addEventListener("change", () => {
      location.hash = `#/chat/${encodeURIComponent(els.picker.value)}`;
    });
    els.newSession.addEventListener("click", () => {
      if (!this.agent) return;
      this.closeMenu();
      const target = `#/chat/${encodeURIComponent(this.agent.did)}`;
      if (location.hash === target) this.openSession(null).then(() => this.markCurrent());
      else location.hash = target;
      els.prompt.focus();
    });
    els.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    els.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    els.stop.addEventListener("click", () => this.stop());
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || this.app.view !== "chat") return;
      if (this.els.sidebar.classList.contains("open")) {
        this.closeMenu();
        return;
      }
      if (this.conversation?.active) {
        event.preventDefault();
        this.stop();
      }
    });
    els.end.addEventListener("click", () => this.confirmEnd());
    els.menu.addEventListener("click", () => {
      if (els.sidebar.classList.contains("open")) this.closeMenu();
      else this.openMenu();
    });
    els.backdrop.addEventListener("click", () => this.closeMenu());
  }

  openMenu() {
    this.els.sidebar.classList.add("open");
    this.els.backdrop.hidden = false;
    this.els.menu.setAttribute("aria-expanded", "true");
    this.els.menu.setAttribute("aria-label", "Hide sessions");
    this.els.picker.focus();
  }

  closeMenu() {
    this.els.sidebar.classList.remove("open");
    this.els.backdrop.hidden = true;
    this.els.menu.setAttribute("aria-expanded", "false");
    this.els.menu.setAttribute("aria-label", "Show sessions");
  }

  /** Show `#/chat[/did[/sessionId]]`; `reload` when coming from another view (things may have changed). */
  async show(did, sessionId, options = {}) {
    this.loading = true; // the composer waits until the view is ready
    this.updateControls();
    try {
      await this.route(did, sessionId, options);
    } finally {
      this.loading = false;
      this.updateControls();
    }
  }

  async route(did, sessionId, { reload = false } = {}) {
    const here = location.hash;
    this.closeMenu();
    if (reload || !this.agentsLoaded) await this.loadAgents();
    if (!this.agents.length) {
      this.agent = null;
      this.els.agentInfo.textContent = "You have no agents yet: an admin can grant you one.";
      this.openSession(null);
      return;
    }
    const agent = this.agents.find((a) => a.did === did);
    if (!agent) {
      // ...unless the user went elsewhere while the agents loaded: the hash may already have changed
      // before its hashchange event ran, so the view alone does not tell.
      if (this.app.view === "chat" && location.hash === here) location.replace(`#/chat/${encodeURIComponent(this.agents[0].did)}`);
      return;
    }
    const agentChanged = this.agent?.did !== agent.did;
    this.agent = agent;
    this.els.picker.value = agent.did;
    this.els.agentInfo.textContent = agent.model;
    this.els.agentInfo.title = agent.did;
    if (agentChanged || reload) await this.loadSessions();
    if (agentChanged || reload || sessionId !== this.sessionId) await this.openSession(sessionId);
    this.markCurrent();
  }

  async loadAgents() {
    const { agents } = await get("/api/agents");
    this.agents = agents;
    this.agentsLoaded = true;
    clear(this.els.picker).append(
      ...agents.map((a) => h("option", { value: a.did }, a.default ? `${a.name} (default)` : a.name)),
    );
    this.els.picker.disabled = agents.length === 0;
    this.els.newSession.disabled = agents.length === 0;
  }

  async loadSessions() {
    if (!this.agent) return;
    const did = this.agent.did;
    const { sessions } = await get(`/api/chat/sessions${query({ agentDid: did, limit: 50 })}`);
    if (this.agent?.did !== did) return;
    const list = clear(this.els.sessions);
    sessions.forEach((s) => {
      const status = s.status || "active";
      list.append(
        h(
          "li",
          {},
          h(
            "a.session-link",
            { href: `#/chat/${encodeURIComponent(did)}/${encodeURIComponent(s.id)}`, dataset: { id: s.id } },
            h("span.session-title", {}, s.title || "Untitled session"),
            h(
              "span.session-meta",
              {},
              h("time", { datetime: s.updatedAt, title: fullTime(s.updatedAt) }, when(s.updatedAt)),
              h(`span.badge.status-${status}`, {}, status),
            ),
          ),
        ),
      );
    });
    this.els.sessionsEmpty.hidden = sessions.length > 0;
    this.markCurrent();
  }

  markCurrent() {
    for (const link of this.els.sessions.querySelectorAll("a")) {
      if (link.dataset.id === this.sessionId) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  /** Open a session (or, with null, a new empty one for the current agent). */
  async openSession(sessionId) {
    this.conversation?.close();
    this.conversation = null;
    this.sessionId = sessionId;
    this.session = null;
    clear(this.els.messages);
    this.setStatus("");
    this.updateControls();
    if (!sessionId) {
      this.els.title.textContent = this.agent ? `New session with ${this.agent.name}` : "No agent";
      this.els.meta.textContent = this.agent ? "Your first message starts the session." : "";
      this.els.badge.hidden = true;
      this.els.total.textContent = "";
      this.els.end.hidden = true;
      this.updateControls();
      return;
    }
    let session;
    try {
      session = await get(chatPath(sessionId));
    } catch (err) {
      this.els.title.textContent = "Session not found";
      this.els.meta.textContent = err.message;
      return;
    }
    if (this.sessionId !== sessionId) return;
    this.setSession(session);
    const conversation = new Conversation(this, session);
    this.conversation = conversation;
    this.els.messages.append(conversation.root);
    await conversation.open();
    this.updateControls();
  }

  setSession(session) {
    this.session = session;
    this.els.title.textContent = session.title || "Untitled session";
    this.els.meta.textContent = `${session.model} · started ${when(session.createdAt)}`;
    this.els.meta.title = session.id;
    const badge = this.els.badge;
    badge.hidden = false;
    badge.textContent = session.status;
    badge.className = `badge status-${session.status}`;
    const usage = session.usage || {};
    this.els.total.textContent = `Total: ${tokens(usage.totalTokens)} · ${dollars(usage.costMicros)}`;
    this.els.end.hidden = session.status === "ended";
    this.updateControls();
  }

  async refreshSession() {
    if (!this.sessionId) return;
    try {
      const session = await get(chatPath(this.sessionId));
      if (session.id === this.sessionId) this.setSession(session);
    } catch {
      // the next event or reload will tell
    }
    this.loadSessions().catch(() => {});
  }

  updateControls() {
    const active = !!this.conversation?.active;
    const ended = this.session?.status === "ended";
    const noAgent = !this.agent || this.loading;
    this.els.stop.hidden = !active;
    this.els.stop.disabled = !active || !!this.conversation?.stopping;
    this.els.send.disabled = this.sending || ended || noAgent;
    this.els.prompt.disabled = ended || noAgent;
    this.els.prompt.placeholder = ended
      ? "This session has ended. Start a new session to continue."
      : "Message the agent (Enter sends, Shift+Enter for a new line)";
  }

  setStatus(text) {
    if (this.els.status.textContent !== text) this.els.status.textContent = text;
  }

  async send() {
    const text = this.els.prompt.value;
    if (!text.trim() || this.sending || !this.agent) return;
    if (this.conversation?.active) {
      toast("The agent is still answering: wait for it, answer its question, or stop it (Esc).");
      return;
    }
    this.sending = true;
    this.els.prompt.value = "";
    this.updateControls();
    try {
      if (this.conversation) await this.conversation.send(text);
      else await this.startSession(text);
    } catch (err) {
      if (!this.els.prompt.value) this.els.prompt.value = text;
      toast(err.message || String(err));
    } finally {
      this.sending = false;
      this.updateControls();
    }
  }

  /** The first message of a new session, through POST /api/chat (it picks the agent). */
  async startSession(text) {
    const did = this.agent.did;
    const provisional = userTurn(text, true);
    this.els.messages.append(provisional);
    let response;
    try {
      response = await post(
        "/api/chat",
        { agentDid: did, messages: [{ role: "user", content: text }] },
        { raw: true },
      );
    } catch (err) {
      provisional.remove();
      throw err;
    }
    const sessionId = response.headers.get("X-Session-Id");
    response.body?.cancel().catch(() => {}); // the turn goes on; the session's feed shows it
    if (!sessionId) throw new Error("The server did not say which session it made");
    if (this.app.view !== "chat" || this.agent?.did !== did) return; // the user went elsewhere meanwhile
    history.replaceState(null, "", `#/chat/${encodeURIComponent(did)}/${encodeURIComponent(sessionId)}`);
    await this.openSession(sessionId);
    this.loadSessions().catch(() => {});
  }

  async stop() {
    const conversation = this.conversation;
    if (!conversation?.active || conversation.stopping) return;
    conversation.stopping = true;
    this.updateControls();
    this.setStatus("Stopping…");
    try {
      await post(chatPath(conversation.id, "/cancel"));
    } catch (err) {
      toast(`Could not stop: ${err.message}`);
    } finally {
      conversation.stopping = false;
      this.updateControls();
    }
  }

  confirmEnd() {
    if (!this.sessionId) return;
    const bar = h(
      "div.confirm",
      { role: "alertdialog", "aria-label": "End this session?" },
      h("span", {}, "End this session? It takes no more messages."),
      h("button.danger", { type: "button", onclick: () => this.end(bar) }, "End session"),
      h("button", { type: "button", onclick: () => bar.remove() }, "Keep it"),
    );
    this.els.messages.append(bar);
    bar.querySelector("button").focus();
    bar.scrollIntoView({ block: "nearest" });
  }

  async end(bar) {
    bar.remove();
    try {
      await del(chatPath(this.sessionId));
    } catch (err) {
      toast(`Could not end the session: ${err.message}`);
    }
    await this.refreshSession();
  }

  leave() {
    this.conversation?.close();
    this.conversation = null;
    this.sessionId = null;
  }
}

// --- one conversation -------------------------------------------------------------------------------------

function userTurn(text, provisional = false) {
  const turn = h("article.turn", { class: provisional ? "provisional" : null });
  turn.append(userMessage(text));
  return turn;
}

function userMessage(text, messageId = null) {
  const body = h("div.bubble.md");
  renderMarkdown(body, text);
  return h(
    "div.msg.user",
    { dataset: messageId ? { messageId } : {} },
    h("span.visually-hidden", {}, "You said:"),
    body,
  );
}

class Conversation {
  constructor(view, session) {
    this.view = view;
    this.id = session.id;
    this.turns = new Map(); // turnId -> Turn
    this.historic = new Set(); // turns finished before we loaded: their events are not re-applied
    this.active = session.activeTurnId || null;
    this.stopping = false;
    this.pending = null; // a message sent from here whose turn has not been seen yet
    this.connection = "live";
    this.turnStatus = this.active ? "running" : null;
    this.feed = null;
    this.closed = false;
    this.root = h("div.conversation");
  }

  /** The scrolling container. */
  get box() {
    return this.view.els.messages;
  }

  async open() {
    await this.loadHistory();
    if (this.closed) return;
    if (this.active) await this.loadActiveTurn(this.active);
    if (this.closed) return;
    this.feed = new EventFeed(chatPath(this.id, "/stream"), {
      onEvent: (name, data) => this.apply(name, data),
      onState: (state) => {
        this.connection = state;
        this.showStatus();
      },
    });
    this.feed.start(0);
    this.showStatus();
    this.scroll(true);
  }

  close() {
    this.closed = true;
    this.feed?.stop();
    this.root.remove();
  }

  async loadHistory() {
    const { data } = await get(chatPath(this.id, "/messages"));
    if (this.closed) return;
    for (const message of data) {
      const turn = this.turn(message.turnId);
      if (message.role === "user") {
        turn.setUser(message.parts.map((p) => p.text || "").join("\n\n"), message.id);
      } else {
        turn.assistant(message.id).replaceParts(message.parts);
        turn.setOutcome(message.status);
        if (message.turnId !== this.active) this.historic.add(message.turnId);
      }
    }
  }

  /** The running turn's status and its open questions (also after a `stream.gap`). */
  async loadActiveTurn(turnId) {
    try {
      const turn = await get(chatPath(this.id, `/turns/${encodeURIComponent(turnId)}`));
      if (turn.status === "running" || turn.status === "waiting_for_input") {
        this.turnStatus = turn.status;
        for (const question of turn.questions || []) {
          this.turn(turnId).question(question);
        }
      }
    } catch {
      // the feed will tell
    }
    this.showStatus();
  }

  turn(turnId) {
    let turn = this.turns.get(turnId);
    if (!turn) {
      turn = new Turn(this, turnId);
      this.turns.set(turnId, turn);
      this.root.append(turn.el);
    }
    return turn;
  }

  /** One event from the feed. */
  apply(name, data) {
    if (this.closed) return;
    const turnId = data.turnId || data.properties?.turnId;
    if (turnId && this.historic.has(turnId)) {
      if (name === "session.usage") this.turns.get(turnId)?.setUsage(data.properties);
      return;
    }
    const stick = this.atBottom();
    switch (name) {
      case "turn.started":
        this.started(data);
        break;
      case "turn.status":
        this.active = data.turnId;
        this.turnStatus = data.status;
        break;
      case "message.created":
        this.turn(turnId).assistant(data.messageId);
        break;
      case "message.part.updated":
        this.turn(turnId).assistant(data.messageId).updatePart(data);
        break;
      case "question":
        this.turn(turnId).question(data);
        break;
      case "message.completed": {
        const turn = this.turn(turnId);
        turn.assistant(data.messageId).replaceParts(data.parts || []);
        turn.setOutcome(data.status);
        break;
      }
      case "session.usage":
        if (turnId) this.turn(turnId).setUsage(data.properties);
        break;
      case "turn.completed":
        this.completed(data);
        break;
      case "session.status":
        if (data.status === "ended") this.feed?.finish();
        this.view.refreshSession();
        break;
      case "stream.gap":
        this.resync();
        break;
      default:
        break;
    }
    this.showStatus();
    this.view.updateControls();
    if (stick) this.scroll();
  }

  started(data) {
    this.active = data.turnId;
    this.turnStatus = "running";
    if (this.turns.has(data.turnId)) {
      const turn = this.turns.get(data.turnId);
      if (!turn.userEl) this.fillUser(turn, data.messageId);
      return;
    }
    const pending = this.pending;
    if (pending && !pending.turnId && !pending.adoptedBy) {
      pending.adoptedBy = data.turnId; // almost surely ours; checked when `respond` answers
      this.turns.set(data.turnId, Turn.adopt(this, data.turnId, pending.el, data.messageId));
      return;
    }
    if (pending && pending.turnId === data.turnId) {
      pending.adoptedBy = data.turnId;
      this.turns.set(data.turnId, Turn.adopt(this, data.turnId, pending.el, data.messageId));
      this.pending = null;
      return;
    }
    this.fillUser(this.turn(data.turnId), data.messageId);
  }

  completed(data) {
    const turn = this.turn(data.turnId);
    turn.setOutcome(data.status, data.error);
    turn.settle();
    if (this.active === data.turnId) {
      this.active = null;
      this.turnStatus = null;
    }
    if (data.status === "cancelled") this.view.setStatus("Stopped.");
    this.view.refreshSession();
  }

  /** A turn started elsewhere (another tab, another client): its user message comes from the server. */
  async fillUser(turn, messageId) {
    turn.setUser("…", messageId);
    try {
      const { data } = await get(chatPath(this.id, "/messages"));
      const found = data.find((m) => m.id === messageId);
      if (found) turn.setUser(found.parts.map((p) => p.text || "").join("\n\n"), messageId);
    } catch {
      // keep the placeholder
    }
  }

  /** The server's buffer no longer holds everything we missed: rebuild from the stored messages. */
  async resync() {
    this.view.setStatus("Catching up…");
    try {
      const { data } = await get(chatPath(this.id, "/messages"));
      for (const message of data) {
        const turn = this.turn(message.turnId);
        if (message.role === "user") turn.setUser(message.parts.map((p) => p.text || "").join("\n\n"), message.id);
        else {
          turn.assistant(message.id).replaceParts(message.parts);
          turn.setOutcome(message.status);
        }
      }
      const session = await get(chatPath(this.id));
      this.view.setSession(session);
      this.active = session.activeTurnId || null;
      if (this.active) await this.loadActiveTurn(this.active);
    } catch {
      // the feed goes on
    }
    this.showStatus();
  }

  async send(text) {
    const el = userTurn(text, true);
    this.root.append(el);
    this.scroll(true);
    const pending = { text, el, turnId: null, adoptedBy: null };
    this.pending = pending;
    let response;
    try {
      response = await post(
        chatPath(this.id, "/respond"),
        { parts: [{ type: "text", text }] },
        { raw: true, headers: { "Idempotency-Key": newKey() } },
      );
    } catch (err) {
      this.pending = null;
      if (pending.adoptedBy) this.resync(); // we had taken another client's turn for ours
      else el.remove();
      if (err instanceof ApiError && err.code === "TURN_CONFLICT") {
        throw new Error("Another turn is running in this session: wait for it or stop it.");
      }
      throw err;
    }
    const turnId = response.headers.get("X-Turn-Id");
    response.body?.cancel().catch(() => {}); // the feed carries this turn's events
    if (pending.adoptedBy && pending.adoptedBy !== turnId) {
      this.resync();
    }
    if (pending.adoptedBy) {
      if (this.pending === pending) this.pending = null;
    } else {
      pending.turnId = turnId;
    }
  }

  showStatus() {
    if (this.connection === "reconnecting") {
      this.view.setStatus("Connection lost: reconnecting…");
    } else if (this.connection === "closed" && this.view.session?.status !== "ended") {
      this.view.setStatus("Disconnected from this session.");
    } else if (this.active && this.turnStatus) {
      this.view.setStatus(this.stopping ? "Stopping…" : STATUS_TEXT[this.turnStatus] || this.turnStatus);
    } else if (this.view.els.status.textContent !== "Stopped.") {
      this.view.setStatus("");
    }
  }

  atBottom() {
    const box = this.box;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  scroll(force = false) {
    if (force || this.atBottom()) this.box.scrollTop = this.box.scrollHeight;
  }
}

class Turn {
  constructor(conversation, turnId, el = null) {
    this.conversation = conversation;
    this.id = turnId;
    this.el = el || h("article.turn");
    this.el.dataset.turnId = turnId;
    this.el.classList.remove("provisional");
    this.userEl = null;
    this.assistantEl = null;
    this.messageId = null;
    this.parts = new Map(); // partId -> element
    this.questions = new Map(); // requestID -> element
    this.foot = null;
  }

  static adopt(conversation, turnId, el, messageId) {
    const turn = new Turn(conversation, turnId, el);
    turn.userEl = el.querySelector(".msg.user");
    if (turn.userEl && messageId) turn.userEl.dataset.messageId = messageId;
    return turn;
  }

  setUser(text, messageId) {
    const fresh = userMessage(text, messageId);
    if (this.userEl) this.userEl.replaceWith(fresh);
    else this.el.prepend(fresh);
    this.userEl = fresh;
  }

  assistant(messageId) {
    if (!this.assistantEl) {
      this.partsEl = h("div.parts");
      this.foot = h("div.turn-foot");
      this.assistantEl = h(
        "div.msg.assistant",
        { dataset: { messageId: messageId || "" }, "aria-busy": "true" },
        h("span.visually-hidden", {}, "The agent said:"),
        this.partsEl,
        this.foot,
      );
      this.el.append(this.assistantEl);
    }
    if (messageId && !this.assistantEl.dataset.messageId) this.assistantEl.dataset.messageId = messageId;
    return this;
  }

  /** `message.part.updated`: text parts are set to the full `text`; other parts replaced whole. */
  updatePart(data) {
    if (data.type === "text") {
      let el = this.parts.get(data.partId);
      if (!el) {
        el = h("div.part.part-text.md", { dataset: { partId: data.partId } });
        this.parts.set(data.partId, el);
        this.partsEl.append(el);
      }
      setText(el, data.text ?? "");
      return;
    }
    const part = data.part || {};
    if (data.type === "question" || part.type === "question") {
      this.question(part, data.partId);
      return;
    }
    this.placePart(data.partId, toolPart(part));
  }

  placePart(partId, el) {
    el.dataset.partId = partId;
    const old = this.parts.get(partId);
    if (old && old.tagName === "DETAILS" && el.tagName === "DETAILS") el.open = old.open;
    if (old) old.replaceWith(el);
    else this.partsEl.append(el);
    this.parts.set(partId, el);
  }

  /** A question (from a `question` event, a question part, or the turn's open questions). */
  question(q, partId = null) {
    this.assistant(null);
    const existing = this.questions.get(q.requestID) || (partId && this.parts.get(partId)) || null;
    const was = existing?.dataset.status;
    const status = q.status || was || "pending";
    let el = existing;
    // Re-render on a change of status, except back to pending after answering here (a late event).
    if (!existing || (was !== status && !(was === "answered" && status === "pending"))) {
      el = questionPart(this.conversation, { ...q, status });
      if (existing) existing.replaceWith(el);
      else this.partsEl.append(el);
      for (const [key, value] of this.parts) if (value === existing) this.parts.set(key, el);
    }
    if (partId) {
      el.dataset.partId = partId;
      this.parts.set(partId, el);
    }
    this.questions.set(q.requestID, el);
  }

  /** `message.completed` or history: the message's final parts, in order. */
  replaceParts(parts) {
    const seen = new Set();
    for (const part of parts) {
      seen.add(part.id);
      if (part.type === "text") this.updatePart({ type: "text", partId: part.id, text: part.text });
      else if (part.type === "question") this.question(part, part.id);
      else this.placePart(part.id, toolPart(part));
    }
    // keep the order the message gives
    for (const part of parts) {
      const el = this.parts.get(part.id);
      if (el) this.partsEl.append(el);
    }
    for (const [partId, el] of this.parts) {
      if (!seen.has(partId)) {
        el.remove();
        this.parts.delete(partId);
      }
    }
  }

  setOutcome(status, error = null) {
    if (!status) return;
    this.assistant(null);
    this.assistantEl.dataset.status = status;
    let note = this.foot.querySelector(".outcome");
    const text =
      status === "cancelled"
        ? "Stopped"
        : status === "failed"
          ? `Failed${error?.message ? `: ${error.message}` : ""}`
          : "";
    if (!text) {
      note?.remove();
      return;
    }
    if (!note) {
      note = h("span.outcome");
      this.foot.prepend(note);
    }
    note.textContent = text;
    note.className = `outcome outcome-${status}`;
  }

  settle() {
    this.assistant(null);
    this.assistantEl.removeAttribute("aria-busy");
  }

  setUsage(properties) {
    if (!properties) return;
    this.assistant(null);
    const summary = properties.summary || properties.usage || {};
    const usage = properties.usage || {};
    let el = this.foot.querySelector(".usage");
    if (!el) {
      el = h("span.usage");
      this.foot.append(el);
    }
    el.textContent = `${tokens(summary.totalTokens)} · ${dollars(summary.costMicros)}`;
    el.title = `This turn: ${usage.totalInputTokens ?? 0} input and ${usage.totalOutputTokens ?? 0} output tokens`;
    el.setAttribute("aria-label", `This turn used ${el.textContent}`);
  }
}

// Text parts re-render at most once a frame, always from the full text they hold.
function setText(el, text) {
  if (el._text === text) return;
  el._text = text;
  if (el._scheduled) return;
  el._scheduled = true;
  requestAnimationFrame(() => {
    el._scheduled = false;
    renderMarkdown(el, el._text);
  });
}

function toolPart(part) {
  const status = part.status || "running";
  const input = part.input ?? {};
  const brief =
    typeof input === "object" && input !== null
      ? input.command || input.path || input.pattern || ""
      : String(input);
  const inputCode = h("code.language-json");
  highlightJson(inputCode, input);
  const output =
    part.output === null || part.output === undefined
      ? h("p.muted.small", {}, status === "running" ? "Running…" : "No output.")
      : h("pre.tool-output", {}, h("code", {}, String(part.output)));
  return h(
    "details.part.tool",
    { dataset: { status } },
    h(
      "summary",
      {},
      h("span.tool-icon", { "aria-hidden": "true" }, "⚙"),
      h("span.tool-name", {}, part.name || "tool"),
      brief ? h("code.tool-brief", {}, String(brief).slice(0, 80)) : null,
      h(`span.badge.tool-${status}`, {}, status),
    ),
    h(
      "div.tool-body",
      {},
      h("h4", {}, "Input"),
      h("pre", {}, inputCode),
      h("h4", {}, "Output"),
      output,
    ),
  );
}

let questionCounter = 0;
function questionPart(conversation, q) {
  const id = `q-${++questionCounter}`;
  const status = q.status || "pending";
  const el = h(
    "div.part.question",
    { role: "group", "aria-labelledby": id, dataset: { requestId: q.requestID, status } },
    h("p.question-text", { id }, h("span.question-icon", { "aria-hidden": "true" }, "?"), q.question || ""),
  );
  if (status !== "pending") {
    const label =
      status === "answered"
        ? `Answered: ${q.answer ?? ""}`
        : status === "expired"
          ? "Not answered in time."
          : "Dropped (the turn was stopped).";
    el.append(h("p.question-answer", {}, label));
    return el;
  }
  const answer = async (text, controls) => {
    if (!text.trim()) return;
    for (const c of controls) c.disabled = true;
    try {
      await post(chatPath(conversation.id, `/question/${encodeURIComponent(q.requestID)}/reply`), { text });
      el.dataset.status = "answered";
      el.querySelector(".question-controls")?.replaceWith(h("p.question-answer", {}, `Answered: ${text}`));
    } catch (err) {
      if (err.code === "QUESTION_CLOSED") {
        el.querySelector(".question-controls")?.replaceWith(h("p.question-answer", {}, "This question is closed."));
      } else {
        for (const c of controls) c.disabled = false;
        toast(`Could not answer: ${err.message}`);
      }
    }
  };
  const input = h("input", { type: "text", id: `${id}-text`, placeholder: "Or type an answer", autocomplete: "off" });
  const submit = h("button", { type: "submit" }, "Answer");
  const options = (q.options || []).map((option) => h("button.option", { type: "button" }, option));
  const controls = [...options, input, submit];
  options.forEach((button, i) => button.addEventListener("click", () => answer(q.options[i], controls)));
  const form = h(
    "form.answer-form",
    {
      onsubmit: (event) => {
        event.preventDefault();
        answer(input.value, controls);
      },
    },
    h("label.visually-hidden", { for: `${id}-text` }, "Your answer"),
    input,
    submit,
  );
  el.append(
    h(
      "div.question-controls",
      {},
      options.length ? h("div.options", { role: "group", "aria-label": "Suggested answers" }, options) : null,
      form,
    ),
  );
  return el;
}
