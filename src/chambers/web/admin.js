// Admin pages: agents, users, grants, API keys, webhooks (with their delivery log) and the session log.
// They use the same public endpoints as any client: /api/agents, /api/users, /api/grants, /api/audit and
// /events/v1/webhooks.
import { $, $$, clear, dollars, fullTime, h, shortDid, toast, when } from "./dom.js";
import { del, get, patch, post, query } from "./api.js";
import { highlightJson } from "./markdown.js";

let fieldCounter = 0;

/** A labelled form control: h("div.field", label, control, hint, error). */
function field(label, control, hint = "") {
  const id = control.id || `f-${++fieldCounter}`;
  control.id = id;
  const error = h("p.field-error", { id: `${id}-error`, hidden: true });
  const hintEl = hint ? h("p.hint", { id: `${id}-hint` }, hint) : null;
  control.setAttribute("aria-describedby", [hintEl && `${id}-hint`, `${id}-error`].filter(Boolean).join(" "));
  const wrap = h("div.field", {}, h("label", { for: id }, label), control, error, hintEl);
  wrap.setError = (message) => {
    error.textContent = message || "";
    error.hidden = !message;
    if (message) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  };
  return wrap;
}

function formError() {
  return h("p.error", { role: "alert", hidden: true });
}

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

function table(headers, rows, { caption } = {}) {
  return h(
    "div.table-wrap",
    {},
    h(
      "table",
      {},
      caption ? h("caption.visually-hidden", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    ),
  );
}

function emptyRow(columns, text) {
  return h("tr", {}, h("td.muted", { colspan: columns }, text));
}

function time(iso) {
  return iso ? h("time", { datetime: iso, title: fullTime(iso) }, when(iso)) : "—";
}

/** `{...}` from a textarea: null when empty; throws with a readable message when not an object. */
function parseObject(text, name) {
  if (!text.trim()) return null;
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${name} is not valid JSON: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`${name} must be a JSON object, like {"maxTurnsPerSession": 50}`);
  }
  return value;
}

function inlineConfirm(anchor, question, action, label = "Yes") {
  const bar = h(
    "span.inline-confirm",
    { role: "alertdialog", "aria-label": question },
    h("span", {}, question),
    h(
      "button.danger",
      {
        type: "button",
        onclick: async () => {
          bar.remove();
          await action();
        },
      },
      label,
    ),
    h("button", { type: "button", onclick: () => bar.remove() }, "Cancel"),
  );
  anchor.after(bar);
  bar.querySelector("button").focus();
}

export class AdminView {
  constructor(app) {
    this.app = app;
    this.body = $("#admin-body");
  }

