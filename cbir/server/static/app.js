// The page of `cbir serve`: query by upload or by a collection image, box search,
// results of one or two pipelines, the match view, and the per-query evaluation.
"use strict";

const $ = (selector) => document.querySelector(selector);
const PAGE = 24;
const state = { indexes: [], query: null, columns: {}, drag: null, evalRows: [], evalSort: { key: "a", dir: 1 },
                evalCompared: false, browse: { offset: 0, total: 0 } };

// ---- talking to the server -------------------------------------------------------------------

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ detail: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) { $("#status").textContent = message; }

const imageUrl = (index, name, size) =>
  `/api/indexes/${encodeURIComponent(index)}/images/${name.split("/").map(encodeURIComponent).join("/")}?size=${size}`;

// ---- targets (index:pipeline) ----------------------------------------------------------------

function targets() {
  const chosen = [$("#target-a").value];
  if ($("#compare").checked && $("#target-b").value) chosen.push($("#target-b").value);
  return chosen;
}

function indexOf(target) { return target.slice(0, target.lastIndexOf(":")); }

async function loadIndexes() {
  state.indexes = await api("/api/indexes");
  for (const select of [$("#target-a"), $("#target-b")]) {
    select.innerHTML = "";
    for (const index of state.indexes) {
      const group = document.createElement("optgroup");
      group.label = `${index.id} (${index.images} images)`;
      for (const pipeline of index.pipelines) group.append(new Option(pipeline, `${index.id}:${pipeline}`));
      select.append(group);
    }
  }
  const first = state.indexes[0], second = state.indexes[1];
  $("#target-a").value = `${first.id}:${first.pipelines[0]}`;
  $("#target-b").value = second ? `${second.id}:${second.pipelines[0]}` : `${first.id}:${first.pipelines[1] || first.pipelines[0]}`;
}

// ---- searching -------------------------------------------------------------------------------

async function search(fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) if (value !== null && value !== undefined) form.append(key, value);
  for (const target of targets()) form.append("target", target);
  form.append("limit", PAGE);
  setStatus("searching...");
  const started = performance.now();
  try {
    const answer = await api("/api/search", { method: "POST", body: form });
    showError("");
    showQuery(answer.query);
    state.columns = {};
    answer.searches.forEach((page, i) => renderColumn(i ? "b" : "a", page, false));
    $("#column-b").hidden = answer.searches.length < 2;
    markDifferences();
    await Promise.all([...document.querySelectorAll(".results img")].map(imageLoaded));
    const ms = Math.round(performance.now() - started);
    const notes = answer.searches.filter((page) => page.note).map((page) => `${page.pipeline}: ${page.note}`);
    setStatus(notes.length ? `no results (${notes.join("; ")})` : `results shown in ${ms} ms`);
    document.body.dataset.renderMs = ms;
    document.body.dataset.searches = (Number(document.body.dataset.searches || 0) + 1).toString();
  } catch (error) {
    setStatus("");
    showError(error.message);
  }
}

function imageLoaded(img) {
  return img.complete ? Promise.resolve() : new Promise((resolve) => { img.onload = img.onerror = resolve; });
}

function searchAgain(box) {
  if (state.query) search({ query: state.query.id, box: box ? box.map((v) => v.toFixed(1)).join(",") : null });
}

function showQuery(query) {
  const sameImage = state.query && state.query.image === query.image;
  state.query = query;
  $("#query-view").hidden = false;
  $("#query-label").textContent = query.label;
  $("#clear-box").hidden = !query.box;
  const img = $("#query-image");
  if (!sameImage || !img.src) {
    img.onload = drawBox;
    img.src = `/api/queries/${query.id}/image?size=1024`;
  } else {
    drawBox();
  }
}

function drawBox() {
  const img = $("#query-image"), canvas = $("#query-canvas");
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const box = state.drag ? state.drag.box : state.query && state.query.box;
  if (!box || !state.query) return;
  const scale = canvas.width / state.query.width;
  context.strokeStyle = "#ffeb3b";
  context.lineWidth = 2;
  context.strokeRect(box[0] * scale, box[1] * scale, (box[2] - box[0]) * scale, (box[3] - box[1]) * scale);
}

