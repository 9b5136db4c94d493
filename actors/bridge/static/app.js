// The ragbus page: one WebSocket to the bridge, one ask at a time from this page.
// Plain script, no build step and nothing from a CDN. The protocol is in README.md.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const el = {
    conn: $("conn"), who: $("who"), error: $("error"), warn: $("limit-warning"),
    form: $("ask-form"), question: $("question"), ask: $("ask"), stop: $("stop"),
    count: $("count"), state: $("state"), cache: $("cache"), provider: $("provider"),
    answer: $("answer"), timings: $("timings"), sourcesBox: $("sources-box"),
    sources: $("sources"), session: $("session"), newSession: $("new-session"),
    sessionStatus: $("session-status"),
    keyForm: $("key-form"), key: $("key"),
    feedback: $("feedback"), up: $("thumbs-up"), down: $("thumbs-down"),
    comment: $("feedback-comment"), feedbackStatus: $("feedback-status"),
  };

  const SESSION_KEY = "ragbus.session";
  const TOKEN_KEY = "ragbus.token"; // sessionStorage: this tab only
  const LOW_FRACTION = 0.2;         // warn when this share of the per-minute limit is left

  let ws = null;
  let ready = false;
  let current = null;   // {id, seq, frames, chars}
  let maxChars = 4000;
  let retryMs = 500;
  let stopRetrying = false;
  let askCounter = 0;
  let rated = null;     // the answer the thumbs rate: {request_id}
  let feedbackCounter = 0;
  let forgetCounter = 0;
  let toForget = [];    // sessions whose memory is to be deleted once the socket is ready

  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function sessionId() {
    let id = localStorage.getItem(SESSION_KEY);
    if (!id) {
      id = randomId();
      localStorage.setItem(SESSION_KEY, id);
    }
    return id;
  }

  function showSession() {
    el.session.textContent = "conversation " + sessionId().slice(0, 8);
  }

  function setConn(state, text) {
    el.conn.dataset.state = state;
    el.conn.className = "pill " + ({ready: "pill-ok", closed: "pill-bad"}[state] || "pill-wait");
    el.conn.textContent = text;
  }

  function setState(state) {
    el.state.textContent = state;
    el.state.className = "pill " + ({
      streaming: "pill-wait", done: "pill-ok", stopped: "pill-idle", failed: "pill-bad",
    }[state] || "pill-idle");
    el.answer.dataset.state = state;
  }

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = !text;
  }

  function updateButtons() {
    const asking = current !== null;
    el.ask.disabled = !ready || asking;
    el.stop.disabled = !asking;
    const n = el.question.value.length;
    el.count.textContent = n > maxChars * 0.8 ? n + " / " + maxChars : "";
  }

  function showLimits(l) {
    if (!l) return;
    const low = l.remaining <= Math.max(1, Math.floor(l.limit * LOW_FRACTION));
    if (low) {
      const secs = Math.ceil(l.reset_in_seconds || 0);
      el.warn.textContent = l.remaining === 0
        ? "Rate limit reached: next question in " + secs + " s."
        : l.remaining + " of " + l.limit + " questions left this minute" +
          (secs ? " (one more in " + secs + " s)." : ".");
    }
    el.warn.hidden = !low;
  }

  function wsUrl() {
    const page = new URL(location.href);
    const proto = page.protocol === "https:" ? "wss:" : "ws:";
    const token = page.searchParams.get("token");
    return proto + "//" + page.host + "/ws" + (token ? "?token=" + encodeURIComponent(token) : "");
  }

  function connect() {
    ready = false;
    updateButtons();
    setConn("connecting", "connecting…");
    ws = new WebSocket(wsUrl());
    ws.onopen = () => {
      retryMs = 500;
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) ws.send(JSON.stringify({type: "auth", token: token}));
    };
    ws.onmessage = (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch (e) { return; }
      handle(frame);
    };
    ws.onclose = (ev) => {
      ready = false;
      if (current) finish("failed", "The connection closed before the answer finished.");
      const why = ev.reason ? ev.code + ": " + ev.reason : "code " + ev.code;
      setConn("closed", "disconnected");
      if (ev.code === 4401 || ev.code === 4403) {
        stopRetrying = true;
        showError("Not allowed (" + why + ").");
        document.getElementById("key-box").open = ev.code === 4401;
      } else if (!stopRetrying) {
        if (ev.code !== 1000 && ev.code !== 1001 && ev.code !== 1006) {
          showError("Connection closed (" + why + "). Reconnecting…");
        }
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      }
      updateButtons();
    };
  }

  function handle(f) {
    switch (f.type) {
      case "ready":
        ready = true;
        stopRetrying = false;
        maxChars = f.max_question_chars || maxChars;
        setConn("ready", "connected");
        sendForgets();
        el.who.textContent = f.method === "anonymous" ? "anonymous" : f.identity;
        showLimits(f.limits);
        if (el.error.textContent.indexOf("Not allowed") === 0 ||
            el.error.textContent.indexOf("Connection closed") === 0) showError("");
        updateButtons();
        break;
      case "status":
        showLimits(f);
        break;
      case "sources":
        if (current && f.id === current.id) renderSources(f.sources || []);
        break;
      case "token":
        if (current && f.id === current.id) appendToken(f);
        break;
      case "done":
        if (current && f.id === current.id) {
          renderDone(f);
          finish("done");
        }
        break;
      case "failed":
        if (current && f.id === current.id) {
          finish("failed", f.message + " (" + f.code + (f.trace_id ? ", trace " + f.trace_id : "") + ")");
        }
        break;
      case "cancelled":
        if (current && f.id === current.id) finish("stopped");
        break;
      case "feedback":
        if (rated && f.request_id === rated.request_id) {
          el.feedbackStatus.textContent = "Thanks, your feedback was recorded.";
          el.feedback.dataset.state = "recorded";
        }
        break;
      case "forgotten":
        el.sessionStatus.textContent = f.existed
          ? "· the previous conversation's memory was deleted"
          : "· the previous conversation had no memory to delete";
        el.sessionStatus.dataset.state = "forgotten";
        break;
      case "error":
        if (f.id && f.id.indexOf("fg") === 0) { // the old conversation's memory was not deleted
          el.sessionStatus.textContent = "· the previous conversation's memory was not deleted: " +
            f.message + " (" + f.code + ")";
          el.sessionStatus.dataset.state = "failed";
          break;
        }
        if (f.id && f.id.indexOf("fb") === 0) { // a rating the bridge could not pass on
          el.feedbackStatus.textContent = "Feedback not recorded: " + f.message + " (" + f.code + ")";
          el.feedback.dataset.state = "failed";
          break;
        }
        if (f.code === "NOT_FOUND" && (!current || f.id !== current.id)) break; // a late stop
        if (f.code === "RATE_LIMIT") {
          el.warn.textContent = f.message;
          el.warn.hidden = false;
        } else {
          showError(f.message + " (" + f.code + ")");
        }
        // a refused ask: its message says what to do; a status now would overwrite it
        if (current && f.id === current.id) finish("failed", null, false);
        break;
    }
  }

  function appendToken(f) {
    if (f.seq !== current.seq) {
      showError("Answer frames arrived out of order (expected " + current.seq + ", got " + f.seq + ").");
    }
    current.seq = f.seq + 1;
    current.frames += 1;
    el.answer.appendChild(document.createTextNode(f.text));
    el.answer.dataset.frames = String(current.frames);
  }

  // one entry per document, best chunk first: a long document's many chunks are one
  // source to a reader
  function byDocument(sources) {
    const docs = new Map();
    for (const s of sources) {
      const seen = docs.get(s.doc_id);
      if (!seen) docs.set(s.doc_id, { best: s, chunks: 1 });
      else {
        seen.chunks += 1;
        if (Number(s.score) > Number(seen.best.score)) seen.best = s;
      }
    }
    return [...docs.values()].sort((a, b) => Number(b.best.score) - Number(a.best.score));
  }

  function renderSources(sources) {
    el.sources.textContent = "";
    for (const { best: s, chunks } of byDocument(sources)) {
      const li = document.createElement("li");
      const head = document.createElement("div");
      head.className = "source-head";
      const title = document.createElement("span");
      title.className = "source-title";
      title.textContent = s.title || s.doc_id;
      const score = document.createElement("span");
      score.className = "badge";
      score.textContent = "score " + Number(s.score).toFixed(3);
      head.append(title, score);
      if (chunks > 1) {
        const more = document.createElement("span");
        more.className = "badge source-chunks";
        more.textContent = chunks + " chunks";
        head.append(more);
      }
      const text = document.createElement("p");
      text.className = "source-text";
      const body = s.text || "";
      text.textContent = body.length > 280 ? body.slice(0, 280) + "…" : body;
      li.append(head, text);
      el.sources.appendChild(li);
    }
    el.sourcesBox.hidden = sources.length === 0;
  }

  function showFeedback(requestId) {
    rated = requestId ? {request_id: requestId} : null;
    el.feedback.hidden = !rated;
    el.feedback.dataset.state = "open";
    el.feedbackStatus.textContent = "";
    el.comment.value = "";
    for (const b of [el.up, el.down]) b.setAttribute("aria-pressed", "false");
  }

  function sendFeedback(rating) {
    if (!rated || !ws || ws.readyState !== WebSocket.OPEN) return;
    feedbackCounter += 1;
    const frame = {type: "feedback", id: "fb" + feedbackCounter, request_id: rated.request_id,
                   rating: rating};
    const comment = el.comment.value.trim();
    if (comment) frame.comment = comment;
    ws.send(JSON.stringify(frame));
    el.up.setAttribute("aria-pressed", String(rating === "up"));
    el.down.setAttribute("aria-pressed", String(rating === "down"));
    el.feedbackStatus.textContent = "sending…";
    el.feedback.dataset.state = "sending";
  }

  function renderDone(f) {
    showFeedback(f.request_id);
    if (f.stopped === "repetition") {
      const note = document.createElement("p");
      note.className = "muted";
      note.textContent = "(The answer started repeating itself and was stopped.)";
      el.answer.appendChild(note);
    }
    el.cache.hidden = !f.cache_hit;
    if (f.provider) {
      el.provider.textContent = f.provider + (f.model && f.model !== f.provider ? " · " + f.model : "");
      el.provider.hidden = false;
    }
    const rows = [];
    if (f.ttft_ms !== null && f.ttft_ms !== undefined) rows.push(["first token", f.ttft_ms]);
    rows.push(["total", f.total_ms]);
    for (const [k, v] of Object.entries(f.timings_ms || {})) rows.push([k, v]);
    el.timings.textContent = "";
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = Number(v).toFixed(1) + " ms";
      el.timings.append(dt, dd);
    }
    el.timings.hidden = rows.length === 0;
  }

  function finish(state, message, refreshLimits = true) {
    current = null;
    setState(state);
    if (message) showError(message);
    updateButtons();
    if (refreshLimits && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({type: "status"}));
    }
  }

  function ask() {
    const question = el.question.value.trim();
    if (!question || !ready || current) return;
    if (question.length > maxChars) {
      showError("The question is too long (" + question.length + " of " + maxChars + " characters).");
      return;
    }
    showError("");
    askCounter += 1;
    current = {id: "q" + askCounter + "-" + randomId().slice(0, 6), seq: 0, frames: 0};
    el.answer.textContent = "";
    el.answer.dataset.frames = "0";
    el.sources.textContent = "";
    el.sourcesBox.hidden = true;
    el.timings.hidden = true;
    el.cache.hidden = true;
    el.provider.hidden = true;
    showFeedback(null);
    setState("streaming");
    ws.send(JSON.stringify({type: "ask", id: current.id, question: question, session_id: sessionId()}));
    updateButtons();
  }

  function stop() {
    if (!current || !ws) return;
    ws.send(JSON.stringify({type: "cancel", id: current.id}));
    el.stop.disabled = true;
  }

  el.form.addEventListener("submit", (e) => { e.preventDefault(); ask(); });
  el.question.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); ask(); }
  });
  el.question.addEventListener("input", updateButtons);
  el.stop.addEventListener("click", stop);
  el.up.addEventListener("click", () => sendFeedback("up"));
  el.down.addEventListener("click", () => sendFeedback("down"));
  el.feedback.addEventListener("submit", (e) => { e.preventDefault(); });
  // the bridge deletes the memory of the socket's own identity's session only
  function sendForgets() {
    while (toForget.length && ws && ready) {
      forgetCounter += 1;
      ws.send(JSON.stringify({type: "forget", id: "fg" + forgetCounter, session_id: toForget.shift()}));
    }
  }

  el.newSession.addEventListener("click", () => {
    const old = localStorage.getItem(SESSION_KEY);
    localStorage.removeItem(SESSION_KEY);
    showSession();
    if (old) {
      toForget.push(old);
      el.sessionStatus.textContent = "· deleting the previous conversation's memory…";
      el.sessionStatus.dataset.state = "forgetting";
      sendForgets();
    }
  });
  el.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = el.key.value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    el.key.value = "";
    stopRetrying = false;
    if (ws && ws.readyState === WebSocket.OPEN && token) {
      ws.send(JSON.stringify({type: "auth", token: token}));
    } else if (!ws || ws.readyState === WebSocket.CLOSED) {
      connect();
    }
  });

  showSession();
  setState("idle");
  connect();
})();
