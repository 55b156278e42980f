// The page: opens a device, runs a fixture, checks fixtures against transformers, shows the
// error a corrupt checkpoint gives, trains ListOps with a live chart, and fine-tunes a
// classifier on a file the user picks (the bundled tiny model and reviews.csv by default),
// with curves, an evaluation table, the trained folder to download and a text box to try it.
//
// With ?test (tools/browser-test.sh) it does all of that by itself and reports each check
// on the console ("ROFORMER-CHECK pass|fail name: detail", then "ROFORMER-RESULT pass|fail")
// and in window.roformerTest. ?steps=N sets the ListOps steps, ?train=N the training trees
// (the test trains on two batches' worth, so that a few steps must lower the loss);
// ?epochs=N the fine-tuning epochs on the bundled file.
import init, { open, Folder } from "./pkg/roformer_web.js";

const params = new URLSearchParams(location.search);
const testing = params.has("test");
const $ = (id) => document.getElementById(id);
const results = [];

function check(name, passed, detail) {
  results.push({ name, passed, detail });
  console.log(`ROFORMER-CHECK ${passed ? "pass" : "fail"} ${name}: ${detail}`);
}

async function fetchFixture(name) {
  const [config, weights] = await Promise.all([
    fetch(`pkg/fixtures/${name}.config.json`).then((r) => r.text()),
    fetch(`pkg/fixtures/${name}.safetensors`).then((r) => r.arrayBuffer()),
  ]);
  return [config, new Uint8Array(weights)];
}

const fmt = (x) => (x === null ? "non-finite" : x.toExponential(2));

async function showInference(lab, name) {
  const [config, weights] = await fetchFixture(name);
  const out = JSON.parse(await lab.infer(config, weights));
  const rows = out.outputs
    .map((o) => `<tr><td>row ${o.row}</td><td>[${o.shape}]</td><td>argmax ${o.argmax.join(" ")}</td>` +
      `<td>${o.first.map((v) => v.toFixed(4)).join(" ")}…</td></tr>`)
    .join("");
  $("infer").innerHTML = `<div>${out.head}, ${out.rows} sequences:</div><table>${rows}</table>`;
  return out;
}

async function verifyAll(lab) {
  const names = await fetch("pkg/fixtures/fixtures.json").then((r) => r.json());
  $("checks").innerHTML = "<tr><th>fixture</th><th>checks</th><th>worst relative L2</th><th></th></tr>";
  let allPassed = true;
  for (const [i, name] of names.entries()) {
    $("verify-status").textContent = `${i + 1} / ${names.length}: ${name}`;
    const [config, weights] = await fetchFixture(name);
    let report;
    try {
      report = JSON.parse(await lab.verify(config, weights));
    } catch (e) {
      report = { passed: false, checks: [], failures: [String(e)], worst: null };
    }
    const grads = report.checks.filter((c) => c.name.startsWith("grad.")).length;
    const adamw = report.checks.some((c) => c.name === "train.adamw_losses");
    const detail = `${report.checks.length} checks (${grads} gradients${adamw ? ", 10 AdamW steps" : ""}), ` +
      `worst ${fmt(report.worst)}` + (report.passed ? "" : `; over ${report.tolerance}: ${report.failures.join(", ")}`);
    check(`fixture ${name}`, report.passed, detail);
    allPassed &&= report.passed;
    $("checks").insertAdjacentHTML("beforeend",
      `<tr><td>${name}</td><td>${report.checks.length} (${grads} grads)</td><td>${fmt(report.worst)}</td>` +
      `<td class="${report.passed ? "ok" : "bad"}">${report.passed ? "pass" : "FAIL"}</td></tr>`);
  }
  $("verify-status").textContent = allPassed
    ? `all ${names.length} fixtures within 1e-4 of transformers` : "some fixtures failed";
  return allPassed;
}

async function corruptCheckpoint(lab) {
  const [config] = await fetchFixture("roformer_tiny_cls");
  const bytes = new Uint8Array(await fetch("pkg/fixtures/corrupt.safetensors").then((r) => r.arrayBuffer()));
  try {
    await lab.verify(config, bytes);
    $("bad").innerHTML = `<div class="bad">the corrupt checkpoint was accepted</div>`;
    return null;
  } catch (e) {
    const message = String(e);
    $("bad").innerHTML = `<div class="error"></div>`;
    $("bad").firstChild.textContent = message;
    return message;
  }
}