  async show(section, arg) {
    for (const link of $$(".subnav a")) {
      if (link.dataset.sub === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    const pages = {
      agents: () => this.agents(),
      users: () => this.users(),
      grants: () => this.grants(),
      keys: () => this.keys(),
      webhooks: () => (arg ? this.deliveries(arg) : this.webhooks()),
      audit: () => this.audit(),
    };
    const page = pages[section];
    if (!page) {
      location.replace("#/admin/agents");
      return;
    }
    clear(this.body).append(h("p.muted", {}, "Loading…"));
    try {
      await page();
    } catch (err) {
      clear(this.body).append(h("p.error", { role: "alert" }, err.message));
    }
  }

  page(title, ...content) {
    const heading = h("h1", { tabindex: "-1" }, title);
    clear(this.body).append(heading, ...content);
    return heading;
  }

  // --- agents ---------------------------------------------------------------------------------------------

  async agents() {
    const { agents } = await get("/api/agents");
    const formSlot = h("div.form-slot");
    const rows = agents.map((agent) => {
      const edit = h("button", { type: "button", onclick: () => this.agentForm(formSlot, agent) }, "Edit");
      const remove = agent.default
        ? null
        : h(
            "button.danger",
            {
              type: "button",
              onclick: (event) =>
                inlineConfirm(event.currentTarget, `Delete ${agent.name}?`, async () => {
                  try {
                    await del(`/api/agents/${encodeURIComponent(agent.did)}`);
                    await this.agents();
                  } catch (err) {
                    toast(err.message);
                  }
                }),
            },
            "Delete",
          );
      const policy = Object.entries(agent.policy || {}).filter(([, v]) => v !== null && v !== false);
      return h(
        "tr",
        {},
        h("td", {}, h("strong", {}, agent.name), agent.default ? h("span.badge", {}, "default") : null),
        h("td", {}, h("code", { title: agent.did }, shortDid(agent.did))),
        h("td", {}, agent.model),
        h("td", {}, agent.tools ? agent.tools.join(", ") : h("span.muted", {}, "all")),
        h(
          "td.small",
          {},
          policy.length ? policy.map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("; ") : h("span.muted", {}, "none"),
        ),
        h("td", {}, time(agent.updatedAt)),
        h("td.actions", {}, edit, remove),
      );
    });
    this.page(
      "Agents",
      h(
        "div.toolbar",
        {},
        h("button.primary", { type: "button", onclick: () => this.agentForm(formSlot, null) }, "New agent"),
      ),
      table(["Name", "DID", "Model", "Tools", "Policy", "Updated", ""], rows.length ? rows : [emptyRow(7, "No agents.")], {
        caption: "Agents",
      }),
      formSlot,
    );
  }

  agentForm(slot, agent) {
    const json = (value) => (value && Object.keys(value).length ? JSON.stringify(value, null, 2) : "");
    const policyNow = agent ? Object.fromEntries(Object.entries(agent.policy || {}).filter(([, v]) => v !== null)) : {};
    const name = field("Name", h("input", { type: "text", required: true, value: agent?.name || "" }));
    const model = field(
      "Model",
      h("input", { type: "text", value: agent?.model || "", placeholder: "provider/model (empty: the server's default)" }),
    );
    const prompt = field("System prompt", h("textarea", { rows: 2, value: agent?.systemPrompt || "" }));
    prompt.classList.add("wide");
    const tools = field(
      "Tools",
      h("input", { type: "text", value: agent?.tools ? agent.tools.join(", ") : "", placeholder: "all built-in tools" }),
      "Comma-separated: shell, read_file, write_file, edit_file, list_files, grep, ask_user. Empty: all.",
    );
    tools.classList.add("wide");
    const policy = field(
      "Policy (JSON)",
      h("textarea.mono", { rows: 4, value: json(policyNow), placeholder: '{"maxTurnsPerSession": 50}' }),
      "E.g. allowedModels, allowedTools, maxTurnsPerSession, maxCostMicrosPerSession, network.",
    );
    const sandbox = field(
      "Sandbox limits (JSON)",
      h("textarea.mono", { rows: 4, value: json(agent?.sandbox), placeholder: '{"cpuSeconds": 30}' }),
      "E.g. cpuSeconds, memoryBytes, maxProcesses, commandTimeoutS.",
    );
    const error = formError();
    const fields = { name, model, systemPrompt: prompt, tools, policy, sandbox };
    const control = (f) => f.querySelector("input, textarea, select");
    const check = () => {
      let ok = true;
      for (const [f, label] of [
        [policy, "Policy"],
        [sandbox, "Sandbox limits"],
      ]) {
        try {
          parseObject(control(f).value, label);
          f.setError("");
        } catch (err) {
          f.setError(err.message);
          ok = false;
        }
      }
      return ok;
    };
    control(policy).addEventListener("input", check);
    control(sandbox).addEventListener("input", check);
    const form = h(
      "form.card.agent-form",
      {
        "aria-label": agent ? `Edit agent ${agent.name}` : "New agent",
        onsubmit: async (event) => {
          event.preventDefault();
          showError(error, "");
          for (const f of Object.values(fields)) f.setError("");
          if (!check()) {
            showError(error, "Fix the fields marked above.");
            return;
          }
          const toolList = control(tools)
            .value.split(",")
            .map((t) => t.trim())
            .filter(Boolean);
          const body = {
            name: control(name).value.trim(),
            model: control(model).value.trim() || null,
            systemPrompt: control(prompt).value || null,
            tools: toolList.length ? toolList : null,
            policy: parseObject(control(policy).value, "Policy"),
            sandbox: parseObject(control(sandbox).value, "Sandbox limits"),
          };
          try {
            if (agent) await patch(`/api/agents/${encodeURIComponent(agent.did)}`, body);
            else await post("/api/agents", body);
          } catch (err) {
            // The server names the field first (`policy.maxTurnsPerSession: must be at least 1`).
            const key = Object.keys(fields).find((k) => err.message.startsWith(k));
            if (key) fields[key].setError(err.message);
            showError(error, err.message);
            return;
          }
          toast(agent ? `Saved ${body.name}.` : `Created ${body.name}.`);
          await this.agents();
        },
      },
      h("h2", {}, agent ? `Edit ${agent.name}` : "New agent"),
      name,
      model,
      prompt,
      tools,
      policy,
      sandbox,
      error,
      h(
        "div.form-actions",
        {},
        h("button.primary", { type: "submit" }, agent ? "Save" : "Create agent"),
        h("button", { type: "button", onclick: () => clear(slot) }, "Cancel"),
      ),
    );
    clear(slot).append(form);
    control(name).focus();
    form.scrollIntoView({ block: "nearest" });
  }

  // --- users ----------------------------------------------------------------------------------------------

  async users() {
    const { users } = await get("/api/users");
    const rows = users.map((user) =>
      h(
        "tr",
        {},
        h("td", {}, user.email),
        h("td", {}, user.name || h("span.muted", {}, "—")),
        h("td", {}, h(`span.badge.role-${user.role}`, {}, user.role)),
        h("td", {}, time(user.createdAt)),
        h("td", {}, user.disabledAt ? h("span.badge.status-ended", {}, "disabled") : h("span.badge.status-active", {}, "active")),
        h(
          "td.actions",
          {},
          user.disabledAt || user.id === this.app.me.id
            ? null
            : h(
                "button.danger",
                {
                  type: "button",
                  onclick: (event) =>
                    inlineConfirm(event.currentTarget, `Disable ${user.email}?`, async () => {
                      try {
                        await del(`/api/users/${encodeURIComponent(user.id)}`);
                        await this.users();
                      } catch (err) {
                        toast(err.message);
                      }
                    }),
                },
                "Disable",
              ),
        ),
      ),
    );
    const email = field("Email", h("input", { type: "email", required: true, autocomplete: "off" }));
    const name = field("Name", h("input", { type: "text", autocomplete: "off" }));
    const password = field("Password", h("input", { type: "password", required: true, autocomplete: "new-password" }), "At least 8 characters.");
    const role = field("Role", h("select", {}, h("option", { value: "member" }, "member"), h("option", { value: "admin" }, "admin")));
    const error = formError();
    const value = (f) => f.querySelector("input, select").value;
    const form = h(
      "form.card.form.inline-form",
      {
        "aria-label": "Add a user",
        onsubmit: async (event) => {
          event.preventDefault();
          showError(error, "");
          try {
            await post("/api/users", {
              email: value(email).trim(),
              name: value(name).trim() || null,
              password: value(password),
              role: value(role),
            });
          } catch (err) {
            showError(error, err.message);
            return;
          }
          toast(`Added ${value(email)}.`);
          await this.users();
        },
      },
      h("h2", {}, "Add a user"),
      email,
      name,
      password,
      role,
      error,
      h("div.form-actions", {}, h("button.primary", { type: "submit" }, "Add user")),
    );
    this.page(
      "Users",
      table(["Email", "Name", "Role", "Created", "Status", ""], rows.length ? rows : [emptyRow(6, "No users.")], {
        caption: "Users",
      }),
      form,
    );
  }

  // --- grants ---------------------------------------------------------------------------------------------

  async grants() {
    const [{ grants }, { agents }, { users }] = await Promise.all([
      get("/api/grants"),
      get("/api/agents"),
      get("/api/users"),
    ]);
    const agentName = new Map(agents.map((a) => [a.did, a.name]));
    const userEmail = new Map(users.map((u) => [u.id, u.email]));
    const rows = grants.map((grant) => {
      const state = grant.revokedAt ? "revoked" : grant.live ? "live" : "expired";
      return h(
        "tr",
        {},
        h("td", {}, agentName.get(grant.agentDid) || h("code", { title: grant.agentDid }, shortDid(grant.agentDid))),
        h("td", {}, userEmail.get(grant.subject) || h("code", {}, grant.subject)),
        h("td", {}, grant.capabilities.join(", ")),
        h("td", {}, grant.expiresAt ? time(grant.expiresAt) : h("span.muted", {}, "never")),
        h("td", {}, h(`span.badge.grant-${state}`, {}, state)),
        h(
          "td.actions",
          {},
          grant.revokedAt
            ? null
            : h(
                "button.danger",
                {
                  type: "button",
                  onclick: (event) =>
                    inlineConfirm(event.currentTarget, "Revoke this grant?", async () => {
                      try {
                        await del(`/api/grants/${encodeURIComponent(grant.id)}`);
                        await this.grants();
                      } catch (err) {
                        toast(err.message);
                      }
                    }),
                },
                "Revoke",
              ),
        ),
      );
    });
    const agent = field("Agent", h("select", {}, agents.map((a) => h("option", { value: a.did }, a.name))));
    const listId = `users-${++fieldCounter}`;
    const subject = field(
      "Subject",
      h("input", { type: "text", required: true, list: listId, autocomplete: "off", placeholder: "a user's email, usr_… or key_…" }),
    );
    const expires = field("Expires (optional)", h("input", { type: "datetime-local" }), "Your local time. Empty: never.");
    const error = formError();
    const value = (f) => f.querySelector("input, select").value;
    const form = h(
      "form.card.form.inline-form",
      {
        "aria-label": "Grant an agent",
        onsubmit: async (event) => {
          event.preventDefault();
          showError(error, "");
          const body = { agentDid: value(agent), subject: value(subject).trim(), capabilities: ["chat"] };
          if (value(expires)) body.expiresAt = new Date(value(expires)).toISOString();
          try {
            await post("/api/grants", body);
          } catch (err) {
            showError(error, err.message);
            return;
          }
          toast("Granted.");
          await this.grants();
        },
      },
      h("h2", {}, "Grant an agent"),
      agent,
      subject,
      h("datalist", { id: listId }, users.filter((u) => !u.disabledAt).map((u) => h("option", { value: u.email }))),
      expires,
      error,
      h("div.form-actions", {}, h("button.primary", { type: "submit" }, "Grant chat")),
    );
    this.page(
      "Grants",
      h("p.muted", {}, "A grant lets a user or an API key chat with an agent. Admins may use every agent."),
      table(["Agent", "Subject", "Capabilities", "Expires", "State", ""], rows.length ? rows : [emptyRow(6, "No grants.")], {
        caption: "Grants",
      }),
      form,
    );
  }

  // --- API keys -------------------------------------------------------------------------------------------

  async keys() {
    const cmd = (text) => h("pre", {}, h("code", {}, text));
    this.page(
      "API keys",
      h(
        "div.card",
        {},
        h("p", {}, "API keys are managed with the command line on the server: there is no HTTP API for them."),
        cmd("chambers keys create --org default --scopes agent:read,agent:write --name my-app"),
        cmd("chambers keys list"),
        cmd("chambers keys revoke key_…"),
        h(
          "p.muted.small",
          {},
          "A key is printed once when it is made. Give a key access to an agent with a grant (subject key_…).",
        ),
      ),
    );
  }

  // --- webhooks -------------------------------------------------------------------------------------------

  async webhooks() {
    const [{ data }, types] = await Promise.all([
      get("/events/v1/webhooks?limit=100"),
      get("/events/v1/event-types").catch(() => ({ data: [] })),
    ]);
    const secretSlot = h("div");
    const rows = data.map((hook) => {
      const toggle = hook.status === "active" ? "disabled" : "active";
      const act = (label, fn, cls = "") =>
        h(`button${cls}`, { type: "button", onclick: fn }, label);
      return h(
        "tr",
        {},
        h("td.break", {}, h("code", {}, hook.url), hook.description ? h("div.muted.small", {}, hook.description) : null),
        h("td.small", {}, hook.eventTypes.length ? hook.eventTypes.join(", ") : h("span.muted", {}, "all events")),
        h(
          "td",
          {},
          h(`span.badge.hook-${hook.status}`, {}, hook.status),
          hook.disabledReason ? h("div.muted.small", {}, hook.disabledReason) : null,
        ),
        h("td", {}, String(hook.consecutiveFailures)),
        h("td", {}, time(hook.createdAt)),
        h(
          "td.actions",
          {},
          h("a.button", { href: `#/admin/webhooks/${encodeURIComponent(hook.id)}` }, "Deliveries"),
          act("Send test", async () => {
            try {
              await post(`/events/v1/webhooks/${encodeURIComponent(hook.id)}/test`);
              toast("A webhook.test event is on its way.");
            } catch (err) {
              toast(err.message);
            }
          }),
          act(toggle === "active" ? "Enable" : "Disable", async () => {
            try {
              await patch(`/events/v1/webhooks/${encodeURIComponent(hook.id)}`, { status: toggle });
              await this.webhooks();
            } catch (err) {
              toast(err.message);
            }
          }),
          act(
            "Delete",
            (event) =>
              inlineConfirm(event.currentTarget, "Delete this subscription?", async () => {
                try {
                  await del(`/events/v1/webhooks/${encodeURIComponent(hook.id)}`);
                  await this.webhooks();
                } catch (err) {
                  toast(err.message);
                }
              }),
            ".danger",
          ),
        ),
      );
    });
    const url = field("URL", h("input", { type: "url", required: true, placeholder: "https://example.com/hooks/chambers" }));
    const description = field("Description", h("input", { type: "text" }));
    const boxes = types.data
      .filter((t) => !t.reserved)
      .map((t) =>
        h(
          "label.check",
          { title: t.description },
          h("input", { type: "checkbox", value: t.name }),
          h("span", {}, t.name),
        ),
      );
    const events = h(
      "fieldset.field",
      {},
      h("legend", {}, "Event types"),
      h("p.hint", {}, "None ticked: every event."),
      h("div.checks", {}, boxes),
    );
    const error = formError();
    const form = h(
      "form.card.form",
      {
        "aria-label": "Add a webhook subscription",
        onsubmit: async (event) => {
          event.preventDefault();
          showError(error, "");
          const body = {
            url: url.querySelector("input").value.trim(),
            eventTypes: boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value),
            description: description.querySelector("input").value.trim() || null,
          };
          let made;
          try {
            made = await post("/events/v1/webhooks", body);
          } catch (err) {
            showError(error, err.message);
            return;
          }
          await this.webhooks();
          $(".secret-slot", this.body)?.append(
            h(
              "div.callout",
              { role: "status" },
              h("p", {}, "Signing secret of the new subscription. It is shown only this once: store it now."),
              h("pre", {}, h("code", {}, made.secret)),
            ),
          );
        },
      },
      h("h2", {}, "Add a subscription"),
      url,
      description,
      events,
      error,
      h("div.form-actions", {}, h("button.primary", { type: "submit" }, "Subscribe")),
    );
    secretSlot.className = "secret-slot";
    this.page(
      "Webhooks",
      secretSlot,
      table(["URL", "Events", "Status", "Failures", "Created", ""], rows.length ? rows : [emptyRow(6, "No subscriptions.")], {
        caption: "Webhook subscriptions",
      }),
      form,
    );
  }

  async deliveries(webhookId) {
    const hook = await get(`/events/v1/webhooks/${encodeURIComponent(webhookId)}`);
    const path = `/events/v1/webhooks/${encodeURIComponent(webhookId)}/deliveries`;
    const tbody = h("tbody");
    const more = h("button", { type: "button", hidden: true }, "Load older attempts");
    let attempts = [];
    let cursor = null;
    let olderLoaded = false;
    const render = () => {
      clear(tbody);
      for (const a of attempts) {
        tbody.append(
          h(
            "tr",
            {},
            h("td", {}, time(a.createdAt)),
            h("td", {}, a.eventType),
            h("td", {}, h("code.small", {}, a.eventId)),
            h("td", {}, String(a.attempt)),
            h("td", {}, a.statusCode === null ? "—" : String(a.statusCode)),
            h("td", {}, h(`span.badge.delivery-${a.deliveryStatus}`, {}, a.deliveryStatus)),
            h("td", {}, `${a.durationMs} ms`),
            h("td", {}, a.nextRetryAt ? time(a.nextRetryAt) : "—"),
            h("td.small.break", {}, a.error || ""),
          ),
        );
      }
      if (!attempts.length) tbody.append(emptyRow(9, "No delivery attempts yet."));
      more.hidden = !cursor;
    };
    const first = async () => {
      const page = await get(`${path}${query({ limit: 50 })}`);
      attempts = page.data;
      cursor = page.nextCursor;
      render();
    };
    more.addEventListener("click", async () => {
      try {
        const page = await get(`${path}${query({ limit: 50, cursor })}`);
        attempts = attempts.concat(page.data);
        cursor = page.nextCursor;
        olderLoaded = true;
        render();
      } catch (err) {
        toast(err.message);
      }
    });
    this.page(
      "Delivery log",
      h("p", {}, h("a", { href: "#/admin/webhooks" }, "← Webhooks"), " · ", h("code", {}, hook.url)),
      h("p.muted.small", {}, "Newest first; the first page refreshes every few seconds."),
      h(
        "div.table-wrap",
        {},
        h(
          "table",
          {},
          h("caption.visually-hidden", {}, "Delivery attempts"),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Time", "Type", "Event", "Attempt", "HTTP status", "Delivery", "Duration", "Next retry", "Error"].map((t) =>
                h("th", { scope: "col" }, t),
              ),
            ),
          ),
          tbody,
        ),
      ),
      more,
    );
    await first();
    // A live log: retries show up as they happen, until the page is left.
    const timer = setInterval(() => {
      if (!tbody.isConnected) clearInterval(timer);
      else if (!olderLoaded && !document.hidden) first().catch(() => {});
    }, 2000);
  }

  // --- session log ----------------------------------------------------------------------------------------

  async audit() {
    const { agents } = await get("/api/agents");
    const { users } = await get("/api/users").catch(() => ({ users: [] }));
    const agentName = new Map(agents.map((a) => [a.did, a.name]));
    const userEmail = new Map(users.map((u) => [u.id, u.email]));
    const agent = field(
      "Agent",
      h("select", {}, h("option", { value: "" }, "All agents"), agents.map((a) => h("option", { value: a.did }, a.name))),
    );
    const subject = field("Subject", h("input", { type: "text", placeholder: "usr_… or key_…" }));
    const sessionId = field("Session", h("input", { type: "text", placeholder: "chat_…" }));
    const since = field("Since", h("input", { type: "datetime-local" }));
    const until = field("Until", h("input", { type: "datetime-local" }));
    const value = (f) => f.querySelector("input, select").value;
    const iso = (v) => (v ? new Date(v).toISOString() : null);
    const tbody = h("tbody");
    const more = h("button", { type: "button", hidden: true }, "Load older entries");
    const error = formError();
    let cursor = null;
    const load = async (reset) => {
      if (reset) {
        cursor = null;
        clear(tbody);
      }
      showError(error, "");
      let page;
      try {
        page = await get(
          `/api/audit${query({
            agentDid: value(agent),
            subject: value(subject).trim(),
            sessionId: value(sessionId).trim(),
            since: iso(value(since)),
            until: iso(value(until)),
            limit: 50,
            cursor,
          })}`,
        );
      } catch (err) {
        showError(error, err.message);
        return;
      }
      for (const e of page.entries) {
        const details = h("code.language-json");
        highlightJson(details, e);
        const tokensUsed = (e.inputTokens || 0) + (e.outputTokens || 0);
        tbody.append(
          h(
            "tr",
            { class: `audit-${e.outcome}` },
            h("td", {}, time(e.createdAt)),
            h("td", {}, agentName.get(e.agentDid) || h("code", { title: e.agentDid }, shortDid(e.agentDid))),
            h("td", {}, e.kind),
            h("td", {}, h(`span.badge.outcome-${e.outcome}`, {}, e.outcome)),
            h("td", {}, userEmail.get(e.subjectId) || h("code.small", {}, e.subjectId || "—")),
            h("td", {}, e.sessionId ? h("code.small", {}, e.sessionId) : "—"),
            h("td.num", {}, tokensUsed ? tokensUsed.toLocaleString("en-US") : "—"),
            h("td.num", {}, dollars(e.costMicros)),
            h(
              "td",
              {},
              h(
                "details.entry",
                {},
                h("summary", {}, e.error ? `Error: ${e.error.code || ""}` : "Details"),
                h("pre", {}, details),
              ),
            ),
          ),
        );
      }
      if (!tbody.children.length) tbody.append(emptyRow(9, "No entries."));
      cursor = page.nextCursor;
      more.hidden = !cursor;
    };
    more.addEventListener("click", () => load(false));
    const filters = h(
      "form.card.filters",
      {
        "aria-label": "Filter the session log",
        onsubmit: (event) => {
          event.preventDefault();
          load(true);
        },
      },
      agent,
      subject,
      sessionId,
      since,
      until,
      h("div.form-actions", {}, h("button.primary", { type: "submit" }, "Filter")),
    );
    this.page(
      "Session log",
      h("p.muted", {}, "Every turn and every refusal, newest first. Each agent's entries form a signed hash chain."),
      filters,
      error,
      h(
        "div.table-wrap",
        {},
        h(
          "table.audit",
          {},
          h("caption.visually-hidden", {}, "Session log entries"),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Time", "Agent", "Kind", "Outcome", "Subject", "Session", "Tokens", "Cost", ""].map((t) =>
                h("th", { scope: "col" }, t),
              ),
            ),
          ),
          tbody,
        ),
      ),
      more,
    );
    await load(true);
  }
}
