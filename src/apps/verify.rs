//! Checks a checkpoint against reference outputs stored beside its weights, in the layout of
//! the shared fixtures: `input.*` (ids, attention mask, token types, labels), `output.*`
//! (loss, logits, hidden states), `grad.<param>` and `train.adamw_losses`. This is how a
//! converted checkpoint is shown to behave like the original; the `verify` example prints it.

use std::path::Path;

use crate::apps::check::rel_l2;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::io::{self, HostTensor, HostTensors};
use crate::model::{Batch, Mode, RoFormer};
use crate::ops::adamw::AdamWConfig;
use crate::optim::{Schedule, TrainOptions};

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub shape: Vec<usize>,
    /// Relative L2 error (for `train.adamw_losses`, the largest relative error of a step).
    pub error: f64,
}

/// Every comparison made, and what was computed (under the reference's names).
#[derive(Clone, Debug)]
pub struct Report {
    pub checks: Vec<Check>,
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
            None => Err(Error::invalid(format!("{name} must hold integers"))),
        },
    }
}

fn to_u32(name: &str, v: &[i64]) -> Result<Vec<u32>> {
    v.iter()
        .map(|&x| {
            u32::try_from(x)
                .map_err(|_| Error::invalid(format!("{name} holds {x}, not a token index")))
        })
        .collect()
}

/// The batch stored as `input.*`.
pub fn batch_from(tensors: &HostTensors) -> Result<(usize, usize, Batch)> {
    let (shape, ids) = ints(tensors, "input.input_ids")?
        .ok_or_else(|| Error::invalid("no input.input_ids tensor"))?;
    let [b, t] = shape[..] else {
        return Err(Error::invalid(format!(
            "input.input_ids has shape {shape:?}, expected [batch, seq]"
        )));
    };
    let mask = ints(tensors, "input.attention_mask")?
        .map(|(_, v)| to_u32("input.attention_mask", &v))
        .transpose()?;
    let types = ints(tensors, "input.token_type_ids")?
        .map(|(_, v)| to_u32("input.token_type_ids", &v))
        .transpose()?;
    let (_, labels) =
        ints(tensors, "input.labels")?.ok_or_else(|| Error::invalid("no input.labels tensor"))?;
    let labels = labels
        .iter()
        .map(|&l| i32::try_from(l).map_err(|_| Error::invalid(format!("input.labels holds {l}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        b,
        t,
        Batch {
            input_ids: to_u32("input.input_ids", &ids)?,
            attention_mask: mask.unwrap_or_default(),
            token_type_ids: types.unwrap_or_default(),
            labels,
        },
    ))
}

/// Runs the stored inputs through the model and compares every stored output and gradient;
/// with `train.adamw_losses`, also that many AdamW steps (lr 1e-3, weight decay 0.01, as the
/// fixtures were made).
pub fn verify(
    ctx: &Context,
    config: impl AsRef<Path>,
    weights: impl AsRef<Path>,
) -> Result<Report> {
    let tensors = io::read_safetensors(weights.as_ref())?;
    let model = RoFormer::from_pretrained(ctx, config.as_ref(), weights.as_ref())?;
    verify_model(ctx, &model, &tensors)
}

/// [`verify`] for a model already built (with any attention implementation) from `tensors`.
pub fn verify_model(ctx: &Context, model: &RoFormer, tensors: &HostTensors) -> Result<Report> {
    let cfg = model.config().clone();
    let (b, t, batch) = batch_from(tensors)?;
    let mut checks = Vec::new();
    let mut computed = HostTensors::new();
    let mut compare = |name: &str, shape: &[usize], ours: Vec<f32>, checks: &mut Vec<Check>| {
        if let Some(reference) = tensors.get(name) {
            let error = if reference.numel() == ours.len() {
                rel_l2(&ours, &reference.to_f32())
            } else {
                f64::INFINITY
            };
            checks.push(Check {
                name: name.to_string(),
                shape: reference.shape.clone(),
                error,
            });
        }
        computed.insert(name.to_string(), HostTensor::f32(shape, ours));
    };

    let mut session = model.session(ctx, b, t, Mode::Gradients)?;
    session.set_batch(ctx, &batch)?;
    let metrics = session.run(ctx)?;
    compare("output.loss", &[1], vec![metrics.loss], &mut checks);
    compare(
        "output.logits",
        &session.logits_shape()?,
        session.logits(ctx)?,
        &mut checks,
    );
    let layers = cfg.num_hidden_layers;
    let hidden_shape = [b, t, cfg.hidden_size];
    for i in 0..=layers {
        compare(
            &format!("output.hidden_states.{i}"),
            &hidden_shape,
            session.hidden_state(ctx, i)?,
            &mut checks,
        );
    }
    compare(
        "output.last_hidden_state",
        &hidden_shape,
        session.hidden_state(ctx, layers)?,
        &mut checks,
    );
    for (name, shape, grad) in model.params().download_grads(ctx)? {
        compare(&format!("grad.{name}"), &shape, grad, &mut checks);
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
        };
        let mut train = model.session(ctx, b, t, Mode::Train(options))?;
        train.set_batch(ctx, &batch)?;
        let mut losses = Vec::with_capacity(steps);
        for _ in 0..steps {
            losses.push(train.run(ctx)?.loss);
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
        checks.push(Check {
            name: "train.adamw_losses".into(),
            shape: vec![steps],
            error,
        });
        computed.insert(
            "train.adamw_losses".into(),
            HostTensor::f32(&[steps], losses),
        );
        // Restore the checkpoint's weights: training changed them.
        model.load_tensors(ctx, tensors)?;
    }
    Ok(Report { checks, computed })
}
