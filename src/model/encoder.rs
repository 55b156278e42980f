//! Inference: a RoFormer with its weights only (no gradients, no optimizer state), on any
//! head, run on requests of up to `max_batch` sequences of any lengths up to the model's,
//! asynchronously.
//!
//! A request's sequences are padded to a bucket: the batch to the next power of two (up to
//! `max_batch`) and the length to the next power of two (at least 8, at most
//! `max_position_embeddings`). Each bucket is planned once, when first used, and kept in a
//! small least-recently-used cache; every plan lays its activations in one shared pool of
//! buffers (buffer i as large as the largest plan's buffer i), since requests run on the
//! GPU one after another.
//! Padding sits after each sequence's tokens and is masked out of attention, so a
//! sequence's results do not depend on what it was batched with (to rounding: a longer
//! bucket sums a softmax row in another order).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::graph::{self, GraphInputs, GraphOutputs};
use super::performer::Projections;
use super::{
    load_weights, param_shapes, parse_pretrained, prepare, read_pretrained, with_path,
    AttentionKind, Head, RoFormerConfig,
};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, MemoryReport, Plan, TensorId};
use crate::io::HostTensors;
use crate::params::ParamStore;
use crate::readback::Pending;
use crate::tensor::{DType, Tensor};

/// Limits of an [`Encoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderOptions {
    /// Most sequences one request may hold (multiple choice: counting every choice).
    pub max_batch: usize,
    /// Most planned buckets kept at once; the least recently used is dropped beyond it.
    pub max_plans: usize,
    /// What weights and activations are stored as: [`DType::F32`], or [`DType::F16`]
    /// (needs the device feature `SHADER_F16`; half the memory, results within about 1e-2
    /// relative of f32's: see NOTES.md). Kernels accumulate in f32 either way; results come
    /// back as f32.
    pub precision: DType,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            max_batch: 32,
            max_plans: 8,
            precision: DType::F32,
        }
    }
}

/// What a request wants back. Asking [`Results`] for anything else is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Want {
    /// The last layer's output, `[T, hidden]` per sequence.
    pub last_hidden_state: bool,
    /// Every hidden state (the embeddings' output, then each layer's), `[T, hidden]` each.
    pub hidden_states: bool,
    /// The first token's (CLS) last hidden state, `[hidden]` per sequence.
    pub first_token: bool,
    /// The head's output: see [`Results::logits`], [`Results::start_logits`] and
    /// [`Results::choice_logits`].
    pub logits: bool,
}

impl Want {
    /// The head's output only.
    pub fn logits() -> Want {
        Want {
            logits: true,
            ..Want::default()
        }
    }

    /// The last hidden state only.
    pub fn last_hidden_state() -> Want {
        Want {
            last_hidden_state: true,
            ..Want::default()
        }
    }
}

/// One sequence of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequence {
    /// Token ids, each below the vocabulary size; at least one.
    pub input_ids: Vec<u32>,
    /// Token types, as many as ids; empty means all 0.
    pub token_type_ids: Vec<u32>,
    /// 1 for tokens, 0 for padding the caller added, as many as ids; empty means all 1.
    pub attention_mask: Vec<u32>,
}

impl Sequence {
    /// A sequence of these ids, token types 0, no padding.
    pub fn new(input_ids: Vec<u32>) -> Sequence {
        Sequence {
            input_ids,
            ..Sequence::default()
        }
    }
}

/// A batch to run: sequences of any lengths (a ragged batch), and what to return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The sequences. For a multiple-choice model: the choices of each example, one example
    /// after another, the choices of one example all of one length (as transformers takes
    /// them, `[examples, choices, T]`).
    pub sequences: Vec<Sequence>,
    /// Choices per example (multiple-choice models only; 0 otherwise).
    pub choices: usize,
    /// What to return.
    pub want: Want,
    /// For a head with logits per token (the LM heads, token classification, question
    /// answering): the positions of each sequence whose logits to return, a list per
    /// sequence, in the order wanted (fill-mask: its mask tokens). `None`: every position of
    /// every sequence. Only these rows are read back from the GPU.
    pub logit_positions: Option<Vec<Vec<usize>>>,
}

