// explain report: cards for every image of a run, filtered, sorted and paged in the browser.
// The data is embedded in the page (#explain-data); the view lives in the URL's hash, so a link shows it.
"use strict";

const PAGE_SIZE = 120;
const data = JSON.parse(document.getElementById("explain-data").textContent);
const cards = data.cards;
const $ = (id) => document.getElementById(id);
const state = { q: "", class: "", truth: "", result: "", method: "", sort: "", page: 1 };

function el(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const predicted = (card) => (card.predictions.length ? card.predictions[0][1] : "");
const confidence = (card) => (card.predictions.length ? card.predictions[0][2] : 0);
// Several labels per image: the labels predicted, and the true ones, are lists.
const several = (card) => Array.isArray(card.labels) || Array.isArray(card.truth);
const predictedLabels = (card) => (Array.isArray(card.labels) ? card.labels.map((l) => l[1]) : [predicted(card)]);
const truthLabels = (card) => (Array.isArray(card.truth_label) ? card.truth_label :
  card.truth_label ? [card.truth_label] : []);
const percent = (p) => `${(100 * p).toFixed(1)} %`;

// --- the view in the URL: #wrong, #right, #class=<label>, or key=value pairs joined by & ---
function readHash() {
  Object.assign(state, { q: "", class: "", truth: "", result: "", method: "", sort: "", page: 1 });
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    if (!part) continue;
    if (part === "wrong" || part === "right") { state.result = part; continue; }
    const at = part.indexOf("=");
    if (at < 0) continue;
    const key = decodeURIComponent(part.slice(0, at));
    const value = decodeURIComponent(part.slice(at + 1));
    if (key in state) state[key] = key === "page" ? Math.max(1, parseInt(value, 10) || 1) : value;
  }
}

function writeHash() {
  const parts = [];
  if (state.result) parts.push(state.result);
  for (const key of ["class", "truth", "method", "q", "sort"]) {
    if (state[key]) parts.push(`${key}=${encodeURIComponent(state[key])}`);
  }
  if (state.page > 1) parts.push(`page=${state.page}`);
  const hash = parts.length ? `#${parts.join("&")}` : "";
  if (hash !== location.hash) history.replaceState(null, "", hash || location.pathname);
}

// --- filtering and sorting ---
function visible() {
  const q = state.q.toLowerCase();
  let list = cards.filter((card) =>
    (!q || card.image.toLowerCase().includes(q)) &&
    (!state.class || predictedLabels(card).includes(state.class)) &&
    (!state.truth || truthLabels(card).includes(state.truth)) &&
    (!state.result || card.correct === (state.result === "right")) &&
    (!state.method || card.explanations.some((e) => e.method === state.method)));
  if (state.sort === "confidence") list = [...list].sort((a, b) => confidence(a) - confidence(b));
  else if (state.sort === "entropy") list = [...list].sort((a, b) => (b.entropy ?? 0) - (a.entropy ?? 0));
  else if (state.sort === "name") list = [...list].sort((a, b) => (a.image < b.image ? -1 : a.image > b.image ? 1 : 0));
  return list;
}