function renderColumn(key, page, append) {
  const column = $(`#column-${key}`);
  const previous = state.columns[key];
  state.columns[key] = append ? { ...page, results: previous.results.concat(page.results) } : page;
  column.querySelector("h2").textContent = `${page.index}: ${page.pipeline}`;
  column.querySelector(".timing").textContent =
    `${page.collection} images ranked in ${page.elapsed_ms} ms (server: extraction and search)`;
  const grid = column.querySelector(".results");
  if (!append) grid.innerHTML = "";
  for (const result of page.results) grid.append(resultCard(page, result));
  const more = column.querySelector(".more");
  more.hidden = state.columns[key].results.length >= page.total;
  more.onclick = () => loadMore(key);
}

function resultCard(page, result) {
  const card = document.createElement("div");
  card.className = "result" + (result.inliers !== null ? " verified" : "");
  card.dataset.rank = result.rank;
  card.dataset.name = result.name;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = result.name;
  img.src = imageUrl(page.index, result.name, 256);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = `<span class="rank">#${result.rank}</span> <span class="name"></span><br>score ${result.score.toFixed(3)} `;
  meta.querySelector(".name").textContent = result.name;
  if (result.inliers !== null) {
    const inliers = document.createElement("span");
    inliers.className = "inliers";
    inliers.textContent = `${result.inliers} inliers`;
    meta.append(inliers);
  }
  card.append(img, meta);
  card.onclick = () => openMatch(page.target, result.name);
  return card;
}

async function loadMore(key) {
  const column = state.columns[key];
  try {
    const page = await api(`/api/queries/${state.query.id}/results?target=${encodeURIComponent(column.target)}` +
                           `&offset=${column.results.length}&limit=${PAGE}`);
    renderColumn(key, page, true);
    markDifferences();
  } catch (error) { showError(error.message); }
}

// In the comparison, a result shown in one column but not among as many results of the other is marked.
function markDifferences() {
  const a = state.columns.a, b = state.columns.b;
  document.querySelectorAll(".result .only").forEach((tag) => tag.remove());
  if (!a || !b || $("#column-b").hidden) return;
  const shown = Math.min(a.results.length, b.results.length);
  const namesA = new Set(a.results.slice(0, shown).map((r) => r.name));
  const namesB = new Set(b.results.slice(0, shown).map((r) => r.name));
  for (const [key, other] of [["a", namesB], ["b", namesA]]) {
    for (const card of document.querySelectorAll(`#results-${key} .result`)) {
      if (Number(card.dataset.rank) <= shown && !other.has(card.dataset.name)) {
        const tag = document.createElement("span");
        tag.className = "only";
        tag.textContent = "only here";
        card.append(tag);
      }
    }
  }
}

// ---- the box on the query --------------------------------------------------------------------

