// The page: pick or drop a painting, show it, ask /v1/predict, show the artist and a bar per artist.
"use strict";

const $ = (id) => document.getElementById(id);
const pretty = (name) => name.replaceAll("_", " ");
const percent = (probability) => `${(probability * 100).toFixed(1)}%`;
let classes = [];
let threshold = null;
let canExplain = false;
// The painting on show: its file, the object URLs of the picture and its heat map, and its prediction. Replies are
// checked against it after every wait, so a slow answer about an earlier painting never lands on a later one.
let current = null;
// The API key, where the service needs one: asked for on its first 401, kept for this tab only.
let apiKey = sessionStorage.getItem("artistid-api-key") || "";

function callService(url, options = {}) {
  const headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  return fetch(url, { ...options, headers });
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-error").textContent = message;
  $("key-error").hidden = !message;
  $("key").focus();
}

async function errorMessage(response) {
  // The service answers {"detail": "..."}; a proxy in front of it may answer with HTML or plain text.
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: fall through to the status
  }
  return `the service answered ${response.status} ${response.statusText}`.trim();
}

async function loadModel() {
  try {
    const response = await callService("/v1/model");
    if (response.status === 401) {
      askForKey(apiKey ? "The service refused that key." : "");
      return;
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    $("key-form").hidden = true;
    const info = await response.json();
    classes = info.classes;
    threshold = info.threshold;
    canExplain = info.model.runtime === "torch"; // heat maps need gradients: not on the ONNX runtime
    $("classes").textContent = classes.map(pretty).join(", ");
    const accuracy = info.metrics && info.metrics.accuracy;
    const parts = [
      `model ${info.model.name}`,
      `backbone ${info.model.backbone}`,
      `${info.model.runtime} (${info.model.precision})`,
    ];
    if (typeof accuracy === "number") parts.push(`test accuracy ${percent(accuracy)} on ${info.metrics.n} paintings`);
    $("model").textContent = parts.join(" · ");
  } catch (err) {
    showError(`cannot read the model from the service: ${err.message}`);
  }
}

function showError(message) {
  $("answer").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
}

function showPrediction(prediction) {
  $("error").hidden = true;
  const closest = prediction.top_k[0];
  const artist = $("artist");
  artist.dataset.artist = prediction.artist;
  if (prediction.refusal === "not_a_painting") {
    artist.textContent = "This does not look like a painting";
    $("confidence").textContent = `closest artist: ${pretty(closest.artist)} at ${percent(closest.probability)}`;
  } else if (prediction.refusal === "unknown") {
    artist.textContent = "Not one of the artists I know";
    // Refused for its low probability, or because it looks like the other painters the model was shown.
    const low = typeof threshold === "number" && closest.probability < threshold;
    const needed = low ? `, under the ${percent(threshold)} it needs to name an artist` : "";
    $("confidence").textContent = `closest: ${pretty(closest.artist)} at ${percent(closest.probability)}${needed}`;
  } else {
    artist.textContent = pretty(prediction.artist);
    $("confidence").textContent = `probability ${percent(prediction.probability)}`;
  }
  const chart = $("chart");
  chart.replaceChildren();
  for (const score of prediction.top_k) {
    const row = document.createElement("div");
    row.className = "bar" + (score.artist === closest.artist ? " best" : "");
    row.setAttribute("role", "listitem");
    row.dataset.artist = score.artist;
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    row.querySelector(".name").textContent = pretty(score.artist);
    row.querySelector(".fill").style.width = `${Math.max(score.probability * 100, 0.5)}%`;
    row.querySelector(".value").textContent = percent(score.probability);
    chart.append(row);
  }
  $("answer").hidden = false;
  const button = $("explain");
  button.hidden = !canExplain;
  button.textContent = "Where did it look?";
  button.disabled = false;
  $("explain-error").hidden = true;
}

function showView(view) {
  const preview = $("preview");
  preview.src = view === "heat" ? current.heat : current.picture;
  preview.dataset.view = view;
  $("explain").textContent = view === "heat" ? "Show the painting" : "Where did it look?";
  const note = $("view-note");
  note.hidden = view !== "heat";
  if (view === "heat") note.textContent = `Red: where the model looked for ${pretty(current.prediction.top_k[0].artist)}.`;
}

async function toggleExplanation() {
  const shown = current;
  const button = $("explain");
  if ($("preview").dataset.view === "heat") {
    showView("painting");
    return;
  }
  if (!shown.heat) {
    button.disabled = true;
    button.textContent = "Looking…";
    $("explain-error").hidden = true;
    let failure = null;
    try {
      const form = new FormData();
      form.append("file", shown.file, shown.file.name);
      const artist = encodeURIComponent(shown.prediction.top_k[0].artist);
      const response = await callService(`/v1/explain?artist=${artist}`, { method: "POST", body: form });
      if (response.status === 401) askForKey("The service refused that key.");
      if (response.ok) {
        const heat = URL.createObjectURL(await response.blob());
        if (current === shown) shown.heat = heat;
        else URL.revokeObjectURL(heat);
      } else {
        failure = await errorMessage(response);
      }
    } catch (err) {
      failure = `cannot reach the service: ${err.message}`;
    }
    if (current !== shown) return;
    button.disabled = false;
    if (failure) {
      button.textContent = "Where did it look?";
      $("explain-error").textContent = failure; // the prediction stays on show
      $("explain-error").hidden = false;
      return;
    }
  }
  showView("heat");
}

function forget(painting) {
  URL.revokeObjectURL(painting.picture);
  if (painting.heat) URL.revokeObjectURL(painting.heat);
}

async function identify(file) {
  if (current) forget(current);
  const shown = { file, picture: URL.createObjectURL(file), heat: null, prediction: null };
  current = shown;
  const preview = $("preview");
  $("nopreview").hidden = true;
  $("view-note").hidden = true;
  preview.hidden = false;
  showView("painting");
  $("prompt").hidden = true;
  $("again").hidden = false;
  $("status").textContent = `Looking at ${file.name}…`;
  $("answer").hidden = true;
  $("error").hidden = true;
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    // Every artist's bar: the service lists no more than the model knows.
    const response = await callService(`/v1/predict?top_k=${classes.length || 1000}`, { method: "POST", body: form });
    if (response.status === 401) askForKey("The service refused that key.");
    const failure = response.ok ? null : await errorMessage(response);
    const body = response.ok ? await response.json() : null;
    if (current !== shown) return;
    $("status").textContent = file.name;
    if (failure) {
      preview.hidden = true; // the browser may not be able to show it either
      $("nopreview").hidden = true;
      $("prompt").hidden = false;
      showError(failure);
      return;
    }
    shown.prediction = body.predictions[0];
    showPrediction(shown.prediction);
  } catch (err) {
    if (current !== shown) return;
    $("status").textContent = file.name;
    showError(`cannot reach the service: ${err.message}`);
  }
}

function setup() {
  const drop = $("drop");
  const preview = $("preview");
  $("explain").addEventListener("click", toggleExplanation);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("key").value.trim();
    sessionStorage.setItem("artistid-api-key", apiKey);
    loadModel();
  });
  // Browsers show few formats (TIFF, say, not at all) that the model reads; say so rather than show a blank.
  preview.addEventListener("error", () => {
    if (!current || preview.hidden || !$("prompt").hidden) return;
    preview.hidden = true;
    $("nopreview").textContent = `This browser cannot show ${current.file.name}; the model reads it all the same.`;
    $("nopreview").hidden = false;
  });
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