impl Request {
    /// A request for `want` of each sequence.
    pub fn new(sequences: Vec<Sequence>, want: Want) -> Request {
        Request {
            sequences,
            choices: 0,
            want,
            logit_positions: None,
        }
    }
}

/// A plain host array: a shape and its elements, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: Vec<f32>,
}

/// What one sequence got back.
#[derive(Clone, Debug, Default)]
struct SequenceOutputs {
    last_hidden_state: Option<Array>,
    hidden_states: Option<Vec<Array>>,
    first_token: Option<Array>,
    logits: Option<Array>,
}

/// The results of a request, per sequence (in the request's order).
#[derive(Clone, Debug)]
pub struct Results {
    head: Head,
    choices: usize,
    sequences: Vec<SequenceOutputs>,
}

impl Results {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    /// Whether there are none (never: a request holds at least one sequence).
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    fn sequence(&self, i: usize) -> Result<&SequenceOutputs> {
        self.sequences.get(i).ok_or_else(|| {
            Error::invalid(format!(
                "sequence {i} of a request of {}",
                self.sequences.len()
            ))
        })
    }

    fn not_requested(what: &str, field: &str) -> Error {
        Error::invalid(format!(
            "{what} was not requested (set Want::{field} in the request)"
        ))
    }

    /// The last hidden state of sequence `i`, `[T, hidden]`.
    pub fn last_hidden_state(&self, i: usize) -> Result<&Array> {
        self.sequence(i)?
            .last_hidden_state
            .as_ref()
            .ok_or_else(|| Self::not_requested("the last hidden state", "last_hidden_state"))
    }

    /// Every hidden state of sequence `i`: the embeddings' output, then each layer's.
    pub fn hidden_states(&self, i: usize) -> Result<&[Array]> {
        self.sequence(i)?
            .hidden_states
            .as_deref()
            .ok_or_else(|| Self::not_requested("every hidden state", "hidden_states"))
    }

    /// The first token's last hidden state for sequence `i`, `[hidden]`.
    pub fn first_token(&self, i: usize) -> Result<&Array> {
        self.sequence(i)?
            .first_token
            .as_ref()
            .ok_or_else(|| Self::not_requested("the first token's state", "first_token"))
    }

    /// The head's output for sequence `i`: `[T, vocab]` (masked and causal LM), `[labels]`
    /// (sequence classification), `[T, labels]` (token classification), `[T, 2]` (question
    /// answering: start and end, see also [`Results::start_logits`]), `[1]` (multiple
    /// choice: this choice's score, see [`Results::choice_logits`]). With
    /// [`Request::logit_positions`], the rows of those positions only, in their order.
    pub fn logits(&self, i: usize) -> Result<&Array> {
        if self.head == Head::Encoder {
            return Err(Error::invalid("a RoFormerModel has no head, so no logits"));
        }
        self.sequence(i)?
            .logits
            .as_ref()
            .ok_or_else(|| Self::not_requested("the logits", "logits"))
    }

    fn qa_column(&self, i: usize, column: usize) -> Result<Vec<f32>> {
        if self.head != Head::QuestionAnswering {
            return Err(Error::invalid(format!(
                "start and end logits come from a question-answering model, not {}",
                self.head.architecture()
            )));
        }
        Ok(self.logits(i)?.data.chunks(2).map(|p| p[column]).collect())
    }

    /// Question answering: the start logits of sequence `i`, `[T]`.
    pub fn start_logits(&self, i: usize) -> Result<Vec<f32>> {
        self.qa_column(i, 0)
    }

    /// Question answering: the end logits of sequence `i`, `[T]`.
    pub fn end_logits(&self, i: usize) -> Result<Vec<f32>> {
        self.qa_column(i, 1)
    }

    /// Multiple choice: the scores of example `e`'s choices.
    pub fn choice_logits(&self, e: usize) -> Result<Vec<f32>> {
        if self.head != Head::MultipleChoice {
            return Err(Error::invalid(format!(
                "choice logits come from a multiple-choice model, not {}",
                self.head.architecture()
            )));
        }
        (e * self.choices..(e + 1) * self.choices)
            .map(|i| Ok(self.logits(i)?.data[0]))
            .collect()
    }
}

