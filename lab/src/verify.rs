//! Checks a checkpoint against reference outputs stored beside its weights, in the layout of
//! the test fixtures: `input.*` (ids, attention mask, token types, labels), `output.*`
//! (loss, logits, start/end logits, hidden states), `grad.<param>` and
//! `train.adamw_losses`. This is how a
//! converted checkpoint is shown to behave like the original; the `verify` example prints it.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use roformer_wgpu::check::rel_l2;
use roformer_wgpu::io::{HostTensor, HostTensors};
use roformer_wgpu::model::{
    detect_head, Batch, Encoder, EncoderOptions, Head, Mode, Request, RoFormer, RoFormerConfig,
    Sequence, Want,
};
use roformer_wgpu::ops::adamw::AdamWConfig;
use roformer_wgpu::optim::{LossScaling, Schedule, TrainOptions};
use roformer_wgpu::Context;
use roformer_wgpu::{Error, Result};

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Check {
    /// The reference's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Relative L2 error (for `train.adamw_losses`, the largest relative error of a step).
    pub error: f64,
}

/// Every comparison made, and what was computed (under the reference's names).
#[derive(Clone, Debug)]
pub struct Report {
    /// Every comparison.
    pub checks: Vec<Check>,
    /// What was computed, under the references' names (`--dump` writes it).
    pub computed: HostTensors,
}

impl Report {
    /// Checks over `tolerance`.
    pub fn failures(&self, tolerance: f64) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.error.is_nan() || c.error >= tolerance)
            .collect()
    }
}

fn ints(tensors: &HostTensors, name: &str) -> Result<Option<(Vec<usize>, Vec<i64>)>> {
    match tensors.get(name) {
        None => Ok(None),
        Some(t) => match t.as_i64() {
            Some(v) => Ok(Some((t.shape.clone(), v.to_vec()))),
            None => Err(Error::InvalidArgument(format!("{name} must hold integers"))),
        },
    }
}

fn to_u32(name: &str, v: &[i64]) -> Result<Vec<u32>> {
    v.iter()
        .map(|&x| {
            u32::try_from(x)
                .map_err(|_| Error::InvalidArgument(format!("{name} holds {x}, not a token index")))
        })
        .collect()
}

/// The batch stored as `input.*`: `(rows, seq, batch, choices)`, multiple-choice inputs
/// (`[examples, choices, T]`) flattened to one row per choice (`choices` 0 otherwise).
/// Labels are optional (inference-only heads have none); integer ones are class labels,
/// float ones [`Batch::float_labels`] (multi-label and regression classifiers).
pub fn batch_from(tensors: &HostTensors) -> Result<(usize, usize, Batch, usize)> {
    let (shape, ids) = ints(tensors, "input.input_ids")?
        .ok_or_else(|| Error::InvalidArgument("no input.input_ids tensor".into()))?;
    let (rows, t, choices) = match shape[..] {
        [b, t] => (b, t, 0),
        [b, c, t] => (b * c, t, c),
        _ => {
            return Err(Error::InvalidArgument(format!(
            "input.input_ids has shape {shape:?}, expected [batch, seq] or [batch, choices, seq]"
        )))
        }
    };
    let mask = ints(tensors, "input.attention_mask")?
        .map(|(_, v)| to_u32("input.attention_mask", &v))
        .transpose()?;
    let types = ints(tensors, "input.token_type_ids")?
        .map(|(_, v)| to_u32("input.token_type_ids", &v))
        .transpose()?;
    // Class labels are integers; float labels (multi-label and regression classifiers) are
    // floats, and go where the session takes them.
    let (labels, float_labels) = match tensors.get("input.labels") {
        None => (Vec::new(), Vec::new()),
        Some(t) => match t.as_i64() {
            Some(labels) => (
                labels
                    .iter()
                    .map(|&l| {
                        i32::try_from(l)
                            .map_err(|_| Error::InvalidArgument(format!("input.labels holds {l}")))
                    })
                    .collect::<Result<Vec<_>>>()?,
                Vec::new(),
            ),
            None => (Vec::new(), t.to_f32()),
        },
    };
    Ok((
        rows,
        t,
        Batch {
            input_ids: to_u32("input.input_ids", &ids)?,
            attention_mask: mask.unwrap_or_default(),
            token_type_ids: types.unwrap_or_default(),
            labels,
            float_labels,
        },
        choices,
    ))
}