// Loss (left axis) and training/validation accuracy (right axis, 0-100%) against the step.
function drawChart(steps, totalSteps, evals, canvas = "chart", evalName = "validation") {
  const c = $(canvas), g = c.getContext("2d");
  const [w, h, left, right, top, bottom] = [c.width, c.height, 50, 75, 10, 30];
  g.clearRect(0, 0, w, h);
  g.font = "12px sans-serif";
  const maxLoss = Math.max(2.5, ...steps.map((s) => s.loss));
  const x = (step) => left + (step / Math.max(totalSteps, 1)) * (w - left - right);
  const yLoss = (l) => top + (1 - l / maxLoss) * (h - top - bottom);
  const yAcc = (a) => top + (1 - a) * (h - top - bottom);
  g.strokeStyle = "#999";
  g.strokeRect(left, top, w - left - right, h - top - bottom);
  g.fillStyle = "#333";
  g.fillText("loss", 8, top + 10);
  g.fillText(maxLoss.toFixed(1), 8, top + 24);
  g.fillText("0", 30, h - bottom);
  g.fillText("accuracy", w - right + 4, top + 10);
  g.fillText("100%", w - right + 4, top + 24);
  g.fillText(`step ${totalSteps}`, w - right - 50, h - 10);
  const line = (points, color) => {
    g.strokeStyle = color;
    g.beginPath();
    points.forEach(([px, py], i) => (i ? g.lineTo(px, py) : g.moveTo(px, py)));
    g.stroke();
  };
  line(steps.map((s) => [x(s.step), yLoss(s.loss)]), "#1f5fbf");
  line(steps.filter((s) => s.accuracy !== null).map((s) => [x(s.step), yAcc(s.accuracy)]), "#e08a1e");
  g.fillStyle = "#11772d";
  for (const e of evals) {
    g.beginPath();
    g.arc(x(e.step), yAcc(e.accuracy), 4, 0, 2 * Math.PI);
    g.fill();
  }
  g.fillStyle = "#1f5fbf"; g.fillText("training loss", left + 8, h - 10);
  g.fillStyle = "#e08a1e"; g.fillText("training accuracy", left + 100, h - 10);
  g.fillStyle = "#11772d"; g.fillText(`● ${evalName} accuracy`, left + 220, h - 10);
}

