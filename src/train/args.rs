//! The training arguments, by the names transformers' `TrainingArguments` gives them (the
//! command line spells them in kebab case: `--learning-rate`), with its defaults.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops::adamw::AdamWConfig;
use crate::optim::{Decay, Schedule, TrainOptions};

/// transformers' `lr_scheduler_type`s this trainer has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Warm-up, then linearly to 0 at the last step.
    #[default]
    Linear,
    /// Warm-up, then half a cosine to 0 at the last step.
    Cosine,
    /// The peak rate throughout (warm-up ignored, as in transformers).
    Constant,
    /// Warm-up, then the peak rate.
    ConstantWithWarmup,
}

impl std::str::FromStr for SchedulerType {
    type Err = Error;
    fn from_str(s: &str) -> Result<SchedulerType> {
        match s {
            "linear" => Ok(SchedulerType::Linear),
            "cosine" => Ok(SchedulerType::Cosine),
            "constant" => Ok(SchedulerType::Constant),
            "constant_with_warmup" => Ok(SchedulerType::ConstantWithWarmup),
            other => Err(Error::invalid(format!(
                "lr_scheduler_type {other:?}: it is linear, cosine, constant or \
                 constant_with_warmup"
            ))),
        }
    }
}

/// The arithmetic a run trains in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything f32.
    #[default]
    F32,
    /// f16 passes with f32 master weights and dynamic loss scaling, as transformers'
    /// `fp16=True` (needs `SHADER_F16`).
    Mixed,
}

/// How training is run: transformers' `TrainingArguments` by its names and defaults (those
/// this trainer has), plus `shuffle`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingArguments {
    /// AdamW's peak learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay, for every parameter but biases and LayerNorm weights
    /// (as transformers' Trainer groups them).
    pub weight_decay: f64,
    /// AdamW's β₁.
    pub adam_beta1: f64,
    /// AdamW's β₂.
    pub adam_beta2: f64,
    /// AdamW's ε.
    pub adam_epsilon: f64,
    /// Updates of linear warm-up from 0 (wins over `warmup_ratio`).
    pub warmup_steps: u64,
    /// Warm-up as a share of all updates, when `warmup_steps` is 0.
    pub warmup_ratio: f64,
    /// How the rate moves after warm-up.
    pub lr_scheduler_type: SchedulerType,
    /// Sequences per batch.
    pub per_device_train_batch_size: usize,
    /// Sequences per evaluation batch.
    pub per_device_eval_batch_size: usize,
    /// Batches whose gradients add up to one update.
    pub gradient_accumulation_steps: usize,
    /// Passes over the training data, when `max_steps` is not set.
    pub num_train_epochs: f64,
    /// Updates in all (wins over `num_train_epochs`).
    pub max_steps: Option<u64>,
    /// Clip the gradients to this global norm (0: no clipping).
    pub max_grad_norm: f32,
    /// Everything random (initialisation, data order, masks) follows from it.
    pub seed: u64,
    /// Longest sequence, in tokens (longer texts are cut); `None`: the model's positions.
    pub max_length: Option<usize>,
    /// Log every this many updates (and at the last).
    pub logging_steps: u64,
    /// Evaluate every this many updates, when there is evaluation data (`None`: at the end
    /// of training only).
    pub eval_steps: Option<u64>,
    /// Write a checkpoint every this many updates (0: at the end only).
    pub save_steps: u64,
    /// Keep at most this many checkpoints, the newest (and the best, with
    /// `load_best_model_at_end`).
    pub save_total_limit: Option<usize>,
    /// At the end, load the checkpoint with the best `metric_for_best_model`.
    pub load_best_model_at_end: bool,
    /// The metric that decides the best checkpoint (`eval_loss` by default: lower is
    /// better; for any other, higher is).
    pub metric_for_best_model: Option<String>,
    /// Stop after this many evaluations without improving the metric.
    pub early_stopping_patience: Option<usize>,
    /// f32, or mixed precision.
    pub precision: Precision,
    /// Visit the training data in a new random order each epoch (`false`: file order, as
    /// transformers' `train_sampling_strategy="sequential"`, so that a run can be compared
    /// with another library's).
    pub shuffle: bool,
    /// Batch examples of similar lengths together (transformers' `group_by_length`: the
    /// shuffled examples are sorted by length within groups of 50 batches; evaluation
    /// batches are sorted by length), so a batch pads little and its session is short.
    pub group_by_length: bool,
    /// Batches are padded to a length that is a multiple of this (the argument of
    /// transformers' `DataCollatorWithPadding`); each padded length gets its own planned
    /// session, so a coarser multiple means fewer sessions (less memory and planning) and
    /// more padding.
    pub pad_to_multiple_of: usize,
    /// Threads preparing batches (reading and tokenizing streamed text, masking,
    /// collating) ahead of the update that takes them: 1 (the default here, where
    /// transformers' is 0), a background thread; 0, each batch prepared when its update
    /// starts, on the training thread. The batches are the same either way. A browser tab
    /// has no threads: there batches are always prepared in place.
    pub dataloader_num_workers: usize,
}