/// Runs the stored inputs through the model and compares every stored output (as
/// transformers names them: `output.last_hidden_state`, `output.hidden_states.N`,
/// `output.logits`, `output.start_logits`, `output.end_logits`) and, for the heads this
/// library trains, the loss and every gradient; with `train.adamw_losses`, also that many
/// AdamW steps (lr 1e-3, weight decay 0.01, as the fixtures were made). Any head
/// transformers writes; `weights` may be a sharded checkpoint's index. Native only (it
/// reads files and waits): [`verify_tensors`] is the same check on a checkpoint in memory.
#[cfg(not(target_arch = "wasm32"))]
pub fn verify(
    ctx: &Context,
    config: impl AsRef<Path>,
    weights: impl AsRef<Path>,
) -> Result<Report> {
    let tensors = roformer_wgpu::io::read_checkpoint(weights.as_ref())?;
    let cfg = RoFormerConfig::from_file(config.as_ref())?;
    ctx.block_on(verify_tensors(ctx, cfg, &tensors))
}

/// [`verify`] on a configuration and checkpoint already in memory (in a browser, both came
/// as bytes: [`RoFormerConfig::from_json`], [`roformer_wgpu::io::parse_safetensors`]).
pub async fn verify_tensors(
    ctx: &Context,
    cfg: RoFormerConfig,
    tensors: &HostTensors,
) -> Result<Report> {
    let head = detect_head(&cfg, tensors)?;
    if head.check_trainable(&cfg).is_ok() {
        let model = RoFormer::new(ctx, cfg, head)?;
        model.load_tensors(ctx, tensors)?;
        return verify_model(ctx, &model, tensors).await;
    }
    let encoder = Encoder::new(ctx, cfg, head, options_for(tensors)?)?;
    encoder.load_tensors(ctx, tensors)?;
    let mut report = Report {
        checks: Vec::new(),
        computed: HostTensors::new(),
    };
    compare_outputs(ctx, &encoder, tensors, &mut report).await?;
    Ok(report)
}

/// The outputs alone (every hidden state and the head's output), through an inference
/// encoder storing weights and activations as `precision` (f32 or f16), against the
/// fixture's. f16 results are expected within about 1e-2 relative L2 (NOTES.md).
pub async fn verify_outputs(
    ctx: &Context,
    cfg: RoFormerConfig,
    tensors: &HostTensors,
    precision: roformer_wgpu::DType,
) -> Result<Report> {
    let head = detect_head(&cfg, tensors)?;
    let options = EncoderOptions {
        precision,
        ..options_for(tensors)?
    };
    let encoder = Encoder::new(ctx, cfg, head, options)?;
    encoder.load_tensors(ctx, tensors)?;
    let mut report = Report {
        checks: Vec::new(),
        computed: HostTensors::new(),
    };
    compare_outputs(ctx, &encoder, tensors, &mut report).await?;
    Ok(report)
}

/// [`verify_tensors`] with the model training in mixed precision
/// ([`RoFormer::use_mixed_precision`] with `scaling`): the outputs still come from f32
/// inference, while the training graph's forward pass, the loss, every gradient and the
/// AdamW steps run in f16 with f32 master weights. Expected within about 1e-2 (NOTES.md).
/// Only for the heads this library trains.
pub async fn verify_mixed(
    ctx: &Context,
    cfg: RoFormerConfig,
    tensors: &HostTensors,
    scaling: LossScaling,
) -> Result<Report> {
    let head = detect_head(&cfg, tensors)?;
    if head.check_trainable(&cfg).is_err() {
        return Err(Error::InvalidArgument(format!(
            "mixed precision is for training, and this library does not train {}: check its \
             outputs in f16 inference instead",
            head.architecture()
        )));
    }
    let mut model = RoFormer::new(ctx, cfg, head)?;
    model.load_tensors(ctx, tensors)?;
    model.use_mixed_precision(ctx, scaling)?;
    verify_model(ctx, &model, tensors).await
}

