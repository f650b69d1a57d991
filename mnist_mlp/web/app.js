// The draw-a-digit page. The server does all the image work: this script sends the drawing (or a chosen
// file) as it is to POST api/predict and draws the answer. The first layer's weights, which the answers'
// most active units are drawn with, come once per load from GET api/weights. document.body's data-pending
// ("1" while an answer is due) and data-answered (answers shown so far) let tests wait for the page.
"use strict";

const INK_WIDTH = 20; // pixels of the 280-pixel pad: about MNIST's stroke width once the digit is scaled to 20×20
const DEBOUNCE_MS = 150; // ask again this long after the pen last moved
const CELL = 17; // pixels per unit in the activation grids

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const bars = document.getElementById("bars");
const digitShown = document.getElementById("digit");
const confidence = document.getElementById("confidence");
const statusLine = document.getElementById("status");

let pen = null; // the pointerId drawing now, and its last point
let last = null;
let hasInk = false;
let file = null; // a chosen or dropped file shown on the pad, classified as it is
let generation = 0; // bumped by Clear: answers to older requests are dropped
let timer = null;
let inFlight = false;
let queued = false;
let hiddenSizes = []; // from api/run, to draw empty grids before the first answer
let unitWeights = null; // from api/weights: each first-layer unit's 784 incoming weights
let shownUnits = []; // the top units of the answer shown, drawn again once the weights arrive

// ---- the pad

function clearPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
  file = null;
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [((event.clientX - box.left) * pad.width) / box.width, ((event.clientY - box.top) * pad.height) / box.height];
}

function stroke(from, to) {
  ink.strokeStyle = "#000";
  ink.lineWidth = INK_WIDTH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(...from);
  ink.lineTo(...to);
  ink.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || pen !== null) return; // the primary button, touch contact or pen tip; one at a time
  event.preventDefault();
  if (file) startOver();
  pad.setPointerCapture(event.pointerId);
  pad.dataset.pointer = event.pointerType; // "mouse", "touch" or "pen": what drew last
  pen = event.pointerId;
  last = padPoint(event);
  stroke(last, last); // a tap leaves a dot
  hasInk = true;
  schedule(DEBOUNCE_MS);
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== pen) return;
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const move of moves.length ? moves : [event]) {
    const point = padPoint(move);
    stroke(last, point);
    last = point;
  }
  schedule(DEBOUNCE_MS);
});

function penUp(event) {
  if (event.pointerId !== pen) return;
  pen = null;
  schedule(0);
}
pad.addEventListener("pointerup", penUp);
pad.addEventListener("pointercancel", penUp);

function startOver() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  queued = false;
  clearPad();
  showNothing("Draw a digit in the box.");
  setPending();
}
document.getElementById("clear").addEventListener("click", startOver);

// ---- files: chosen or dropped, classified exactly as they are (the server prepares them like a drawing)

function useFile(chosen) {
  if (!chosen) return;
  startOver();
  file = chosen;
  const url = URL.createObjectURL(chosen);
  const picture = new Image();
  picture.onload = () => {
    const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
    const [w, h] = [picture.width * scale, picture.height * scale];
    ink.imageSmoothingEnabled = scale < 1;
    ink.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  picture.onerror = () => URL.revokeObjectURL(url); // the server says what is wrong with it
  picture.src = url;
  schedule(0);
}

const chooser = document.getElementById("file");
chooser.addEventListener("change", () => {
  useFile(chooser.files[0]);
  chooser.value = ""; // choosing the same file again still classifies it
});

const dropHint = document.getElementById("drop-hint");
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropHint.hidden = false;
});
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) dropHint.hidden = true;
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dropHint.hidden = true;
  useFile(event.dataTransfer.files[0]);
});

// ---- asking the server: one request at a time, the newest drawing next

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    timer = null;
    ask();
  }, delay);
  setPending();
}

function setPending() {
  document.body.dataset.pending = timer !== null || inFlight || queued ? "1" : "0";
}