// --- one card ---
function card(item) {
  const known = item.truth !== null && item.truth !== undefined;
  const node = el("article", { class: "card", "data-image": item.image,
                               "data-correct": known ? String(item.correct) : null });
  const verdict = known ? el("span", { class: "verdict",
    text: item.correct ? "right" : `wrong — truth: ${truthLabels(item).join(", ") || "none"}` }) : null;
  node.append(el("h3", {}, [document.createTextNode(item.image), known ? el("br") : null, verdict]));
  if (item.thumb) {
    node.append(el("img", { class: "original", src: item.thumb, alt: item.image, loading: "lazy",
                            onclick: () => openViewer(item, null) }));
  }
  if (item.segmentation_thumb) {
    node.append(el("img", { class: "segmentation", src: item.segmentation_thumb, alt: `${item.image}: segmentation`,
                            loading: "lazy", onclick: () => openViewer(item, null, item.segmentation) }));
  }
  if (item.detections_thumb) {
    node.append(el("img", { class: "segmentation", src: item.detections_thumb, alt: `${item.image}: detections`,
                            loading: "lazy", onclick: () => openViewer(item, null, item.detections) }));
  }
  if (item.boxes.length) {
    const found = el("ol", { class: "bars boxes", "aria-label": "detections" });
    for (const [k, index, label, score, [x0, y0, x1, y1]] of item.boxes) {
      found.append(el("li", { title: `detection ${k}: ${label} (${index}) at (${x0}, ${y0}, ${x1}, ${y1})` }, [
        el("span", { class: "label", text: `${k}. ${label}` }),
        el("span", { class: "bar", style: `width: ${Math.max(1, 100 * score).toFixed(1)}%` }),
        el("span", { class: "p", text: percent(score) }),
      ]));
    }
    node.append(found);
  }
  if (several(item)) {
    node.append(el("p", { class: "labels", text: `labels: ${predictedLabels(item).join(", ") || "none"}` }));
  }
  const trueIndexes = Array.isArray(item.truth) ? item.truth : [item.truth];
  const bars = el("ol", { class: "bars", "aria-label": "top predictions" });
  for (const [index, label, p] of item.predictions.slice(0, 5)) {
    bars.append(el("li", { class: trueIndexes.includes(index) ? "truth" : null }, [
      el("span", { class: "label", text: label, title: `${label} (${index})` }),
      el("span", { class: "bar", style: `width: ${Math.max(1, 100 * p).toFixed(1)}%` }),
      el("span", { class: "p", text: percent(p) }),
    ]));
  }
  node.append(bars);
  const explanations = el("div", { class: "explanations" });
  for (const explanation of item.explanations) {
    if (state.method && explanation.method !== state.method) continue;
    explanations.append(el("button", { type: "button", class: "explanation",
      title: `${explanation.method}: ${explanation.label}`, onclick: () => openViewer(item, explanation) }, [
      explanation.thumb ? el("img", { src: explanation.thumb, alt: `${explanation.method} ${explanation.label}`,
                                      loading: "lazy" }) : null,
      document.createTextNode(`${explanation.method} · ${detectionOf(explanation)}${explanation.label}`),
    ]));
  }
  node.append(explanations);
  if (item.evaluation.length) node.append(scores(item.evaluation));
  return node;
}

// A detection's explanation or score names its box: "2. person".
function detectionOf(row) {
  return row.detection === null || row.detection === undefined ? "" : `${row.detection}. `;
}

function scores(rows) {
  const number = (v) => (v === null || v === undefined ? "" : typeof v === "boolean" ? (v ? "yes" : "no") : v.toFixed(3));
  const table = el("table", { class: "scores" }, [el("tr", {}, ["method", "class", "deletion", "insertion", "drop",
    "pointing"].map((h) => el("th", { text: h })))]);
  for (const r of rows) {
    table.append(el("tr", {}, [r.method, detectionOf(r) + r.label, number(r.deletion_auc), number(r.insertion_auc),
      number(r.average_drop), number(r.pointing_hit)].map((v) => el("td", { text: v }))));
  }
  return table;
}

// --- the large view: an explanation's overlay, toggled with the original ---
let viewing = null;
function openViewer(item, explanation, picture = null) {
  viewing = { item, explanation, original: explanation === null, picture };
  showViewer();
  const dialog = $("viewer");
  if (!dialog.open) dialog.showModal();
}

function showViewer() {
  const { item, explanation, original, picture } = viewing;
  const image = $("viewer-image");
  image.src = picture || (original || !explanation ? item.thumb || "" : explanation.overlay);
  image.alt = item.image;
  const video = $("viewer-video");  // a clip's overlay video, below its strip of key frames
  const playing = Boolean(explanation && explanation.video && !original && !picture);
  video.hidden = !playing;
  if (playing) video.src = explanation.video;
  else video.removeAttribute("src");
  $("viewer-caption").textContent = explanation
    ? `${item.image} — ${explanation.label} (${explanation.class_index}), p = ${percent(explanation.score ?? 0)}, ` +
      `${explanation.method}${explanation.layer ? ` at ${explanation.layer}` : ""}${original ? " — original" : ""}`
    : `${item.image} — original`;
  $("toggle").hidden = !explanation;
  $("toggle").textContent = original ? "Show overlay" : "Show original";
}

// --- the header: accuracy, the controls' choices, the confusion matrix ---
function summary() {
  const withTruth = cards.filter((c) => c.truth !== null && c.truth !== undefined);
  let text = `${cards.length} images, ${cards.reduce((n, c) => n + c.explanations.length, 0)} explanations`;
  if (withTruth.length && withTruth.some(several)) {
    const exact = withTruth.filter((c) => c.correct).length;
    text += ` · labels exactly right on ${percent(exact / withTruth.length)} of ${withTruth.length} images with truth`;
  } else if (withTruth.length) {
    const top1 = withTruth.filter((c) => c.correct).length;
    const top5 = withTruth.filter((c) => c.predictions.slice(0, 5).some(([i]) => i === c.truth)).length;
    text += ` · accuracy top-1 ${percent(top1 / withTruth.length)}, top-5 ${percent(top5 / withTruth.length)}` +
      ` over ${withTruth.length} images with truth`;
  }
  $("summary").textContent = text;
  return withTruth;
}