/// An encoder that takes the whole stored batch in one request.
fn options_for(tensors: &HostTensors) -> Result<EncoderOptions> {
    let (rows, ..) = batch_from(tensors)?;
    Ok(EncoderOptions {
        max_batch: rows,
        ..EncoderOptions::default()
    })
}

/// Adds one comparison (when the reference has the tensor) and what was computed.
fn compare(
    tensors: &HostTensors,
    report: &mut Report,
    name: &str,
    shape: &[usize],
    ours: Vec<f32>,
) {
    record(tensors.get(name), report, name, shape, ours);
}

/// Adds `ours`, named `name`, and its comparison with `reference` when there is one.
fn record(
    reference: Option<&HostTensor>,
    report: &mut Report,
    name: &str,
    shape: &[usize],
    ours: Vec<f32>,
) {
    if let Some(reference) = reference {
        let error = if reference.numel() == ours.len() {
            rel_l2(&ours, &reference.to_f32())
        } else {
            f64::INFINITY
        };
        report.checks.push(Check {
            name: name.to_string(),
            shape: reference.shape.clone(),
            error,
        });
    }
    report
        .computed
        .insert(name.to_string(), HostTensor::f32(shape, ours));
}

/// The stored batch as an inference request for `want`: one sequence per stored row, with
/// its token types and attention mask (multiple choice: the stored choices per example).
pub fn stored_request(tensors: &HostTensors, want: Want) -> Result<Request> {
    let (rows, t, batch, choices) = batch_from(tensors)?;
    let row = |v: &[u32], r: usize| {
        if v.is_empty() {
            Vec::new()
        } else {
            v[r * t..(r + 1) * t].to_vec()
        }
    };
    let sequences = (0..rows)
        .map(|r| Sequence {
            input_ids: row(&batch.input_ids, r),
            token_type_ids: row(&batch.token_type_ids, r),
            attention_mask: row(&batch.attention_mask, r),
        })
        .collect();
    Ok(Request {
        sequences,
        choices,
        want,
        logit_positions: None,
    })
}

/// The inference outputs, through an [`Encoder`] on the stored batch.
async fn compare_outputs(
    ctx: &Context,
    encoder: &Encoder,
    tensors: &HostTensors,
    report: &mut Report,
) -> Result<()> {
    let cfg = encoder.config();
    let head = encoder.head();
    let want = Want {
        hidden_states: true,
        logits: head != Head::Encoder,
        ..Want::default()
    };
    let request = stored_request(tensors, want)?;
    let (rows, choices) = (request.sequences.len(), request.choices);
    let t = request.sequences.first().map_or(0, |s| s.input_ids.len());
    let results = encoder.run(ctx, &request)?.await?;
    let concat = |f: &dyn Fn(usize) -> Result<Vec<f32>>| -> Result<Vec<f32>> {
        let mut all = Vec::new();
        for r in 0..rows {
            all.extend(f(r)?);
        }
        Ok(all)
    };
    let layers = cfg.num_hidden_layers;
    let hidden_shape = [rows, t, cfg.hidden_size];
    for i in 0..=layers {
        let h = concat(&|r| Ok(results.hidden_states(r)?[i].data.clone()))?;
        if i == layers {
            compare(
                tensors,
                report,
                "output.last_hidden_state",
                &hidden_shape,
                h.clone(),
            );
        }
        compare(
            tensors,
            report,
            &format!("output.hidden_states.{i}"),
            &hidden_shape,
            h,
        );
    }
    match head {
        Head::Encoder => {}
        Head::QuestionAnswering => {
            let start = concat(&|r| results.start_logits(r))?;
            let end = concat(&|r| results.end_logits(r))?;
            compare(tensors, report, "output.start_logits", &[rows, t], start);
            compare(tensors, report, "output.end_logits", &[rows, t], end);
        }
        Head::MultipleChoice => {
            let examples = rows / choices.max(1);
            let mut all = Vec::new();
            for e in 0..examples {
                all.extend(results.choice_logits(e)?);
            }
            compare(tensors, report, "output.logits", &[examples, choices], all);
        }
        _ => {
            let first = results.logits(0)?.shape.clone();
            let mut shape = vec![rows];
            shape.extend(first);
            let logits = concat(&|r| Ok(results.logits(r)?.data.clone()))?;
            compare(tensors, report, "output.logits", &shape, logits);
        }
    }
    Ok(())
}