function canvasPoint(event) {
  const rect = $("#query-canvas").getBoundingClientRect();
  const scale = state.query.width / rect.width;
  return [(event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale];
}

function setUpBoxDrawing() {
  const canvas = $("#query-canvas");
  canvas.addEventListener("mousedown", (event) => {
    if (!state.query) return;
    const start = canvasPoint(event);
    state.drag = { start, box: [...start, ...start] };
  });
  canvas.addEventListener("mousemove", (event) => {
    if (!state.drag) return;
    const [x, y] = canvasPoint(event), [x0, y0] = state.drag.start;
    state.drag.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    drawBox();
  });
  window.addEventListener("mouseup", () => {
    if (!state.drag) return;
    const box = state.drag.box;
    state.drag = null;
    const clipped = [Math.max(0, box[0]), Math.max(0, box[1]), Math.min(state.query.width, box[2]),
                     Math.min(state.query.height, box[3])];
    if (clipped[2] - clipped[0] >= 16 && clipped[3] - clipped[1] >= 16) searchAgain(clipped);
    else drawBox();
  });
  $("#clear-box").onclick = () => searchAgain(null);
}

// ---- the match view --------------------------------------------------------------------------

async function openMatch(target, name) {
  try {
    const match = await api(`/api/queries/${state.query.id}/match?target=${encodeURIComponent(target)}` +
                            `&name=${encodeURIComponent(name)}`);
    const [left, right] = await Promise.all([loadImage(`/api/queries/${state.query.id}/image?size=1024`),
                                             loadImage(imageUrl(indexOf(target), name, 1024))]);
    drawMatch(match, left, right);
    $("#match-title").textContent = `#${match.rank} ${name} (${target}), score ${match.score.toFixed(3)}`;
    $("#match-summary").textContent = match.summary;
    $("#match-view").hidden = false;
  } catch (error) { showError(error.message); }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

function drawMatch(match, left, right) {
  const height = 400;
  const lw = left.width * height / left.height, rw = right.width * height / right.height, gap = 10;
  const canvas = $("#match-canvas");
  canvas.width = lw + gap + rw;
  canvas.height = height;
  const c = canvas.getContext("2d");
  c.fillStyle = "white";
  c.fillRect(0, 0, canvas.width, height);
  c.drawImage(left, 0, 0, lw, height);
  c.drawImage(right, lw + gap, 0, rw, height);
  const inLeft = ([x, y]) => [x * lw, y * height], inRight = ([x, y]) => [lw + gap + x * rw, y * height];
  const rect = (box, place, color, fill) => {
    const [x0, y0] = place([box[0], box[1]]), [x1, y1] = place([box[2], box[3]]);
    c.strokeStyle = color;
    if (fill) { c.fillStyle = fill; c.fillRect(x0, y0, x1 - x0, y1 - y0); }
    c.strokeRect(x0, y0, x1 - x0, y1 - y0);
  };
  c.lineWidth = 1;
  const pairs = (match.query_points || []).map((p, i) => [p, match.result_points[i]]);
  c.strokeStyle = match.kind === "lines" ? "rgba(0, 230, 64, 0.8)" : "rgba(255, 193, 7, 0.8)";
  for (const [p, q] of pairs) {
    const [x0, y0] = inLeft(p), [x1, y1] = inRight(q);
    c.beginPath(); c.moveTo(x0, y0); c.lineTo(x1, y1); c.stroke();
  }
  for (const box of match.query_boxes || []) rect(box, inLeft, "rgba(255, 193, 7, 0.9)", "rgba(255, 193, 7, 0.25)");
  const regionColors = ["#e53935", "#fb8c00", "#fdd835"];
  (match.result_boxes || []).forEach((box, i) => match.kind === "regions"
    ? (c.lineWidth = 3 - i, rect(box, inRight, regionColors[i] || "#fdd835"))
    : rect(box, inRight, "rgba(255, 193, 7, 0.9)", "rgba(255, 193, 7, 0.25)"));
  c.lineWidth = 3;
  if (match.window) rect(match.window, inRight, "#e53935");
  if (match.outline) {
    c.strokeStyle = "#00e5ff";
    c.beginPath();
    match.outline.map(inRight).forEach(([x, y], i) => (i ? c.lineTo(x, y) : c.moveTo(x, y)));
    c.closePath(); c.stroke();
  }
  if (state.query.box) rect(state.query.box.map((v, i) => v / (i % 2 ? state.query.height : state.query.width)),
                            inLeft, "#ffeb3b");
  canvas.dataset.kind = match.kind;
  canvas.dataset.lines = pairs.length;
  canvas.dataset.boxes = (match.result_boxes || []).length;
}

// ---- picking a query from the collection -----------------------------------------------------

async function browse(offset) {
  const index = indexOf($("#target-a").value);
  const filter = $("#browse-filter").value;
  try {
    const page = await api(`/api/indexes/${encodeURIComponent(index)}/names?offset=${offset}&limit=48` +
                           `&contains=${encodeURIComponent(filter)}`);
    state.browse = { offset, total: page.total };
    const grid = $("#browse-grid");
    grid.innerHTML = "";
    for (const name of page.names) {
      const card = document.createElement("div");
      card.className = "pick";
      card.dataset.name = name;
      card.innerHTML = `<img loading="lazy" alt=""><div class="meta"></div>`;
      card.querySelector("img").src = imageUrl(index, name, 256);
      card.querySelector(".meta").textContent = name;
      card.onclick = () => { $("#browser").hidden = true; search({ index, name }); };
      grid.append(card);
    }
    $("#browse-count").textContent = page.total
      ? `${offset + 1}-${offset + page.names.length} of ${page.total}` : "no image name matches";
    $("#browser").hidden = false;
    showError("");
  } catch (error) { showError(error.message); }
}

// ---- evaluation ------------------------------------------------------------------------------

async function showEvaluation() {
  const chosen = targets();
  $("#eval-info").textContent = "searching every benchmark query...";
  try {
    const runs = await Promise.all(chosen.map((t) => api(`/api/evaluation?target=${encodeURIComponent(t)}`)));
    const [a, b] = runs;
    state.evalCompared = Boolean(b);
    const scoresB = b ? new Map(b.queries.map((q) => [q.name, q.score])) : null;
    state.evalRows = a.queries.map((q) => {
      const sb = scoresB ? scoresB.get(q.name) : null;
      return { name: q.name, box: q.box, a: q.score, b: sb, diff: sb === null || sb === undefined ? null : sb - q.score };
    });
    for (const cell of document.querySelectorAll('#eval-table th[data-key="b"], #eval-table th[data-key="diff"]')) {
      cell.hidden = !b;
    }
    if (!b && ["b", "diff"].includes(state.evalSort.key)) state.evalSort = { key: "a", dir: 1 };
    const metric = a.metric === "N-S" ? "N-S count (0-4)" : "AP";
    $("#eval-info").textContent = `${a.dataset}, ${a.queries.length} queries, per-query ${metric}. ` +
      `A = ${a.index}:${a.pipeline} (mean ${a.mean.toFixed(3)})` +
      (b ? `, B = ${b.index}:${b.pipeline} (mean ${b.mean.toFixed(3)})` : "") + ". Click a query to open it.";
    renderEvaluation();
  } catch (error) {
    $("#eval-info").textContent = "";
    showError(error.message);
  }
}

function renderEvaluation() {
  const { key, dir } = state.evalSort;
  const value = (row) => (row[key] === null || row[key] === undefined ? -Infinity : row[key]);
  const rows = [...state.evalRows].sort((x, y) => (key === "name" ? x.name.localeCompare(y.name) * dir
                                                                  : (value(x) - value(y)) * dir));
  const body = $("#eval-table tbody");
  body.innerHTML = "";
  const cell = (v) => (v === null || v === undefined ? "" : v.toFixed(3));
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.name = row.name;
    tr.innerHTML = `<td></td><td>${cell(row.a)}</td>` + (state.evalCompared ? `<td>${cell(row.b)}</td>` +
      `<td class="${row.diff > 0 ? "better" : row.diff < 0 ? "worse" : ""}">${cell(row.diff)}</td>` : "");
    tr.firstChild.textContent = row.name;
    tr.onclick = () => {
      switchTab("search");
      search({ index: indexOf($("#target-a").value), name: row.name, box: row.box ? row.box.join(",") : null });
    };
    body.append(tr);
  }
}

function switchTab(tab) {
  $("#search-view").hidden = tab !== "search";
  $("#eval-view").hidden = tab !== "eval";
  $("#tab-search").classList.toggle("active", tab === "search");
  $("#tab-eval").classList.toggle("active", tab === "eval");
  if (tab === "eval") showEvaluation();
}

// ---- wiring ----------------------------------------------------------------------------------

function setUp() {
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) search({ file: event.dataTransfer.files[0] });
  });
  $("#file-input").addEventListener("change", (event) => {
    if (event.target.files.length) search({ file: event.target.files[0] });
    event.target.value = "";
  });
  $("#browse-button").onclick = () => browse(0);
  $("#browse-filter").addEventListener("input", () => browse(0));
  $("#browse-prev").onclick = () => browse(Math.max(0, state.browse.offset - 48));
  $("#browse-next").onclick = () => { if (state.browse.offset + 48 < state.browse.total) browse(state.browse.offset + 48); };
  for (const close of document.querySelectorAll(".modal .close")) close.onclick = () => { close.closest(".modal").hidden = true; };
  const rerun = () => (!$("#eval-view").hidden ? showEvaluation() : searchAgain(state.query && state.query.box));
  $("#target-a").onchange = rerun;
  $("#target-b").onchange = rerun;
  $("#compare").onchange = rerun;
  $("#tab-search").onclick = () => switchTab("search");
  $("#tab-eval").onclick = () => switchTab("eval");
  for (const th of document.querySelectorAll("#eval-table th")) {
    th.onclick = () => {
      const key = th.dataset.key;
      state.evalSort = { key, dir: state.evalSort.key === key ? -state.evalSort.dir : 1 };
      renderEvaluation();
    };
  }
  setUpBoxDrawing();
  window.addEventListener("resize", drawBox);
  loadIndexes().then(() => { document.body.dataset.ready = "1"; }).catch((error) => showError(error.message));
}

setUp();
