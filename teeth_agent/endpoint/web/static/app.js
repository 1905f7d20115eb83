// The teeth-endpoint dashboard: a read-only view fed by Server-Sent Events.
// Everything an agent sent is put in the page with textContent only, never
// as markup, so text such as "<script>" is shown, not run.
"use strict";

(function () {
  const MAX_LOGS = 200;
  const MAX_ERASURES = 200;
  const agents = new Map();
  const tasks = new Map();
  let logs = [];
  let erasures = [];

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "" : String(value);
    if (className) {
      td.className = className;
    }
    row.appendChild(td);
    return td;
  }

  function when(seconds) {
    if (typeof seconds !== "number") {
      return "";
    }
    return new Date(seconds * 1000).toISOString().replace("T", " ")
      .replace(/\.\d+Z$/, " UTC");
  }

  function duration(seconds) {
    if (typeof seconds !== "number" || seconds < 0) {
      return "--:--";
    }
    const whole = Math.round(seconds);
    const h = Math.floor(whole / 3600);
    const m = Math.floor((whole % 3600) / 60);
    const s = whole % 60;
    const two = (n) => String(n).padStart(2, "0");
    return (h ? h + ":" + two(m) : String(m)) + ":" + two(s);
  }

  function percentOf(task) {
    if (task.state === "complete") {
      return 100;
    }
    return typeof task.percent === "number" ?
      Math.max(0, Math.min(100, task.percent)) : 0;
  }

  function fill(tableId, rows) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(...rows);
  }

  function renderAgents() {
    const rows = [];
    const sorted = Array.from(agents.values()).sort((a, b) =>
      (a.state === b.state ? 0 : a.state === "connected" ? -1 : 1) ||
      String(a.agent_id).localeCompare(String(b.agent_id)));
    for (const agent of sorted) {
      const row = document.createElement("tr");
      row.dataset.agent = agent.agent_id;
      cell(row, agent.agent_id);
      cell(row, agent.state, "state-" + agent.state);
      cell(row, agent.tls ? "TLS" : "plaintext");
      cell(row, agent.identity);
      cell(row, agent.peer);
      cell(row, agent.holder);
      cell(row, when(agent.last_seen));
      cell(row, agent.agent_version);
      cell(row, agent.running_tasks);
      rows.push(row);
    }
    fill("agents", rows);
    document.getElementById("agents-count").textContent =
      "(" + agents.size + ")";
  }

  function renderTasks() {
    const rows = [];
    const sorted = Array.from(tasks.values()).sort((a, b) =>
      (a.state === b.state ? 0 : a.state === "running" ? -1 : 1) ||
      String(a.agent_id).localeCompare(String(b.agent_id)) ||
      String(a.task_id).localeCompare(String(b.task_id)));
    for (const task of sorted) {
      const row = document.createElement("tr");
      row.dataset.task = task.agent_id + "/" + task.task_id;
      row.dataset.state = task.state;
      cell(row, task.agent_id);
      cell(row, task.task_id);
      cell(row, task.method);
      cell(row, task.state, "state-" + task.state);
      const progress = cell(row, "");
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = percentOf(task);
      const label = document.createElement("span");
      label.className = "percent";
      label.textContent = " " + percentOf(task).toFixed(1) + " %";
      progress.append(bar, label);
      cell(row, task.state === "running" ? duration(task.eta) : "");
      cell(row, task.msg, "message");
      rows.push(row);
    }
    fill("tasks", rows);
  }

  function renderErasures() {
    const rows = [];
    for (const record of erasures.slice().reverse()) {
      const row = document.createElement("tr");
      cell(row, when(record.finished_at));
      cell(row, record.agent_id);
      cell(row, record.task_id);
      cell(row, record.path);
      cell(row, record.outcome, "state-" +
        (record.outcome === "erased" ? "complete" : "error"));
      cell(row, record.method);
      cell(row, record.nist_category);
      cell(row, record.verified === true ? "yes" : "no");
      cell(row, record.bytes);
      cell(row, record.error, "message");
      rows.push(row);
    }
    fill("erasures", rows);
  }

  function renderLogs() {
    const rows = [];
    for (const record of logs.slice().reverse()) {
      const row = document.createElement("tr");
      cell(row, when(record.time));
      cell(row, record.agent_id);
      cell(row, record.level);
      cell(row, record.logger);
      cell(row, record.message, "message");
      rows.push(row);
    }
    fill("logs", rows);
  }

  function renderAll() {
    renderAgents();
    renderTasks();
    renderErasures();
    renderLogs();
  }

  function taskKey(task) {
    return JSON.stringify([task.agent_id, task.task_id]);
  }

  function applyState(state) {
    agents.clear();
    tasks.clear();
    for (const agent of state.agents) {
      agents.set(agent.agent_id, agent);
    }
    for (const task of state.tasks) {
      tasks.set(taskKey(task), task);
    }
    logs = state.logs.slice(-MAX_LOGS);
    erasures = state.erasures.slice(-MAX_ERASURES);
    document.getElementById("erasures-error").textContent =
      state.erasures_error || "";
    document.getElementById("holder").textContent =
      (state.endpoint.tls ? "agents over TLS" : "agents in plaintext") +
      ", " + state.endpoint.holder;
    renderAll();
  }

  function applyBatch(batch) {
    if (batch.resync) {
      refresh();
      return;
    }
    for (const agentId of batch.forgotten) {
      agents.delete(agentId);
      for (const [key, task] of tasks) {
        if (task.agent_id === agentId) {
          tasks.delete(key);
        }
      }
    }
    for (const agent of batch.agents) {
      agents.set(agent.agent_id, agent);
    }
    for (const task of batch.tasks) {
      tasks.set(taskKey(task), task);
    }
    logs = logs.concat(batch.logs).slice(-MAX_LOGS);
    erasures = erasures.concat(batch.erasures).slice(-MAX_ERASURES);
    renderAll();
  }

  function setLive(on, text) {
    const live = document.getElementById("live");
    live.textContent = text;
    live.classList.toggle("off", !on);
  }

  function refresh() {
    fetch("/api/state", {cache: "no-store"})
      .then((response) => response.ok ? response.json() : null)
      .then((state) => {
        if (state) {
          applyState(state);
        }
      })
      .catch(() => setLive(false, "endpoint unreachable"));
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("state", (event) => {
      applyState(JSON.parse(event.data));
      setLive(true, "live");
    });
    source.addEventListener("batch", (event) => {
      applyBatch(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (too many viewers) or gone: show a picture, retry later.
        setLive(false, "no live updates; retrying");
        refresh();
        setTimeout(connect, 30000);
      } else {
        setLive(false, "reconnecting");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", connect);
}());
