// facelab web page: choose models, analyse a photo or the live webcam. No external network.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], key: sessionStorage.getItem("facelab-key") || "", ws: null, stream: null, frames: 0 };
const COLORS = ["#2f6fed", "#e8590c", "#1f9d55", "#ae3ec9", "#d6336c", "#0b7285"];

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function headers() { return state.key ? { "X-API-Key": state.key } : {}; }
function selected() { return [...document.querySelectorAll("#models input:checked")].map((el) => el.value); }
function setStatus(text) { $("status").textContent = text; }
function showError(text) { const e = $("error"); e.textContent = text || ""; e.hidden = !text; }

async function errorText(resp) {
  try { const body = await resp.json(); return body.error ? body.error.message : JSON.stringify(body); }
  catch (_) { return `HTTP ${resp.status}`; }
}

async function loadModels() {
  const resp = await fetch("/api/models", { headers: headers() });
  if (resp.status === 401) { $("keybox").hidden = false; setStatus("this server needs an API key"); return; }
  if (!resp.ok) { showError(await errorText(resp)); return; }
  $("keybox").hidden = true;
  state.models = (await resp.json()).models;
  $("models").innerHTML = "";
  for (const m of state.models) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" value="${esc(m.name)}" checked> ${esc(m.name)} <small>${esc(m.task.kind)}, ` +
      `${m.task.labels.length} labels, ${esc(m.backend)}</small>`;
    $("models").appendChild(label);
  }
  setStatus(`${state.models.length} model(s) ready`);
}

// ---------------------------------------------------------------- answers
// Every shape the API gives: a decision that is a label, a list of labels (multilabel),
// "unknown" for a stranger (face-embed: a name with no probability of its own), or none;
// probabilities that may be missing.
function decisions(pred) {
  const d = pred.decision;
  if (Array.isArray(d)) { return d.map(String); }
  return d === undefined || d === null || d === "" ? [] : [String(d)];
}
function prob(pred, label) {
  const p = pred.probs ? pred.probs[label] : undefined;
  return typeof p === "number" ? p : null;
}
function labelText(pred, label) {
  const p = prob(pred, label);
  return p === null ? label : `${label} ${p.toFixed(2)}`;
}
function modelLine(name, pred) {
  const items = decisions(pred);
  if (items.length) { return `${name}: ` + items.slice(0, 3).map((l) => labelText(pred, l)).join(", "); }
  if (pred.top) { return `${name}: ${labelText(pred, pred.top)} (below threshold)`; }
  return `${name}: —`;
}
function faceLines(face) { return Object.entries(face.predictions || {}).map(([n, p]) => modelLine(n, p)); }

// ---------------------------------------------------------------- drawing
function drawFaces(ctx, faces, scale) {
  // text size follows the picture's size, so labels stay readable on small and large photos
  const px = Math.max(12, Math.round(ctx.canvas.width / 45));
  ctx.lineWidth = Math.max(2, px / 7);
  ctx.font = `${px}px system-ui, sans-serif`;
  faces.forEach((face, i) => {
    const [x0, y0, x1, y1] = face.box.map((v) => v * scale);
    const color = COLORS[i % COLORS.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = color;
    for (const [x, y] of face.landmarks || []) { ctx.fillRect(x * scale - 2, y * scale - 2, 4, 4); }
    const lines = faceLines(face);
    const lh = Math.round(px * 1.3);
    let y = Math.max(lh * lines.length, y0) - lh * lines.length;
    for (const text of lines) {
      const w = ctx.measureText(text).width + 8;
      // keep the label inside the picture: shift it left at the right edge
      const x = Math.max(0, Math.min(x0, ctx.canvas.width - w));
      ctx.fillStyle = "rgba(0,0,0,.65)"; ctx.fillRect(x, y, w, lh);
      ctx.fillStyle = "#fff"; ctx.fillText(text, x + 4, y + lh - px * 0.3);
      y += lh;
    }
  });
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") { node.className = v; } else { node.setAttribute(k, v); }
  }
  for (const c of children) { node.append(c); }
  return node;
}

