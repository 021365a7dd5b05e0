// The Submit view: run pasted code (POST /run/async) or an uploaded .zip/.py (POST /run/project).

import { api, upload } from "./api.js";
import { h, reportError, shortId, toast } from "./util.js";

const SAMPLE = `import time

for step in range(1, 11):
    time.sleep(0.5)
    print(f"[PROGRESS:{step * 10}:step {step}/10]", flush=True)
print("done")
`;

const draft = { mode: "code", code: SAMPLE };

export function mountSubmit(root, ctx) {
  const code = h("textarea#submit-code.code-input", { spellcheck: false, rows: 16,
                                                      oninput: (e) => { draft.code = e.target.value; } });
  code.value = draft.code;
  const file = h("input#submit-file", { type: "file", accept: ".zip,.py" });
  const fileLabel = h("span.file-name", "No file chosen");
  const drop = h("label.dropzone#submit-drop", { for: "submit-file" },
    h("div.drop-title", "Drop a .zip project or a .py file here"),
    h("div.muted.small", "or click to choose"), fileLabel, file);
  const entry = h("input#submit-entry", { type: "text", value: "main.py", placeholder: "main.py" });
  const name = h("input#submit-name", { type: "text", placeholder: "optional" });
  const device = h("select#submit-device", [["auto", "Auto (GPU if any)"], ["gpu", "GPU"], ["cpu", "CPU"]]
    .map(([v, l]) => h("option", { value: v }, l)));
  const gpuId = h("select#submit-gpu");
  const gpus = h("input#submit-gpus", { type: "number", min: 1, value: 1 });
  const timeout = h("input#submit-timeout", { type: "number", min: 1, value: 3600 });
  const button = h("button.btn.btn-primary#submit-btn", { type: "submit" }, "Run");
  const uploadBar = h("div.progress.upload-progress", { hidden: true, dataset: { progress: "0" } },
    h("div.progress-fill.status-running", { style: { width: "0%" } }));
  const codePane = h("div.pane#pane-code", h("label.field-label", { for: "submit-code" }, "Python code"), code,
    h("div.hint", "Print ", h("code", "[PROGRESS:<0-100>:<message>]"), " lines (or use tqdm) to drive the progress bar."));
  const uploadPane = h("div.pane#pane-upload", drop,
    h("div.field", h("label.field-label", { for: "submit-entry" }, "Entry point"), entry,
      h("div.hint", "The script to run inside the .zip (ignored for a single .py).")));
  const tabs = h("div.segmented#submit-mode",
    h("button.seg#mode-code", { type: "button", dataset: { mode: "code" }, onclick: () => setMode("code") }, "Code"),
    h("button.seg#mode-upload", { type: "button", dataset: { mode: "upload" }, onclick: () => setMode("upload") },
      "Upload .zip / .py"));

  const form = h("form.panel.submit-form#submit-form", { onsubmit: (e) => { e.preventDefault(); submit(); } },
    h("div.panel-head", h("h2", "Submit a job"), tabs),
    h("div.submit-grid",
      h("div.submit-main", codePane, uploadPane),
      h("div.submit-side",
        field("Name", name),
        field("Device", device),
        field("GPU", gpuId, "A specific GPU waits until that one is free."),
        field("GPU count", gpus),
        field("Timeout (seconds)", timeout),
        uploadBar,
        button)));
  root.append(form);

  function field(label, input, hint) {
    return h("div.field", h("label.field-label", { for: input.id }, label), input,
      hint ? h("div.hint", hint) : null);
  }

  function setMode(mode) {
    draft.mode = mode;
    codePane.hidden = mode !== "code";
    uploadPane.hidden = mode !== "upload";
    tabs.querySelectorAll(".seg").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
    button.textContent = mode === "code" ? "Run" : "Upload and run";
  }

  function fillGpus() {
    const current = gpuId.value;
    gpuId.replaceChildren(h("option", { value: "" }, "Any free GPU"),
      ...ctx.live.gpus.map((g) => h("option", { value: g.index }, `GPU ${g.index} · ${g.name}`)));
    gpuId.value = current;
    gpuId.disabled = device.value === "cpu";
    gpus.disabled = device.value === "cpu" || gpuId.value !== "";
  }
  device.addEventListener("change", fillGpus);
  gpuId.addEventListener("change", fillGpus);

  file.addEventListener("change", () => {
    const chosen = file.files[0];
    fileLabel.textContent = chosen ? `${chosen.name} (${(chosen.size / 1024).toFixed(1)} KB)` : "No file chosen";
    drop.classList.toggle("has-file", Boolean(chosen));
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) {
      file.files = e.dataTransfer.files;
      file.dispatchEvent(new Event("change"));
    }
  });

  function options() {
    const out = { timeout: Number(timeout.value) || undefined, device: device.value };
    if (name.value.trim()) out.name = name.value.trim();
    if (device.value !== "cpu") {
      if (gpuId.value !== "") out.gpu_id = Number(gpuId.value);
      else if (Number(gpus.value) > 1) out.gpus = Number(gpus.value);
    }
    return out;
  }

  async function submit() {
    button.disabled = true;
    try {
      const result = draft.mode === "code" ? await submitCode() : await submitUpload();
      if (!result) return;
      toast(`Task ${shortId(result.task_id)} submitted`, "success");
      ctx.highlight(result.task_id);
      ctx.navigate("#/tasks");
    } catch (err) {
      reportError(err);
    } finally {
      button.disabled = false;
      uploadBar.hidden = true;
    }
  }

  async function submitCode() {
    if (!code.value.trim()) {
      toast("Write some code first", "error");
      return null;
    }
    return api("/run/async", { method: "POST", json: { code: code.value, ...options() } });
  }

  async function submitUpload() {
    const chosen = file.files[0];
    if (!chosen) {
      toast("Choose a .zip or .py file first", "error");
      return null;
    }
    const data = new FormData();
    data.append("file", chosen, chosen.name);
    data.append("entry_point", entry.value.trim() || "main.py");
    for (const [key, value] of Object.entries(options())) {
      if (value !== undefined) data.append(key, String(value));
    }
    uploadBar.hidden = false;
    return upload("/run/project", data, (fraction) => {
      const pct = Math.round(fraction * 100);
      uploadBar.dataset.progress = String(pct);
      uploadBar.firstChild.style.width = `${pct}%`;
    });
  }

  setMode(draft.mode);
  fillGpus();
  return ctx.live.on("gpus", () => {
    if (gpuId.options.length !== ctx.live.gpus.length + 1) fillGpus();
  });
}
