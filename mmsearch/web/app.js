// mmsearch web page: plain JavaScript, no build step.
// The URL holds the query (/?q=a+red+circle&modality=image&offset=24), so a search can be
// shared, bookmarked and gone back to. Everything from the index is put on the page as text
// (textContent, attributes), never as HTML: file names and passages are data.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["q", "modality", "where", "min_score", "k"];
const TOKEN_KEY = "mmsearch-token";
const state = { upload: null, like: null, offset: 0, running: null, info: null };

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", `Bearer ${token()}`);
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { error: `${response.status} ${response.statusText}` };
  }
  if (response.status === 401) {
    showTokenPanel();
  }
  if (!response.ok) {
    const error = new Error(body && body.error ? body.error : `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- URL <-> form -------------------------------------------------------------------------

function readUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of FIELDS) {
    const value = params.get(name);
    const input = $(name);
    if (name === "k") {
      input.value = ["12", "24", "48", "96"].includes(value) ? value : "24";
    } else {
      input.value = value || "";
    }
  }
  state.like = params.has("like") ? Number(params.get("like")) : null;
  state.offset = Math.max(0, Number(params.get("offset")) || 0);
}

function writeUrl(push) {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const value = $(name).value.trim();
    if (value && !(name === "k" && value === "24")) params.set(name, value);
  }
  if (state.like !== null) params.set("like", String(state.like));
  if (state.offset) params.set("offset", String(state.offset));
  const url = params.toString() ? `/?${params}` : "/";
  if (url !== location.pathname + location.search) {
    (push ? history.pushState : history.replaceState).call(history, null, "", url);
  }
}

// -- searching ------------------------------------------------------------------------------

function queryFields() {
  const fields = { k: Number($("k").value), offset: state.offset };
  const q = $("q").value.trim();
  if (q) fields.q = q;
  if ($("modality").value) fields.modality = $("modality").value;
  if ($("where").value.trim()) fields.where = $("where").value.trim();
  if ($("min_score").value !== "") fields.min_score = Number($("min_score").value);
  if (state.like !== null) fields.like_id = state.like;
  return fields;
}

async function search() {
  const fields = queryFields();
  if (!fields.q && fields.like_id === undefined && !state.upload) {
    clearResults("");
    return;
  }
  showChip();
  setStatus("Searching…");
  const started = performance.now();
  const mine = {};
  state.running = mine;
  try {
    let answer;
    if (state.upload) {
      const form = new FormData();
      form.append("file", state.upload, state.upload.name || "pasted");
      for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
      answer = await api("/api/search", { method: "POST", body: form });
    } else {
      answer = await api("/api/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(fields),
      });
    }
    if (state.running !== mine) return; // a newer search has started
    render(answer, performance.now() - started);
  } catch (error) {
    if (state.running !== mine) return;
    clearResults(error.message, true);
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function clearResults(message, isError = false) {
  $("results").replaceChildren();
  $("pager").hidden = true;
  setStatus(message, isError);
}

function showChip() {
  const chip = $("query-chip");
  if (state.upload) {
    $("query-chip-text").textContent = `Searching with ${state.upload.name || "a pasted image"}`;
  } else if (state.like !== null) {
    $("query-chip-text").textContent = `More like item ${state.like}`;
  } else {
    chip.hidden = true;
    return;
  }
  chip.hidden = false;
}

// -- results --------------------------------------------------------------------------------

function basename(path) {
  const parts = String(path).split(/[\\/]/);
  return parts[parts.length - 1] || path;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function mediaOf(hit) {
  if (hit.modality === "image") {
    const img = element("img", {
      src: hit.thumb_url,
      alt: basename(hit.path),
      loading: "lazy",
      decoding: "async",
    });
    return element("a", { class: "media", href: hit.media_url, target: "_blank", rel: "noopener" }, img);
  }
  if (hit.modality === "audio") {
    const offset = Number(hit.offset_s || 0);
    return player("audio", hit, offset, offset ? `hit at ${offset.toFixed(1)} s` : "hit at the start");
  }
  if (hit.modality === "video") {
    // A segment (start_s–end_s) when hits are grouped, else one frame or sound window.
    const start = Number(hit.start_s ?? hit.offset_s ?? 0);
    const end = Number(hit.end_s ?? start + Number(hit.duration_s || 0));
    return player("video", hit, start, `scene ${start.toFixed(1)}–${end.toFixed(1)} s (best ${hit.track || "hit"})`);
  }
  const text = String(hit.text || "");
  return element(
    "div",
    { class: "media" },
    element("blockquote", { text: text.length > 400 ? `${text.slice(0, 400)}…` : text }),
  );
}

// A player that starts at the hit: the #t= fragment, and currentTime for browsers that ignore it.
// A video shows its hit's frame (the server's thumbnail) as the poster until it plays.
function player(tag, hit, offset, label) {
  const media = element(tag, { controls: "", preload: "metadata", src: `${hit.media_url}#t=${offset}` });
  if (tag === "video" && hit.thumb_url) media.poster = hit.thumb_url;
  media.dataset.offset = String(offset);
  media.addEventListener("loadedmetadata", () => {
    if (Math.abs(media.currentTime - offset) > 0.05) media.currentTime = offset;
  });
  return element("div", { class: "media" }, media, element("div", { class: "at", text: label }));
}

function card(hit, rank) {
  const score = Number(hit.score);
  const bar = element("span", { class: "bar", "aria-hidden": "true" }, element("i"));
  bar.firstChild.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
  const like = element("button", {
    type: "button",
    class: "like",
    text: "More like this",
    "aria-label": `More like ${basename(hit.path)}`,
  });
  like.addEventListener("click", () => moreLike(hit));
  const name = element("a", { class: "name", href: hit.media_url, target: "_blank", rel: "noopener", title: hit.path });
  name.textContent = basename(hit.path) + (hit.row !== undefined ? ` · row ${hit.row}` : "");
  const meta = element(
    "div",
    { class: "meta" },
    element(
      "div",
      { class: "row" },
      element("span", { class: "score", title: "cosine similarity" }, score.toFixed(3), bar),
      element("span", { class: "badge", text: hit.modality }),
    ),
    name,
    element("div", { class: "row" }, like),
  );
  const item = element("li", { class: `card ${hit.modality}`, "data-id": String(hit.id), "data-rank": String(rank) });
  item.append(mediaOf(hit), meta);
  return item;
}

function render(answer, elapsed) {
  const results = answer.results;
  $("results").replaceChildren(...results.map((hit, i) => card(hit, answer.offset + i + 1)));
  const first = answer.offset + 1;
  const last = answer.offset + results.length;
  const kind = { image: "images", text: "texts", audio: "sounds", video: "videos", any: "items" }[answer.modality] || "items";
  if (!results.length) {
    setStatus(answer.offset ? "No more results." : `No ${kind} match${$("min_score").value ? " above the minimum score" : ""}.`);
  } else {
    setStatus(`${kind} ${first}–${last} · ${answer.took_ms.toFixed(0)} ms on the server, ${elapsed.toFixed(0)} ms here`);
  }
  $("pager").hidden = !(answer.offset || answer.next_offset !== null);
  $("prev").disabled = answer.offset === 0;
  $("next").disabled = answer.next_offset === null;
  $("page").textContent = `page ${Math.floor(answer.offset / answer.k) + 1}`;
}

// -- actions --------------------------------------------------------------------------------

function newSearch() {
  state.offset = 0;
  writeUrl(true);
  search();
}

function moreLike(hit) {
  state.upload = null;
  state.like = hit.id;
  $("q").value = "";
  if (!$("modality").value) $("modality").value = hit.modality;
  newSearch();
  window.scrollTo({ top: 0 });
}

function useFile(file) {
  if (!file) return;
  if (!/^(image|audio)\//.test(file.type) && file.type !== "") {
    setStatus(`${file.name} is not an image or a sound`, true);
    return;
  }
  state.upload = file;
  state.like = null;
  state.offset = 0;
  writeUrl(true);
  search();
}

function page(step) {
  state.offset = Math.max(0, state.offset + step * Number($("k").value));
  writeUrl(true);
  search();
  window.scrollTo({ top: 0 });
}

function showTokenPanel() {
  $("token-panel").hidden = false;
  $("token").focus();
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    state.info = info;
    const counts = Object.entries(info.by_modality)
      .map(([kind, n]) => `${kind} ${n.toLocaleString()}`)
      .join(", ");
    $("info").textContent =
      `${info.index} · model ${info.model || "none (vectors only)"} · ` +
      `${info.vectors.toLocaleString()} vectors (${counts || "empty"}) · generation ${info.generation}`;
    const accepts = info.server.query_modalities.filter((m) => m !== "text");
    $("file").accept = accepts.map((m) => `${m}/*`).join(",");
    return true;
  } catch (error) {
    $("info").textContent = error.status === 401 ? "" : `Cannot reach the index: ${error.message}`;
    return false;
  }
}

