//! roformer-wgpu in a browser tab, through the browser's WebGPU: the page's side of
//! `index.html` / `app.js`. Everything here is asynchronous (a browser's thread must never
//! block): each call returns a `Promise` that resolves to a JSON string, or rejects with the
//! library's error message.
//!
//! - [`open`]: a device on the browser's adapter; [`Lab::adapter`] describes it.
//! - [`Lab::infer`]: a checkpoint (config JSON + safetensors bytes, as served beside the
//!   page) run on the inputs stored in it.
//! - [`Lab::verify`]: the same checkpoint's outputs, loss, every gradient and ten AdamW
//!   steps against the transformers reference stored with it (the crate's fixtures).
//! - [`Lab::train_listops`]: a RoFormer trained on ListOps in the tab with the library's
//!   trainer (`roformer_wgpu::train`), reporting every step and evaluation to a JS callback.
//! - [`Lab::fine_tune`]: a classifier fine-tuned on a CSV or JSON Lines file the user picked
//!   (a [`Folder`] holds the model's files), reporting as ListOps does; resolves to a
//!   [`FineTuned`]: the trained folder's files (one by one, or as a zip) and a classifier to
//!   try them on.
//! - [`Lab::race_model`]: a checkpoint ready for `tools/browser-race.sh`, which times
//!   [`RaceModel::run`] against transformers.js in the same page.

use std::rc::Rc;

use js_sys::{Float32Array, Function, Promise};
use roformer_lab::listops::ListOpsConfig;
use roformer_lab::lra::{self, ModelSize};
use roformer_lab::verify::{batch_from, stored_request, verify_tensors};
use roformer_wgpu::io::{parse_safetensors, HostTensors};
use roformer_wgpu::model::{
    AttentionKind, Encoder, EncoderOptions, Head, Request, RoFormerConfig, Sequence, Want,
};
use roformer_wgpu::train::{model_for_async, Task, Trainer, TrainingArguments};
use roformer_wgpu::{Context, ContextOptions};
use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

mod fine_tune;
mod zip;

pub use fine_tune::{FineTuneOptions, FineTuned, Folder};

/// The fixtures' tolerance, as in the native tests: relative L2 error below 1e-4.
pub const TOLERANCE: f64 = 1e-4;

/// A panic reaches the console as its message, not as "unreachable executed".
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("roformer-web panicked: {info}").into());
    }));
}

/// A device on the browser's WebGPU adapter.
#[wasm_bindgen]
pub struct Lab {
    ctx: Rc<Context>,
}

/// Opens a device on the adapter the browser offers.
#[wasm_bindgen]
pub async fn open() -> Result<Lab, JsError> {
    let ctx = Context::new_async(ContextOptions::default())
        .await
        .map_err(to_js)?;
    Ok(Lab { ctx: Rc::new(ctx) })
}

#[wasm_bindgen]
impl Lab {
    /// The adapter as JSON: name, backend, device type, driver, subgroup sizes, whether it
    /// has f16 and timestamp queries, and the limits that size kernels.
    pub fn adapter(&self) -> String {
        let c = self.ctx.capabilities();
        json!({
            "name": c.adapter_name,
            "backend": format!("{:?}", c.backend),
            "device_type": format!("{:?}", c.device_type),
            "driver": c.driver,
            "subgroup_sizes": c.subgroup_sizes,
            "shader_f16": c.shader_f16,
            "timestamp_query": c.timestamp_query,
            "max_storage_binding": c.max_storage_binding,
            "max_workgroup_storage": c.max_workgroup_storage,
            "max_invocations_per_workgroup": c.max_invocations_per_workgroup,
        })
        .to_string()
    }