function currentImage() {
  if (file) return Promise.resolve(file);
  return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
}

async function ask() {
  if (inFlight) {
    queued = true;
    return;
  }
  if (!file && !hasInk) return;
  inFlight = true;
  setPending();
  const asked = generation;
  try {
    const body = await currentImage();
    const response = await fetch("api/predict", { method: "POST", body });
    const answer = await response.json();
    if (asked === generation) {
      if (!response.ok) showProblem(answer.error);
      else if (answer.blank) showNothing("Too little ink to read: keep drawing.");
      else showAnswer(answer);
      countAnswer();
    }
  } catch (error) {
    if (asked === generation) {
      showProblem(`No answer from the server (${error.message}): is mnist-mlp serve running?`);
      countAnswer();
    }
  } finally {
    inFlight = false;
    if (queued) {
      queued = false;
      ask();
    }
    setPending();
  }
}

// ---- drawing the answer

function countAnswer() {
  document.body.dataset.answered = String(Number(document.body.dataset.answered) + 1);
}

function showAnswer(answer) {
  digitShown.textContent = String(answer.digit);
  confidence.textContent = `${percent(answer.probability)} sure`;
  statusLine.textContent = file ? `From the file ${file.name}.` : "Keep drawing, or Clear to start again.";
  statusLine.className = "";
  drawBars(answer.probabilities, answer.digit);
  drawSeen(answer.image);
  drawLayers(answer.hidden, answer.top_units);
  drawUnits(answer.top_units);
}

function showNothing(message) {
  digitShown.textContent = "?";
  confidence.textContent = "";
  statusLine.textContent = message;
  statusLine.className = "";
  drawBars(null, null);
  drawSeen(null);
  drawLayers(null, []);
  drawUnits([]);
}

function showProblem(message) {
  showNothing(message);
  statusLine.className = "problem";
}

function percent(p) {
  return p >= 0.995 || p < 0.005 ? `${Math.round(p * 100)}%` : `${(p * 100).toFixed(1)}%`;
}

function drawBars(probabilities, best) {
  bars.replaceChildren();
  for (let digit = 0; digit < 10; digit += 1) {
    const p = probabilities ? probabilities[digit] : 0;
    const row = document.createElement("li");
    row.dataset.digit = String(digit);
    if (probabilities) row.dataset.p = String(p);
    if (digit === best) row.className = "best";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = String(digit);
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(p * 100).toFixed(2)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = probabilities ? percent(p) : "";
    row.append(label, track, value);
    bars.append(row);
  }
}

function drawSeen(pixels) {
  const canvas = document.getElementById("seen");
  const context = canvas.getContext("2d");
  const picture = context.createImageData(28, 28);
  for (let i = 0; i < 784; i += 1) {
    const grey = pixels ? pixels[i] : 0;
    picture.data.set([grey, grey, grey, 255], 4 * i);
  }
  context.putImageData(picture, 0, 0);
}

// Activations: white at 0 to deep blue at the layer's largest.
function activationColour(fraction) {
  const t = Math.sqrt(Math.min(Math.max(fraction, 0), 1)); // spread out the many small values
  const [r, g, b] = [255 - t * (255 - 8), 255 - t * (255 - 48), 255 - t * (255 - 107)];
  return `rgb(${r | 0}, ${g | 0}, ${b | 0})`;
}

