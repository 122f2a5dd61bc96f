// The page: pick or drop a painting, show it, ask /v1/predict, show the artist and a bar per artist.
"use strict";

const $ = (id) => document.getElementById(id);
const pretty = (name) => name.replaceAll("_", " ");
let classes = [];
let canExplain = false;
let current = null; // the painting on show: its file, and the object URLs of the picture and its heat map

async function loadModel() {
  try {
    const response = await fetch("/v1/model");
    const info = await response.json();
    classes = info.classes;
    canExplain = info.model.runtime === "torch"; // heat maps need gradients: not on the ONNX runtime
    $("classes").textContent = classes.map(pretty).join(", ");
    const accuracy = info.metrics && info.metrics.accuracy;
    const parts = [
      `model ${info.model.name}`,
      `backbone ${info.model.backbone}`,
      `${info.model.runtime} (${info.model.precision})`,
    ];
    if (typeof accuracy === "number") parts.push(`test accuracy ${(accuracy * 100).toFixed(1)}% on ${info.metrics.n} paintings`);
    $("model").textContent = parts.join(" · ");
  } catch (err) {
    showError(`cannot reach the service: ${err}`);
  }
}

function showError(message) {
  $("answer").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
}

function showPrediction(prediction) {
  $("error").hidden = true;
  const artist = $("artist");
  artist.textContent = prediction.artist === "unknown" ? "an artist the model does not know" : pretty(prediction.artist);
  artist.dataset.artist = prediction.artist;
  $("confidence").textContent = `probability ${(prediction.probability * 100).toFixed(1)}%`;
  const chart = $("chart");
  chart.replaceChildren();
  for (const score of prediction.top_k) {
    const row = document.createElement("div");
    row.className = "bar" + (score.artist === prediction.top_k[0].artist ? " best" : "");
    row.setAttribute("role", "listitem");
    row.dataset.artist = score.artist;
    const percent = (score.probability * 100).toFixed(1);
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    row.querySelector(".name").textContent = pretty(score.artist);
    row.querySelector(".fill").style.width = `${Math.max(score.probability * 100, 0.5)}%`;
    row.querySelector(".value").textContent = `${percent}%`;
    chart.append(row);
  }
  $("answer").hidden = false;
  const button = $("explain");
  button.hidden = !canExplain;
  button.textContent = "Where did it look?";
  button.disabled = false;
}

async function toggleExplanation() {
  const button = $("explain");
  const preview = $("preview");
  if (current.heat && preview.src === current.heat) {
    preview.src = current.picture;
    preview.dataset.view = "painting";
    button.textContent = "Where did it look?";
    return;
  }
  if (!current.heat) {
    button.disabled = true;
    button.textContent = "Looking…";
    const form = new FormData();
    form.append("file", current.file, current.file.name);
    const response = await fetch("/v1/explain", { method: "POST", body: form });
    button.disabled = false;
    if (!response.ok) {
      const body = await response.json();
      showError(typeof body.detail === "string" ? body.detail : `the service answered ${response.status}`);
      return;
    }
    current.heat = URL.createObjectURL(await response.blob());
  }
  preview.src = current.heat;
  preview.dataset.view = "heat";
  button.textContent = "Show the painting";
}

async function identify(file) {
  const preview = $("preview");
  if (current) {
    URL.revokeObjectURL(current.picture);
    if (current.heat) URL.revokeObjectURL(current.heat);
  }
  current = { file, picture: URL.createObjectURL(file), heat: null };
  preview.src = current.picture;
  preview.dataset.view = "painting";
  preview.hidden = false;
  $("prompt").hidden = true;
  $("again").hidden = false;
  $("status").textContent = `Looking at ${file.name}…`;
  $("answer").hidden = true;
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const response = await fetch(`/v1/predict?top_k=${Math.max(classes.length, 1)}`, { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      $("status").textContent = file.name;
      preview.hidden = true; // the browser may not be able to show it either
      $("prompt").hidden = false;
      showError(typeof body.detail === "string" ? body.detail : `the service answered ${response.status}`);
      return;
    }
    $("status").textContent = file.name;
    showPrediction(body.predictions[0]);
  } catch (err) {
    showError(`cannot reach the service: ${err}`);
  }
}

function setup() {
  const drop = $("drop");
  $("explain").addEventListener("click", toggleExplanation);
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) identify(event.target.files[0]);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) identify(event.dataTransfer.files[0]);
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