    /// Runs a checkpoint (`config` JSON text, `weights` safetensors bytes) on the inputs
    /// stored in it; resolves to JSON: the head, each row's output shape, its first values
    /// and its argmax along the last dimension.
    pub fn infer(&self, config: String, weights: Vec<u8>) -> Promise {
        let ctx = self.ctx.clone();
        promise(async move {
            // The inputs stored beside the weights.
            let (_, tensors) = checkpoint(&config, &weights)?;
            let (rows, ..) = batch_from(&tensors)?;
            let options = EncoderOptions {
                max_batch: rows,
                ..EncoderOptions::default()
            };
            let encoder = Encoder::from_bytes(&ctx, &config, &weights, options)?;
            let head = encoder.head();
            let want = if head == Head::Encoder {
                Want::last_hidden_state()
            } else {
                Want::logits()
            };
            let request = stored_request(&tensors, want)?;
            let results = encoder.run(&ctx, &request)?.await?;
            let mut outputs = Vec::new();
            for r in 0..results.len() {
                let a = match head {
                    Head::Encoder => results.last_hidden_state(r)?,
                    Head::QuestionAnswering | Head::MultipleChoice => break,
                    _ => results.logits(r)?,
                };
                let last = *a.shape.last().unwrap_or(&1);
                let argmax: Vec<usize> = a.data.chunks(last.max(1)).map(argmax).collect();
                outputs.push(json!({
                    "row": r,
                    "shape": a.shape,
                    "first": &a.data[..a.data.len().min(8)],
                    "argmax": argmax,
                }));
            }
            Ok(json!({ "head": head.architecture(), "rows": rows, "outputs": outputs }))
        })
    }

    /// Checks a fixture (`config` JSON text, `weights` safetensors bytes holding the
    /// transformers reference) as `cargo run --example verify` does; resolves to JSON: every
    /// check with its relative error, those at or over [`TOLERANCE`], and `passed`.
    pub fn verify(&self, config: String, weights: Vec<u8>) -> Promise {
        let ctx = self.ctx.clone();
        promise(async move {
            let (cfg, tensors) = checkpoint(&config, &weights)?;
            let report = verify_tensors(&ctx, cfg, &tensors).await?;
            let failures: Vec<&str> = report
                .failures(TOLERANCE)
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let checks: Vec<_> = report
                .checks
                .iter()
                .map(|c| json!({ "name": c.name, "shape": c.shape, "error": finite_or_null(c.error) }))
                .collect();
            let worst = report.checks.iter().map(|c| c.error).fold(0.0, f64::max);
            Ok(json!({
                "tolerance": TOLERANCE,
                "checks": checks,
                "failures": failures,
                "worst": finite_or_null(worst),
                "passed": !report.checks.is_empty() && failures.is_empty(),
            }))
        })
    }

    /// Trains a RoFormer classifier on freshly generated ListOps (`options`: JSON, see
    /// [`TrainOptions`]) with the library's trainer, calling `on_progress` with a JSON string
    /// after every step (`{"kind": "step", ...}`) and evaluation (`{"kind": "eval", ...}`);
    /// resolves to the run's summary.
    pub fn train_listops(&self, options: String, on_progress: Function) -> Promise {
        let ctx = self.ctx.clone();
        promise(async move {
            let options: TrainOptions =
                serde_json::from_str(&options).map_err(|e| format!("training options: {e}"))?;
            let data = lra::listops(options.listops(), options.seed)?;
            let (majority_label, majority) = data.majority;
            let args = options.arguments();
            let task = Task::TextClassification;
            let config = lra::model_config(&data, &options.model_size(), args.pad_to_multiple_of)?;
            let (model, _) = model_for_async(&ctx, config, task, &data.labels, &args, None).await?;
            let parameters: usize = model.params().specs().iter().map(|s| s.numel()).sum();
            let report = |value: serde_json::Value| {
                // A callback that throws is the page's problem, not the run's.
                let _ = on_progress.call1(&JsValue::NULL, &value.to_string().into());
            };
            let (train, valid, test) = (data.train, data.valid, data.test);
            let labels = data.labels;
            let mut trainer = Trainer::new(
                &ctx,
                &model,
                task,
                args,
                train,
                Some(valid),
                &labels,
                "",
                vec![],
            )?;
            let (steps, mut losses, mut evals) = (options.steps, Vec::new(), Vec::new());
            while trainer.state().global_step < steps {
                let tokens_per_s = trainer.step().await?;
                let log = trainer.log();
                let (step, loss) = (log.step, log.get("loss").unwrap_or(f64::NAN));
                losses.push(loss);
                report(json!({ "kind": "step", "steps": steps, "record": {
                    "step": step,
                    "loss": loss,
                    "accuracy": trainer.last_accuracy(),
                    "learning_rate": log.get("learning_rate"),
                    "tokens_per_s": tokens_per_s,
                }}));
                if step == steps || (options.eval_every > 0 && step % options.eval_every == 0) {
                    let e = trainer.evaluate().await?;
                    let record = json!({
                        "step": e.step,
                        "loss": e.get("eval_loss"),
                        "accuracy": e.get("eval_accuracy"),
                    });
                    report(json!({ "kind": "eval", "record": record }));
                    evals.push(record);
                }
            }
            let test = trainer.evaluate_on(&test, "test").await?;
            Ok(json!({
                "steps": trainer.state().global_step,
                "parameters": parameters,
                "train_examples": options.train,
                "seconds": trainer.state().seconds,
                "first_loss": losses.first(),
                "last_loss": losses.last(),
                "losses": losses,
                "valid": evals,
                "test": { "loss": test.get("test_loss"), "accuracy": test.get("test_accuracy") },
                "majority": { "label": majority_label, "accuracy": majority },
            }))
        })
    }

