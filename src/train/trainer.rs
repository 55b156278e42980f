//! The training loop: transformers' `Trainer` over this library's sessions.
//!
//! Each epoch visits the training examples in file order or in a new random order (from
//! the seed and the epoch alone), in batches of `per_device_train_batch_size` (the last one
//! smaller, as transformers keeps it); `gradient_accumulation_steps` batches make one update.
//! A batch runs in a session planned for its length rounded up to a multiple of
//! `pad_to_multiple_of` (8 by default), planned once and kept. Every `logging_steps`
//! updates a log entry (transformers' `log_history` keys: `loss`, `grad_norm`,
//! `learning_rate`, `epoch`, `step`), every `eval_steps` an evaluation (`eval_loss` and
//! the task's metrics), every `save_steps` a checkpoint. A corpus streamed from its file
//! ([`TrainData::Stream`]) is visited pass after pass through a shuffle buffer instead (see
//! [`super::TextStream`]). Natively each update's batches are prepared (masked, padded;
//! streamed text read and tokenized) on a background thread while the update before runs
//! (`dataloader_num_workers`).
//!
//! Everything an update does is a function of the arguments and its number (with streamed
//! data, and the updates before it in its pass), and the optimizer state is saved with the
//! weights (and the stream's position), so a run resumed from a checkpoint computes the same
//! losses as the uninterrupted run, bit for bit, on the same adapter.
//!
//! Where transformers' own conventions are odd, this follows them, so that the two agree
//! step for step: a RoFormer's forward takes `**kwargs`, so transformers' Trainer hands it
//! the count of labelled tokens of the whole accumulation window and does not divide the
//! loss by `gradient_accumulation_steps`; the causal LM's loss uses that count (the window's
//! tokens weigh equally), the other heads' losses ignore it (each batch's mean loss is
//! summed over the window). The loss logged for an update is that sum.
//!
//! [`Trainer::distributed`] makes the trainer one rank of a data-parallel run (see
//! [`super::distributed`]): the same updates over a global batch of every rank's batches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::args::{Precision, TrainingArguments};
use super::batches::{
    updates_per_epoch, Layout, MemoryWindows, PreparedBatch, Source, StreamPosition, Window,
};
use super::dataset::{Dataset, Example, LabelNames, Task};
use super::distributed::{self, Distributed};
use super::metrics::{self, Predictions};
use super::prefetch::Feed;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::io::{self, HostTensor};
use crate::model::{Mode, RoFormer, Session, StepMetrics};
use crate::ops::elementwise;
use crate::optim::{LossScaling, Optimizer};
use crate::tensor::{DType, Tensor};

/// Mixed precision gives up after this many skipped updates in a row (the loss scale has
/// been halved as often: 2^-20 of where it was).
const MAX_OVERFLOWS_IN_A_ROW: usize = 20;

/// One entry of the run's history: transformers' `log_history` keys (`step`, `epoch`,
/// then `loss`, `grad_norm`, `learning_rate` for a training log, `eval_loss` and
/// `eval_<metric>` for an evaluation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Updates done.
    pub step: u64,
    /// Epochs done, as a fraction.
    pub epoch: f64,
    /// The values, by transformers' names.
    #[serde(flatten)]
    pub values: std::collections::BTreeMap<String, f64>,
}

impl LogEntry {
    /// A value by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Whether it is an evaluation's (a `*_loss` other than the training `loss`).
    pub fn is_eval(&self) -> bool {
        self.values.keys().any(|k| k.ends_with("_loss"))
    }
}

/// Where a run stands; saved as `trainer_state.json` in each checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The task.
    pub task: Task,
    /// The arguments.
    pub args: TrainingArguments,
    /// The label names (classification tasks).
    pub labels: Vec<String>,
    /// Updates done.
    pub global_step: u64,
    /// Updates in all.
    pub max_steps: u64,
    /// The history: every log and evaluation.
    pub log_history: Vec<LogEntry>,
    /// The best evaluation's metric, and its checkpoint.
    pub best_metric: Option<f64>,
    /// The checkpoint of the best evaluation.
    pub best_model_checkpoint: Option<PathBuf>,
    /// Evaluations since the best.
    pub evaluations_without_improvement: usize,
    /// Seconds spent training, over every resumed part.
    pub seconds: f64,
    /// Mixed precision: the loss scale and its count of good steps when this was saved.
    pub loss_scale: Option<(f32, u32)>,
    /// Updates the optimizer skipped (mixed precision's overflows, as PyTorch's GradScaler
    /// skips them): AdamW has taken `global_step - skipped_updates`.
    pub skipped_updates: u64,
    /// Skipped updates since the last one taken.
    pub overflows_in_a_row: usize,
    /// Training data that streams: where the stream stands (`None` for data in memory,
    /// where the update's number says it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamPosition>,
    /// Data-parallel ranks the run trains on (1: one process); a resumed run must have as
    /// many.
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

