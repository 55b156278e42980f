// The page: opens a device, runs a fixture, checks fixtures against transformers, shows the
// error a corrupt checkpoint gives, and trains ListOps with a live chart.
//
// With ?test (tools/browser-test.sh) it does all of that by itself and reports each check
// on the console ("ROFORMER-CHECK pass|fail name: detail", then "ROFORMER-RESULT pass|fail")
// and in window.roformerTest. ?steps=N sets the training steps, ?train=N the training trees
// (the test trains on two batches' worth, so that a few steps must lower the loss).
import init, { open } from "./pkg/roformer_web.js";

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
function drawChart(steps, totalSteps, evals) {
  const c = $("chart"), g = c.getContext("2d");
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
  line(steps.map((s) => [x(s.step), yAcc(s.accuracy)]), "#e08a1e");
  g.fillStyle = "#11772d";
  for (const e of evals) {
    g.beginPath();
    g.arc(x(e.step), yAcc(e.accuracy), 4, 0, 2 * Math.PI);
    g.fill();
  }
  g.fillStyle = "#1f5fbf"; g.fillText("training loss", left + 8, h - 10);
  g.fillStyle = "#e08a1e"; g.fillText("training accuracy", left + 100, h - 10);
  g.fillStyle = "#11772d"; g.fillText("● validation accuracy", left + 220, h - 10);
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
  for (const id of ["verify-button", "bad-button", "train-button"]) $(id).disabled = false;
  $("verify-button").onclick = () => verifyAll(lab);
  $("bad-button").onclick = () => corruptCheckpoint(lab);
  $("train-button").onclick = () => train(lab, Number($("train-steps").value)).catch((e) => {
    $("train-status").textContent = String(e);
  });
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