/// [`verify`] for a model already built (with any attention implementation) from `tensors`:
/// its outputs through an [`Encoder`] holding its weights, and (for the heads this library
/// trains) the training graph's loss, logits, hidden states (named `training.output.*`)
/// and gradients.
pub async fn verify_model(
    ctx: &Context,
    model: &RoFormer,
    tensors: &HostTensors,
) -> Result<Report> {
    let mut report = Report {
        checks: Vec::new(),
        computed: HostTensors::new(),
    };
    let encoder = model.to_encoder(ctx, options_for(tensors)?)?;
    compare_outputs(ctx, &encoder, tensors, &mut report).await?;
    drop(encoder);
    let (b, t, batch, _) = batch_from(tensors)?;
    if model.head().check_trainable(model.config()).is_err()
        || (batch.labels.is_empty() && batch.float_labels.is_empty())
    {
        return Ok(report);
    }
    let cfg = model.config().clone();
    let mut session = model.session(ctx, b, t, Mode::Gradients)?;
    session.set_batch(ctx, &batch)?;
    let metrics = session.step(ctx)?.await?;
    compare(
        tensors,
        &mut report,
        "output.loss",
        &[1],
        vec![metrics.loss],
    );
    // The training graph's forward pass, under the same references.
    let mut training = |name: &str, shape: &[usize], ours: Vec<f32>| {
        if let Some(reference) = tensors.get(name) {
            record(
                Some(reference),
                &mut report,
                &format!("training.{name}"),
                shape,
                ours,
            );
        }
    };
    training(
        "output.logits",
        &session.logits_shape()?,
        session.read_logits(ctx)?.await?,
    );
    let layers = cfg.num_hidden_layers;
    let hidden_shape = [b, t, cfg.hidden_size];
    for i in 0..=layers {
        training(
            &format!("output.hidden_states.{i}"),
            &hidden_shape,
            session.read_hidden_state(ctx, i)?.await?,
        );
    }
    for (name, shape, grad) in model.params().read_grads(ctx)?.await? {
        compare(tensors, &mut report, &format!("grad.{name}"), &shape, grad);
    }
    drop(session);

    if let Some(reference) = tensors.get("train.adamw_losses") {
        let steps = reference.numel();
        let options = TrainOptions {
            adamw: AdamWConfig {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            schedule: Schedule::constant(),
            clip_norm: None,
            decay_skips_biases_and_norms: false,
        };
        let mut train = model.session(ctx, b, t, Mode::Train(options))?;
        train.set_batch(ctx, &batch)?;
        let mut losses = Vec::with_capacity(steps);
        for _ in 0..steps {
            losses.push(train.step(ctx)?.await?.loss);
        }
        let want = reference.to_f32();
        let error = losses
            .iter()
            .zip(&want)
            .map(|(o, r)| ((o - r) as f64 / *r as f64).abs())
            .fold(
                0.0,
                |a: f64, e| if e.is_nan() { f64::INFINITY } else { a.max(e) },
            );
        report.checks.push(Check {
            name: "train.adamw_losses".into(),
            shape: vec![steps],
            error,
        });
        report.computed.insert(
            "train.adamw_losses".into(),
            HostTensor::f32(&[steps], losses),
        );
        // Restore the checkpoint's weights: training changed them.
        model.load_tensors(ctx, tensors)?;
    }
    Ok(report)
}