async function train(lab, steps, options = {}) {
  const records = [], evals = [];
  $("train-progress").max = steps;
  options = { steps, eval_every: Math.max(10, Math.floor(steps / 4)), ...options };
  const summary = JSON.parse(await lab.train_listops(JSON.stringify(options), (text) => {
    const event = JSON.parse(text);
    if (event.kind === "step") {
      records.push(event.record);
      const r = event.record;
      $("train-progress").value = r.step;
      $("train-status").textContent = `step ${r.step}/${steps}: loss ${r.loss.toFixed(3)}, ` +
        `accuracy ${(100 * r.accuracy).toFixed(1)}%, ${Math.round(r.tokens_per_s)} tokens/s`;
    } else {
      evals.push(event.record);
    }
    drawChart(records, steps, evals);
  }));
  $("train-summary").textContent = `${summary.steps} steps in ${summary.seconds.toFixed(1)} s, ` +
    `${summary.parameters} parameters; loss ${summary.first_loss.toFixed(3)} → ${summary.last_loss.toFixed(3)}; ` +
    `test accuracy ${(100 * summary.test.accuracy).toFixed(1)}% (majority class ${(100 * summary.majority.accuracy).toFixed(1)}%)`;
  return summary;
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const bytesOf = async (url) => new Uint8Array(await fetch(url).then((r) => {
  if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
  return r.arrayBuffer();
}));

// The bundled model folder (tests/fixtures/trainer/text_classification/initial, copied by
// build.sh) and training file.
async function bundledModel() {
  const names = await fetch("pkg/tiny-classifier/files.json").then((r) => r.json());
  const folder = new Folder("tiny-classifier");
  for (const name of names) folder.add(name, await bytesOf(`pkg/tiny-classifier/${name}`));
  return folder;
}

async function bundledData() {
  return { name: "reviews.csv", bytes: await bytesOf("data/reviews.csv") };
}

// A folder the user picked (<input webkitdirectory>): the files directly in it (not those of
// its subfolders, such as a training run's checkpoint-N), named after the folder.
async function pickedModel(files) {
  const folder = new Folder(files[0].webkitRelativePath.split("/")[0] || "model");
  for (const f of files) {
    if (f.webkitRelativePath.split("/").length <= 2) folder.add(f.name, new Uint8Array(await f.arrayBuffer()));
  }
  return folder;
}

const pickedFile = async (input) => input.files.length
  ? { name: input.files[0].name, bytes: new Uint8Array(await input.files[0].arrayBuffer()) } : null;

function showError(id, message) {
  $(id).innerHTML = `<div class="error"></div>`;
  $(id).firstChild.textContent = message;
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;

// Fine-tunes `model` (a Folder) on `data` ({name, bytes}), evaluating `evalData` (or the
// training file) before training and after every epoch; resolves to the FineTuned and the
// run's summary. A bad file rejects with the library's message (file and line), shown here.
async function fineTune(lab, model, data, evalData, options) {
  const records = [], evals = [];
  let total = 1, evalName = "evaluation";
  $("ft-error").innerHTML = "";
  $("ft-summary").textContent = "";
  $("ft-download").disabled = $("ft-try-button").disabled = true;
  $("ft-evals").innerHTML = "";
  const metrics = ["eval_loss", "eval_accuracy", "eval_f1"];
  const onEvent = (text) => {
    const event = JSON.parse(text);
    if (event.kind === "start") {
      total = event.steps;
      $("ft-progress").max = total;
      evalName = `${event.eval.source} (${event.eval.examples} examples)`;
      $("ft-status").textContent = `${event.examples} examples, labels ${event.labels.join(", ")}` +
        (event.new_head ? " (a new classifier head)" : "") + `: ${total} updates`;
      $("ft-evals").innerHTML = `<tr><th>step</th><th>epoch</th>${metrics.map((m) => `<th>${m}</th>`).join("")}</tr>`;
    } else if (event.kind === "step") {
      const r = event.record;
      records.push(r);
      $("ft-progress").value = r.step;
      $("ft-status").textContent = `update ${r.step}/${total}, epoch ${r.epoch.toFixed(2)}: loss ${r.loss.toFixed(3)}, ` +
        `batch accuracy ${pct(r.accuracy)}, ${Math.round(r.tokens_per_s)} tokens/s`;
    } else {
      const e = event.record;
      evals.push({ step: e.step, accuracy: e.eval_accuracy });
      $("ft-evals").insertAdjacentHTML("beforeend", `<tr><td>${e.step}</td><td>${e.epoch.toFixed(2)}</td>` +
        metrics.map((m) => `<td>${e[m] === undefined ? "" : e[m].toFixed(4)}</td>`).join("") + "</tr>");
    }
    drawChart(records, total, evals, "ft-chart", "evaluation");
  };
  let tuned;
  try {
    tuned = await lab.fine_tune(JSON.stringify(options), model, data.name, data.bytes,
      evalData ? evalData.name : undefined, evalData ? evalData.bytes : undefined, onEvent);
  } catch (e) {
    showError("ft-error", String(e));
    $("ft-status").textContent = "failed";
    throw e;
  }
  const summary = JSON.parse(tuned.summary());
  const last = summary.evals[summary.evals.length - 1];
  $("ft-summary").textContent = `${summary.steps} updates (${summary.epochs} epochs of ${summary.examples} examples) ` +
    `in ${summary.seconds.toFixed(1)} s; loss ${summary.first_loss.toFixed(3)} → ${summary.last_loss.toFixed(3)}; ` +
    `accuracy on ${evalName} ${pct(summary.evals[0].eval_accuracy)} → ${pct(last.eval_accuracy)} ` +
    `(majority class "${summary.majority.label}": ${pct(summary.majority.accuracy)})`;
  $("ft-files").innerHTML = "";
  for (const f of summary.files) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([tuned.file(f.name)]));
    a.download = f.name;
    a.textContent = `${f.name} (${(f.bytes / 1024).toFixed(0)} KiB)`;
    $("ft-files").append(a, " ");
  }
  $("ft-download").onclick = () => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([tuned.zip("roformer-finetuned")], { type: "application/zip" }));
    a.download = "roformer-finetuned.zip";
    a.click();
  };
  $("ft-try-button").onclick = async () => {
    try {
      const [out] = JSON.parse(await tuned.classify([$("ft-try").value]));
      $("ft-try-out").textContent = `${out.label} (${pct(Math.max(...out.probabilities))})`;
    } catch (e) {
      $("ft-try-out").textContent = String(e);
    }
  };
  $("ft-download").disabled = $("ft-try-button").disabled = false;
  return { tuned, summary };
}

