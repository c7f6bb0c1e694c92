// Actions: each button posts to the JSON API with the token (kept in this tab's sessionStorage),
// then follows the action until it ends, shows its result, and reloads the page.
"use strict";
(function () {
  const tokenInput = document.getElementById("token");
  if (tokenInput) {
    tokenInput.value = sessionStorage.getItem("connector-token") || "";
    tokenInput.addEventListener("change", () => sessionStorage.setItem("connector-token", tokenInput.value));
  }
  const result = document.getElementById("action-result");
  function show(text, failed) {
    result.hidden = false;
    result.textContent = text;
    result.classList.toggle("failed", !!failed);
  }
  // The last action's result, kept across the reload that shows its effect.
  const last = sessionStorage.getItem("connector-last-result");
  if (last) {
    const saved = JSON.parse(last);
    show(saved.text, saved.failed);
    sessionStorage.removeItem("connector-last-result");
  }
  async function follow(id) {
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      const answer = await fetch("/api/actions/" + id);
      const action = await answer.json();
      if (action.status !== "running") return action;
      show("action " + id + " (" + action.kind + ") running…");
    }
  }
  async function act(button) {
    const kind = button.dataset.action;
    const token = tokenInput ? tokenInput.value : "";
    if (!token) { show("Enter the console's token first (top right).", true); return; }
    let body;
    if (kind === "reset") {
      body = { database: button.dataset.database, table: button.dataset.table };
    } else {
      body = { full: button.dataset.full === "true" };
      if (button.dataset.tables) body.tables = [button.dataset.tables];
      if (button.dataset.databases) body.databases = [button.dataset.databases];
    }
    show(kind + " starting…");
    const answer = await fetch("/api/" + kind, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
      body: JSON.stringify(body),
    });
    const started = await answer.json();
    if (!answer.ok) { show(kind + " refused (" + answer.status + "): " + started.error, true); return; }
    const done = await follow(started.action);
    const text = kind + " " + done.status + ":\n" + (done.result || "");
    show(text, done.status !== "done");
    sessionStorage.setItem("connector-last-result", JSON.stringify({ text: text, failed: done.status !== "done" }));
    setTimeout(() => location.reload(), 1000);
  }
  document.querySelectorAll("button.action").forEach((b) => b.addEventListener("click", () => act(b)));
})();
