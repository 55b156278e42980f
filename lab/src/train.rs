//! Training a RoFormer sequence classifier (read from the first token, `CLS`) on token
//! sequences, ListOps first: length-bucketed batches, evaluation on held-out data,
//! checkpoints written atomically, and resuming that reproduces the uninterrupted run.
//!
//! Everything a step does is a function of the configuration and the step number: the batch
//! of step `s` comes from the seed and `s` alone, and the optimizer state is saved with the
//! weights. So a run stopped at any point and resumed from its last checkpoint computes the
//! same losses, bit for bit, on the same adapter.
//!
//! In mixed precision ([`TrainPrecision::Mixed`]) a step whose f16 gradients overflow is
//! skipped, as PyTorch's `GradScaler` skips it: the data step is consumed, the weights and
//! moments stay, the loss scale halves; the record says so, and the loss scale is saved
//! with each checkpoint.
//!
//! Checkpoint layout, in the output folder:
//! `checkpoints/step-NNNNNNNN/{config.json, model.safetensors, optimizer.safetensors, state.json}`
//! (HF-layout weights: the folder loads in transformers) and `checkpoints/latest`, naming the
//! newest complete one. A checkpoint is written under a temporary name and renamed when
//! complete; `latest` is replaced atomically after that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use web_time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::listops::{self, Example, ListOpsConfig, CLS, PAD};
use roformer_wgpu::io::{self, HostTensor};
use roformer_wgpu::model::{
    AttentionKind, Batch, Head, Mode, RoFormer, RoFormerConfig, Session, StepMetrics,
};
use roformer_wgpu::ops::adamw::AdamWConfig;
use roformer_wgpu::optim::{Decay, LossScaling, Schedule, TrainOptions};
use roformer_wgpu::Context;
use roformer_wgpu::{Error, Result};

/// Model size for [`TrainConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSize {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub attention: AttentionKind,
}

/// The arithmetic a run trains in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainPrecision {
    /// Everything f32.
    #[default]
    F32,
    /// f16 passes with f32 master weights and dynamic loss scaling
    /// ([`RoFormer::use_mixed_precision`]); needs `SHADER_F16`.
    Mixed,
}

/// Everything that defines a run (saved with every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub listops: ListOpsConfig,
    pub model: ModelSize,
    pub batch: usize,
    pub steps: u64,
    pub lr: f64,
    pub warmup: u64,
    pub decay: Decay,
    pub weight_decay: f64,
    pub clip_norm: Option<f32>,
    /// Sequence lengths (CLS included) are rounded up to a multiple of this; each length
    /// gets its own planned session.
    pub bucket: usize,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    /// f32, or mixed precision (runs saved before this setting existed were f32).
    #[serde(default)]
    pub precision: TrainPrecision,
}

impl TrainConfig {
    /// Longest input: CLS plus the longest tree, rounded up to the bucket.
    pub fn max_seq(&self) -> usize {
        (self.listops.max_length).next_multiple_of(self.bucket.max(1))
    }

    /// The RoFormer configuration of this run.
    pub fn model_config(&self) -> Result<RoFormerConfig> {
        let m = &self.model;
        let attention = match m.attention {
            AttentionKind::Softmax => "softmax",
            AttentionKind::FusedSoftmax => "fused_softmax",
            AttentionKind::Linear => "linear",
            AttentionKind::Local => {
                return Err(roformer_wgpu::Error::InvalidArgument(
                    "the ListOps trainer takes softmax, fused_softmax or linear attention \
                     (local attention's window and global tokens are not trainer options)"
                        .into(),
                ))
            }
        };
        let json = format!(
            r#"{{"vocab_size": {}, "hidden_size": {}, "num_hidden_layers": {}, "num_attention_heads": {},
                "intermediate_size": {}, "max_position_embeddings": {}, "num_labels": {},
                "pad_token_id": {PAD}, "attention_kind": "{attention}",
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}"#,
            listops::VOCAB_SIZE,
            m.hidden,
            m.layers,
            m.heads,
            m.intermediate,
            self.max_seq(),
            listops::CLASSES,
        );
        RoFormerConfig::from_json(&json, "training configuration")
    }

    /// A new model for this run: HF's initialisation from the seed, in the run's precision.
    pub fn new_model(&self, ctx: &Context) -> Result<RoFormer> {
        let mut model = RoFormer::new(ctx, self.model_config()?, Head::Classification)?;
        model.init_random(ctx, self.seed)?;
        self.set_precision(ctx, &mut model)?;
        Ok(model)
    }

    /// The model saved in checkpoint folder `dir`, in the run's precision (the run's loss
    /// scale is restored by [`Trainer::resume`]). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_model(&self, ctx: &Context, dir: impl AsRef<Path>) -> Result<RoFormer> {
        let dir = dir.as_ref();
        let mut model =
            RoFormer::from_pretrained(ctx, dir.join("config.json"), dir.join("model.safetensors"))?;
        self.set_precision(ctx, &mut model)?;
        Ok(model)
    }

    fn set_precision(&self, ctx: &Context, model: &mut RoFormer) -> Result<()> {
        match self.precision {
            TrainPrecision::F32 => Ok(()),
            TrainPrecision::Mixed => model.use_mixed_precision(ctx, LossScaling::default()),
        }
    }

    fn options(&self) -> TrainOptions {
        TrainOptions {
            adamw: AdamWConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            schedule: Schedule {
                warmup_steps: self.warmup,
                total_steps: self.steps,
                decay: self.decay,
            },
            clip_norm: self.clip_norm,
            decay_skips_biases_and_norms: false,
        }
    }
}