// The bundled file's rows (its quoted texts hold commas, never quotes).
const csvRows = (text) => text.trim().split("\n").slice(1).map((line) => {
  const m = line.match(/^"(.*)",([^,]*)$/) || line.match(/^(.*),([^,]*)$/);
  return { text: m[1], label: m[2] };
});

async function testFineTuning(lab) {
  const [model, data] = await Promise.all([bundledModel(), bundledData()]);
  // A ragged row: the page shows the library's error, naming file and line (first: the
  // successful run below stays on the page).
  const bad = new TextEncoder().encode("text,label\ngood food,pos\nbroken, row,pos\n");
  let message = null;
  try {
    await fineTune(lab, model, { name: "bad.csv", bytes: bad }, null, { epochs: 1 });
  } catch (e) {
    message = String(e);
  }
  check("bad training file", message !== null && /bad\.csv:3/.test(message) && $("ft-error").textContent === message,
    message === null ? "accepted" : `rejected in the page: ${message}`);

  const epochs = Number(params.get("epochs") || 12);
  const started = performance.now();
  const { tuned, summary } = await fineTune(lab, model, data, null,
    { epochs, learning_rate: 3e-3, batch: 8, seed: 42 });
  const [before, after] = [summary.evals[0], summary.evals[summary.evals.length - 1]];
  const k = Math.min(6, Math.floor(summary.losses.length / 2));
  const [first, last] = [mean(summary.losses.slice(0, k)), mean(summary.losses.slice(-k))];
  check("fine-tuning", last < first - 0.1 && after.eval_accuracy >= summary.majority.accuracy + 0.2 &&
    after.eval_accuracy > before.eval_accuracy,
    `${summary.steps} updates (${epochs} epochs of ${summary.examples} rows of reviews.csv) in ` +
    `${((performance.now() - started) / 1000).toFixed(1)} s: mean loss of the first ${k} ${first.toFixed(3)}, of the last ${k} ` +
    `${last.toFixed(3)}; accuracy on the file ${pct(before.eval_accuracy)} → ${pct(after.eval_accuracy)} ` +
    `(majority class ${pct(summary.majority.accuracy)}; the check asks for 20 points above it)`);

  // The trained folder, as the download holds it, loaded back to classify the file's texts.
  const names = tuned.names();
  const config = JSON.parse(new TextDecoder().decode(tuned.file("config.json")));
  const label2id = JSON.stringify(config.label2id);
  const zip = tuned.zip("roformer-finetuned");
  const sizes = summary.files.reduce((a, f) => a + f.bytes, 0);
  const rows = csvRows(new TextDecoder().decode(data.bytes));
  const predicted = JSON.parse(await tuned.classify(rows.map((r) => r.text)));
  const reloaded = predicted.filter((p, i) => p.label === rows[i].label).length / rows.length;
  const wanted = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
  check("trained folder", wanted.every((n) => names.includes(n)) &&
    label2id === JSON.stringify({ neg: 0, neu: 1, pos: 2 }) && config.architectures[0] === "RoFormerForSequenceClassification" &&
    zip[0] === 0x50 && zip[1] === 0x4b && zip.length > sizes &&
    Math.abs(reloaded - after.eval_accuracy) <= 1 / rows.length + 1e-9,
    `${names.join(", ")}; label2id ${label2id}; zip of ${zip.length} bytes; loaded back from its files, ` +
    `the model classifies ${pct(reloaded)} of the file right (the trainer's evaluation: ${pct(after.eval_accuracy)})`);

  return summary;
}