    /// Fine-tunes a classifier (see [`fine_tune`]): the model folder's files in `model`
    /// (`config.json`, `model.safetensors`, the tokenizer's), the training data as the bytes
    /// of the file `data_name` (`.csv`, `.tsv` or `.jsonl`), optional evaluation data likewise
    /// (else the training data is evaluated), `options` as JSON ([`FineTuneOptions`]).
    /// Calls `on_progress` with a JSON string at the start (`{"kind": "start", ...}`), after
    /// every update (`"step"`) and every evaluation (`"eval"`: before training, after each
    /// epoch); resolves to a [`FineTuned`], or rejects with an error naming the file and line
    /// at fault.
    #[allow(clippy::too_many_arguments)]
    pub fn fine_tune(
        &self,
        options: String,
        model: &Folder,
        data_name: String,
        data: Vec<u8>,
        eval_name: Option<String>,
        eval_data: Option<Vec<u8>>,
        on_progress: Function,
    ) -> Promise {
        let ctx = self.ctx.clone();
        let model = model.clone();
        future_to_promise(async move {
            let eval = eval_name.zip(eval_data);
            let report = |value: serde_json::Value| {
                let _ = on_progress.call1(&JsValue::NULL, &value.to_string().into());
            };
            fine_tune::run(ctx, &options, model, (data_name, data), eval, report)
                .await
                .map(JsValue::from)
                .map_err(|e| JsValue::from_str(&e.to_string()))
        })
    }

    /// Loads a checkpoint with a head that has logits (`config` JSON text, `weights`
    /// safetensors bytes, as `save_pretrained` writes them) for requests of up to
    /// `max_batch` sequences.
    pub fn race_model(
        &self,
        config: String,
        weights: Vec<u8>,
        max_batch: usize,
    ) -> Result<RaceModel, JsError> {
        let options = EncoderOptions {
            max_batch,
            ..EncoderOptions::default()
        };
        let encoder = Encoder::from_bytes(&self.ctx, &config, &weights, options).map_err(to_js)?;
        if encoder.head() == Head::Encoder {
            return Err(JsError::new("the race needs a model with a head (logits)"));
        }
        Ok(RaceModel {
            ctx: self.ctx.clone(),
            encoder: Rc::new(encoder),
        })
    }
}

/// A checkpoint loaded for the browser race (`tools/browser-race.sh`): the page times
/// [`RaceModel::run`] against transformers.js on the same inputs.
#[wasm_bindgen]
pub struct RaceModel {
    ctx: Rc<Context>,
    encoder: Rc<Encoder>,
}