/// One training step's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f32,
    pub accuracy: f32,
    pub lr: f64,
    /// The gradient norm before clipping; `None` when it was not finite (a skipped step).
    pub grad_norm: Option<f32>,
    /// The optimizer skipped the step (mixed precision: the f16 gradients overflowed).
    #[serde(default)]
    pub skipped: bool,
    /// The loss scale the step's gradients carried (mixed precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f32>,
    /// Padded tokens (batch × length) per second of wall time.
    pub tokens_per_s: f64,
}

/// One evaluation's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub split: String,
    pub loss: f64,
    pub accuracy: f64,
}

/// Where a run stands; saved as `state.json` in each checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub config: TrainConfig,
    /// Steps completed.
    pub step: u64,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    /// Wall time spent training so far, over every resumed part.
    pub seconds: f64,
    /// Mixed precision: the loss scale and its count of good steps when this was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<(f32, u32)>,
}

impl TrainState {
    /// Steps the optimizer skipped (mixed precision's overflows), from the records: AdamW
    /// has taken `step - skipped()` updates.
    pub fn skipped(&self) -> u64 {
        self.steps.iter().filter(|r| r.skipped).count() as u64
    }
}

/// What the trainer reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    Step(&'a StepRecord),
    Eval(&'a EvalRecord),
    Checkpoint { step: u64, path: &'a Path },
}

/// Mixed precision gives up after this many skipped steps in a row (the loss scale has
/// been halved as often: 2^-20 of where it was).
const MAX_SKIPPED_IN_A_ROW: usize = 20;

/// The batches of one epoch: the examples shuffled, cut into chunks of 16 batches sorted by
/// length (so a batch holds similar lengths), split into batches, and the batches shuffled.
/// A pure function of its arguments; leftover examples (fewer than a batch) wait for the next
/// epoch's shuffle.
pub fn epoch_batches(lengths: &[usize], batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    order.truncate(lengths.len() / batch * batch);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for chunk in order.chunks_mut(batch * 16) {
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(batch).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Model inputs for `examples`: `[CLS, tokens..., PAD...]` rows of `seq`, padded with
/// ignored rows up to `batch`.
pub fn make_batch(examples: &[&Example], batch: usize, seq: usize) -> Batch {
    let mut b = Batch::default();
    for row in 0..batch {
        let (tokens, label): (&[u32], i32) = match examples.get(row) {
            Some(e) => (&e.tokens, e.label as i32),
            None => (&[], roformer_wgpu::ops::cross_entropy::IGNORE_INDEX),
        };
        let n = (tokens.len() + 1).min(seq);
        b.input_ids.push(CLS);
        b.input_ids.extend(&tokens[..n - 1]);
        b.input_ids.extend(std::iter::repeat_n(PAD, seq - n));
        b.attention_mask.extend(std::iter::repeat_n(1, n));
        b.attention_mask.extend(std::iter::repeat_n(0, seq - n));
        b.labels.push(label);
    }
    b
}

/// Trains a sequence classifier on ListOps.
pub struct Trainer<'m> {
    ctx: &'m Context,
    model: &'m RoFormer,
    data: listops::ListOps,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    out: PathBuf,
    state: TrainState,
    train: HashMap<usize, Session<'m>>,
    eval: HashMap<usize, Session<'m>>,
    epoch: Option<(u64, Vec<Vec<usize>>)>,
}

impl<'m> Trainer<'m> {
    /// A new run; `model` must be built from `config.model_config()` with a classification
    /// head (and initialised).
    pub fn new(
        ctx: &'m Context,
        model: &'m RoFormer,
        data: listops::ListOps,
        config: TrainConfig,
        out: impl AsRef<Path>,
    ) -> Result<Self> {
        if model.head() != Head::Classification {
            return Err(Error::InvalidArgument(
                "the trainer needs a sequence-classification model".into(),
            ));
        }
        let mixed = config.precision == TrainPrecision::Mixed;
        if mixed != model.params().is_mixed() {
            return Err(Error::InvalidArgument(format!(
                "the run trains in {:?} precision but the model is {}: build it with \
                 TrainConfig::new_model or load_model",
                config.precision,
                if mixed { "not mixed" } else { "mixed" }
            )));
        }
        if config.batch == 0 || data.train.len() < config.batch {
            return Err(Error::InvalidArgument(format!(
                "batch {} with {} training examples: need at least one full batch",
                config.batch,
                data.train.len()
            )));
        }
        let state = TrainState {
            config,
            step: 0,
            steps: Vec::new(),
            evals: Vec::new(),
            seconds: 0.0,
            loss_scale: None,
        };
        Ok(Trainer {
            ctx,
            model,
            data,
            out: out.as_ref().to_path_buf(),
            state,
            train: HashMap::new(),
            eval: HashMap::new(),
            epoch: None,
        })
    }

    /// Continues from a checkpoint folder: the model must have been loaded from it
    /// ([`TrainConfig::load_model`]); this restores the optimizer moments, the loss scale
    /// and the run's state.
    pub fn resume(
        ctx: &'m Context,
        model: &'m RoFormer,
        data: listops::ListOps,
        checkpoint: impl AsRef<Path>,
        out: impl AsRef<Path>,
    ) -> Result<Self> {
        let dir = checkpoint.as_ref();
        let state = read_state(dir)?;
        let moments = io::read_safetensors(dir.join("optimizer.safetensors"))?;
        let get = |name: &str| -> Result<Vec<f32>> {
            moments
                .get(name)
                .map(HostTensor::to_f32)
                .ok_or_else(|| Error::Format {
                    path: dir.join("optimizer.safetensors").display().to_string(),
                    message: format!("missing {name}"),
                })
        };
        model
            .params()
            .upload_moments(ctx, &get("adamw.m")?, &get("adamw.v")?)?;
        let mut t = Trainer::new(ctx, model, data, state.config.clone(), out)?;
        if let Some((scale, good_steps)) = state.loss_scale {
            model.params().set_loss_scale(ctx, scale, good_steps)?;
        }
        t.state = state;
        Ok(t)
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn data(&self) -> &listops::ListOps {
        &self.data
    }

    fn seq_for(&self, examples: &[&Example]) -> usize {
        let longest = examples
            .iter()
            .map(|e| e.tokens.len() + 1)
            .max()
            .unwrap_or(1);
        longest
            .next_multiple_of(self.state.config.bucket.max(1))
            .min(self.state.config.max_seq())
    }

    /// The examples of step `step` (1-based).
    fn batch_of(&mut self, step: u64) -> Vec<usize> {
        let c = &self.state.config;
        let per_epoch = (self.data.train.len() / c.batch) as u64;
        let (epoch, index) = ((step - 1) / per_epoch, ((step - 1) % per_epoch) as usize);
        if self.epoch.as_ref().map(|e| e.0) != Some(epoch) {
            let lengths: Vec<usize> = self.data.train.iter().map(|e| e.tokens.len()).collect();
            self.epoch = Some((epoch, epoch_batches(&lengths, c.batch, c.seed, epoch)));
        }
        self.epoch.as_ref().unwrap().1[index].clone()
    }

    fn train_session(&mut self, seq: usize) -> Result<&mut Session<'m>> {
        if !self.train.contains_key(&seq) {
            let s = self.model.session(
                self.ctx,
                self.state.config.batch,
                seq,
                Mode::Train(self.state.config.options()),
            )?;
            self.train.insert(seq, s);
        }
        Ok(self.train.get_mut(&seq).unwrap())
    }

    /// Runs step `state.step + 1`.
    pub async fn step(&mut self) -> Result<StepRecord> {
        let step = self.state.step + 1;
        let indices = self.batch_of(step);
        let examples: Vec<Example> = indices
            .iter()
            .map(|&i| self.data.train[i].clone())
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let seq = self.seq_for(&refs);
        let (ctx, batch) = (self.ctx, self.state.config.batch);
        let start = Instant::now();
        let skipped = self.state.skipped();
        let skipped_in_a_row = self
            .state
            .steps
            .iter()
            .rev()
            .take_while(|r| r.skipped)
            .count();
        let session = self.train_session(seq)?;
        session.set_batch(ctx, &make_batch(&refs, batch, seq))?;
        // Sessions of other lengths share the parameters and moments: set the number of
        // updates taken (skipped steps are not updates).
        session
            .optimizer()
            .expect("training session")
            .set_step(step - 1 - skipped);
        let m: StepMetrics = session.step(ctx)?.await?;
        let seconds = start.elapsed().as_secs_f64();
        let overflow = m.skipped && m.loss.is_finite() && m.loss_scale.is_some();
        if overflow {
            // Mixed precision: the loss scale was halved; give up when halving does not
            // help (the gradients overflow f16 whatever the scale).
            let in_a_row = 1 + skipped_in_a_row;
            if in_a_row >= MAX_SKIPPED_IN_A_ROW {
                return Err(Error::NonFinite {
                    step,
                    tensor: format!(
                        "the f16 gradients ({in_a_row} steps in a row overflowed, the loss \
                         scale is down to {:e}; train this model in f32)",
                        m.loss_scale.unwrap_or(0.0) / 2.0
                    ),
                    during: "mixed-precision backward pass".into(),
                });
            }
        } else if !m.loss.is_finite() || !m.grad_norm.is_some_and(f32::is_finite) {
            // AdamW skipped the update: replay the step call by call to name the culprit.
            let (during, tensor) = session
                .plan()
                .first_non_finite(ctx)
                .await?
                .unwrap_or_else(|| ("the optimizer".into(), "the gradient norm".into()));
            return Err(Error::NonFinite {
                step,
                tensor,
                during,
            });
        }
        self.state.step = step;
        self.state.seconds += seconds;
        let record = StepRecord {
            step,
            loss: m.loss,
            accuracy: m.correct as f32 / m.counted.max(1) as f32,
            lr: m.lr.unwrap_or(0.0),
            grad_norm: m.grad_norm.filter(|n| n.is_finite()),
            skipped: overflow,
            loss_scale: m.loss_scale,
            tokens_per_s: (batch * seq) as f64 / seconds,
        };
        self.state.steps.push(record.clone());
        Ok(record)
    }

    /// Loss and accuracy over a split ("valid" or "test"), recorded in the history.
    pub async fn evaluate(&mut self, split: &str) -> Result<EvalRecord> {
        let examples: Vec<Example> = match split {
            "valid" => self.data.valid.clone(),
            "test" => self.data.test.clone(),
            "train" => self.data.train.clone(),
            other => return Err(Error::InvalidArgument(format!("no split {other:?}"))),
        };
        if examples.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the {split} split is empty"
            )));
        }
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| examples[i].tokens.len());
        let batch = self.state.config.batch;
        let (mut loss_sum, mut correct, mut counted) = (0.0f64, 0u64, 0u64);
        for chunk in order.chunks(batch) {
            let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
            let seq = self.seq_for(&refs);
            if !self.eval.contains_key(&seq) {
                let s = self.model.session(self.ctx, batch, seq, Mode::Inference)?;
                self.eval.insert(seq, s);
            }
            let session = self.eval.get_mut(&seq).unwrap();
            session.set_batch(self.ctx, &make_batch(&refs, batch, seq))?;
            let m = session.step(self.ctx)?.await?;
            loss_sum += m.loss as f64 * m.counted as f64;
            correct += m.correct as u64;
            counted += m.counted as u64;
        }
        let record = EvalRecord {
            step: self.state.step,
            split: split.to_string(),
            loss: loss_sum / counted as f64,
            accuracy: correct as f64 / counted as f64,
        };
        self.state.evals.push(record.clone());
        Ok(record)
    }

    /// Writes a checkpoint of the current step and points `latest` at it; keeps the two
    /// newest (native only: a browser has no folders).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn checkpoint(&self) -> Result<PathBuf> {
        let root = self.out.join("checkpoints");
        let name = format!("step-{:08}", self.state.step);
        let dir = root.join(&name);
        let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
        let io_err = |p: &Path, source| Error::Io {
            path: p.display().to_string(),
            source,
        };
        // Temporaries left by a process killed while writing (ours or an earlier one's).
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && n.contains(".tmp-") {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        self.model.save(self.ctx, &tmp)?;
        let (m, v) = self.model.params().download_moments(self.ctx)?;
        let n = m.len();
        io::write_safetensors(
            tmp.join("optimizer.safetensors"),
            &[
                ("adamw.m".into(), vec![n], m),
                ("adamw.v".into(), vec![n], v),
            ],
            &[],
        )?;
        let mut state = self.state.clone();
        if self.model.params().is_mixed() {
            state.loss_scale = Some(
                self.model
                    .params()
                    .read_loss_scale(self.ctx)?
                    .wait(self.ctx)?,
            );
        }
        let state = serde_json::to_string_pretty(&state)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        io::write_atomic(tmp.join("state.json"), state.as_bytes())?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
        io::write_atomic(root.join("latest"), name.as_bytes())?;
        // Keep the two newest complete checkpoints.
        let mut done: Vec<String> = std::fs::read_dir(&root)
            .map_err(|e| io_err(&root, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("step-") && !n.contains(".tmp"))
            .collect();
        done.sort();
        for old in done.iter().rev().skip(2) {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
        Ok(dir)
    }

    /// Trains to `config.steps`, evaluating on the validation split every `eval_every`
    /// steps and checkpointing every `checkpoint_every`; ends with a test evaluation and a
    /// final checkpoint (native only, blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&mut self, mut on_event: impl FnMut(Event<'_>)) -> Result<()> {
        let c = self.state.config.clone();
        while self.state.step < c.steps {
            let record = self.ctx.block_on(self.step())?;
            on_event(Event::Step(&record));
            let step = self.state.step;
            if c.eval_every > 0 && step % c.eval_every == 0 && step < c.steps {
                let e = self.ctx.block_on(self.evaluate("valid"))?;
                on_event(Event::Eval(&e));
            }
            if c.checkpoint_every > 0 && step % c.checkpoint_every == 0 && step < c.steps {
                let path = self.checkpoint()?;
                on_event(Event::Checkpoint { step, path: &path });
            }
        }
        if !self
            .state
            .evals
            .iter()
            .any(|e| e.step == c.steps && e.split == "test")
        {
            for split in ["valid", "test"] {
                let e = self.ctx.block_on(self.evaluate(split))?;
                on_event(Event::Eval(&e));
            }
            let path = self.checkpoint()?;
            on_event(Event::Checkpoint {
                step: self.state.step,
                path: &path,
            });
        }
        Ok(())
    }
}