/// The read-back values as f32, each `(byte offset, count, type)` field in turn.
pub(super) fn to_f32(bytes: &[u8], fields: &[(usize, usize, DType)]) -> Vec<f32> {
    let mut values = Vec::with_capacity(fields.iter().map(|f| f.1).sum());
    for &(offset, n, dtype) in fields {
        let at = &bytes[offset..offset + n * dtype.size()];
        match dtype {
            DType::F16 => values.extend(
                bytemuck::pod_collect_to_vec::<u8, half::f16>(at)
                    .iter()
                    .map(|v| v.to_f32()),
            ),
            _ => values.extend(bytemuck::pod_collect_to_vec::<u8, f32>(at)),
        }
    }
    values
}

/// A batch shape and what it keeps: one plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BucketKey {
    rows: usize,
    seq: usize,
    want: Want,
}

/// One planned bucket: its inputs, its plan and the tensors it keeps.
struct Bucket {
    inputs: GraphInputs,
    plan: Plan,
    /// What the request wants, in the order [`ResultLayout::split`] reads it back.
    kept: Vec<TensorId>,
}

/// The graph tensors `want` asks for, in read-back order: the hidden states (every one, or
/// the last for the last hidden state and the first token's), then the head's output.
fn wanted(outputs: &GraphOutputs, want: Want) -> Vec<TensorId> {
    let mut kept = Vec::new();
    if want.hidden_states {
        kept.extend(&outputs.hidden);
    } else if want.last_hidden_state || want.first_token {
        kept.extend(outputs.hidden.last());
    }
    if want.logits {
        kept.extend(outputs.logits);
    }
    kept
}

/// What the encoder keeps between requests.
#[derive(Default)]
struct Plans {
    /// Least recently used first.
    buckets: Vec<(BucketKey, Arc<Bucket>)>,
    /// Where every plan's activations live.
    pool: Vec<Tensor>,
}

/// A RoFormer for inference. See the module documentation.
pub struct Encoder {
    config: RoFormerConfig,
    head: Head,
    store: ParamStore,
    table: Tensor,
    /// Performer attention's random projections (none for other kinds).
    projections: Projections,
    options: EncoderOptions,
    /// Held from planning through submission, so two threads never interleave their
    /// inputs.
    plans: Mutex<Plans>,
    /// Bytes held by the generations in progress (key/value caches or recurrent states, and
    /// their activations).
    generations: Arc<AtomicU64>,
}

impl Encoder {
    /// An inference model with zeroed weights (see [`Encoder::load_tensors`]).
    pub fn new(
        ctx: &Context,
        config: RoFormerConfig,
        head: Head,
        options: EncoderOptions,
    ) -> Result<Encoder> {
        if options.max_batch == 0 || options.max_plans == 0 {
            return Err(Error::invalid(format!(
                "EncoderOptions need max_batch and max_plans of at least 1, got {options:?}"
            )));
        }
        if !options.precision.is_float() {
            return Err(Error::invalid(format!(
                "EncoderOptions::precision is f32 or f16, not {:?}",
                options.precision
            )));
        }
        if config.attention == AttentionKind::Performer && options.precision != DType::F32 {
            return Err(Error::invalid(super::PERFORMER_F32));
        }
        let table = prepare(ctx, &config, head)?;
        let store =
            ParamStore::weights_only_as(ctx, &param_shapes(&config, head), options.precision)?;
        let projections = Projections::new(ctx, &config)?;
        Ok(Encoder {
            config,
            head,
            store,
            table,
            projections,
            options,
            plans: Mutex::default(),
            generations: Arc::default(),
        })
    }

    /// Loads `config.json` and a checkpoint (`.safetensors`, a sharded checkpoint's
    /// `model.safetensors.index.json`, or a folder holding either; f16, bf16 and f32). The
    /// head comes from the config's `architectures`, else from the tensor names.
    pub fn from_pretrained(
        ctx: &Context,
        config: impl AsRef<Path>,
        weights: impl AsRef<Path>,
        options: EncoderOptions,
    ) -> Result<Encoder> {
        let weights = weights.as_ref();
        let (cfg, head, tensors) = read_pretrained(config.as_ref(), weights)?;
        let encoder = Encoder::new(ctx, cfg, head, options).map_err(|e| with_path(e, weights))?;
        encoder
            .load_tensors(ctx, &tensors)
            .map_err(|e| with_path(e, weights))?;
        Ok(encoder)
    }

