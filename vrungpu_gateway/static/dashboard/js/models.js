// The Models view: registered models grouped by name (versions), download, delete, inference.

import { api, tokenUrl } from "./api.js";
import {
  clear, compactJson, confirmDialog, fill, fmtAgo, fmtBytes, h, reportError, shortId, toast,
} from "./util.js";

// Model statuses (ready, archived) drawn with the task badge colours.
const MODEL_STATUS_CLASS = { ready: "completed", archived: "pending", failed: "failed" };

export function mountModels(root, ctx) {
  if (!ctx.features.models) {
    root.append(h("section.panel.empty-state#models-unavailable",
      h("h2", "Models"),
      h("p.muted", "This gateway has no model registry (it does not serve /models). " +
        "Update the gateway to register, download and serve models here.")));
    return () => {};
  }
  const list = h("div#models-list");
  const select = h("select#infer-model");
  const input = h("textarea#infer-input.code-input", { rows: 8, spellcheck: false });
  input.value = JSON.stringify({ x: [1.0, 2.0, 3.0] });
  const runBtn = h("button.btn.btn-primary#infer-run", { type: "submit" }, "Run inference");
  const output = h("div#infer-output");
  root.append(h("div.grid-2-1",
    h("section.panel",
      h("div.panel-head", h("h2", "Models"),
        h("button.btn.btn-ghost.btn-small#models-refresh", { onclick: () => refresh().catch(reportError) }, "Refresh")),
      list),
    h("form.panel#infer-form", { onsubmit: (e) => { e.preventDefault(); infer(); } },
      h("div.panel-head", h("h2", "Inference")),
      h("div.field", h("label.field-label", { for: "infer-model" }, "Model"), select),
      h("div.field", h("label.field-label", { for: "infer-input" }, "input_data (JSON)"), input),
      runBtn, output)));

  let models = [];

  async function refresh() {
    const data = await api("/models");
    models = Array.isArray(data) ? data : (data && data.models) || [];
    render();
  }

  function render() {
    clear(list);
    if (!models.length) {
      list.append(h("div.empty", "No models yet. A task run with save_model registers one."));
    } else {
      const groups = groupByName(models);
      list.append(h("table.model-table",
        h("thead", h("tr", ["Version", "Type", "Framework", "Status", "Size", "Created", "Task", ""]
          .map((label) => h("th", label)))),
        ...groups.map(([name, versions]) => h("tbody.model-group", { dataset: { modelName: name } },
          h("tr.group-row", h("td", { colSpan: 8 }, h("strong", name),
            h("span.muted.small", ` · ${versions.length} version${versions.length === 1 ? "" : "s"}`))),
          versions.map(modelRow)))));
    }
    const current = select.value;
    select.replaceChildren(...models.filter((m) => (m.status || "ready") === "ready").map((m) =>
      h("option", { value: m.model_id }, `${m.name}${m.version !== undefined ? ` v${m.version}` : ""}`)));
    if (current) select.value = current;
    runBtn.disabled = !select.options.length;
  }

  function modelRow(m) {
    const status = m.status || "ready";
    return h("tr.model-row", { dataset: { modelId: m.model_id } },
      h("td", h("span.version", m.version !== undefined ? `v${m.version}` : "—"),
        h("div.task-sub.mono", { title: m.model_id }, shortId(m.model_id))),
      h("td", m.model_type || "—"),
      h("td", m.framework || "—"),
      h("td", h("span.badge", { class: `status-${MODEL_STATUS_CLASS[status] || "pending"}` }, status),
        m.warm ? h("span.badge.badge-warm", { title: "A worker holds it in memory" }, "warm") : null),
      h("td.num", fmtBytes(m.file_size)),
      h("td.muted", { title: m.created_at || "" }, fmtAgo(m.created_at)),
      h("td", m.task_id ? h("a.link.mono", { href: `#/task/${m.task_id}` }, shortId(m.task_id)) : "—"),
      h("td.cell-actions",
        h("a.btn.btn-ghost.btn-small", { href: tokenUrl(`/model/${encodeURIComponent(m.model_id)}/download`),
                                         dataset: { action: "download" }, download: "" }, "Download"),
        h("button.btn.btn-ghost.btn-small", { dataset: { action: "use" }, disabled: status !== "ready",
                                              onclick: () => { select.value = m.model_id; input.focus(); } }, "Infer"),
        h("button.btn.btn-danger-ghost.btn-small", { dataset: { action: "delete-model" },
                                                     onclick: () => remove(m) }, "Delete")));
  }

  async function remove(m) {
    const ok = await confirmDialog({ title: `Delete ${m.name}${m.version !== undefined ? ` v${m.version}` : ""}?`,
                                     body: "The model file and its record are removed.", ok: "Delete model" });
    if (!ok) return;
    try {
      await api(`/model/${encodeURIComponent(m.model_id)}`, { method: "DELETE" });
      toast("Model deleted", "success");
      await refresh();
    } catch (err) {
      reportError(err);
    }
  }

  async function infer() {
    let inputData;
    try {
      inputData = JSON.parse(input.value);
    } catch (err) {
      toast(`input_data is not valid JSON: ${err.message}`, "error");
      return;
    }
    runBtn.disabled = true;
    clear(output).append(h("div.muted.small", "Running…"));
    try {
      const task = await api(`/model/${encodeURIComponent(select.value)}/inference`,
        { method: "POST", json: { input_data: inputData, sync: true } });
      const shown = task && task.result !== undefined && task.result !== null ? task.result : task;
      fill(output,
        h("div.result-label", task && task.status ? `Result · ${task.status}` : "Result"),
        task && task.error ? h("div.callout.callout-error", task.error) : null,
        h("pre.json#infer-result", JSON.stringify(shown, null, 2)),
        task && task.task_id ? h("a.link.small", { href: `#/task/${task.task_id}` },
          `Open task ${shortId(task.task_id)} →`) : null);
    } catch (err) {
      clear(output).append(h("div.callout.callout-error", compactJson(err.message, 300)));
    } finally {
      runBtn.disabled = !select.options.length;
    }
  }

  refresh().catch(reportError);
  return () => {};
}

/** Models grouped by name, newest version first. */
function groupByName(models) {
  const groups = new Map();
  for (const m of models) {
    const key = m.name || m.model_id;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(m);
  }
  for (const versions of groups.values()) {
    versions.sort((a, b) => (Number(b.version) || 0) - (Number(a.version) || 0)
      || String(b.created_at).localeCompare(String(a.created_at)));
  }
  return [...groups.entries()].sort((a, b) => a[0].localeCompare(b[0]));
}