/// The newest complete checkpoint under `out`, if any.
pub fn latest_checkpoint(out: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    let root = out.as_ref().join("checkpoints");
    let latest = root.join("latest");
    match std::fs::read_to_string(&latest) {
        Ok(name) => {
            let dir = root.join(name.trim());
            if dir.join("state.json").exists() {
                Ok(Some(dir))
            } else {
                Err(Error::Format {
                    path: latest.display().to_string(),
                    message: format!("names {}, which is incomplete or missing", dir.display()),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: latest.display().to_string(),
            source,
        }),
    }
}

/// The run state saved in a checkpoint folder.
pub fn read_state(dir: impl AsRef<Path>) -> Result<TrainState> {
    let path = dir.as_ref().join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_deterministic_full_and_length_sorted_within_chunks() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 101).collect();
        let a = epoch_batches(&lengths, 8, 5, 0);
        assert_eq!(a, epoch_batches(&lengths, 8, 5, 0));
        assert_ne!(a, epoch_batches(&lengths, 8, 5, 1));
        assert_eq!(a.len(), 125);
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 1000, "every example once per epoch");
        let spread: usize = a
            .iter()
            .map(|b| {
                lengths[*b.iter().max_by_key(|&&i| lengths[i]).unwrap()]
                    - lengths[*b.iter().min_by_key(|&&i| lengths[i]).unwrap()]
            })
            .sum();
        assert!(spread / a.len() < 20, "batches hold similar lengths");
    }

    #[test]
    fn batches_start_with_cls_and_pad_to_the_length() {
        let e = [Example {
            tokens: vec![2, 7, 8, 6],
            label: 1,
        }];
        let refs: Vec<&Example> = e.iter().collect();
        let b = make_batch(&refs, 2, 8);
        assert_eq!(
            b.input_ids,
            vec![CLS, 2, 7, 8, 6, PAD, PAD, PAD, CLS, PAD, PAD, PAD, PAD, PAD, PAD, PAD]
        );
        assert_eq!(
            b.attention_mask,
            vec![1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(b.labels, vec![1, -100]);
    }
}
