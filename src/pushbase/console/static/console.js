// pushbase console: every page is a server-rendered shell; this script fills it from /v1.
// The API key lives in sessionStorage only. Data is put into the page with textContent
// (never innerHTML), so no value from a dataset can run as markup.
"use strict";

(() => {
  const KEY = "pushbase.apiKey";
  const TYPES = ["string", "integer", "number", "boolean", "date", "datetime", "json"];
  const EXAMPLES = {
    string: "text", integer: 42, number: 3.14, boolean: true,
    date: "2024-01-31", datetime: "2024-01-31T12:00:00Z", json: { any: ["json"] },
  };
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STATS = ["received", "inserted", "updated", "deleted", "not_found", "failed", "ignored_fields"];

  const $ = (selector, root = document) => root.querySelector(selector);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (["checked", "selected", "value"].includes(name)) el[name] = value;
      else el.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  // -- the API ---------------------------------------------------------------------------

  const apiKey = () => sessionStorage.getItem(KEY);
  const signinUrl = () =>
    "/console/signin?next=" + encodeURIComponent(location.pathname + location.search);

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details;
    }
  }

  async function api(path, options = {}) {
    const headers = { "x-api-key": apiKey() || "", ...(options.headers || {}) };
    let body = options.body;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers["content-type"] = "application/json";
    }
    const response = await fetch(path, { method: options.method || "GET", headers, body });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {
        code: "http_" + response.status,
        message: text.slice(0, 300) || response.statusText,
      };
      if (response.status === 401 && !options.noRedirect) {
        sessionStorage.removeItem(KEY);
        location.assign(signinUrl());
      }
      throw new ApiError(response.status, error.code, error.message, error.details);
    }
    return data;
  }

  function showError(error) {
    const box = $("#error");
    if (!box) return;
    if (!error) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.textContent = error.code ? `${error.code}: ${error.message}` : String(error.message || error);
    box.hidden = false;
  }

  // Run `fn` now and again every `ms` while it returns anything but false.
  function poll(fn, ms) {
    let timer = null;
    const run = async () => {
      let again = true;
      try {
        again = (await fn()) !== false;
        showError(null);
      } catch (error) {
        if (error.status !== 401) showError(error);
      }
      if (again) timer = setTimeout(run, document.hidden ? ms * 4 : ms);
    };
    run();
    return () => clearTimeout(timer);
  }

  // -- small renderers -------------------------------------------------------------------

  const fmtInt = (n) => (n ?? 0).toLocaleString("en-US");
  const fmtTime = (s) => (s ? s.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "");

  function cellValue(value) {
    if (value === null || value === undefined) return h("span", { class: "null", text: "null" });
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  const badge = (status) => h("span", { class: "badge " + status, text: status });

  function progress(value) {
    const bar = h("progress", { max: "100", title: `${value}%` });
    bar.value = value;
    return bar;
  }

  const datasetLink = (id) =>
    h("a", { href: "/console/datasets/" + encodeURIComponent(id), text: id });
  const jobLink = (id) => h("a", { href: "/console/jobs/" + encodeURIComponent(id), text: id });

  function jobRow(job, withDataset) {
    const stats = job.stats || {};
    return h(
      "tr",
      { "data-id": job.id, "data-status": job.status },
      h("td", {}, jobLink(job.id)),
      withDataset ? h("td", {}, datasetLink(job.dataset_id)) : null,
      h("td", { text: job.method }),
      h("td", { class: "status" }, badge(job.status)),
      h("td", {}, progress(job.progress || 0)),
      ...["received", "inserted", "updated", "deleted", "failed"].map((name) =>
        h("td", { class: "num " + name, text: fmtInt(stats[name]) })
      ),
      h("td", { text: fmtTime(job.created_at) })
    );
  }

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = h("textarea", { class: "offscreen" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  }

  // A JSON value written as a Python literal (for the Python snippets).
  function py(value) {
    if (value === null) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (Array.isArray(value)) return "[" + value.map(py).join(", ") + "]";
    if (typeof value === "object") {
      return "{" + Object.entries(value).map(([k, v]) => JSON.stringify(k) + ": " + py(v)).join(", ") + "}";
    }
    return JSON.stringify(value);
  }

  // -- pages -----------------------------------------------------------------------------

  function signin() {
    $("#api-key").focus();
    $("#signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("#api-key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      try {
        await api("/v1/limits", { noRedirect: true });
      } catch (error) {
        sessionStorage.removeItem(KEY);
        showError(error.status === 401 ? { code: "invalid_key", message: "this API key is not valid" } : error);
        return;
      }
      const next = new URLSearchParams(location.search).get("next") || "";
      location.assign(next.startsWith("/console/") ? next : "/console/datasets");
    });
  }

  function datasets() {
    const tbody = $("#datasets tbody");
    poll(async () => {
      const { datasets: list } = await api("/v1/datasets");
      tbody.replaceChildren(
        ...list.map((d) =>
          h(
            "tr",
            { "data-id": d.id },
            h("td", {}, datasetLink(d.id)),
            h("td", { text: d.name }),
            h("td", { class: "num rows", text: fmtInt(d.row_count) }),
            h("td", { class: "num", text: d.columns.length }),
            h("td", { text: (d.unique_key || []).join(", ") }),
            h("td", { text: fmtTime(d.updated_at) })
          )
        )
      );
      $("#empty").hidden = list.length > 0;
    }, 5000);
  }

  function commandGroups(ds, instructions) {
    const c = instructions.commands;
    const base = instructions.base_url;
    const id = ds.id;
    const example = Object.fromEntries(ds.columns.map((col) => [col.name, EXAMPLES[col.type]]));
    const keys = Object.fromEntries(ds.unique_key.map((k) => [k, example[k]]));
    const hasKey = ds.unique_key.length > 0;
    return {
      curl: [
        ["setup", "First, put your API key in the environment", "export PUSHBASE_API_KEY=pb_...  # your key"],
        ["push", "Push rows (upsert; waits up to 10 s for the result)", c.push],
        ["push-ndjson", "Push an NDJSON file", c.push_ndjson],
        ["push-csv", "Push a CSV file (header row)", c.push_csv],
        hasKey && ["delete", "Delete rows by key", c.delete],
        ["delete-all", "Delete all rows", c.delete_all],
        ["job", "Follow a job", c.job_status],
        ["read", "Read rows", c.read],
      ],
      cli: [
        ["setup", "Point the pushbase command (installed with this server's package) at this server",
          `export PUSHBASE_URL=${base}\nexport PUSHBASE_API_KEY=pb_...  # your key`],
        ["push", "Push a file (CSV, JSON, NDJSON or Parquet; batched, parallel, retried safely)",
          `pushbase push ${id} rows.csv`],
        hasKey && ["delete", "Delete the rows whose keys are in a file",
          `pushbase push ${id} keys.csv --method delete`],
        ["delete-all", "Delete all rows", `pushbase datasets delete-all ${id} --yes`],
        ["watch", "Watch its jobs", `pushbase jobs watch --dataset ${id}`],
        ["export", "Export every row", `pushbase export ${id} --format csv -o ${id}.csv`],
      ],
      python: [
        ["push", "Push rows: a list of dicts, or a pandas / polars DataFrame, or a pyarrow Table",
          `import os\nfrom pushbase import Client\n\npb = Client("${base}", os.environ["PUSHBASE_API_KEY"])\n` +
          `result = pb.push("${id}", [${py(example)}], wait=True)\n` +
          `print(result.inserted, result.updated, result.failed, result.errors[:5])`],
        hasKey && ["delete", "Delete rows by key",
          `pb.push("${id}", [${py(keys)}], method="delete", wait=True)`],
        ["delete-all", "Delete all rows", `pb.delete_all("${id}", wait=True)`],
        ["read", "Read rows", `pb.rows("${id}", limit=10)["rows"]`],
      ],
    };
  }

  function renderCommands(ds, instructions) {
    const box = $("#commands");
    const groups = commandGroups(ds, instructions);
    const active = ($("#command-tabs .active") || {}).dataset?.tab || "curl";
    box.replaceChildren(
      ...Object.entries(groups).map(([group, items]) =>
        h(
          "div",
          { class: "command-group", "data-group": group, hidden: group !== active },
          ...items.filter(Boolean).map(([name, label, text]) => {
            const copy = h("button", { type: "button", class: "copy", text: "Copy" });
            copy.addEventListener("click", () => copyText(text, copy));
            return h(
              "div",
              { class: "command" },
              h("div", { class: "command-head" }, h("span", { text: label }), copy),
              h("pre", { id: `cmd-${group}-${name}`, text })
            );
          })
        )
      )
    );
  }

  function setupTabs() {
    for (const button of document.querySelectorAll("#command-tabs button")) {
      button.addEventListener("click", () => {
        for (const other of document.querySelectorAll("#command-tabs button")) {
          other.classList.toggle("active", other === button);
        }
        for (const group of document.querySelectorAll(".command-group")) {
          group.hidden = group.dataset.group !== button.dataset.tab;
        }
      });
    }
  }

  function renderDataset(ds) {
    document.title = `${ds.id} · pushbase`;
    $("#title").textContent = ds.name && ds.name !== ds.id ? `${ds.name} (${ds.id})` : ds.id;
    const key = ds.unique_key.length ? ds.unique_key.join(", ") : "none (pushes append)";
    $("#summary").textContent =
      `${fmtInt(ds.row_count)} rows · key: ${key} · unknown fields: ${ds.unknown_fields}` +
      ` · updated ${fmtTime(ds.updated_at)}`;
    $("#columns tbody").replaceChildren(
      ...ds.columns.map((col) =>
        h(
          "tr",
          { "data-name": col.name },
          h("td", { text: col.name }),
          h("td", { class: "type", text: col.type }),
          h("td", { text: col.nullable === false ? "no" : "yes" }),
          h("td", { text: ds.unique_key.includes(col.name) ? "key" : "" }),
          h("td", { text: col.format || "" }),
          h("td", { text: col.description || "" })
        )
      )
    );
  }

  function renderRows(ds, page) {
    const names = ds.columns.map((col) => col.name);
    $("#rows thead").replaceChildren(h("tr", {}, ...names.map((n) => h("th", { text: n }))));
    $("#rows tbody").replaceChildren(
      ...page.rows.map((row) => h("tr", {}, ...names.map((n) => h("td", {}, cellValue(row[n])))))
    );
    $("#row-count").textContent = page.total
      ? `(${fmtInt(page.total)} in all; the first ${page.rows.length} shown)`
      : "";
    $("#no-rows").hidden = page.rows.length > 0;
  }

  function dataset() {
    const id = document.body.dataset.dataset;
    const enc = encodeURIComponent(id);
    let shape = null;
    $("#all-jobs").href = "/console/jobs?dataset=" + enc;
    setupTabs();
    poll(async () => {
      const ds = await api(`/v1/datasets/${enc}`);
      renderDataset(ds);
      const now = JSON.stringify([ds.columns, ds.unique_key]);
      if (now !== shape) {
        renderCommands(ds, await api(`/v1/datasets/${enc}/instructions`));
        shape = now;
      }
      renderRows(ds, await api(`/v1/datasets/${enc}/records?limit=20`));
      const { jobs } = await api(`/v1/jobs?dataset=${enc}&limit=10`);
      $("#jobs tbody").replaceChildren(...jobs.map((job) => jobRow(job, false)));
      $("#no-jobs").hidden = jobs.length > 0;
    }, 2000);
  }

  function jobs() {
    const dataset = new URLSearchParams(location.search).get("dataset");
    if (dataset) {
      $("#filter").replaceChildren("of dataset ", datasetLink(dataset), " · ",
        h("a", { href: "/console/jobs", text: "all datasets" }));
    }
    const query = "/v1/jobs?limit=100" + (dataset ? "&dataset=" + encodeURIComponent(dataset) : "");
    poll(async () => {
      const { jobs: list } = await api(query);
      $("#jobs tbody").replaceChildren(...list.map((job) => jobRow(job, true)));
      $("#no-jobs").hidden = list.length > 0;
    }, 1000);
  }

  function job() {
    const id = document.body.dataset.job;
    poll(async () => {
      const doc = await api("/v1/jobs/" + encodeURIComponent(id));
      const status = $("#status");
      status.className = "badge " + doc.status;
      status.textContent = doc.status + (doc.phase ? ` (${doc.phase})` : "");
      $("#progress").value = doc.progress || 0;
      const facts = [
        ["dataset", datasetLink(doc.dataset_id)],
        ["method", doc.method],
        ["source", doc.source],
        ["bytes", fmtInt(doc.bytes)],
        ["created", fmtTime(doc.created_at)],
        ["started", fmtTime(doc.started_at)],
        ["finished", fmtTime(doc.finished_at)],
        ["duration", doc.duration_ms === null ? "" : `${fmtInt(doc.duration_ms)} ms`],
        ["idempotency key", doc.idempotency_key || ""],
      ];
      $("#facts").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
      const stats = doc.stats || {};
      $("#stats thead tr").replaceChildren(...STATS.map((s) => h("th", { class: "num", text: s.replace("_", " ") })));
      $("#stats tbody tr").replaceChildren(
        ...STATS.map((s) => h("td", { class: "num", "data-stat": s, text: fmtInt(stats[s]) }))
      );
      $("#failure").hidden = !doc.error;
      $("#failure-text").textContent = doc.error ? `${doc.error.code}: ${doc.error.message}` : "";
      $("#errors tbody").replaceChildren(
        ...(doc.errors || []).map((e) =>
          h(
            "tr",
            {},
            h("td", { class: "num", text: e.row ?? "" }),
            h("td", { text: e.column || "" }),
            h("td", { class: "code", text: e.code || "" }),
            h("td", { text: e.message || "" }),
            h("td", {}, cellValue(e.value))
          )
        )
      );
      const total = doc.errors_total || 0;
      $("#errors-total").textContent = total ? `(${fmtInt(total)}${total > doc.errors.length ? `, the first ${doc.errors.length} shown` : ""})` : "";
      $("#no-errors").hidden = total > 0 || !TERMINAL.has(doc.status);
      return !TERMINAL.has(doc.status);
    }, 1000);
  }

  function columnRow(col) {
    const row = h("tr", {});
    const extra = {};
    if (col.format) extra.format = col.format;
    if (col.description) extra.description = col.description;
    row.dataset.extra = JSON.stringify(extra);
    row.dataset.type = col.type;
    row.append(
      h("td", {}, h("input", { class: "col-name", value: col.name, "aria-label": "column name" })),
      h(
        "td",
        {},
        h("select", { class: "col-type", "aria-label": "column type" },
          ...TYPES.map((t) => h("option", { value: t, selected: t === col.type, text: t })))
      ),
      h("td", {}, h("input", { type: "checkbox", class: "col-nullable", checked: col.nullable !== false, "aria-label": "nullable" })),
      h("td", {}, h("input", { type: "checkbox", class: "col-key", "aria-label": "part of the unique key" })),
      h("td", {}, h("button", { type: "button", class: "link remove", text: "remove", onclick: () => row.remove() }))
    );
    return row;
  }

  function newDataset() {
    const tbody = $("#columns-edit tbody");
    $("#infer").addEventListener("click", async () => {
      showError(null);
      let sample;
      try {
        sample = JSON.parse($("#sample").value || $("#sample").placeholder);
      } catch (error) {
        showError({ code: "invalid_json", message: "the sample is not valid JSON: " + error.message });
        return;
      }
      try {
        const { columns } = await api("/v1/schema/infer", { method: "POST", json: { sample } });
        tbody.replaceChildren(...columns.map(columnRow));
        $("#proposal").hidden = false;
        $("#dataset-id").focus();
      } catch (error) {
        showError(error);
      }
    });
    $("#add-column").addEventListener("click", () =>
      tbody.append(columnRow({ name: "", type: "string", nullable: true }))
    );
    $("#create").addEventListener("click", async () => {
      showError(null);
      const rows = [...tbody.querySelectorAll("tr")];
      const uniqueKey = rows.filter((r) => $(".col-key", r).checked).map((r) => $(".col-name", r).value.trim());
      const columns = rows.map((r) => {
        const type = $(".col-type", r).value;
        const extra = JSON.parse(r.dataset.extra || "{}");
        if (type !== r.dataset.type) delete extra.format; // a format belongs to the inferred type
        const name = $(".col-name", r).value.trim();
        return { name, type, nullable: $(".col-nullable", r).checked && !uniqueKey.includes(name), ...extra };
      });
      const body = { columns, unique_key: uniqueKey, unknown_fields: $("#unknown-fields").value };
      const id = $("#dataset-id").value.trim();
      const name = $("#dataset-name").value.trim();
      if (id) body.id = id;
      if (name) body.name = name;
      try {
        const ds = await api("/v1/datasets", { method: "POST", json: body });
        location.assign("/console/datasets/" + encodeURIComponent(ds.id));
      } catch (error) {
        showError(error);
      }
    });
  }

  // -- start -----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page !== "signin" && !apiKey()) {
      location.replace(signinUrl());
      return;
    }
    if (apiKey()) {
      $("#who").textContent = "signed in";
      const out = $("#signout");
      out.hidden = false;
      out.addEventListener("click", () => {
        sessionStorage.removeItem(KEY);
        location.assign("/console/signin");
      });
    }
    const pages = { signin, datasets, dataset, jobs, job, new_dataset: newDataset };
    (pages[page] || (() => {}))();
  });
})();