/// What the trainer reports as it goes.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// An update was done: its number, loss and tokens per second.
    Step {
        /// Updates done.
        step: u64,
        /// Of all.
        of: u64,
        /// The update's loss.
        loss: f64,
        /// The share of its labelled rows or tokens predicted right (as the loss kernel
        /// counts them; `None` with gradient accumulation).
        accuracy: Option<f64>,
        /// Padded tokens per second of wall time (from the moment its batches were there).
        tokens_per_s: f64,
        /// Seconds the update waited for its batches: their preparation on the training
        /// thread, or what the background thread had not yet prepared.
        data_wait_s: f64,
    },
    /// A training log entry.
    Log(&'a LogEntry),
    /// An evaluation.
    Eval(&'a LogEntry),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
}

/// The training data of a run: examples held in memory, or a text file read as training
/// goes. [`Trainer::new`] takes either (`Dataset` and `TextStream` convert into it).
#[derive(Clone, Debug)]
pub enum TrainData {
    /// A dataset held in memory.
    Memory(Arc<Dataset>),
    /// A plain-text corpus streamed from its file.
    #[cfg(feature = "text")]
    Stream(super::stream::TextStream),
}

impl From<Dataset> for TrainData {
    fn from(d: Dataset) -> TrainData {
        TrainData::Memory(Arc::new(d))
    }
}

impl From<Arc<Dataset>> for TrainData {
    fn from(d: Arc<Dataset>) -> TrainData {
        TrainData::Memory(d)
    }
}

#[cfg(feature = "text")]
impl From<super::stream::TextStream> for TrainData {
    fn from(s: super::stream::TextStream) -> TrainData {
        TrainData::Stream(s)
    }
}

impl TrainData {
    fn streams(&self) -> bool {
        !matches!(self, TrainData::Memory(_))
    }
}

/// Trains a model on a dataset (see the module documentation).
pub struct Trainer<'m> {
    ctx: &'m Context,
    model: &'m RoFormer,
    /// (Shared, so an evaluation can hold its dataset while it borrows the trainer.)
    train: TrainData,
    eval: Option<Arc<Dataset>>,
    // (A browser tab saves nothing itself: see `model_files`.)
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    output_dir: PathBuf,
    /// Files copied into every saved folder beside the model (the tokenizer's).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    extra_files: Vec<PathBuf>,
    state: TrainerState,
    /// How examples become batches.
    layout: Layout,
    /// The windows of the next updates (started at the first update taken).
    feed: Option<Feed>,
    /// Sessions by batch shape `(rows, length)`, planned once and kept.
    train_sessions: HashMap<(usize, usize), Session<'m>>,
    eval_sessions: HashMap<(usize, usize), Session<'m>>,
    /// Gradient accumulation: gradient sessions, the sum of the window's gradients and the
    /// optimizer that applies it.
    accumulation: Option<Accumulation<'m>>,
    /// Losses of the updates since the last log entry.
    since_log: Vec<f64>,
    last_grad_norm: Option<f64>,
    last_lr: f64,
    last_accuracy: Option<f64>,
    last_data_wait: f64,
    /// Data-parallel training: this rank's place and communicator (`None`: one process).
    distributed: Option<&'m Distributed>,
}

struct Accumulation<'m> {
    sessions: HashMap<(usize, usize), Session<'m>>,
    /// The window's gradients so far, chunk by chunk as the store lays them out.
    sums: Vec<Tensor>,
    optimizer: Optimizer,
}