function wire() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.like = null;
    state.upload = null;
    newSearch();
  });
  for (const id of ["modality", "k"]) $(id).addEventListener("change", newSearch);
  $("file").addEventListener("change", () => useFile($("file").files[0]));
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  $("query-chip-clear").addEventListener("click", () => {
    state.upload = null;
    state.like = null;
    $("file").value = "";
    newSearch();
  });
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    if (await loadInfo()) {
      $("token-panel").hidden = true;
      search();
    } else {
      setStatus("That token was not accepted.", true);
    }
  });
  window.addEventListener("popstate", () => {
    state.upload = null;
    readUrl();
    search();
  });
  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    if (event.key === "/" && !typing) {
      event.preventDefault();
      $("q").focus();
      $("q").select();
    } else if (event.key === "Escape" && document.activeElement === $("q")) {
      $("q").value = "";
    }
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => /^(image|audio)\//.test(f.type));
    if (file) {
      event.preventDefault();
      useFile(file);
    }
  });
  let depth = 0;
  document.addEventListener("dragenter", (event) => {
    if ([...event.dataTransfer.types].includes("Files")) {
      depth += 1;
      $("drop-zone").hidden = false;
    }
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) $("drop-zone").hidden = true;
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    $("drop-zone").hidden = true;
    useFile(event.dataTransfer.files[0]);
  });
}

async function start() {
  wire();
  readUrl();
  const ready = await loadInfo();
  if (ready) search();
  else if (!token()) setStatus("");
  if (!$("q").value && state.like === null) $("q").focus();
}

start();