#[wasm_bindgen]
impl RaceModel {
    /// Runs one request of `batch` sequences of equal length, given row-major
    /// `[batch, length]` input ids, attention mask and token types, and resolves to every
    /// logit of every sequence, `[batch, length, classes]` row-major, in one `Float32Array`
    /// (what transformers.js hands back). The page times this call, from the submission to
    /// the logits in JS.
    pub fn run(
        &self,
        input_ids: Vec<u32>,
        attention_mask: Vec<u32>,
        token_type_ids: Vec<u32>,
        batch: usize,
    ) -> Promise {
        let ctx = self.ctx.clone();
        let encoder = self.encoder.clone();
        future_to_promise(async move {
            let fail = |e: roformer_wgpu::Error| JsValue::from_str(&e.to_string());
            let n = input_ids.len();
            if batch == 0
                || !n.is_multiple_of(batch)
                || attention_mask.len() != n
                || token_type_ids.len() != n
            {
                return Err(JsValue::from_str(&format!(
                    "ids, mask and types need one length, a multiple of the batch ({batch}): \
                     got {n}, {}, {}",
                    attention_mask.len(),
                    token_type_ids.len()
                )));
            }
            let length = n / batch;
            let rows = |v: &[u32], b: usize| v[b * length..(b + 1) * length].to_vec();
            let sequences = (0..batch)
                .map(|b| Sequence {
                    input_ids: rows(&input_ids, b),
                    token_type_ids: rows(&token_type_ids, b),
                    attention_mask: rows(&attention_mask, b),
                })
                .collect();
            let request = Request::new(sequences, Want::logits());
            let results = encoder
                .run(&ctx, &request)
                .map_err(fail)?
                .await
                .map_err(fail)?;
            let logits = (0..batch)
                .map(|b| results.logits(b).map(|a| a.data.as_slice()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            let out = Float32Array::new_with_length(logits.iter().map(|l| l.len() as u32).sum());
            let mut at = 0;
            for data in logits {
                out.subarray(at, at + data.len() as u32).copy_from(data);
                at += data.len() as u32;
            }
            Ok(out.into())
        })
    }
}

/// The page's ListOps training options; anything left out takes the small default below (a
/// 2-layer, 64-wide model on short trees: about a second a step on a software adapter).
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Training steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Validation every this many steps (and at the end).
    pub eval_every: u64,
    /// Seed of the data and the initial weights.
    pub seed: u64,
    /// Encoder layers.
    pub layers: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Training trees generated.
    pub train: usize,
    /// Longest tree, in tokens.
    pub max_length: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 200,
            batch: 32,
            eval_every: 50,
            seed: 1,
            layers: 2,
            hidden: 64,
            heads: 4,
            lr: 2e-3,
            train: 4000,
            max_length: 40,
        }
    }
}

impl TrainOptions {
    /// The trees: the `train` example's `cpu` preset with these sizes.
    fn listops(&self) -> ListOpsConfig {
        ListOpsConfig {
            max_depth: 4,
            max_args: 5,
            min_length: 8,
            max_length: self.max_length,
            train: self.train,
            valid: 500,
            test: 500,
        }
    }

    /// The classifier: a feed-forward width of twice the hidden width.
    fn model_size(&self) -> ModelSize {
        ModelSize {
            layers: self.layers,
            hidden: self.hidden,
            heads: self.heads,
            intermediate: 2 * self.hidden,
            attention: AttentionKind::Softmax,
            window: 0,
            global_tokens: 0,
        }
    }

    /// The training arguments: linear decay after a tenth of the steps' warm-up, clipping at
    /// 1, weight decay 0.01.
    fn arguments(&self) -> TrainingArguments {
        TrainingArguments {
            learning_rate: self.lr,
            weight_decay: 0.01,
            warmup_steps: (self.steps / 10).max(1),
            per_device_train_batch_size: self.batch,
            per_device_eval_batch_size: 100,
            max_steps: Some(self.steps),
            max_grad_norm: 1.0,
            seed: self.seed,
            logging_steps: 1,
            save_steps: 0,
            // As the `train` example: batches of similar lengths, padded to a multiple of 16.
            group_by_length: true,
            pad_to_multiple_of: 16,
            ..TrainingArguments::default()
        }
    }
}

/// A configuration and checkpoint from the bytes the page fetched.
fn checkpoint(
    config: &str,
    weights: &[u8],
) -> roformer_wgpu::Result<(RoFormerConfig, HostTensors)> {
    let cfg = RoFormerConfig::from_json(config, "config.json")?;
    let tensors = parse_safetensors("model.safetensors".as_ref(), weights)?;
    Ok((cfg, tensors))
}

/// What the calls fail with: the library's errors and the page's own (bad options).
type Failure = Box<dyn std::error::Error>;

/// A future's JSON result as a `Promise` of its text; an error rejects it with the message.
fn promise(
    future: impl std::future::Future<Output = Result<serde_json::Value, Failure>> + 'static,
) -> Promise {
    future_to_promise(async move {
        future
            .await
            .map(|v| JsValue::from_str(&v.to_string()))
            .map_err(|e| JsValue::from_str(&e.to_string()))
    })
}

fn to_js(e: roformer_wgpu::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// JSON has no infinity or NaN: those become null (and count as failures above).
fn finite_or_null(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The first largest value's index (numpy's and torch's argmax).
fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, k| if row[k] > row[b] { k } else { b })
}