    /// [`Encoder::from_pretrained`] from `config.json`'s text and a safetensors file's bytes
    /// (in a browser, what the page fetched).
    pub fn from_bytes(
        ctx: &Context,
        config: &str,
        weights: &[u8],
        options: EncoderOptions,
    ) -> Result<Encoder> {
        let (cfg, head, tensors) = parse_pretrained(config, weights)?;
        let encoder = Encoder::new(ctx, cfg, head, options)?;
        encoder.load_tensors(ctx, &tensors)?;
        Ok(encoder)
    }

    /// HF's random initialisation (see [`super::RoFormer::init_random`]): the same weights
    /// as a [`super::RoFormer`] initialised with the same seed.
    pub fn init_random(&self, ctx: &Context, seed: u64) -> Result<()> {
        super::init_random(ctx, &self.store, &self.config, seed)
    }

    /// Uploads every weight from HF-named tensors (see [`super::RoFormer::load_tensors`]).
    pub fn load_tensors(&self, ctx: &Context, tensors: &HostTensors) -> Result<()> {
        load_weights(ctx, &self.store, &self.projections, &self.config, tensors)
    }

    /// A performer model's random projections.
    pub(super) fn projections(&self) -> &Projections {
        &self.projections
    }

    /// Its weights.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &RoFormerConfig {
        &self.config
    }

    /// The head.
    pub fn head(&self) -> Head {
        self.head
    }

    /// GPU memory held: the weights (a performer model's projections included); the pool
    /// all plans share for activations (buffer i as large as the largest plan's buffer i,
    /// for the buckets planned so far); the inputs of
    /// every cached plan; the key/value caches and activations of the generations in
    /// progress ([`Encoder::generate`]). Transient read-back buffers are not counted.
    pub fn memory(&self) -> MemoryReport {
        let plans = self.plans.lock().unwrap();
        MemoryReport {
            params: self.store.memory() + self.projections.memory(),
            pooled: plans.pool.iter().map(Tensor::byte_size).sum(),
            buffers: plans.pool.len(),
            unpooled: plans
                .buckets
                .iter()
                .map(|(_, b)| b.plan.memory().unpooled)
                .max()
                .unwrap_or(0),
            inputs: plans
                .buckets
                .iter()
                .map(|(_, b)| b.plan.memory().inputs)
                .sum(),
            generation: self.generations.load(Ordering::SeqCst),
        }
    }

    /// What generation builds its passes from: the configuration, the weights, the RoPE
    /// table.
    pub(super) fn parts(&self) -> (&RoFormerConfig, &ParamStore, &Tensor) {
        (&self.config, &self.store, &self.table)
    }

    /// The count of bytes the generations in progress hold.
    pub(super) fn generation_bytes(&self) -> Arc<AtomicU64> {
        self.generations.clone()
    }

    /// Buckets planned and cached now.
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().unwrap().buckets.len()
    }

    /// Runs a request and returns its results as they come back (see
    /// [`crate::readback::Pending`]). Submits the work before returning; never waits for
    /// the GPU (planning a new bucket compiles its pipelines).
    pub fn run(&self, ctx: &Context, request: &Request) -> Result<Pending<Results>> {
        let lengths = self.check(request)?;
        let rows = request.sequences.len();
        let longest = *lengths.iter().max().unwrap_or(&1);
        let key = BucketKey {
            rows: bucket(rows, 1, self.options.max_batch),
            seq: bucket(longest, 8, self.config.max_position_embeddings),
            want: request.want,
        };
        let mut plans = self.plans.lock().unwrap();
        let b = self.bucket(ctx, &mut plans, key)?;
        self.write_inputs(ctx, &b, request, &lengths)?;
        let layout = ResultLayout {
            head: self.head,
            hidden: self.config.hidden_size,
            layers: self.config.num_hidden_layers,
            head_width: self.head.classes(&self.config),
            seq: key.seq,
            want: request.want,
            lengths,
            logit_positions: request.logit_positions.clone(),
            choices: request.choices,
        };
        // Only the rows wanted come back: each piece's values, one after another in the
        // read-back buffer. Copies start and end on 4 bytes, so an f16 piece may bring a
        // value on either side, which `fields` skips.
        let mut copies = Vec::new();
        let mut fields: Vec<(usize, usize, DType)> = Vec::new();
        let mut size = 0u64;
        for piece in layout.pieces() {
            let t = b.plan.tensor(b.kept[piece.tensor])?;
            let es = t.dtype().size() as u64;
            let first = piece.start as u64 * es;
            let from = first & !3;
            let to = (first + piece.count as u64 * es).next_multiple_of(4);
            copies.push((t.clone(), t.offset() + from, size, to - from));
            fields.push(((size + first - from) as usize, piece.count, t.dtype()));
            size += to - from;
        }
        let pending = Pending::submit(
            ctx,
            "inference",
            size,
            |encoder, readback| {
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("inference"),
                        timestamp_writes: None,
                    });
                    b.plan.encode(&mut pass);
                }
                for (t, from, to, bytes) in &copies {
                    encoder.copy_buffer_to_buffer(t.buffer(), *from, readback, *to, *bytes);
                }
            },
            move |bytes| Ok(layout.split(&to_f32(bytes, &fields))),
        );
        drop(plans);
        pending
    }

    /// [`Encoder::run`], waiting for the results (for scripts; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_blocking(&self, ctx: &Context, request: &Request) -> Result<Results> {
        self.run(ctx, request)?.wait(ctx)
    }

    /// Checks a request and returns each sequence's length.
    fn check(&self, r: &Request) -> Result<Vec<usize>> {
        let c = &self.config;
        if r.sequences.is_empty() {
            return Err(Error::invalid("a request needs at least one sequence"));
        }
        if r.sequences.len() > self.options.max_batch {
            return Err(Error::invalid(format!(
                "a request of {} sequences is over this encoder's max_batch ({})",
                r.sequences.len(),
                self.options.max_batch
            )));
        }
        if r.want == Want::default() {
            return Err(Error::invalid("the request wants nothing back (see Want)"));
        }
        if r.want.logits && self.head == Head::Encoder {
            return Err(Error::invalid(
                "a RoFormerModel has no head, so no logits: ask for hidden states",
            ));
        }
        match (self.head == Head::MultipleChoice, r.choices) {
            (true, 0) => {
                return Err(Error::invalid(
                    "a multiple-choice request needs its number of choices per example",
                ))
            }
            (false, c) if c != 0 => {
                return Err(Error::invalid(format!(
                    "choices are for multiple-choice models, not {}",
                    self.head.architecture()
                )))
            }
            _ => {}
        }
        let mut lengths = Vec::with_capacity(r.sequences.len());
        for (i, s) in r.sequences.iter().enumerate() {
            let n = s.input_ids.len();
            if n == 0 {
                return Err(Error::invalid(format!("sequence {i} is empty")));
            }
            if n > c.max_position_embeddings {
                return Err(Error::invalid(format!(
                    "sequence {i} has {n} tokens, more than max_position_embeddings ({})",
                    c.max_position_embeddings
                )));
            }
            for (what, len) in [
                ("token_type_ids", s.token_type_ids.len()),
                ("attention_mask", s.attention_mask.len()),
            ] {
                if len != 0 && len != n {
                    return Err(Error::DataLength {
                        what,
                        len,
                        shape: vec![n],
                        expected: n,
                    });
                }
            }
            if let Some(bad) = s.attention_mask.iter().position(|&m| m > 1) {
                return Err(Error::invalid(format!(
                    "sequence {i}: attention_mask[{bad}] is {}, not 0 or 1",
                    s.attention_mask[bad]
                )));
            }
            lengths.push(n);
        }
        if let Some(positions) = &r.logit_positions {
            if !self.head.logits_per_token() || !r.want.logits {
                return Err(Error::invalid(format!(
                    "logit_positions choose rows of logits per token: they need Want::logits \
                     and a head with a row per token, not {}",
                    self.head.architecture()
                )));
            }
            if positions.len() != lengths.len() {
                return Err(Error::invalid(format!(
                    "logit_positions holds {} lists for {} sequences",
                    positions.len(),
                    lengths.len()
                )));
            }
            for (i, (list, &n)) in positions.iter().zip(&lengths).enumerate() {
                if let Some(&p) = list.iter().find(|&&p| p >= n) {
                    return Err(Error::invalid(format!(
                        "logit_positions: position {p} of sequence {i}, which has {n} tokens"
                    )));
                }
            }
        }
        if r.choices > 0 {
            if r.sequences.len() % r.choices != 0 {
                return Err(Error::invalid(format!(
                    "{} sequences are not whole examples of {} choices",
                    r.sequences.len(),
                    r.choices
                )));
            }
            for (e, ls) in lengths.chunks(r.choices).enumerate() {
                if ls.iter().any(|&l| l != ls[0]) {
                    return Err(Error::invalid(format!(
                        "example {e}'s choices have lengths {ls:?}: pad them to one length, as \
                         transformers takes them"
                    )));
                }
            }
        }
        Ok(lengths)
    }

    /// The planned bucket for `key`, planning it (and growing the arena) when needed.
    fn bucket(&self, ctx: &Context, plans: &mut Plans, key: BucketKey) -> Result<Arc<Bucket>> {
        if let Some(i) = plans.buckets.iter().position(|(k, _)| *k == key) {
            let entry = plans.buckets.remove(i);
            let b = entry.1.clone();
            plans.buckets.push(entry);
            return Ok(b);
        }
        let c = &self.config;
        let inputs = GraphInputs::new(ctx, c, self.head, key.rows, key.seq, false)?;
        let mut g = Graph::with_activations(self.store.dtype());
        let outputs = graph::build(
            c,
            self.head,
            &self.store,
            &self.table,
            &self.projections,
            &mut g,
            &inputs,
        )?;
        let kept = wanted(&outputs, key.want);
        for &id in &kept {
            g.keep(id);
        }
        let (plan, replaced) = g.plan_in(ctx, &self.store, false, &mut plans.pool)?;
        if replaced {
            // The cached plans are bound to a buffer the pool no longer holds.
            plans.buckets.clear();
        }
        let b = Arc::new(Bucket { inputs, plan, kept });
        if plans.buckets.len() >= self.options.max_plans {
            plans.buckets.remove(0);
        }
        plans.buckets.push((key, b.clone()));
        Ok(b)
    }

    /// Writes a request's sequences into the bucket's inputs, each padded after its tokens.
    fn write_inputs(
        &self,
        ctx: &Context,
        b: &Bucket,
        r: &Request,
        lengths: &[usize],
    ) -> Result<()> {
        let (rows, seq) = (b.inputs.batch, b.inputs.seq);
        let pad = self.config.pad_token_id.unwrap_or(0);
        let mut ids = vec![pad; rows * seq];
        let mut types = vec![0u32; rows * seq];
        let mut mask = vec![0u32; rows * seq];
        for (row, s) in r.sequences.iter().enumerate() {
            let at = row * seq;
            let n = s.input_ids.len();
            ids[at..at + n].copy_from_slice(&s.input_ids);
            if !s.token_type_ids.is_empty() {
                types[at..at + n].copy_from_slice(&s.token_type_ids);
            }
            if s.attention_mask.is_empty() {
                mask[at..at + n].fill(1);
            } else {
                mask[at..at + n].copy_from_slice(&s.attention_mask);
            }
        }
        b.inputs.ids.write(ctx, &ids)?;
        b.inputs.types.write(ctx, &types)?;
        b.inputs.write_mask(ctx, &mask)?;
        if let Some(positions) = &b.inputs.summary_positions {
            let last = Head::summary_is_last(&self.config);
            let mut p: Vec<u32> = lengths
                .iter()
                .map(|&n| if last { (n - 1) as u32 } else { 0 })
                .collect();
            p.resize(rows, 0);
            positions.write(ctx, &p)?;
        }
        Ok(())
    }
}

