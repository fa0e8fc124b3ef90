/* chatstack web chat: the /chat/ page and the one-tag widget are this same file.
 * Page: an element with id "chatstack-chat" receives the chat. Widget: on any other page,
 * <script src="https://CHAT-HOST/chat/chat.js" async></script> adds a floating button.
 * No API key: the service issues a signed, expiring token per browser session. */
(() => {
  "use strict";
  const script = document.currentScript;
  const base = new URL(".", script.src);
  const api = new URL("/api/public/v1", base).href;
  const storeKey = "chatstack-chat:" + base.origin;

  const TEXT = {
    en: {
      title: "Customer service", intro: "Ask about orders, shipping, returns, refunds, invoices, accounts or payments.",
      label: "Your message", placeholder: "Type your question…", send: "Send", human: "Talk to a person",
      humanMessage: "I want to talk to a human", sources: "Sources", open: "Chat with us", close: "Close chat",
      reset: "New conversation", you: "You", agent: "Assistant", error: "Sorry, something went wrong. Please try again.",
      busy: "Too many messages. Please wait a moment and try again.", expired: "Your session expired; a new conversation was started.",
      tooLong: "That message is too long.",
    },
    zh: {
      title: "在线客服", intro: "可以咨询订单、物流、退货、退款、发票、账户和支付问题。",
      label: "您的问题", placeholder: "请输入您的问题…", send: "发送", human: "转人工",
      humanMessage: "转人工", sources: "参考来源", open: "联系客服", close: "关闭对话",
      reset: "新对话", you: "您", agent: "客服助手", error: "抱歉，出错了，请重试。",
      busy: "消息太频繁，请稍后再试。", expired: "会话已过期，已为您开始新的对话。", tooLong: "消息太长了。",
    },
  };
  const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  const pick = langs.map((l) => l.toLowerCase().slice(0, 2)).find((l) => l in TEXT) || "en";
  const t = TEXT[pick];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  // ---------------------------------------------------------------- session (token in the browser)
  const load = () => { try { return JSON.parse(localStorage.getItem(storeKey)) || null; } catch { return null; } };
  const save = (s) => { try { localStorage.setItem(storeKey, JSON.stringify(s)); } catch { /* private mode */ } };
  const forget = () => { try { localStorage.removeItem(storeKey); } catch { /* private mode */ } };
  const live = (s) => s && s.token && s.expires_at * 1000 > Date.now() + 30000;

  async function session() {
    const known = load();
    if (live(known)) return known;
    const res = await fetch(api + "/sessions", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    if (!res.ok) throw Object.assign(new Error("session"), { status: res.status });
    const fresh = await res.json();
    save(fresh);
    return fresh;
  }

  // ------------------------------------------------------------------------------------ the view
  function build(root, widget) {
    const ids = "cs-" + Math.random().toString(36).slice(2, 8);
    const log = el("ol", { class: "cs-log", role: "log", "aria-live": "polite", "aria-label": t.title });
    const input = el("textarea", { id: ids + "-in", class: "cs-input", rows: "2", maxlength: "4000", placeholder: t.placeholder, required: "" });
    const send = el("button", { type: "submit", class: "cs-send", text: t.send });
    const human = el("button", { type: "button", class: "cs-human", text: t.human });
    const reset = el("button", { type: "button", class: "cs-reset", text: t.reset });
    const status = el("p", { class: "cs-status", role: "status", "aria-live": "polite" });
    const form = el("form", { class: "cs-form" },
      el("label", { for: ids + "-in", class: "cs-label", text: t.label }), input,
      el("div", { class: "cs-actions" }, send, human));
    const head = el("header", { class: "cs-head" }, el(widget ? "h2" : "h1", { id: ids + "-title", class: "cs-title", text: t.title }), reset);
    const box = el("section", { class: "cs-chat", "aria-labelledby": ids + "-title", lang: pick === "zh" ? "zh-CN" : "en" },
      head, el("p", { class: "cs-intro", text: t.intro }), log, form, status);
    root.append(box);
    return { box, head, log, input, send, human, reset, status, form };
  }

  function bubble(v, role, text) {
    const body = el("p", { class: "cs-text" });
    body.textContent = text || "";
    const item = el("li", { class: "cs-msg cs-" + role },
      el("span", { class: "cs-who", text: (role === "user" ? t.you : t.agent) + ": " }), body);
    v.log.append(item);
    item.scrollIntoView({ block: "end" });
    return { item, body };
  }

  function showSources(item, sources) {
    if (!sources || !sources.length) return;
    const list = el("ul", { class: "cs-source-list" });
    for (const s of sources) list.append(el("li", { class: "cs-source", title: s.id, text: s.title }));
    item.append(el("div", { class: "cs-sources" }, el("span", { class: "cs-sources-label", text: t.sources }), list));
  }

  async function restore(v) {
    const known = load();
    if (!live(known)) { forget(); return; }
    const res = await fetch(api + "/sessions/" + encodeURIComponent(known.session_id),
      { headers: { Authorization: "Bearer " + known.token } });
    if (res.status === 401 || res.status === 403) { forget(); return; }
    if (!res.ok) return;
    for (const m of (await res.json()).messages) {
      const b = bubble(v, m.role === "user" ? "user" : "assistant", m.content);
      if (m.role !== "user") { b.item.dataset.state = "done"; b.item.dataset.intent = m.intent || ""; showSources(b.item, m.sources); }
    }
  }

  function parseEvent(block) {
    let event = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    return { event, data: data ? JSON.parse(data) : {} };
  }

  async function ask(v, text, retried) {
    const s = await session();
    const res = await fetch(api + "/sessions/" + encodeURIComponent(s.session_id) + "/stream", {
      method: "POST", headers: { "Content-Type": "application/json", Authorization: "Bearer " + s.token },
      body: JSON.stringify({ message: text }),
    });
    if ((res.status === 401 || res.status === 403) && !retried) {
      forget();
      v.status.textContent = t.expired;
      return ask(v, text, true);
    }
    if (res.status === 429) throw Object.assign(new Error("busy"), { status: 429 });
    if (res.status === 413 || res.status === 422) throw Object.assign(new Error("long"), { status: 422 });
    if (!res.ok || !res.body) throw Object.assign(new Error("http"), { status: res.status });
    const a = bubble(v, "assistant", "");
    a.item.dataset.state = "streaming";
    a.item.dataset.tokens = "0";
    a.item.setAttribute("aria-busy", "true");
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const { event, data } = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event === "token") {
            a.body.textContent += data.text;
            a.item.dataset.tokens = String(Number(a.item.dataset.tokens) + 1);
            a.item.scrollIntoView({ block: "end" });
          } else if (event === "meta") a.item.dataset.intent = data.intent;
          else if (event === "sources") showSources(a.item, data.sources);
          else if (event === "done") { a.item.dataset.intent = data.intent; a.item.dataset.state = "done"; }
          else if (event === "error") throw new Error(data.message);
        }
      }
    } finally {
      a.item.removeAttribute("aria-busy");
      if (a.item.dataset.state !== "done") { a.item.dataset.state = "failed"; a.body.textContent += " " + t.error; }
    }
  }

  function mount(root, widget) {
    const v = build(root, widget);
    let busy = false;
    const submit = async (text) => {
      text = text.trim();
      if (!text || busy) return;
      busy = true;
      v.send.disabled = v.human.disabled = true;
      v.status.textContent = "";
      bubble(v, "user", text);
      try {
        await ask(v, text, false);
      } catch (err) {
        v.status.textContent = err.status === 429 ? t.busy : err.status === 422 ? t.tooLong : t.error;
      } finally {
        busy = false;
        v.send.disabled = v.human.disabled = false;
        v.input.focus();
      }
    };
    v.form.addEventListener("submit", (e) => { e.preventDefault(); const text = v.input.value; v.input.value = ""; submit(text); });
    v.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); v.form.requestSubmit(); }
    });
    v.human.addEventListener("click", () => submit(t.humanMessage));
    v.reset.addEventListener("click", () => { forget(); v.log.replaceChildren(); v.status.textContent = ""; v.input.focus(); });
    restore(v).catch(() => { /* offline: the first message will retry */ });
    return v;
  }

  function widget() {
    const host = el("div", { id: "chatstack-widget" });
    const shadow = host.attachShadow({ mode: "open" });
    shadow.append(el("link", { rel: "stylesheet", href: new URL("chat.css", base).href }));
    const launcher = el("button", { type: "button", class: "cs-launcher", "aria-expanded": "false", "aria-controls": "cs-panel", text: t.open });
    const panel = el("div", { id: "cs-panel", class: "cs-panel", role: "dialog", "aria-label": t.title, hidden: "" });
    shadow.append(launcher, panel);
    document.body.append(host);
    const v = mount(panel, true);
    const close = el("button", { type: "button", class: "cs-close", "aria-label": t.close, text: "×" });
    v.head.append(close);
    const toggle = (open) => {
      panel.hidden = !open;
      launcher.setAttribute("aria-expanded", String(open));
      (open ? v.input : launcher).focus();
    };
    launcher.addEventListener("click", () => toggle(panel.hidden));
    close.addEventListener("click", () => toggle(false));
    panel.addEventListener("keydown", (e) => { if (e.key === "Escape") toggle(false); });
  }

  const page = document.getElementById("chatstack-chat");
  if (page) {
    document.documentElement.lang = pick === "zh" ? "zh-CN" : "en";
    document.title = t.title;
    page.replaceChildren();
    mount(page, false).input.focus();
  } else if (document.body) widget();
  else document.addEventListener("DOMContentLoaded", widget);
})();