impl<'m> Trainer<'m> {
    /// A new run of `task` on `model` (built for it: its head and, for classification, one
    /// label per name in `labels`), writing to `output_dir`. `extra_files` (the tokenizer's)
    /// are copied beside every saved model. The training data is a [`Dataset`] or a
    /// [`TextStream`](super::TextStream) (a run that streams needs `max_steps`, and cannot
    /// `group_by_length`); the evaluation data is held in memory.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &'m Context,
        model: &'m RoFormer,
        task: Task,
        args: TrainingArguments,
        train: impl Into<TrainData>,
        eval: Option<Dataset>,
        labels: &LabelNames,
        output_dir: impl AsRef<Path>,
        extra_files: Vec<PathBuf>,
    ) -> Result<Trainer<'m>> {
        args.check()?;
        let train = train.into();
        let in_memory = match &train {
            TrainData::Memory(d) => Some(d.as_ref()),
            #[cfg(feature = "text")]
            TrainData::Stream(_) => None,
        };
        for (role, data) in [("training", in_memory), ("evaluation", eval.as_ref())] {
            if let Some(d) = data.filter(|d| d.examples.is_empty()) {
                return Err(Error::invalid(format!(
                    "the {role} data ({}) has no examples",
                    d.source
                )));
            }
        }
        #[cfg(feature = "text")]
        if let TrainData::Stream(stream) = &train {
            let path = stream.path().display();
            if stream.task() != task {
                return Err(Error::invalid(format!(
                    "{path} was opened for {:?}, and the run is {task:?}",
                    stream.task()
                )));
            }
            if args.group_by_length {
                return Err(Error::invalid(format!(
                    "group_by_length sorts the whole training set by length, and a streamed \
                     one ({path}) is never held whole: train without one of them"
                )));
            }
        }
        if model.head() != task.head() {
            return Err(Error::invalid(format!(
                "{task:?} trains a {}, and the model is a {}",
                task.head().architecture(),
                model.head().architecture()
            )));
        }
        let regression = model.config().classification_problem() == "regression";
        if task.has_labels() && !regression && model.config().labels() != labels.names.len() {
            return Err(Error::invalid(format!(
                "the model has {} labels, the data {} ({})",
                model.config().labels(),
                labels.names.len(),
                labels.names.join(", ")
            )));
        }
        if (args.precision == Precision::Mixed) != model.params().is_mixed() {
            return Err(Error::invalid(
                "the arguments' precision and the model's differ (RoFormer::use_mixed_precision)",
            ));
        }
        if args.gradient_accumulation_steps > 1 && model.params().is_mixed() {
            return Err(Error::invalid(
                "gradient_accumulation_steps above 1 trains in f32 only, for now",
            ));
        }
        let max_steps = match (args.max_steps, in_memory) {
            (Some(steps), _) => steps,
            (None, Some(d)) => {
                let per_epoch = updates_per_epoch(
                    d.examples.len(),
                    args.per_device_train_batch_size,
                    args.gradient_accumulation_steps,
                    1,
                );
                (args.num_train_epochs * per_epoch as f64).ceil() as u64
            }
            (None, None) => {
                return Err(Error::invalid(
                    "max_steps: a run that streams its training data does not know how many \
                     updates an epoch has before reading the file through: set max_steps (as \
                     transformers' Trainer asks of a dataset without a length)",
                ))
            }
        };
        let positions = model.config().max_position_embeddings;
        let layout = Layout {
            pad: model.config().pad_token_id.unwrap_or(0),
            task,
            seed: args.seed,
            pad_to_multiple_of: args.pad_to_multiple_of,
            max_len: args.max_length.map_or(positions, |m| m.min(positions)),
            batch_size: args.per_device_train_batch_size,
            accumulation: args.gradient_accumulation_steps,
            rank: 0,
            ranks: 1,
        };
        let accumulation = (args.gradient_accumulation_steps > 1)
            .then(|| -> Result<Accumulation<'m>> {
                let store = model.params();
                let sums = store
                    .chunk_views(ctx)?
                    .iter()
                    .map(|[_, g, _, _]| Tensor::zeros(ctx, g.shape(), DType::F32))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Accumulation {
                    sessions: HashMap::new(),
                    sums,
                    optimizer: Optimizer::new(ctx, store, args.train_options(max_steps))?,
                })
            })
            .transpose()?;
        let state = TrainerState {
            task,
            args,
            labels: labels.names.clone(),
            global_step: 0,
            max_steps,
            log_history: Vec::new(),
            best_metric: None,
            best_model_checkpoint: None,
            evaluations_without_improvement: 0,
            seconds: 0.0,
            loss_scale: None,
            skipped_updates: 0,
            overflows_in_a_row: 0,
            stream: train.streams().then(StreamPosition::default),
            world_size: 1,
        };
        Ok(Trainer {
            ctx,
            model,
            train,
            eval: eval.map(Arc::new),
            output_dir: output_dir.as_ref().to_path_buf(),
            extra_files,
            state,
            layout,
            feed: None,
            train_sessions: HashMap::new(),
            eval_sessions: HashMap::new(),
            accumulation,
            since_log: Vec::new(),
            last_grad_norm: None,
            last_lr: 0.0,
            last_accuracy: None,
            last_data_wait: 0.0,
            distributed: None,
        })
    }

    /// Makes this trainer rank `d.rank()` of a data-parallel run (see
    /// [`super::distributed`]): each update runs this rank's shard of a global batch of
    /// `d.size() × per_device_train_batch_size` and averages the gradients over the ranks;
    /// rank 0 alone logs, evaluates and saves. Call it on every rank, before the first
    /// update, after [`Trainer::new`] or [`Trainer::resume`]: the ranks compare their
    /// adapters, configurations and arguments, weights (and optimizer state) and training
    /// data, and fail alike, naming what differs; a resumed run must have the checkpoint's
    /// count of ranks. Without gradient accumulation, for now. Native only (it waits).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn distributed(mut self, d: &'m Distributed) -> Result<Trainer<'m>> {
        let args = &self.state.args;
        if !self.train_sessions.is_empty() {
            return Err(Error::invalid(
                "Trainer::distributed must come before the first update",
            ));
        }
        if args.gradient_accumulation_steps > 1 {
            return Err(Error::invalid(
                "data-parallel training with gradient_accumulation_steps above 1 is not \
                 supported yet: raise per_device_train_batch_size or the count of ranks",
            ));
        }
        // Everything that decides the updates must be the same on every rank.
        let caps = self.ctx.capabilities();
        let adapter = format!("{} {:?} {}", caps.adapter_name, caps.backend, caps.driver);
        d.agree(
            "adapter",
            distributed::Fnv::default()
                .bytes(adapter.as_bytes())
                .finish(),
            &format!(
                "this rank has {adapter}; give every rank the same kind of GPU and driver \
                 (WGPU_ADAPTER_NAME)"
            ),
        )?;
        let setup = serde_json::to_string(&(
            self.model.config(),
            &self.state,
            self.model.head().architecture(),
        ))
        .map_err(|e| Error::invalid(format!("the run's settings: {e}")))?;
        d.agree(
            "model configuration, arguments and run state",
            distributed::Fnv::default().bytes(setup.as_bytes()).finish(),
            "start every rank with the same command line, model and checkpoint",
        )?;
        let mut weights = distributed::Fnv::default();
        for (name, shape, values) in self.model.params().read_values(self.ctx)?.wait(self.ctx)? {
            weights.bytes(name.as_bytes()).words(&shape).words(&values);
        }
        let (m, v) = self.model.params().download_moments(self.ctx)?;
        weights.words(&m).words(&v);
        d.agree(
            "initial weights and optimizer state",
            weights.finish(),
            "every rank must load the same model or checkpoint (and the same seed)",
        )?;
        let data = match &self.train {
            TrainData::Memory(data) => Arc::clone(data),
            #[cfg(feature = "text")]
            TrainData::Stream(s) => {
                return Err(Error::invalid(format!(
                    "{} streams, and data-parallel training reads its training data in \
                     memory for now: train without --streaming, or on one process",
                    s.path().display()
                )))
            }
        };
        let mut hash = distributed::Fnv::default();
        hash.bytes(format!("{:?}", data.masking).as_bytes());
        for e in &data.examples {
            hash.words(&e.input_ids)
                .words(&e.token_type_ids)
                .words(&e.labels)
                .words(&e.float_labels);
        }
        d.agree(
            "training data",
            hash.finish(),
            "every rank must read the same training file with the same tokenizer",
        )?;
        self.distributed = Some(d);
        if self.state.global_step == 0 {
            if self.state.args.max_steps.is_none() {
                let args = &self.state.args;
                let per_epoch = updates_per_epoch(
                    data.examples.len(),
                    args.per_device_train_batch_size,
                    args.gradient_accumulation_steps,
                    d.size(),
                );
                self.state.max_steps = (args.num_train_epochs * per_epoch as f64).ceil() as u64;
            }
            self.state.world_size = d.size();
        } else {
            self.check_world_size()?;
        }
        (self.layout.rank, self.layout.ranks) = (d.rank(), d.size());
        // Windows prepared before this call were one process's.
        self.feed = None;
        self.distributed = Some(d);
        Ok(self)
    }

    /// Whether this process logs, evaluates and saves: rank 0 of a data-parallel run, or
    /// the one process.
    pub fn is_main(&self) -> bool {
        self.distributed.is_none_or(|d| d.is_main())
    }

    /// A run resumed from a data-parallel run's checkpoint must have its count of ranks.
    fn check_world_size(&self) -> Result<()> {
        let (saved, now) = (self.state.world_size, self.ranks().1);
        if saved == now {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "the checkpoint's run trained on {saved} data-parallel rank(s) of \
             per_device_train_batch_size {}; this one has {now}: resume it with \
             mpirun -np {saved}{}",
            self.state.args.per_device_train_batch_size,
            if now == 1 {
                " (and the `mpi` feature)"
            } else {
                ""
            }
        )))
    }

    /// `(rank, ranks)`: this process's place in a data-parallel run, `(0, 1)` alone.
    fn ranks(&self) -> (usize, usize) {
        self.distributed.map_or((0, 1), |d| (d.rank(), d.size()))
    }

    /// Continues the run saved in `checkpoint` (a folder [`Trainer::save_checkpoint`]
    /// wrote): the model must have been loaded from it (its weights, and its precision);
    /// this restores the optimizer moments, the loss scale and the run's state. The data
    /// and arguments must be the run's (streamed data: the same file, which the resumed run
    /// reads from the start of the pass it stopped in, skipping the updates already taken).
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        ctx: &'m Context,
        model: &'m RoFormer,
        train: impl Into<TrainData>,
        eval: Option<Dataset>,
        checkpoint: impl AsRef<Path>,
        output_dir: impl AsRef<Path>,
        extra_files: Vec<PathBuf>,
    ) -> Result<Trainer<'m>> {
        let dir = checkpoint.as_ref();
        let state = read_state(dir)?;
        let train = train.into();
        if state.stream.is_some() != train.streams() {
            let (was, is) = match state.stream {
                Some(_) => ("streamed", "is held in memory"),
                None => ("was held in memory", "streams"),
            };
            return Err(Error::invalid(format!(
                "{}: the run's training data {was}, and the data given to resume it {is}",
                dir.display()
            )));
        }
        let labels = LabelNames {
            names: state.labels.clone(),
            from_model: true,
        };
        let mut t = Trainer::new(
            ctx,
            model,
            state.task,
            state.args.clone(),
            train,
            eval,
            &labels,
            output_dir,
            extra_files,
        )?;
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
        if let Some((scale, good_steps)) = state.loss_scale {
            model.params().set_loss_scale(ctx, scale, good_steps)?;
        }
        t.state = state;
        Ok(t)
    }

    /// Where the run stands.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The window of update `step`, from the feed (started from where the run stands when
    /// there is none).
    fn next_window(&mut self, step: u64) -> Result<Window> {
        if self.feed.is_none() {
            let source = match &self.train {
                TrainData::Memory(d) => Source::Memory(MemoryWindows::new(
                    Arc::clone(d),
                    self.layout.clone(),
                    self.state.args.shuffle,
                    self.state.args.group_by_length,
                    step,
                )),
                #[cfg(feature = "text")]
                TrainData::Stream(s) => Source::Stream(super::stream::StreamWindows::new(
                    s.clone(),
                    self.layout.clone(),
                    self.state.args.shuffle,
                    self.state.stream.unwrap_or_default(),
                    step,
                )),
            };
            let background = self.state.args.dataloader_num_workers > 0;
            self.feed = Some(Feed::start(source, background)?);
        }
        let window = self.feed.as_mut().expect("started above").next_window()?;
        if window.step != step {
            return Err(Error::invalid(format!(
                "the batches prepared were update {}'s, and update {step} is next",
                window.step
            )));
        }
        Ok(window)
    }

    /// Seconds the last update waited for its batches (see [`TrainEvent::Step`]).
    pub fn last_data_wait(&self) -> f64 {
        self.last_data_wait
    }

    /// The share of the last update's labelled rows or tokens predicted right, as
    /// [`TrainEvent::Step`] reports it (`None` before the first update, and with gradient
    /// accumulation): for a caller that steps the run itself ([`Trainer::step`]).
    pub fn last_accuracy(&self) -> Option<f64> {
        self.last_accuracy
    }

    /// Runs update `global_step + 1`: its batches, forward, backward, clipping and AdamW.
    /// Returns padded tokens per second.
    pub async fn step(&mut self) -> Result<f64> {
        self.check_world_size()?;
        let step = self.state.global_step + 1;
        let waiting = Instant::now();
        let result = match self.next_window(step) {
            Ok(window) => {
                self.last_data_wait = waiting.elapsed().as_secs_f64();
                self.update(step, window).await
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            // The feed ran ahead of the failed update: a later one starts a new feed from
            // where the run stands.
            self.feed = None;
        }
        result
    }

    async fn update(&mut self, step: u64, window: Window) -> Result<f64> {
        let start = Instant::now();
        let mut tokens = 0;
        let loss;
        let position = window.position;
        if self.accumulation.is_none() {
            let PreparedBatch {
                batch, rows, seq, ..
            } = window
                .batches
                .into_iter()
                .next()
                .ok_or_else(|| Error::invalid(format!("update {step} has no batch")))?;
            // A session per batch shape: the last batch of an epoch may be smaller.
            tokens += rows * seq;
            let (ctx, model) = (self.ctx, self.model);
            let options = self.state.args.train_options(self.state.max_steps);
            let skipped = self.state.skipped_updates;
            let session = match self.train_sessions.entry((rows, seq)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(model.session(ctx, rows, seq, Mode::Train(options))?)
                }
            };
            session.set_batch(ctx, &batch)?;
            // Sessions of other lengths share the parameters and moments: the count of
            // updates taken sets AdamW's bias correction and the schedule (a skipped one,
            // mixed precision's overflow, is not taken).
            session
                .optimizer()
                .expect("a training session")
                .set_step(step - 1 - skipped);
            let m: StepMetrics = match self.distributed {
                // (Never in a browser: `distributed` is native only.)
                #[cfg(not(target_arch = "wasm32"))]
                Some(d) => {
                    let (m, all_tokens) = d.step(ctx, session, tokens)?;
                    tokens = all_tokens;
                    m
                }
                _ => session.step(ctx)?.await?,
            };
            let overflowed = m.skipped && m.loss.is_finite() && m.loss_scale.is_some();
            if !overflowed && (!m.loss.is_finite() || !m.grad_norm.is_none_or(f32::is_finite)) {
                // AdamW skipped the update: replay the step call by call to name the
                // culprit.
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
            if overflowed {
                self.give_up_after_overflows(step, &m)?;
            } else {
                self.state.overflows_in_a_row = 0;
            }
            self.last_accuracy = Some(m.correct as f64 / m.counted.max(1) as f64);
            loss = m.loss as f64;
            self.last_grad_norm = m.grad_norm.filter(|n| n.is_finite()).map(f64::from);
            self.last_lr = m.lr.unwrap_or(0.0);
            if m.skipped {
                self.state.skipped_updates += 1;
            }
        } else {
            loss = self
                .accumulated_step(step, &window.batches, &mut tokens)
                .await?;
        }
        let seconds = start.elapsed().as_secs_f64();
        self.state.global_step = step;
        if position.is_some() {
            self.state.stream = position;
        }
        self.state.seconds += seconds;
        self.since_log.push(loss);
        Ok(tokens as f64 / seconds)
    }

    /// Mixed precision: an update whose f16 gradients overflowed was skipped and the loss
    /// scale halved; when halving does not help (the gradients overflow f16 whatever the
    /// scale), the run stops with an error saying so.
    fn give_up_after_overflows(&mut self, step: u64, m: &StepMetrics) -> Result<()> {
        self.state.overflows_in_a_row += 1;
        let in_a_row = self.state.overflows_in_a_row;
        if in_a_row >= MAX_OVERFLOWS_IN_A_ROW {
            return Err(Error::NonFinite {
                step,
                tensor: format!(
                    "the f16 gradients ({in_a_row} updates in a row overflowed, the loss scale \
                     is down to {:e}; train this model in f32)",
                    m.loss_scale.unwrap_or(0.0) / 2.0
                ),
                during: "mixed-precision backward pass".into(),
            });
        }
        Ok(())
    }

    /// An update over a window of batches whose gradients add up (f32).
    async fn accumulated_step(
        &mut self,
        step: u64,
        window: &[PreparedBatch],
        tokens: &mut usize,
    ) -> Result<f64> {
        let (ctx, model) = (self.ctx, self.model);
        let causal = self.state.task == Task::TextGeneration;
        // transformers' count of the window's labelled tokens (a causal LM's shifted).
        let total: usize = window.iter().map(|b| b.labelled).sum::<usize>().max(1);
        let mut loss = 0.0;
        for (k, prepared) in window.iter().enumerate() {
            let PreparedBatch {
                batch,
                rows,
                seq,
                labelled,
            } = prepared;
            let (rows, seq) = (*rows, *seq);
            *tokens += rows * seq;
            let acc = self.accumulation.as_mut().expect("accumulating");
            let session = match acc.sessions.entry((rows, seq)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(model.session(ctx, rows, seq, Mode::Gradients)?)
                }
            };
            session.set_batch(ctx, batch)?;
            let pending = session.step(ctx)?;
            // This batch's share: the causal LM's loss is over the window's tokens, the
            // others' is each batch's mean (summed over the window, as transformers).
            let factor = if causal {
                *labelled as f32 / total as f32
            } else {
                1.0
            };
            let chunks = model.params().chunk_views(ctx)?;
            let adds = chunks
                .iter()
                .zip(&acc.sums)
                .map(|([_, g, _, _], sum)| {
                    if k == 0 {
                        elementwise::plan_axpby(ctx, factor, g, 0.0, None, sum)
                    } else {
                        elementwise::plan_accumulate(ctx, factor, g, sum)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            ctx.submit(&adds)?;
            let m = pending.await?;
            if !m.loss.is_finite() {
                return Err(Error::NonFinite {
                    step,
                    tensor: "the loss".into(),
                    during: "training".into(),
                });
            }
            loss += m.loss as f64 * factor as f64;
        }
        // The window's gradients where the optimizer reads them, then the update.
        let acc = self.accumulation.as_mut().expect("accumulating");
        let chunks = model.params().chunk_views(ctx)?;
        let mut dispatches = chunks
            .iter()
            .zip(&acc.sums)
            .map(|([_, g, _, _], sum)| elementwise::plan_axpby(ctx, 1.0, sum, 0.0, None, g))
            .collect::<Result<Vec<_>>>()?;
        acc.optimizer.set_step(step - 1);
        let lr = acc.optimizer.prepare(ctx)?;
        dispatches.extend(acc.optimizer.dispatches().cloned());
        ctx.submit(&dispatches)?;
        let stats: Vec<f32> = acc.optimizer.stats().read(ctx)?.await?;
        if !stats[1].is_finite() {
            return Err(Error::NonFinite {
                step,
                tensor: "the gradients".into(),
                during: "training".into(),
            });
        }
        self.last_grad_norm = Some(stats[1] as f64);
        self.last_lr = lr;
        Ok(loss)
    }

    /// A log entry of the updates since the last: their mean loss, the last update's
    /// gradient norm and learning rate.
    pub fn log(&mut self) -> LogEntry {
        let mut values = std::collections::BTreeMap::new();
        if !self.since_log.is_empty() {
            let mean = self.since_log.iter().sum::<f64>() / self.since_log.len() as f64;
            values.insert("loss".to_string(), mean);
        }
        if let Some(n) = self.last_grad_norm {
            values.insert("grad_norm".to_string(), n);
        }
        values.insert("learning_rate".to_string(), self.last_lr);
        self.since_log.clear();
        let entry = LogEntry {
            step: self.state.global_step,
            epoch: self.epoch(),
            values,
        };
        self.state.log_history.push(entry.clone());
        entry
    }

    /// Epochs done, as transformers counts them: the batches run in this epoch over its
    /// batches (with gradient accumulation the last window of an epoch may be shorter).
    fn epoch(&self) -> f64 {
        let step = self.state.global_step;
        let data = match (&self.state.stream, &self.train) {
            (Some(position), _) => return position.progress,
            (None, TrainData::Memory(d)) => d,
            #[cfg(feature = "text")]
            (None, TrainData::Stream(_)) => return 0.0,
        };
        if step == 0 {
            return 0.0;
        }
        let ranks = self.ranks().1;
        let (b, g) = (
            self.state.args.per_device_train_batch_size,
            self.state.args.gradient_accumulation_steps,
        );
        let per_epoch = updates_per_epoch(data.examples.len(), b, g, ranks);
        let batches = distributed::batches_per_epoch(data.examples.len(), b, ranks);
        let g = g as u64;
        let (epoch, window) = ((step - 1) / per_epoch, (step - 1) % per_epoch);
        let done = ((window + 1) * g).min(batches);
        epoch as f64 + done as f64 / batches as f64
    }

    /// Evaluates on the evaluation data (or, without any, the training data): `eval_loss`
    /// (the batches' mean losses weighted by their sequences, as transformers averages) and
    /// the task's metrics ([`super::metrics`]), recorded in the history.
    pub async fn evaluate(&mut self) -> Result<LogEntry> {
        let dataset = match (&self.eval, &self.train) {
            (Some(eval), _) => Arc::clone(eval),
            (None, TrainData::Memory(train)) => Arc::clone(train),
            #[cfg(feature = "text")]
            (None, TrainData::Stream(s)) => {
                return Err(Error::invalid(format!(
                    "nothing to evaluate: no evaluation data, and the training data streams \
                     from {} (evaluation data is held in memory: give an evaluation file)",
                    s.path().display()
                )))
            }
        };
        self.evaluate_on(&dataset, "eval").await
    }

    /// [`Trainer::evaluate`] on any dataset of the task, its values named `{prefix}_loss`,
    /// `{prefix}_accuracy`, ... (transformers' `metric_key_prefix`: "test" for a test set).
    pub async fn evaluate_on(&mut self, dataset: &Dataset, prefix: &str) -> Result<LogEntry> {
        if dataset.examples.is_empty() {
            return Err(Error::invalid(format!(
                "nothing to evaluate: {} has no examples",
                dataset.source
            )));
        }
        let mut order: Vec<usize> = (0..dataset.examples.len()).collect();
        if self.state.args.group_by_length {
            // Batches of similar lengths pad less; the metrics do not depend on the order.
            order.sort_by_key(|&i| dataset.examples[i].len());
        }
        let (mut loss_sum, mut sequences) = (0.0f64, 0usize);
        let mut predictions = Predictions::default();
        let mut float_correct = 0usize;
        let width = self.model.head().classes(self.model.config());
        for indices in order.chunks(self.state.args.per_device_eval_batch_size) {
            let examples: Vec<(&Example, usize)> =
                indices.iter().map(|&i| (&dataset.examples[i], i)).collect();
            // Fill-mask evaluation masks the same way every time (a fixed epoch).
            let PreparedBatch {
                batch, rows, seq, ..
            } = self
                .layout
                .collate(&examples, dataset.masking.as_ref(), u64::MAX);
            let (ctx, model) = (self.ctx, self.model);
            let session = match self.eval_sessions.entry((rows, seq)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(model.session(ctx, rows, seq, Mode::Inference)?)
                }
            };
            session.set_batch(ctx, &batch)?;
            let m = session.step(ctx)?.await?;
            let logits = session.read_logits(ctx)?.await?;
            if m.counted > 0 {
                loss_sum += m.loss as f64 * indices.len() as f64;
                sequences += indices.len();
            }
            if batch.float_labels.is_empty() {
                predictions.add(self.state.task, &batch, &logits, indices.len(), seq, width);
            } else {
                // Multi-label: rows whose every label is right; regression: none.
                float_correct += m.correct as usize;
            }
        }
        let eval_loss = loss_sum / sequences.max(1) as f64;
        let mut values = metrics::compute(self.state.task, &predictions, &self.state.labels);
        values.insert("eval_loss".to_string(), eval_loss);
        match self.model.config().classification_problem() {
            _ if self.state.task != Task::TextClassification => {}
            "multi_label_classification" => {
                values.insert(
                    "eval_accuracy".into(),
                    float_correct as f64 / sequences.max(1) as f64,
                );
            }
            "regression" => {
                values.insert("eval_mse".into(), eval_loss);
            }
            _ => {}
        }
        if matches!(self.state.task, Task::FillMask | Task::TextGeneration) {
            values.insert("eval_perplexity".to_string(), eval_loss.exp());
        }
        let values = values
            .into_iter()
            .map(|(k, v)| match k.strip_prefix("eval_") {
                Some(rest) => (format!("{prefix}_{rest}"), v),
                None => (k, v),
            })
            .collect();
        let entry = LogEntry {
            step: self.state.global_step,
            epoch: self.epoch(),
            values,
        };
        self.state.log_history.push(entry.clone());
        Ok(entry)
    }

    /// Records an evaluation against the best so far; true when training should stop
    /// (`early_stopping_patience` evaluations without improving).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    fn judge(&mut self, entry: &LogEntry, checkpoint: Option<&Path>) -> bool {
        let name = self
            .state
            .args
            .metric_for_best_model
            .clone()
            .unwrap_or_else(|| "eval_loss".into());
        let name = if name.starts_with("eval_") {
            name
        } else {
            format!("eval_{name}")
        };
        let Some(value) = entry.get(&name) else {
            return false;
        };
        let lower_is_better = name == "eval_loss" || name == "eval_perplexity";
        let better = match self.state.best_metric {
            None => true,
            Some(best) if lower_is_better => value < best,
            Some(best) => value > best,
        };
        if better {
            self.state.best_metric = Some(value);
            self.state.best_model_checkpoint = checkpoint.map(Path::to_path_buf);
            self.state.evaluations_without_improvement = 0;
        } else {
            self.state.evaluations_without_improvement += 1;
        }
        self.state
            .args
            .early_stopping_patience
            .is_some_and(|p| self.state.evaluations_without_improvement >= p)
    }

    /// Writes the model as a transformers folder (config with the label names, weights,
    /// the tokenizer's files) into `dir`, each file atomically.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_model(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        self.model.save(self.ctx, dir)?;
        for f in &self.extra_files {
            let name = f
                .file_name()
                .ok_or_else(|| Error::invalid("a file without a name"))?;
            let bytes = std::fs::read(f).map_err(|source| Error::Io {
                path: f.display().to_string(),
                source,
            })?;
            io::write_atomic(dir.join(name), &bytes)?;
        }
        Ok(())
    }

    /// The files [`Trainer::save_model`] writes, in memory (where there is no file system:
    /// a browser tab offers them for download): `config.json` (the label names in its
    /// `id2label` and `label2id`) and `model.safetensors`, then each of `tokenizer_files`
    /// (name and bytes: the tokenizer's, which a browser holds in memory too) as given.
    pub async fn model_files(
        &self,
        tokenizer_files: &[(String, Vec<u8>)],
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = self.model.to_files(self.ctx).await?;
        files.extend(tokenizer_files.iter().cloned());
        Ok(files)
    }

    /// Writes a checkpoint of the current update into `output_dir/checkpoint-N`: the
    /// model folder, the optimizer moments and `trainer_state.json`, under a temporary name
    /// renamed when complete; then keeps `save_total_limit` of them (the best too).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let name = format!("checkpoint-{}", self.state.global_step);
        let dir = self.output_dir.join(&name);
        let tmp = self
            .output_dir
            .join(format!(".{name}.tmp-{}", std::process::id()));
        let io_err = |p: &Path, source| Error::Io {
            path: p.display().to_string(),
            source,
        };
        remove_temporaries(&self.output_dir);
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        self.save_model(&tmp)?;
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
        let text = serde_json::to_string_pretty(&state)
            .map_err(|e| Error::invalid(format!("writing trainer_state.json: {e}")))?;
        io::write_atomic(tmp.join("trainer_state.json"), text.as_bytes())?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| io_err(&dir, e))?;
        self.rotate_checkpoints()?;
        Ok(dir)
    }

    /// Deletes the oldest checkpoints beyond `save_total_limit` (never the best).
    #[cfg(not(target_arch = "wasm32"))]
    fn rotate_checkpoints(&self) -> Result<()> {
        let Some(limit) = self.state.args.save_total_limit else {
            return Ok(());
        };
        let mut done = checkpoints(&self.output_dir)?;
        let best = self.state.best_model_checkpoint.clone();
        done.retain(|(_, p)| Some(p) != best.as_ref());
        let keep = limit.saturating_sub(usize::from(best.is_some())).max(1);
        for (_, old) in done.iter().rev().skip(keep) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }

    /// Trains to the last update: logs, evaluations and checkpoints as the arguments say,
    /// then (with `load_best_model_at_end`) the best checkpoint's weights, and the model
    /// saved into `output_dir` (native only, blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn train(&mut self, mut on_event: impl FnMut(TrainEvent<'_>)) -> Result<()> {
        self.check_world_size()?;
        let args = self.state.args.clone();
        let last = self.state.max_steps;
        // A data-parallel run's rank 0 alone reports, evaluates and saves.
        let main = self.is_main();
        let mut on_event = |e: TrainEvent<'_>| {
            if main {
                on_event(e)
            }
        };
        let mut stop = false;
        while self.state.global_step < last && !stop {
            let tokens_per_s = self.ctx.block_on(self.step())?;
            let step = self.state.global_step;
            on_event(TrainEvent::Step {
                step,
                of: last,
                loss: *self.since_log.last().unwrap_or(&f64::NAN),
                accuracy: self.last_accuracy,
                tokens_per_s,
                data_wait_s: self.last_data_wait,
            });
            if step % args.logging_steps == 0 || step == last {
                let entry = self.log();
                on_event(TrainEvent::Log(&entry));
            }
            // (The last update's evaluation comes after the loop.)
            let evaluate = self.eval.is_some()
                && args.eval_steps.is_some_and(|e| step % e == 0)
                && step < last;
            let mut entry = None;
            if evaluate && main {
                let e = self.ctx.block_on(self.evaluate())?;
                on_event(TrainEvent::Eval(&e));
                entry = Some(e);
            }
            if args.save_steps > 0 && step % args.save_steps == 0 && step < last && main {
                let path = self.save_checkpoint()?;
                if let Some(e) = &entry {
                    stop = self.judge(e, Some(&path));
                }
                // The judged state is in the next checkpoint; rewrite this one's.
                self.write_state(&path)?;
                on_event(TrainEvent::Checkpoint(&path));
            } else if let Some(e) = &entry {
                stop = self.judge(e, None);
            }
            if let (true, Some(d)) = (evaluate, self.distributed) {
                // Early stopping is rank 0's call.
                stop = d.broadcast_flag("the early-stopping decision", stop)?;
            }
        }
        if !main {
            // Done when rank 0 has evaluated and saved (or the run ends with its error).
            if let Some(d) = self.distributed {
                d.barrier("waiting for rank 0 to save the model")?;
            }
            return Ok(());
        }
        // The last update's evaluation when there is evaluation data (as transformers'
        // Trainer, none without), unless the loop did it (early stopping) or the run was
        // resumed from its final checkpoint: then it was judged already. Then the final
        // checkpoint.
        let step = self.state.global_step;
        let done = self
            .state
            .log_history
            .last()
            .is_some_and(|e| e.step == step && e.get("eval_loss").is_some());
        let fresh = match self.eval.is_some() && !done {
            true => {
                let e = self.ctx.block_on(self.evaluate())?;
                on_event(TrainEvent::Eval(&e));
                Some(e)
            }
            false => None,
        };
        let path = self.save_checkpoint()?;
        if let Some(e) = &fresh {
            self.judge(e, Some(&path));
        }
        self.write_state(&path)?;
        on_event(TrainEvent::Checkpoint(&path));
        if args.load_best_model_at_end {
            if let Some(best) = self.state.best_model_checkpoint.clone() {
                let tensors = io::read_checkpoint(best.join("model.safetensors"))?;
                self.model.load_tensors(self.ctx, &tensors)?;
            }
        }
        self.save_model(self.output_dir.clone())?;
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| Error::invalid(format!("writing trainer_state.json: {e}")))?;
        io::write_atomic(self.output_dir.join("trainer_state.json"), text.as_bytes())?;
        if let Some(d) = self.distributed {
            d.barrier("waiting for rank 0 to save the model")?;
        }
        Ok(())
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn write_state(&self, dir: &Path) -> Result<()> {
        let mut state = self.state.clone();
        if self.model.params().is_mixed() {
            state.loss_scale = Some(
                self.model
                    .params()
                    .read_loss_scale(self.ctx)?
                    .wait(self.ctx)?,
            );
        }
        let text = serde_json::to_string_pretty(&state)
            .map_err(|e| Error::invalid(format!("writing trainer_state.json: {e}")))?;
        io::write_atomic(dir.join("trainer_state.json"), text.as_bytes())
    }
}

