//! Training sessions: a step planned once for one batch shape (forward, loss, backward,
//! clipping, AdamW in one submission), for the heads this library trains. Inference on any
//! head is [`super::Encoder`]'s job. A model in mixed precision
//! ([`super::RoFormer::use_mixed_precision`]) runs its passes in f16 from a copy of the
//! weights cast at the start of each step, and scales the loss before the backward pass:
//! a training step divides the scale out in its clipping factor; a `Gradients` step
//! divides the gradients by it after the backward pass, so they read as true gradients.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use web_time::Instant;

use super::graph::{self, GraphInputs, GraphOutputs, LossLabels};
use super::{Head, RoFormer};
use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::graph::{Graph, MemoryReport, Plan, PlanOptions, TensorId};
use crate::ops::cross_entropy::IGNORE_INDEX;
use crate::ops::loss_scale;
use crate::optim::{Optimizer, TrainOptions};
use crate::readback::Pending;
use crate::timing::PassTimer;

#[cfg(not(target_arch = "wasm32"))]
mod data_parallel;

/// What a session computes per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Forward pass and loss; logits are kept for reading (for inference alone, without
    /// labels, see [`super::Encoder`]).
    Inference,
    /// Forward and backward; logits, hidden states and parameter gradients can be read.
    Gradients,
    /// Forward, backward, gradient clipping and AdamW: one training step.
    Train(TrainOptions),
}

/// One batch of inputs, row-major `[batch, seq]`. Class labels ([`Batch::labels`]) are
/// `[batch, seq]` for the masked LM, token classification and causal LM (the token each
/// position should predict as the next: the session shifts them, as transformers does),
/// `[batch]` for single-label sequence classification; −100 marks a position without a
/// label. Multi-label and regression sequence classifiers learn from
/// [`Batch::float_labels`] instead, `[batch, num_labels]`; a batch gives the one kind its
/// session's loss takes, and leaves the other empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Token ids, each below the vocabulary size.
    pub input_ids: Vec<u32>,
    /// 1 for tokens, 0 for padding. Empty means all ones.
    pub attention_mask: Vec<u32>,
    /// Empty means all zeros.
    pub token_type_ids: Vec<u32>,
    /// Class labels (−100: no label).
    pub labels: Vec<i32>,
    /// Float labels, `[batch, num_labels]` row-major (`[batch]` for one label), for the
    /// sequence classifiers whose `problem_type` is `multi_label_classification` (each in
    /// `[0, 1]`, 1: the label applies; binary cross-entropy with logits, as transformers'
    /// `BCEWithLogitsLoss`) or `regression` (any finite value; squared error, as its
    /// `MSELoss`, which with one label squeezes `[batch, 1]` to `[batch]`: the same mean).
    pub float_labels: Vec<f32>,
}

/// What one step reports. With class labels the loss is the mean cross-entropy over the
/// labelled positions, each of which counts once; with float labels (multi-label and
/// regression classifiers) it is the mean over every `(sequence, label)` element, as
/// transformers takes it, while `counted` and `correct` count sequences, so that
/// `correct / counted` is an accuracy and `loss · counted` weighs batches fairly whatever
/// the head.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// The mean loss: cross-entropy over the labelled positions; binary cross-entropy with
    /// logits (multi-label) or squared error (regression) over every element of
    /// `[batch, num_labels]`.
    pub loss: f32,
    /// Labelled positions (rows that count in the loss); with float labels, the sequences.
    pub counted: u32,
    /// Labelled positions whose argmax is the label; multi-label: sequences whose every
    /// label is predicted right (`sigmoid(logit) > 0.5` exactly where the label is above
    /// 0.5, an exact match); regression: 0.
    pub correct: u32,
    /// Global gradient norm before clipping (training only; of the unscaled gradients in
    /// mixed precision). Not finite: the step was skipped.
    pub grad_norm: Option<f32>,
    /// The optimizer skipped this step (training only): a gradient was not finite, so the
    /// weights and moments were left as they were. In mixed precision this is an f16
    /// overflow, and the loss scale was halved; it happens now and then, as in PyTorch.
    pub skipped: bool,
    /// The loss scale this step's gradients carried (mixed-precision training only).
    pub loss_scale: Option<f32>,
    /// Learning rate of this step (training only).
    pub lr: Option<f64>,
    /// Host time to encode and submit the step.
    pub encode: Duration,
    /// GPU time of the step's compute pass, from timestamp queries (when the device has them).
    pub gpu: Option<Duration>,
}

