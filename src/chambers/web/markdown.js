// Markdown -> sanitised HTML: marked parses, DOMPurify sanitises, highlight.js colours code blocks.
import { Marked } from "./vendor/marked-18.2.1.esm.js";
import DOMPurify from "./vendor/purify-3.4.18.es.mjs";
import hljs from "./vendor/highlight-11.12.0.min.js";

const marked = new Marked({ gfm: true, breaks: false, async: false });

// Links open in a new tab without handing over this page (or a referrer).
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
  FORBID_ATTR: ["style"],
  RETURN_DOM_FRAGMENT: true,
};

/** Render `text` (Markdown) into `el`, replacing what it held. */
export function renderMarkdown(el, text) {
  const html = marked.parse(text || "");
  const fragment = DOMPurify.sanitize(html, PURIFY);
  for (const code of fragment.querySelectorAll("pre code")) {
    const lang = /language-([\w+#.-]+)/.exec(code.className)?.[1];
    try {
      if (lang && hljs.getLanguage(lang)) {
        code.innerHTML = hljs.highlight(code.textContent, { language: lang, ignoreIllegals: true }).value;
      } else {
        code.innerHTML = hljs.highlightAuto(code.textContent).value;
      }
      code.classList.add("hljs");
    } catch {
      // leave the block plain
    }
  }
  el.replaceChildren(fragment);
}

/** Syntax-highlighted JSON (for tool inputs and the admin views), as a <code> element's content. */
export function highlightJson(el, value) {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  el.innerHTML = hljs.highlight(text ?? "", { language: "json", ignoreIllegals: true }).value;
  el.classList.add("hljs");
}