/// The smallest power of two at least `n` and `min`, capped at `max`.
fn bucket(n: usize, min: usize, max: usize) -> usize {
    n.max(min).next_power_of_two().min(max)
}

/// What a request reads back, and how its values are cut per sequence.
struct ResultLayout {
    head: Head,
    hidden: usize,
    layers: usize,
    head_width: usize,
    /// The bucket's length: the kept tensors are `[rows, seq, width]` per token.
    seq: usize,
    want: Want,
    lengths: Vec<usize>,
    logit_positions: Option<Vec<Vec<usize>>>,
    choices: usize,
}

/// `count` values of the `tensor`th kept tensor from element `start`.
struct Piece {
    tensor: usize,
    start: usize,
    count: usize,
}

impl ResultLayout {
    /// Hidden states come back (`[rows, seq, hidden]` kept tensors, every layer's or the
    /// last's); which of their rows: all of a sequence's, or its first only.
    fn states(&self) -> (usize, bool) {
        if self.want.hidden_states {
            (self.layers + 1, true)
        } else if self.want.last_hidden_state {
            (1, true)
        } else if self.want.first_token {
            (1, false)
        } else {
            (0, false)
        }
    }

    /// What to copy back, in the order [`ResultLayout::split`] takes it: for each state
    /// tensor, each sequence's rows (never the bucket's padding); then each sequence's
    /// logits, at the positions asked for.
    fn pieces(&self) -> Vec<Piece> {
        let (states, whole) = self.states();
        let mut pieces = Vec::new();
        for tensor in 0..states {
            for (i, &n) in self.lengths.iter().enumerate() {
                pieces.push(Piece {
                    tensor,
                    start: i * self.seq * self.hidden,
                    count: if whole { n * self.hidden } else { self.hidden },
                });
            }
        }
        if self.want.logits {
            let w = self.head_width;
            for (i, &n) in self.lengths.iter().enumerate() {
                if !self.head.logits_per_token() {
                    pieces.push(Piece {
                        tensor: states,
                        start: i * w,
                        count: w,
                    });
                    continue;
                }
                match &self.logit_positions {
                    None => pieces.push(Piece {
                        tensor: states,
                        start: i * self.seq * w,
                        count: n * w,
                    }),
                    Some(positions) => pieces.extend(positions[i].iter().map(|&p| Piece {
                        tensor: states,
                        start: (i * self.seq + p) * w,
                        count: w,
                    })),
                }
            }
        }
        pieces
    }