function drawLayers(hidden, topUnits) {
  const holder = document.getElementById("layers");
  const sizes = hidden ? hidden.map((layer) => layer.length) : hiddenSizes;
  holder.replaceChildren();
  sizes.forEach((size, index) => {
    const values = hidden ? hidden[index] : new Array(size).fill(0);
    const columns = Math.ceil(Math.sqrt(size));
    const rows = Math.ceil(size / columns);
    const canvas = document.createElement("canvas");
    canvas.width = columns * CELL + 1;
    canvas.height = rows * CELL + 1;
    const context = canvas.getContext("2d");
    context.fillStyle = "#ccc";
    context.fillRect(0, 0, canvas.width, canvas.height);
    const top = Math.max(...values, 1e-9);
    values.forEach((value, unit) => {
      const [x, y] = [(unit % columns) * CELL + 1, Math.floor(unit / columns) * CELL + 1];
      context.fillStyle = activationColour(value / top);
      context.fillRect(x, y, CELL - 1, CELL - 1);
    });
    if (index === 0) {
      context.strokeStyle = "#e8590c";
      context.lineWidth = 2;
      for (const { unit } of topUnits) {
        const [x, y] = [(unit % columns) * CELL + 1, Math.floor(unit / columns) * CELL + 1];
        context.strokeRect(x + 1, y + 1, CELL - 3, CELL - 3);
      }
    }
    const active = values.filter((v) => v > 0).length;
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    caption.textContent = hidden
      ? `Hidden layer ${index + 1}: ${active} of ${size} units active (largest ${top.toFixed(2)})`
      : `Hidden layer ${index + 1}: ${size} units`;
    figure.append(canvas, caption);
    holder.append(figure);
  });
}

// Weights: blue (negative) through white (0) to red (positive), one scale for all units shown.
function weightColour(w, scale) {
  const t = Math.min(Math.abs(w) / scale, 1);
  return w >= 0 ? [255 - t * (255 - 178), 255 - t * (255 - 24), 255 - t * (255 - 43)]
    : [255 - t * (255 - 33), 255 - t * (255 - 102), 255 - t * (255 - 172)];
}

function drawUnits(topUnits) {
  const holder = document.getElementById("units");
  holder.replaceChildren();
  shownUnits = topUnits;
  if (topUnits.length && !unitWeights) {
    holder.textContent = "Loading the weights…";
    return;
  }
  // The scale ends at the 99th percentile of |w|: a few large weights would otherwise wash out the rest.
  const sizes = topUnits.flatMap(({ unit }) => unitWeights[unit].map(Math.abs)).sort((a, b) => a - b);
  const scale = Math.max(sizes[Math.floor(0.99 * (sizes.length - 1))] || 0, 1e-9);
  for (const { unit, activation } of topUnits) {
    const weights = unitWeights[unit];
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 28;
    canvas.className = "pixels";
    const context = canvas.getContext("2d");
    const picture = context.createImageData(28, 28);
    weights.forEach((w, i) => picture.data.set([...weightColour(w, scale), 255], 4 * i));
    context.putImageData(picture, 0, 0);
    const figure = document.createElement("figure");
    figure.dataset.unit = String(unit);
    const caption = document.createElement("figcaption");
    caption.textContent = `unit ${unit}: ${activation.toFixed(2)}`; // numbered from 0, as in the API
    figure.append(canvas, caption);
    holder.append(figure);
  }
  if (!topUnits.length) holder.textContent = "Draw a digit to see them.";
}

// ---- the run, at the top

async function showRun() {
  try {
    const run = await (await fetch("api/run")).json();
    const accuracy = run.test_accuracy === null ? "not finished: no test accuracy yet"
      : `test accuracy ${(run.test_accuracy * 100).toFixed(2)}%`;
    document.getElementById("run").textContent = `Run ${run.name}: ${accuracy}. Weights from ${run.weights}.`;
    const summary = document.getElementById("summary");
    for (const [key, value] of Object.entries(run.summary)) {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = key;
      item.append(name, ` ${value}`);
      summary.append(item);
    }
    hiddenSizes = run.summary.layers.split("-").slice(1, -1).map(Number);
    drawLayers(null, []);
  } catch (error) {
    document.getElementById("run").textContent = `Could not read the run (${error.message}).`;
  }
}

async function loadWeights() {
  try {
    unitWeights = (await (await fetch("api/weights")).json()).weights;
    drawUnits(shownUnits);
  } catch (error) {
    document.getElementById("units").textContent = `Could not read the weights (${error.message}).`;
  }
}

clearPad();
drawBars(null, null);
drawSeen(null);
drawUnits([]);
showRun();
loadWeights();
