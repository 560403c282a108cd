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
    label.innerHTML = `<input type="checkbox" value="${esc(m.name)}" checked> ${esc(m.name)} <small>${m.task.kind}, ` +
      `${m.task.labels.length} labels, ${m.backend}</small>`;
    $("models").appendChild(label);
  }
  setStatus(`${state.models.length} model(s) ready`);
}

// ---------------------------------------------------------------- drawing
function modelLine(name, pred) {
  const d = pred.decision;
  const items = Array.isArray(d) ? d : [d];
  if (!items.length) { return `${name}: ${pred.top} ${pred.probs[pred.top].toFixed(2)} (below threshold)`; }
  return `${name}: ` + items.slice(0, 3).map((l) => `${l} ${pred.probs[l].toFixed(2)}`).join(", ");
}

function faceLines(face) { return Object.entries(face.predictions).map(([n, p]) => modelLine(n, p)); }

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
    for (const [x, y] of face.landmarks) { ctx.fillRect(x * scale - 2, y * scale - 2, 4, 4); }
    const lines = faceLines(face);
    const lh = Math.round(px * 1.3);
    let y = Math.max(lh * lines.length, y0) - lh * lines.length;
    for (const text of lines) {
      const w = ctx.measureText(text).width + 8;
      ctx.fillStyle = "rgba(0,0,0,.65)"; ctx.fillRect(x0, y, w, lh);
      ctx.fillStyle = "#fff"; ctx.fillText(text, x0 + 4, y + lh - px * 0.3);
      y += lh;
    }
  });
}

function renderResults(result) {
  const box = $("results");
  box.innerHTML = "";
  if (!result.faces.length) { box.innerHTML = "<p class='face' data-testid='no-face'>No face found in this photo.</p>"; }
  result.faces.forEach((face, i) => {
    const div = document.createElement("div");
    div.className = "face";
    div.innerHTML = `<h3>Face ${i + 1} <small>score ${face.score.toFixed(2)}</small></h3>`;
    for (const [name, pred] of Object.entries(face.predictions)) {
      const decided = new Set(Array.isArray(pred.decision) ? pred.decision : [pred.decision]);
      const rows = Object.entries(pred.probs).sort((a, b) => b[1] - a[1]).slice(0, 8);
      div.insertAdjacentHTML("beforeend", `<div class="model" data-model="${esc(name)}"><b>${esc(name)}: ` +
        `${esc([...decided].join(", ")) || "—"}</b>` + rows.map(([l, p]) =>
        `<div class="bar${decided.has(l) ? " on" : ""}"><span>${esc(l)}</span><span class="track">` +
        `<span class="fill" style="width:${(100 * p).toFixed(1)}%"></span></span>` +
        `<span class="p">${p.toFixed(2)}</span></div>`).join("") + "</div>");
    }
    box.appendChild(div);
  });
  box.insertAdjacentHTML("beforeend", `<p class="note">${result.width}×${result.height} px, ` +
    `${result.timing_ms.total} ms on the server</p>`);
}

// ---------------------------------------------------------------- photo
async function analysePhoto(file) {
  stopCamera();
  showError("");
  const models = selected();
  if (!models.length) { showError("Choose at least one model."); return; }
  const img = new Image();
  img.src = URL.createObjectURL(file);
  await img.decode().catch(() => null);
  const form = new FormData();
  form.append("image", file, file.name || "photo");
  setStatus("analysing…");
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
  drawFaces(ctx, result.faces, scale);
  renderResults(result);
  setStatus(`${result.faces.length} face(s)`);
}

// ---------------------------------------------------------------- webcam
function stopCamera() {
  if (state.ws) { state.ws.close(); state.ws = null; }
  if (state.stream) { state.stream.getTracks().forEach((t) => t.stop()); state.stream = null; }
  $("video").hidden = true;
  $("camera").textContent = "Start webcam";
  $("camera").classList.remove("stop");
  $("fps").textContent = "";
}

async function startCamera() {
  showError("");
  const models = selected();
  if (!models.length) { showError("Choose at least one model."); return; }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) { showError(`Cannot open the webcam: ${err.message}`); return; }
  const video = $("video");
  video.srcObject = state.stream;
  video.hidden = false;
  await video.play();
  $("camera").textContent = "Stop webcam";
  $("camera").classList.add("stop");
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ models: models.join(",") });
  if (state.key) { params.set("api_key", state.key); }
  const ws = new WebSocket(`${proto}://${location.host}/api/stream?${params}`);
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
  ws.onerror = () => showError("The live connection failed.");
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.error) { showError(msg.error.message); } else if (msg.faces) { drawLive(msg, grab.width, video); }
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
  loadModels();
});
loadModels().catch((err) => showError(`Cannot reach the server: ${err.message}`));