/// A planned step for one batch shape: buffers, bind groups and dispatches built once.
pub struct Session<'m> {
    model: &'m RoFormer,
    batch: usize,
    seq: usize,
    inputs: GraphInputs,
    plan: Plan,
    outputs: GraphOutputs,
    /// The loss tensor (every session has one).
    loss: TensorId,
    /// What the plan keeps alive to the end of the step, so it can be read.
    kept: HashSet<TensorId>,
    optimizer: Option<Optimizer>,
    /// Mixed precision: the casts refreshing the f16 copy of the weights, first in a step.
    refresh: Vec<Dispatch>,
    /// Mixed precision, `Gradients` sessions: the gradients divided by the loss scale,
    /// after the backward pass.
    unscale: Vec<Dispatch>,
    calls: (usize, usize),
    /// Timestamps at the start and end of the step's pass, when the device offers them.
    timer: Option<PassTimer>,
    /// Data-parallel training: the gradient buckets, for the bucket size they were cut for.
    #[cfg(not(target_arch = "wasm32"))]
    buckets: Option<(usize, data_parallel::GradientBuckets)>,
}

impl<'m> Session<'m> {
    pub(super) fn new(
        ctx: &Context,
        model: &'m RoFormer,
        batch: usize,
        seq: usize,
        mode: Mode,
        plan_options: PlanOptions,
    ) -> Result<Session<'m>> {
        let c = &model.config;
        if batch == 0 || seq == 0 {
            return Err(Error::invalid(format!(
                "empty batch shape [{batch}, {seq}]"
            )));
        }
        if seq > c.max_position_embeddings {
            return Err(Error::invalid(format!(
                "sequences of {seq} tokens are longer than max_position_embeddings ({}), the size of the position table",
                c.max_position_embeddings
            )));
        }
        model.head.check_trainable(c)?;
        if mode != Mode::Inference && !model.store.trainable() {
            return Err(Error::invalid(
                "this model holds weights only: it can run inference, not gradients or training",
            ));
        }
        let inputs = GraphInputs::new(ctx, c, model.head, batch, seq, true)?;
        let store = &model.store;
        let mut g = Graph::with_activations(store.compute_dtype());
        let loss_scale = match mode {
            Mode::Inference => None,
            _ => store.loss_scale().map(|(state, _)| state),
        };
        if let Some(state) = loss_scale {
            g.scale_loss(state)?;
        }
        let outputs = graph::build(
            c,
            model.head,
            store,
            &model.table,
            &model.projections,
            &mut g,
            &inputs,
        )?;
        let loss = outputs
            .loss
            .ok_or_else(|| Error::invalid("a training session needs a loss"))?;
        let mut kept = HashSet::from([loss]);
        if mode != Mode::Inference {
            g.backward(loss)?;
        }
        if matches!(mode, Mode::Inference | Mode::Gradients) {
            kept.extend(outputs.logits);
        }
        if mode == Mode::Gradients {
            kept.extend(outputs.hidden.iter().copied());
        }
        for &id in &kept {
            g.keep(id);
        }
        let plan = g.plan_with(ctx, &model.store, mode != Mode::Inference, plan_options)?;
        let optimizer = match mode {
            Mode::Train(options) => Some(Optimizer::new(ctx, &model.store, options)?),
            _ => None,
        };
        let timer = PassTimer::new(ctx, "step time", 1);
        let refresh = store.plan_refresh(ctx)?;
        let unscale = match (mode, loss_scale) {
            (Mode::Gradients, Some(state)) => store
                .chunk_views(ctx)?
                .iter()
                .map(|[_, grads, _, _]| loss_scale::plan_unscale(ctx, grads, state))
                .collect::<Result<Vec<_>>>()?,
            _ => Vec::new(),
        };
        Ok(Session {
            model,
            batch,
            seq,
            inputs,
            plan,
            outputs,
            loss,
            kept,
            optimizer,
            refresh,
            unscale,
            calls: g.call_counts(),
            timer,
            #[cfg(not(target_arch = "wasm32"))]
            buckets: None,
        })
    }

    /// Checks and uploads a batch (token ids below the vocabulary, labels in range: class
    /// labels or float labels, whichever the session's loss takes, the other empty).
    pub fn set_batch(&self, ctx: &Context, b: &Batch) -> Result<()> {
        let n = self.batch * self.seq;
        let check = |what: &'static str, len: usize, want: usize| {
            if len != want {
                return Err(Error::DataLength {
                    what,
                    len,
                    shape: vec![self.batch, self.seq],
                    expected: want,
                });
            }
            Ok(())
        };
        check("input_ids", b.input_ids.len(), n)?;
        let mask: Vec<u32> = if b.attention_mask.is_empty() {
            vec![1; n]
        } else {
            b.attention_mask.clone()
        };
        check("attention_mask", mask.len(), n)?;
        let types: Vec<u32> = if b.token_type_ids.is_empty() {
            vec![0; n]
        } else {
            b.token_type_ids.clone()
        };
        check("token_type_ids", types.len(), n)?;
        let labels = self
            .inputs
            .labels
            .as_ref()
            .ok_or_else(|| Error::invalid("this session has no loss"))?;
        match labels {
            LossLabels::Classes(classes) => {
                if !b.float_labels.is_empty() {
                    return Err(Error::invalid(
                        "float_labels are for multi-label and regression sequence classifiers; \
                         this session's loss is cross-entropy over the class labels in `labels`",
                    ));
                }
                check("labels", b.labels.len(), classes.len())?;
            }
            LossLabels::Targets(targets) => {
                if !b.labels.is_empty() {
                    return Err(Error::invalid(format!(
                        "a sequence classifier with problem_type {} learns from float_labels \
                         ([batch, num_labels] floats), not class labels: leave `labels` empty",
                        self.model.config.classification_problem()
                    )));
                }
                let (rows, per_row) = targets.shape();
                if b.float_labels.len() != targets.len() {
                    return Err(Error::DataLength {
                        what: "float_labels",
                        len: b.float_labels.len(),
                        shape: vec![rows, per_row],
                        expected: targets.len(),
                    });
                }
            }
        }
        if let Some(bad) = mask.iter().position(|&m| m > 1) {
            return Err(Error::invalid(format!(
                "attention_mask[{bad}] is {}, not 0 or 1",
                mask[bad]
            )));
        }
        self.inputs.ids.write(ctx, &b.input_ids)?;
        self.inputs.types.write(ctx, &types)?;
        match labels {
            // Position t predicts token t + 1 (transformers shifts the same way); the last
            // position of each sequence predicts nothing.
            LossLabels::Classes(classes) if self.model.head == Head::CausalLm => {
                classes.write(ctx, &shift_labels(&b.labels, self.seq))?
            }
            LossLabels::Classes(classes) => classes.write(ctx, &b.labels)?,
            LossLabels::Targets(targets) => targets.write(ctx, &b.float_labels)?,
        }
        self.inputs.write_mask(ctx, &mask)
    }

    /// Submits one step on the last batch set (one submission); its metrics arrive through
    /// the returned [`Pending`] (await it, or [`Pending::wait`] natively). Steps may be
    /// submitted before earlier ones are read: the GPU runs them in order.
    pub fn step(&mut self, ctx: &Context) -> Result<Pending<StepMetrics>> {
        let lr = self
            .optimizer
            .as_mut()
            .map(|o| o.prepare(ctx))
            .transpose()?;
        let start = Instant::now();
        let pending = self.submit_with_metrics(ctx, self.dispatches(), true, lr)?;
        let encode = start.elapsed();
        Ok(pending.then(move |mut metrics| {
            metrics.encode = encode;
            metrics
        }))
    }

    /// Submits `dispatches` in one compute pass (timed, when `timed` and the device has
    /// timestamps), then copies the step's metrics out of the loss, the optimizer's
    /// statistics and the loss scale: the end of every step, whole or split.
    fn submit_with_metrics<'a>(
        &'a self,
        ctx: &Context,
        dispatches: impl Iterator<Item = &'a Dispatch>,
        timed: bool,
        lr: Option<f64>,
    ) -> Result<Pending<StepMetrics>> {
        let loss = self.plan.tensor(self.loss)?;
        let training = self.optimizer.is_some();
        let scale_state = self
            .optimizer
            .as_ref()
            .and(self.model.store.loss_scale())
            .map(|(state, _)| state);
        let scale_state_read = scale_state.is_some();
        let skip_counter = self.optimizer.as_ref().map(Optimizer::skip_counter);
        let timer = self.timer.as_ref().filter(|_| timed);
        let timed = timer.is_some();
        let period = ctx.queue().get_timestamp_period();
        // The metrics buffer: the loss block's 4 floats, the optimizer's 2 at 16, the loss
        // scale used and the skipped flag at 24, the pass's two timestamps at 32.
        Pending::submit(
            ctx,
            "training step",
            48,
            |encoder, readback| {
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("step"),
                        timestamp_writes: timer.map(|t| t.writes(0)),
                    });
                    for d in dispatches {
                        d.encode(&mut pass);
                    }
                }
                encoder.copy_buffer_to_buffer(loss.buffer(), loss.offset(), readback, 0, 16);
                if let Some(o) = &self.optimizer {
                    encoder.copy_buffer_to_buffer(
                        o.stats().buffer(),
                        o.stats().offset(),
                        readback,
                        16,
                        8,
                    );
                }
                if let Some(state) = scale_state {
                    encoder.copy_buffer_to_buffer(
                        state.buffer(),
                        state.offset() + 8,
                        readback,
                        24,
                        8,
                    );
                }
                if let Some(timer) = timer {
                    timer.copy_to(encoder, readback, 32);
                }
            },
            move |bytes| {
                let values: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[..32]);
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes[32..48]);
                let skipped = training && !values[5].is_finite();
                if let (true, Some(counter)) = (skipped, skip_counter) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(StepMetrics {
                    loss: values[0],
                    counted: values[1] as u32,
                    correct: values[2] as u32,
                    grad_norm: training.then_some(values[5]),
                    skipped,
                    loss_scale: scale_state_read.then_some(values[6]),
                    lr,
                    encode: Duration::ZERO,
                    gpu: timed.then(|| PassTimer::elapsed(period, [ticks[0], ticks[1]])),
                })
            },
        )
    }

    /// [`Session::step`], waiting for its metrics (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&mut self, ctx: &Context) -> Result<StepMetrics> {
        self.step(ctx)?.wait(ctx)
    }

    /// A tensor the plan kept to the end of the step; anything else may have been
    /// overwritten by a later kernel sharing its buffer, so asking for it is an error.
    fn kept(&self, id: Option<TensorId>, what: &str, kept_by: &str) -> Result<TensorId> {
        id.filter(|id| self.kept.contains(id)).ok_or_else(|| {
            Error::invalid(format!(
                "{what} is not kept by this session (only {kept_by} sessions keep it)"
            ))
        })
    }

    /// Logits of the last step (`Inference` and `Gradients` sessions), on their way back
    /// (as f32, also when a mixed-precision model computed them in f16).
    pub fn read_logits(&self, ctx: &Context) -> Result<Pending<Vec<f32>>> {
        let id = self.kept(self.outputs.logits, "the logits", "Inference and Gradients")?;
        self.plan.tensor(id)?.read_f32(ctx)
    }

    /// [`Session::read_logits`], waiting for them (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn logits(&self, ctx: &Context) -> Result<Vec<f32>> {
        self.read_logits(ctx)?.wait(ctx)
    }

    /// Shape of [`Session::logits`].
    pub fn logits_shape(&self) -> Result<Vec<usize>> {
        let id = self.kept(self.outputs.logits, "the logits", "Inference and Gradients")?;
        Ok(self.plan.tensor(id)?.shape().to_vec())
    }

    /// Hidden state `i` of the last step (0: embeddings, L: last layer; `Gradients`
    /// sessions), on its way back.
    pub fn read_hidden_state(&self, ctx: &Context, i: usize) -> Result<Pending<Vec<f32>>> {
        let id = *self
            .outputs
            .hidden
            .get(i)
            .ok_or_else(|| Error::invalid(format!("no hidden state {i}")))?;
        let id = self.kept(Some(id), &format!("hidden state {i}"), "Gradients")?;
        self.plan.tensor(id)?.read_f32(ctx)
    }

    /// [`Session::read_hidden_state`], waiting for it (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn hidden_state(&self, ctx: &Context, i: usize) -> Result<Vec<f32>> {
        self.read_hidden_state(ctx, i)?.wait(ctx)
    }

    /// The GPU memory the planned step holds.
    pub fn memory(&self) -> &MemoryReport {
        self.plan.memory()
    }

    /// Every dispatch a step submits, in order: in mixed precision the casts refreshing the
    /// f16 weights, then the graph, the unscaling of a `Gradients` session's gradients, and
    /// a `Train` session's optimizer (clipping, AdamW, the loss scale's update). What
    /// [`Session::step`] encodes, so a cost model or a profiler sees the same step.
    pub fn dispatches(&self) -> impl Iterator<Item = &Dispatch> {
        self.refresh
            .iter()
            .chain(self.plan.dispatches())
            .chain(&self.unscale)
            .chain(self.optimizer.iter().flat_map(Optimizer::dispatches))
    }

    /// Dispatches per step ([`Session::dispatches`]).
    pub fn dispatch_count(&self) -> usize {
        self.dispatches().count()
    }

    /// Calls (stage kernels) of the forward and backward passes.
    pub fn call_counts(&self) -> (usize, usize) {
        self.calls
    }

    /// The optimizer (`Train` sessions).
    pub fn optimizer(&mut self) -> Option<&mut Optimizer> {
        self.optimizer.as_mut()
    }

    /// `(batch, sequence length)` the session was planned for.
    pub fn shape(&self) -> (usize, usize) {
        (self.batch, self.seq)
    }

    /// The model it runs.
    pub fn model(&self) -> &RoFormer {
        self.model
    }

    /// The planned graph.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// Causal LM labels `[batch, seq]` shifted left by one within each sequence, the last
/// position of each ignored: what position t predicts is the token at t + 1.
pub(crate) fn shift_labels(labels: &[i32], seq: usize) -> Vec<i32> {
    labels
        .chunks(seq)
        .flat_map(|row| {
            row.iter()
                .skip(1)
                .copied()
                .chain(std::iter::once(IGNORE_INDEX))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn causal_labels_shift_within_each_sequence() {
        assert_eq!(
            super::shift_labels(&[1, 2, 3, 4, 5, -100], 3),
            [2, 3, -100, 5, -100, -100]
        );
    }
}