    /// The read-back values (the pieces' in turn) as each sequence's outputs.
    fn split(&self, all: &[f32]) -> Results {
        let mut at = 0;
        let mut take = |n: usize| {
            let part = all[at..at + n].to_vec();
            at += n;
            part
        };
        let (states, whole) = self.states();
        let hidden = self.hidden;
        let n_seq = self.lengths.len();
        // state[layer][sequence]
        let mut by_state: Vec<Vec<Array>> = Vec::with_capacity(states);
        for _ in 0..states {
            by_state.push(
                self.lengths
                    .iter()
                    .map(|&n| {
                        let rows = if whole { n } else { 1 };
                        Array {
                            shape: vec![rows, hidden],
                            data: take(rows * hidden),
                        }
                    })
                    .collect(),
            );
        }
        let w = self.head_width;
        let logits: Vec<Option<Array>> = (0..n_seq)
            .map(|i| {
                if !self.want.logits {
                    return None;
                }
                Some(if !self.head.logits_per_token() {
                    Array {
                        shape: vec![w],
                        data: take(w),
                    }
                } else {
                    let rows = self
                        .logit_positions
                        .as_ref()
                        .map_or(self.lengths[i], |p| p[i].len());
                    Array {
                        shape: vec![rows, w],
                        data: take(rows * w),
                    }
                })
            })
            .collect();
        let sequences = logits
            .into_iter()
            .enumerate()
            .map(|(i, logits)| {
                let last = by_state.last().map(|s| s[i].clone());
                SequenceOutputs {
                    hidden_states: self
                        .want
                        .hidden_states
                        .then(|| by_state.iter().map(|s| s[i].clone()).collect()),
                    first_token: self.want.first_token.then(|| Array {
                        shape: vec![hidden],
                        data: last
                            .as_ref()
                            .map_or(Vec::new(), |l| l.data[..hidden].to_vec()),
                    }),
                    last_hidden_state: last.filter(|_| self.want.last_hidden_state),
                    logits,
                }
            })
            .collect();
        Results {
            head: self.head,
            choices: self.choices,
            sequences,
        }
    }
}
