//! The optimizer step of a training graph: gradient clipping by global norm, then AdamW
//! (`torch.optim.AdamW`) over the flat parameter buffers, at the learning rate a schedule
//! gives for the step (linear warm-up, then constant, linear or cosine decay); in mixed
//! precision, the gradients are unscaled on the way and the loss scale is updated last.
//!
//! A step whose gradient norm is not finite is skipped on the GPU (AdamW leaves weights and
//! moments as they were). As with PyTorch's `GradScaler`, a skipped step does not count:
//! the next step reuses its number (bias correction and schedule), once its metrics have
//! been read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::ops::adamw::{self, AdamWConfig, AdamWState, AdamWStep};
use crate::ops::clip;
use crate::ops::loss_scale;
pub use crate::ops::loss_scale::LossScaling;
use crate::params::ParamStore;
use crate::tensor::{DType, Tensor};

/// How the learning rate moves after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// The peak rate throughout.
    Constant,
    /// Linearly to 0 at `total_steps` (HF `get_linear_schedule_with_warmup`).
    Linear,
    /// Half a cosine to 0 at `total_steps` (HF `get_cosine_schedule_with_warmup`).
    Cosine,
}

/// Learning rate per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Steps of linear warm-up from 0 to the peak.
    pub warmup_steps: u64,
    /// Where the decay reaches 0.
    pub total_steps: u64,
    /// The shape of the decay.
    pub decay: Decay,
}

impl Schedule {
    /// The peak rate at every step.
    pub fn constant() -> Schedule {
        Schedule {
            warmup_steps: 0,
            total_steps: 0,
            decay: Decay::Constant,
        }
    }