/// Temporaries left by a process killed while writing a checkpoint.
#[cfg(not(target_arch = "wasm32"))]
fn remove_temporaries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && n.contains(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The complete checkpoints under `output_dir`, by update, oldest first.
#[cfg(not(target_arch = "wasm32"))]
pub fn checkpoints(output_dir: impl AsRef<Path>) -> Result<Vec<(u64, PathBuf)>> {
    let dir = output_dir.as_ref();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The run state saved in a checkpoint folder.
pub fn read_state(dir: impl AsRef<Path>) -> Result<TrainerState> {
    let path = dir.as_ref().join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The model for a run: the head the task trains, with the data's label names in its
/// config, in the arguments' precision; its weights those of `weights` (a checkpoint's
/// tensors, `roformer.`-prefixed or not) where they are there, HF's initialisation from the
/// seed for the rest (as `from_pretrained` initialises a head the checkpoint has not: an
/// MLM checkpoint fine-tuned as a classifier gets a new classifier). Returns the model and
/// the parameters newly initialised. Native only (it waits); [`model_for_async`] awaits.
#[cfg(not(target_arch = "wasm32"))]
pub fn model_for(
    ctx: &Context,
    config: crate::model::RoFormerConfig,
    task: Task,
    labels: &LabelNames,
    args: &TrainingArguments,
    weights: Option<&crate::io::HostTensors>,
) -> Result<(RoFormer, Vec<String>)> {
    ctx.block_on(model_for_async(ctx, config, task, labels, args, weights))
}

/// [`model_for`], awaited rather than waited for (a browser tab's thread must not block).
pub async fn model_for_async(
    ctx: &Context,
    mut config: crate::model::RoFormerConfig,
    task: Task,
    labels: &LabelNames,
    args: &TrainingArguments,
    weights: Option<&crate::io::HostTensors>,
) -> Result<(RoFormer, Vec<String>)> {
    // (Regression has no label names: its width is the config's.)
    if task.has_labels() && !labels.names.is_empty() {
        config.num_labels = Some(labels.names.len());
        config.id2label = Some(
            labels
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), n.clone()))
                .collect(),
        );
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), serde_json::Value::from(i)))
            .collect();
        config
            .extra
            .insert("label2id".into(), serde_json::Value::Object(label2id));
    }
    if task == Task::TextGeneration {
        config.is_decoder = true;
    }
    let mut model = RoFormer::new(ctx, config, task.head())?;
    model.init_random(ctx, args.seed)?;
    let mut fresh = Vec::new();
    if let Some(given) = weights {
        let lookup = |name: &str| {
            given
                .get(name)
                .or_else(|| name.strip_prefix("roformer.").and_then(|n| given.get(n)))
        };
        let mut merged = crate::io::HostTensors::new();
        for (name, shape, values) in model.params().read_values(ctx)?.await? {
            match lookup(&name) {
                Some(t) => {
                    merged.insert(name, t.clone());
                }
                None => {
                    merged.insert(name.clone(), HostTensor::f32(&shape, values));
                    fresh.push(name);
                }
            }
        }
        model.load_tensors(ctx, &merged)?;
    }
    if args.precision == Precision::Mixed {
        model.use_mixed_precision(ctx, LossScaling::default())?;
    }
    Ok((model, fresh))
}