async function runTests(lab) {
  const adapter = JSON.parse(lab.adapter());
  check("adapter", adapter.backend === "BrowserWebGpu",
    `${adapter.name || "unnamed"} (${adapter.backend}), subgroups ${JSON.stringify(adapter.subgroup_sizes)}, f16 ${adapter.shader_f16}`);
  const out = await showInference(lab, "roformer_tiny_cls");
  check("inference", out.outputs.length === out.rows && out.outputs.every((o) => o.first.every(Number.isFinite)),
    `${out.head}: ${out.rows} rows, argmax ${out.outputs.map((o) => o.argmax[0]).join(" ")}`);
  await verifyAll(lab);
  const message = await corruptCheckpoint(lab);
  check("corrupt checkpoint", message !== null && /safetensors|checkpoint|header/i.test(message),
    message === null ? "accepted" : `rejected: ${message}`);
  const steps = Number(params.get("steps") || 20);
  const summary = await train(lab, steps, { train: Number(params.get("train") || 64) });
  const [first, last] = [mean(summary.losses.slice(0, 5)), mean(summary.losses.slice(-5))];
  check("training", summary.steps === steps && last < first - 0.05,
    `${steps} ListOps steps on ${summary.train_examples} trees in ${summary.seconds.toFixed(1)} s: mean loss of the first 5 ${first.toFixed(3)}, ` +
    `of the last 5 ${last.toFixed(3)}`);
  await testFineTuning(lab);
}

async function main() {
  await init();
  let lab;
  try {
    lab = await open();
  } catch (e) {
    $("adapter").textContent = `no WebGPU device: ${e}`;
    check("adapter", false, String(e));
    return;
  }
  $("adapter").textContent = JSON.stringify(JSON.parse(lab.adapter()), null, 1);
  if (testing) {
    await runTests(lab);
    return;
  }
  for (const id of ["verify-button", "bad-button", "train-button", "ft-button"]) $(id).disabled = false;
  $("verify-button").onclick = () => verifyAll(lab);
  $("bad-button").onclick = () => corruptCheckpoint(lab);
  $("train-button").onclick = () => train(lab, Number($("train-steps").value)).catch((e) => {
    $("train-status").textContent = String(e);
  });
  $("ft-model").onchange = () => {
    const files = $("ft-model").files;
    $("ft-model-name").textContent = files.length ? `${files[0].webkitRelativePath.split("/")[0]} (${files.length} files)` : "";
  };
  $("ft-button").onclick = async () => {
    $("ft-button").disabled = true;
    try {
      const model = $("ft-model").files.length ? await pickedModel($("ft-model").files) : await bundledModel();
      const data = (await pickedFile($("ft-data"))) || (await bundledData());
      const options = {
        text_column: $("ft-text").value, text_pair_column: $("ft-pair").value, label_column: $("ft-label").value,
        epochs: Number($("ft-epochs").value), learning_rate: Number($("ft-lr").value),
        batch: Number($("ft-batch").value), new_head: $("ft-new-head").checked,
      };
      await fineTune(lab, model, data, await pickedFile($("ft-eval")), options);
    } catch (e) {
      if (!$("ft-error").innerHTML) showError("ft-error", String(e));
    } finally {
      $("ft-button").disabled = false;
    }
  };
  await showInference(lab, "roformer_tiny_cls").catch((e) => ($("infer").textContent = String(e)));
}

main()
  .catch((e) => check("page", false, `uncaught: ${e && e.stack ? e.stack : e}`))
  .finally(() => {
    if (!testing) return;
    const passed = results.length > 0 && results.every((r) => r.passed);
    window.roformerTest = { done: true, passed, results };
    console.log(`ROFORMER-RESULT ${passed ? "pass" : "fail"} (${results.filter((r) => r.passed).length}/${results.length} checks)`);
  });