    /// The rate of update `t` (1-based) for a peak rate `lr`, as transformers' schedulers
    /// give it: the multiplier after `t − 1` scheduler steps (`s`), so the first update of a
    /// warm-up runs at 0. During warm-up `lr · s / warmup`, then the decay over the remaining
    /// steps, never below 0.
    pub fn lr(&self, lr: f64, t: u64) -> f64 {
        let s = t.saturating_sub(1);
        if s < self.warmup_steps {
            return lr * s as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((s - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            Decay::Constant => lr,
            Decay::Linear => lr * (1.0 - progress),
            Decay::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Everything an optimizer step needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainOptions {
    /// AdamW's settings; `lr` is the schedule's peak.
    pub adamw: AdamWConfig,
    /// The learning rate over the steps.
    pub schedule: Schedule,
    /// Clip gradients to this global norm (`None`: no clipping).
    pub clip_norm: Option<f32>,
    /// Leave biases and LayerNorm weights out of weight decay, as transformers' Trainer
    /// groups the parameters (`false`: decay every parameter, as `torch.optim.AdamW` given
    /// them all does).
    pub decay_skips_biases_and_norms: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            adamw: AdamWConfig::default(),
            schedule: Schedule::constant(),
            clip_norm: None,
            decay_skips_biases_and_norms: false,
        }
    }
}

/// Whether transformers' Trainer decays a parameter of this name: not a bias, not a
/// LayerNorm's (`get_decay_parameter_names`: LayerNorm modules and names holding "bias" or
/// "layernorm").
pub fn trainer_decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !(lower.contains("bias") || lower.contains("layernorm"))
}

/// Planned clip + AdamW (+ loss scale update) dispatches over a parameter store.
pub struct Optimizer {
    options: TrainOptions,
    clip: Vec<Dispatch>,
    steps: Vec<AdamWStep>,
    /// Mixed precision: the loss scale's update, after AdamW.
    scale_update: Option<Dispatch>,
    /// `(scale, norm)`: the clipping factor and the global gradient norm of the last step.
    stats: Tensor,
    step: u64,
    /// Steps found skipped (by their metrics) since the last [`Optimizer::prepare`]: their
    /// numbers are given again.
    skipped: Arc<AtomicU64>,
}

impl Optimizer {
    /// Plans clipping and AdamW over every parameter of `store`.
    pub fn new(ctx: &Context, store: &ParamStore, options: TrainOptions) -> Result<Optimizer> {
        if options
            .clip_norm
            .is_some_and(|c| !(c > 0.0 && c.is_finite()))
        {
            return Err(Error::invalid(format!(
                "clip norm must be positive, got {:?}",
                options.clip_norm
            )));
        }
        let chunks = store.chunk_views(ctx)?;
        let grads: Vec<Tensor> = chunks.iter().map(|c| c[1].clone()).collect();
        let stats = Tensor::zeros(ctx, &[2], DType::F32)?;
        let partial = clip::partials(ctx, grads.len())?;
        let loss_scale = store.loss_scale();
        let clip = clip::plan(
            ctx,
            &grads,
            options.clip_norm,
            loss_scale.map(|(state, _)| state),
            &partial,
            &stats,
        )?;
        // One update per run of parameters that share a weight decay: a chunk each, or with
        // the Trainer's grouping, the runs of decayed and undecayed parameters in it.
        let runs = if options.decay_skips_biases_and_norms {
            store.runs(ctx, trainer_decays)?
        } else {
            chunks.iter().map(|c| (c.clone(), true)).collect()
        };
        let steps = runs
            .iter()
            .map(|([p, g, m, v], decays)| {
                let state = AdamWState {
                    m: m.clone(),
                    v: v.clone(),
                };
                let config = AdamWConfig {
                    weight_decay: if *decays {
                        options.adamw.weight_decay
                    } else {
                        0.0
                    },
                    ..options.adamw
                };
                adamw::plan_step(ctx, &config, p, g, &state, Some(&stats))
            })
            .collect::<Result<Vec<_>>>()?;
        let scale_update = loss_scale
            .map(|(state, scaling)| loss_scale::plan_update(ctx, scaling, &stats, state))
            .transpose()?;
        Ok(Optimizer {
            options,
            clip,
            steps,
            scale_update,
            stats,
            step: 0,
            skipped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Steps taken so far (those found skipped are taken back at the next
    /// [`Optimizer::prepare`]).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Continues from step `t`, the count of updates applied (after loading a checkpoint,
    /// or when sessions share the parameters); forgets skipped steps not yet taken back.
    pub fn set_step(&mut self, t: u64) {
        self.step = t;
        self.skipped.store(0, Ordering::Relaxed);
    }

    /// Where a step's metrics report a skipped step, so that its number is given again.
    pub(crate) fn skip_counter(&self) -> Arc<AtomicU64> {
        self.skipped.clone()
    }

    /// Advances to the next step and writes its learning rate; returns it.
    pub fn prepare(&mut self, ctx: &Context) -> Result<f64> {
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        self.step = self.step.saturating_sub(skipped) + 1;
        let lr = self.options.schedule.lr(self.options.adamw.lr, self.step);
        for s in &self.steps {
            s.set_step(ctx, self.step, lr)?;
        }
        Ok(lr)
    }

    /// Clipping, the AdamW updates, then (mixed precision) the loss scale's update, in order.
    pub fn dispatches(&self) -> impl Iterator<Item = &Dispatch> {
        self.clip
            .iter()
            .chain(self.steps.iter().map(|s| &s.dispatch))
            .chain(self.scale_update.iter())
    }

    /// `[2]`: the clipping factor and the gradient norm of the last step.
    pub fn stats(&self) -> &Tensor {
        &self.stats
    }

    /// Its settings.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay() {
        let s = Schedule {
            warmup_steps: 10,
            total_steps: 110,
            decay: Decay::Linear,
        };
        // Update t runs at transformers' multiplier after t - 1 scheduler steps.
        assert_eq!(s.lr(1.0, 1), 0.0);
        assert_eq!(s.lr(1.0, 6), 0.5);
        assert_eq!(s.lr(1.0, 11), 1.0);
        assert!((s.lr(1.0, 61) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 111), 0.0);
        assert_eq!(s.lr(1.0, 500), 0.0);
        let c = Schedule {
            decay: Decay::Cosine,
            ..s
        };
        assert!((c.lr(2.0, 61) - 1.0).abs() < 1e-12);
        assert!(c.lr(2.0, 111).abs() < 1e-12);
        assert_eq!(Schedule::constant().lr(3e-4, 1000), 3e-4);
    }
}