function modelBlock(name, pred) {
  const decided = new Set(decisions(pred));
  const block = el("div", { class: "model", "data-model": name },
    el("b", {}, `${name}: ${[...decided].join(", ") || "—"}`));
  if (decided.has("unknown") && prob(pred, "unknown") === null) {
    block.append(el("p", { class: "note", "data-testid": "unknown" },
      "Not one of the known people (the nearest known face is too far away)."));
  }
  const rows = Object.entries(pred.probs || {}).filter(([, p]) => typeof p === "number")
    .sort((a, b) => b[1] - a[1]).slice(0, 8);
  for (const [label, p] of rows) {
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(100 * Math.min(1, Math.max(0, p))).toFixed(1)}%`;  // CSSOM: allowed by the CSP
    block.append(el("div", { class: decided.has(label) ? "bar on" : "bar" }, el("span", {}, label),
      el("span", { class: "track" }, fill), el("span", { class: "p" }, p.toFixed(2))));
  }
  return block;
}

function renderResults(result) {
  const box = $("results");
  box.replaceChildren();
  const faces = result.faces || [];
  if (!faces.length) { box.append(el("p", { class: "face", "data-testid": "no-face" }, "No face found in this photo.")); }
  faces.forEach((face, i) => {
    const score = typeof face.score === "number" ? ` score ${face.score.toFixed(2)}` : "";
    const div = el("div", { class: "face" }, el("h3", {}, `Face ${i + 1} `, el("small", {}, score)));
    for (const [name, pred] of Object.entries(face.predictions || {})) { div.append(modelBlock(name, pred)); }
    box.append(div);
  });
  const ms = result.timing_ms ? `, ${result.timing_ms.total} ms on the server` : "";
  box.append(el("p", { class: "note" }, `${result.width}×${result.height} px${ms}`));
}

// ---------------------------------------------------------------- photo
function clearView() {
  $("results").replaceChildren();
  $("live-labels").textContent = "";
  const canvas = $("canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

async function analysePhoto(file) {
  stopCamera();
  showError("");
  const models = selected();
  if (!models.length) { showError("Choose at least one model."); return; }
  clearView();
  const img = new Image();
  img.src = URL.createObjectURL(file);
  await img.decode().catch(() => null);
  const form = new FormData();
  form.append("image", file, file.name || "photo");
  setStatus("analysing…");
  try {
    const resp = await fetch(`/api/predict?models=${encodeURIComponent(models.join(","))}`,
      { method: "POST", body: form, headers: headers() });
    if (!resp.ok) { showError(await errorText(resp)); setStatus("error"); return; }
    const result = await resp.json();
    const canvas = $("canvas");
    const scale = img.naturalWidth ? Math.min(1, 900 / img.naturalWidth) : 1;
    canvas.width = Math.round(result.width * scale);
    canvas.height = Math.round(result.height * scale);
    const ctx = canvas.getContext("2d");
    if (img.naturalWidth) { ctx.drawImage(img, 0, 0, canvas.width, canvas.height); }
    drawFaces(ctx, result.faces || [], scale);
    renderResults(result);
    setStatus(`${(result.faces || []).length} face(s)`);
  } catch (err) {
    showError(`The photo could not be analysed: ${err.message}`);
    setStatus("error");
  } finally {
    URL.revokeObjectURL(img.src);
  }
}

// ---------------------------------------------------------------- webcam
function stopCamera() {
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  if (state.stream) { state.stream.getTracks().forEach((t) => t.stop()); state.stream = null; }
  $("video").hidden = true;
  $("camera").textContent = "Start webcam";
  $("camera").classList.remove("stop");
  $("fps").textContent = "";
}

// The key travels as a WebSocket subprotocol (a browser cannot set headers there), never in the URL.
function keyProtocol(key) {
  const bytes = new TextEncoder().encode(key);
  let bin = "";
  for (const b of bytes) { bin += String.fromCharCode(b); }
  return "facelab.key." + btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function startCamera() {
  showError("");
  const models = selected();
  if (!models.length) { showError("Choose at least one model."); return; }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) { showError(`Cannot open the webcam: ${err.message}`); return; }
  clearView();  // the previous photo's results do not belong under the live video
  const video = $("video");
  video.srcObject = state.stream;
  video.hidden = false;
  await video.play();
  $("camera").textContent = "Stop webcam";
  $("camera").classList.add("stop");
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ models: models.join(",") });
  const protocols = state.key ? ["facelab", keyProtocol(state.key)] : ["facelab"];
  const ws = new WebSocket(`${proto}://${location.host}/api/stream?${params}`, protocols);
  state.ws = ws;
  const grab = document.createElement("canvas");
  let t0 = performance.now(), frames = 0;
  const send = () => {
    if (state.ws !== ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) { return; }
    const s = Math.min(1, 640 / video.videoWidth);
    grab.width = Math.round(video.videoWidth * s); grab.height = Math.round(video.videoHeight * s);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    grab.toBlob((blob) => { if (blob && ws.readyState === WebSocket.OPEN) { ws.send(blob); } }, "image/jpeg", 0.8);
  };
  ws.onopen = send;
  ws.onerror = () => { if (state.ws === ws) { showError("The live connection failed."); } };
  ws.onclose = (ev) => {
    if (state.ws !== ws) { return; }  // stopped on purpose
    if (!$("error").textContent) { showError(`The live connection closed (code ${ev.code}${ev.reason ? ": " + ev.reason : ""}).`); }
    stopCamera();
  };
  ws.onmessage = (ev) => {
    try {
      const msg = JSON.parse(ev.data);
      if (msg.error) { showError(msg.error.message); } else if (msg.faces) { showError(""); drawLive(msg, grab.width, video); }
    } catch (err) {
      showError(`Could not show the answer: ${err.message}`);
    }
    frames += 1;
    const dt = (performance.now() - t0) / 1000;
    if (dt > 1) { $("fps").textContent = `${(frames / dt).toFixed(1)} frames/s`; t0 = performance.now(); frames = 0; }
    requestAnimationFrame(send);
  };
}

function drawLive(result, sentWidth, video) {
  const canvas = $("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  drawFaces(ctx, result.faces, video.videoWidth / sentWidth);
  const labels = result.faces.map((f) => faceLines(f).join(" | "));
  $("live-labels").textContent = labels.length ? labels.join(" ‖ ") : "no face in view";
  state.frames += 1;
  $("live-labels").dataset.frames = String(state.frames);
}

// ---------------------------------------------------------------- wiring
$("file").addEventListener("change", (e) => { if (e.target.files[0]) { analysePhoto(e.target.files[0]); } });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) { analysePhoto(e.dataTransfer.files[0]); }
});
$("camera").addEventListener("click", () => (state.stream ? stopCamera() : startCamera()));
$("savekey").addEventListener("click", () => {
  state.key = $("apikey").value.trim();
  sessionStorage.setItem("facelab-key", state.key);
  showError("");
  loadModels().catch((err) => showError(`Cannot load the models: ${err.message}`));
});
loadModels().catch((err) => showError(`Cannot reach the server: ${err.message}`));