function options(select, values) {
  for (const value of [...new Set(values)].filter(Boolean).sort()) select.append(el("option", { value, text: value }));
}

// Several labels per image: per label, how often it is true, predicted, and both.
function labelCounts(withTruth) {
  const labels = [...new Set(withTruth.flatMap((c) => [...truthLabels(c), ...predictedLabels(c)]))].sort();
  const head = ["label", "true", "predicted", "both (TP)", "predicted, not true (FP)", "true, missed (FN)"];
  const table = el("table", { class: "label-counts" }, [el("tr", {}, head.map((h) => el("th", { text: h })))]);
  for (const label of labels) {
    const truthHas = (c) => truthLabels(c).includes(label);
    const predictedHas = (c) => predictedLabels(c).includes(label);
    const counts = [withTruth.filter(truthHas).length, withTruth.filter(predictedHas).length,
      withTruth.filter((c) => truthHas(c) && predictedHas(c)).length,
      withTruth.filter((c) => !truthHas(c) && predictedHas(c)).length,
      withTruth.filter((c) => truthHas(c) && !predictedHas(c)).length];
    table.append(el("tr", {}, [el("th", { text: label, scope: "row" }), ...counts.map((n, i) => el("td", {}, [
      el("button", { type: "button", text: String(n), "data-label": label,
        onclick: () => { Object.assign(state, { truth: i === 1 ? "" : label, class: i === 0 || i === 4 ? "" : label,
          result: "", page: 1 }); update(); } })]))]));
  }
  $("matrix").append(table);
  $("confusion").querySelector("h2").replaceChildren("Labels ",
    el("small", { text: "(counts over the images with truth; click one to see its images)" }));
  $("confusion").hidden = false;
}

function matrix(withTruth) {
  if (!withTruth.length) return;
  if (withTruth.some(several)) { labelCounts(withTruth); return; }
  const labels = [...new Set(withTruth.flatMap((c) => [c.truth_label, predicted(c)]))].sort();
  const counts = new Map();
  for (const c of withTruth) {
    const key = `${c.truth_label}\u0000${predicted(c)}`;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  const table = el("table", {}, [el("tr", {}, [el("th", { text: "truth \\ predicted" }),
    ...labels.map((l) => el("th", { text: l, scope: "col" }))])]);
  for (const truth of labels) {
    const row = el("tr", {}, [el("th", { text: truth, scope: "row" })]);
    for (const guess of labels) {
      const n = counts.get(`${truth}\u0000${guess}`) || 0;
      row.append(el("td", { class: n ? (truth === guess ? "diagonal" : "off") : null }, [n ? el("button", {
        type: "button", text: String(n), "data-truth": truth, "data-predicted": guess,
        onclick: () => { Object.assign(state, { truth, class: guess, result: "", page: 1 }); update(); },
      }) : null]));
    }
    table.append(row);
  }
  $("matrix").append(table);
  $("confusion").hidden = false;
}

// --- drawing the current view ---
function update() {
  writeHash();
  $("search").value = state.q;
  $("filter-class").value = state.class;
  $("filter-truth").value = state.truth;
  $("filter-correct").value = state.result;
  $("filter-method").value = state.method;
  $("sort").value = state.sort;
  const list = visible();
  const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages);
  const shown = list.slice((state.page - 1) * PAGE_SIZE, state.page * PAGE_SIZE);
  $("cards").replaceChildren(...shown.map(card));
  $("count").textContent = `${list.length} of ${cards.length} images`;
  const nav = $("pages");
  nav.replaceChildren();
  if (pages > 1) {
    for (let page = 1; page <= pages; page += 1) {
      nav.append(el("button", { type: "button", text: String(page), "aria-current": page === state.page ? "page" : null,
        onclick: () => { state.page = page; update(); window.scrollTo(0, 0); } }));
    }
  }
}

function bind(id, key, event = "change") {
  $(id).addEventListener(event, () => { state[key] = $(id).value; state.page = 1; update(); });
}

const withTruth = summary();
options($("filter-class"), cards.flatMap(predictedLabels));
options($("filter-truth"), withTruth.flatMap(truthLabels));
options($("filter-method"), cards.flatMap((c) => c.explanations.map((e) => e.method)));
matrix(withTruth);
bind("search", "q", "input");
bind("filter-class", "class");
bind("filter-truth", "truth");
bind("filter-correct", "result");
bind("filter-method", "method");
bind("sort", "sort");
$("reset").addEventListener("click", () => { location.hash = ""; readHash(); update(); });
$("toggle").addEventListener("click", () => { viewing.original = !viewing.original; showViewer(); });
window.addEventListener("hashchange", () => { readHash(); update(); });
readHash();
update();
document.body.dataset.ready = "true";