impl Default for TrainingArguments {
    fn default() -> Self {
        TrainingArguments {
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            lr_scheduler_type: SchedulerType::Linear,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            num_train_epochs: 3.0,
            max_steps: None,
            max_grad_norm: 1.0,
            seed: 42,
            max_length: None,
            logging_steps: 500,
            eval_steps: None,
            save_steps: 500,
            save_total_limit: None,
            load_best_model_at_end: false,
            metric_for_best_model: None,
            early_stopping_patience: None,
            precision: Precision::F32,
            shuffle: true,
            group_by_length: false,
            pad_to_multiple_of: 8,
            dataloader_num_workers: 1,
        }
    }
}

impl TrainingArguments {
    /// An error naming the first argument out of its range.
    pub fn check(&self) -> Result<()> {
        let bad = |name: &str, why: &str| Err(Error::invalid(format!("{name}: {why}")));
        if !(self.learning_rate >= 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate", "must be a number at least 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", "must be a number at least 0");
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("adam_beta1/adam_beta2", "must be at least 0 and below 1");
        }
        if !(self.adam_epsilon > 0.0 && self.adam_epsilon.is_finite()) {
            return bad("adam_epsilon", "must be above 0");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be between 0 and 1");
        }
        if self.per_device_train_batch_size == 0 || self.per_device_eval_batch_size == 0 {
            return bad("per_device_*_batch_size", "must be at least 1");
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps", "must be at least 1");
        }
        if self.max_steps.is_none()
            && !(self.num_train_epochs > 0.0 && self.num_train_epochs.is_finite())
        {
            return bad("num_train_epochs", "must be above 0 (or set max_steps)");
        }
        if self.max_steps == Some(0) {
            return bad("max_steps", "must be at least 1");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad("max_grad_norm", "must be a number at least 0");
        }
        if self.logging_steps == 0 || self.eval_steps == Some(0) {
            return bad("logging_steps/eval_steps", "must be at least 1");
        }
        if let (true, Some(every)) = (self.load_best_model_at_end, self.eval_steps) {
            // As transformers: the best evaluation must have a checkpoint to load.
            if self.save_steps == 0 || self.save_steps % every != 0 {
                return bad(
                    "load_best_model_at_end",
                    &format!(
                        "needs save_steps to be a round multiple of eval_steps ({every}), \
                         and it is {}",
                        self.save_steps
                    ),
                );
            }
        }
        if self.save_total_limit == Some(0) {
            return bad("save_total_limit", "must be at least 1");
        }
        if self.pad_to_multiple_of == 0 {
            return bad("pad_to_multiple_of", "must be at least 1");
        }
        if self.max_length == Some(0) {
            return bad("max_length", "must be at least 1");
        }
        if self.dataloader_num_workers > 1 {
            return bad(
                "dataloader_num_workers",
                "0 (batches prepared on the training thread) or 1 (on a background thread)",
            );
        }
        Ok(())
    }

    /// Warm-up updates for a run of `total` updates.
    pub fn warmup(&self, total: u64) -> u64 {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as u64
        }
    }

    /// The optimizer's settings for a run of `total` updates (weight decay grouped as
    /// transformers' Trainer groups it).
    pub fn train_options(&self, total: u64) -> TrainOptions {
        let (warmup_steps, decay_shape) = match self.lr_scheduler_type {
            SchedulerType::Linear => (self.warmup(total), Decay::Linear),
            SchedulerType::Cosine => (self.warmup(total), Decay::Cosine),
            SchedulerType::Constant => (0, Decay::Constant),
            SchedulerType::ConstantWithWarmup => (self.warmup(total), Decay::Constant),
        };
        TrainOptions {
            adamw: AdamWConfig {
                lr: self.learning_rate,
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_epsilon,
                weight_decay: self.weight_decay,
            },
            schedule: Schedule {
                warmup_steps,
                total_steps: total,
                decay: decay_shape,
            },
            clip_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            decay_skips_biases_and_norms: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_out_of_range_are_errors_naming_them() {
        TrainingArguments::default().check().unwrap();
        let with = |f: &dyn Fn(&mut TrainingArguments)| {
            let mut a = TrainingArguments::default();
            f(&mut a);
            a.check().unwrap_err().to_string()
        };
        assert!(with(&|a| a.learning_rate = f64::NAN).starts_with("learning_rate"));
        assert!(with(&|a| a.per_device_train_batch_size = 0).contains("batch_size"));
        assert!(with(&|a| a.gradient_accumulation_steps = 0).contains("gradient_accumulation"));
        assert!(with(&|a| a.max_steps = Some(0)).starts_with("max_steps"));
        assert!(with(&|a| a.adam_beta2 = 1.0).contains("adam_beta"));
        assert!(with(&|a| a.dataloader_num_workers = 4).starts_with("dataloader_num_workers"));
        let err = with(&|a| {
            a.load_best_model_at_end = true;
            a.eval_steps = Some(3);
            a.save_steps = 10;
        });
        assert!(
            err.starts_with("load_best_model_at_end") && err.contains("(3)"),
            "{err}"
        );
        assert!("cosine_with_restarts"
            .parse::<SchedulerType>()
            .unwrap_err()
            .to_string()
            .contains("constant_with_warmup"));
    }

    #[test]
    fn warmup_comes_from_steps_or_ratio() {
        let mut a = TrainingArguments {
            warmup_ratio: 0.1,
            ..TrainingArguments::default()
        };
        assert_eq!(a.warmup(95), 10);
        a.warmup_steps = 3;
        assert_eq!(a.warmup(95), 3);
        a.lr_scheduler_type = SchedulerType::Constant;
        assert_eq!(a.train_options(95).schedule.warmup_steps, 0);
    }
}
