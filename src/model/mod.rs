//! RoFormer (Su et al. 2021) as HuggingFace transformers defines it, built as a graph:
//! token ids → embeddings → layers → head → loss → gradients → optimizer.
//!
//! Parameters carry HF's own names, so a `config.json` and `.safetensors` checkpoint from
//! transformers load as they are, and what [`RoFormer::save`] writes loads back into it.

mod config;
pub mod reference;

use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

pub use config::{AttentionKind, RoFormerConfig};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{AttentionSpec, Graph, MemoryReport, Plan, PlanOptions, TensorId};
use crate::io::{self, HostTensors};
use crate::ops::cross_entropy::{Labels, IGNORE_INDEX};
use crate::ops::embedding::TokenIds;
use crate::ops::rope;
use crate::optim::{Optimizer, TrainOptions};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::timing::PassTimer;

/// The task head on top of the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `RoFormerForMaskedLM`: per-token logits over the vocabulary, decoder tied to the
    /// word embeddings.
    MaskedLm,
    /// `RoFormerForSequenceClassification`: logits over `num_labels` from the first token.
    Classification,
}

impl Head {
    /// HF's class name, as `config.json`'s `architectures` lists it.
    pub fn architecture(self) -> &'static str {
        match self {
            Head::MaskedLm => "RoFormerForMaskedLM",
            Head::Classification => "RoFormerForSequenceClassification",
        }
    }
}

/// The HF name of the sinusoidal position table (not a trained parameter).
pub const POSITION_TABLE: &str = "roformer.encoder.embed_positions.weight";
const WORDS: &str = "roformer.embeddings.word_embeddings.weight";

/// Names and shapes of every trained parameter, in HF's order.
pub fn param_shapes(c: &RoFormerConfig, head: Head) -> Vec<(String, Vec<usize>)> {
    let (e, h, i) = (c.embedding_size(), c.hidden_size, c.intermediate_size);
    let mut p: Vec<(String, Vec<usize>)> = Vec::new();
    let linear = |p: &mut Vec<(String, Vec<usize>)>, name: &str, out: usize, inp: usize| {
        p.push((format!("{name}.weight"), vec![out, inp]));
        p.push((format!("{name}.bias"), vec![out]));
    };
    let norm = |p: &mut Vec<(String, Vec<usize>)>, name: &str, n: usize| {
        p.push((format!("{name}.weight"), vec![n]));
        p.push((format!("{name}.bias"), vec![n]));
    };
    p.push((WORDS.into(), vec![c.vocab_size, e]));
    p.push((
        "roformer.embeddings.token_type_embeddings.weight".into(),
        vec![c.type_vocab_size, e],
    ));
    norm(&mut p, "roformer.embeddings.LayerNorm", e);
    if e != h {
        linear(&mut p, "roformer.embeddings_project", h, e);
    }
    for l in 0..c.num_hidden_layers {
        let pre = format!("roformer.encoder.layer.{l}");
        for part in ["query", "key", "value"] {
            linear(&mut p, &format!("{pre}.attention.self.{part}"), h, h);
        }
        linear(&mut p, &format!("{pre}.attention.output.dense"), h, h);
        norm(&mut p, &format!("{pre}.attention.output.LayerNorm"), h);
        linear(&mut p, &format!("{pre}.intermediate.dense"), i, h);
        linear(&mut p, &format!("{pre}.output.dense"), h, i);
        norm(&mut p, &format!("{pre}.output.LayerNorm"), h);
    }
    match head {
        Head::MaskedLm => {
            linear(&mut p, "cls.predictions.transform.dense", e, h);
            norm(&mut p, "cls.predictions.transform.LayerNorm", e);
            p.push(("cls.predictions.bias".into(), vec![c.vocab_size]));
        }
        Head::Classification => {
            linear(&mut p, "classifier.dense", h, h);
            linear(&mut p, "classifier.out_proj", c.labels(), h);
        }
    }
    p
}

/// A RoFormer model on the GPU: its configuration, head and parameters.
pub struct RoFormer {
    config: RoFormerConfig,
    head: Head,
    store: ParamStore,
    /// RoPE sin/cos table `[max_position_embeddings, head_dim]`.
    table: Tensor,
}

impl RoFormer {
    /// A model with zeroed parameters (see [`RoFormer::init_random`] and [`RoFormer::load_tensors`]).
    pub fn new(ctx: &Context, config: RoFormerConfig, head: Head) -> Result<RoFormer> {
        config.validate().map_err(|message| Error::Format {
            path: "config".into(),
            message,
        })?;
        let store = ParamStore::new(ctx, &param_shapes(&config, head))?;
        let table = rope::table(ctx, config.max_position_embeddings, config.head_dim())?;
        Ok(RoFormer {
            config,
            head,
            store,
            table,
        })
    }

    /// Loads `config.json` and a `.safetensors` checkpoint (HF names). The head comes from
    /// the config's `architectures`, else from the tensor names.
    pub fn from_pretrained(
        ctx: &Context,
        config: impl AsRef<Path>,
        weights: impl AsRef<Path>,
    ) -> Result<RoFormer> {
        let cfg = RoFormerConfig::from_file(config)?;
        let tensors = io::read_safetensors(&weights)?;
        let head = detect_head(&cfg, &tensors).ok_or_else(|| Error::Format {
            path: weights.as_ref().display().to_string(),
            message: "cannot tell the head: no RoFormerForMaskedLM / RoFormerForSequenceClassification in \
                      architectures, and neither cls.* nor classifier.* tensors"
                .into(),
        })?;
        let model = RoFormer::new(ctx, cfg, head)?;
        model.load_tensors(ctx, &tensors).map_err(|e| match e {
            Error::Format { message, .. } => Error::Format {
                path: weights.as_ref().display().to_string(),
                message,
            },
            other => other,
        })?;
        Ok(model)
    }

    /// Uploads every parameter from HF-named tensors (extra tensors are ignored). A missing
    /// tensor or a shape that does not match the config is an error naming the tensor.
    pub fn load_tensors(&self, ctx: &Context, tensors: &HostTensors) -> Result<()> {
        if let Some(t) = tensors.get(POSITION_TABLE) {
            let want = [self.config.max_position_embeddings, self.config.head_dim()];
            if t.shape != want {
                return Err(Error::Format {
                    path: "checkpoint".into(),
                    message: format!(
                        "tensor {POSITION_TABLE:?} has shape {:?}, but the config expects {want:?}",
                        t.shape
                    ),
                });
            }
        }
        self.store.load(ctx, tensors)
    }

    /// HF's initialisation: weights ~ N(0, initializer_range), biases 0, LayerNorm (1, 0),
    /// the padding token's embedding row 0. Deterministic from `seed`.
    pub fn init_random(&self, ctx: &Context, seed: u64) -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let std = self.config.initializer_range;
        let mut tensors = HostTensors::new();
        for s in self.store.specs() {
            let n = s.numel();
            let data: Vec<f32> = if s.name.contains("LayerNorm.weight") {
                vec![1.0; n]
            } else if s.name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let mut v: Vec<f32> = (0..n).map(|_| (normal(&mut rng) * std) as f32).collect();
                if s.name == WORDS {
                    if let Some(pad) = self.config.pad_token_id {
                        let e = s.shape[1];
                        v[pad as usize * e..(pad as usize + 1) * e].fill(0.0);
                    }
                }
                v
            };
            tensors.insert(s.name.clone(), io::HostTensor::f32(&s.shape, data));
        }
        self.store.load(ctx, &tensors)
    }

    /// Writes `config.json` and `model.safetensors` (HF names, position table included)
    /// into `dir`, each atomically.
    pub fn save(&self, ctx: &Context, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut tensors = self.store.download(ctx)?;
        tensors.push((
            POSITION_TABLE.into(),
            vec![self.config.max_position_embeddings, self.config.head_dim()],
            rope::sinusoidal_table(self.config.max_position_embeddings, self.config.head_dim()),
        ));
        io::write_safetensors(dir.join("model.safetensors"), &tensors, &[("format", "pt")])?;
        let mut config = self.config.clone();
        config.extra.insert(
            "architectures".into(),
            serde_json::json!([self.head.architecture()]),
        );
        config
            .extra
            .insert("model_type".into(), serde_json::json!("roformer"));
        if self.head == Head::Classification
            && config.num_labels.is_none()
            && config.id2label.is_none()
        {
            config.num_labels = Some(config.labels());
        }
        io::write_atomic(dir.join("config.json"), config.to_json().as_bytes())
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &RoFormerConfig {
        &self.config
    }

    /// The task head.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Its parameters (with their gradients and AdamW moments).
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// Classes the loss is taken over: the vocabulary (MLM) or the labels (classification).
    pub fn classes(&self) -> usize {
        match self.head {
            Head::MaskedLm => self.config.vocab_size,
            Head::Classification => self.config.labels(),
        }
    }

    /// Plans a step for batches of `batch` sequences of `seq` tokens. See [`Mode`].
    pub fn session(
        &self,
        ctx: &Context,
        batch: usize,
        seq: usize,
        mode: Mode,
    ) -> Result<Session<'_>> {
        Session::new(ctx, self, batch, seq, mode, PlanOptions::default())
    }

    /// [`RoFormer::session`] with explicit planner options (e.g. a buffer for every tensor,
    /// to rule out the planner when a step looks wrong).
    pub fn session_with(
        &self,
        ctx: &Context,
        batch: usize,
        seq: usize,
        mode: Mode,
        options: PlanOptions,
    ) -> Result<Session<'_>> {
        Session::new(ctx, self, batch, seq, mode, options)
    }

    /// Builds the graph: the whole model in data-flow order.
    fn build(&self, g: &mut Graph, inputs: &Inputs) -> Result<Outputs> {
        let (c, s) = (&self.config, &self.store);
        let eps = c.layer_norm_eps as f32;
        let p = |g: &mut Graph, name: &str| g.param(s, name);
        let mut hidden = Vec::new();

        // token ids → embeddings
        let words = g.param(s, WORDS)?;
        let w = g.embedding("roformer.embeddings.word_embeddings", words, &inputs.ids)?;
        let types = p(g, "roformer.embeddings.token_type_embeddings.weight")?;
        let t = g.embedding(
            "roformer.embeddings.token_type_embeddings",
            types,
            &inputs.types,
        )?;
        let sum = g.add("roformer.embeddings.sum", w, t)?;
        let (lw, lb) = (
            p(g, "roformer.embeddings.LayerNorm.weight")?,
            p(g, "roformer.embeddings.LayerNorm.bias")?,
        );
        let mut h = g.layer_norm("roformer.embeddings.LayerNorm", sum, lw, lb, eps)?;
        if c.embedding_size() != c.hidden_size {
            let (w, b) = (
                p(g, "roformer.embeddings_project.weight")?,
                p(g, "roformer.embeddings_project.bias")?,
            );
            h = g.linear("roformer.embeddings_project", h, w, Some(b))?;
        }
        hidden.push(h);

        // layers
        let spec = AttentionSpec {
            heads: c.num_attention_heads,
            causal: c.causal,
            rotary_value: c.rotary_value,
            mask: Some(match c.attention {
                AttentionKind::Softmax | AttentionKind::FusedSoftmax => {
                    inputs.additive_mask.clone()
                }
                AttentionKind::Linear => inputs.key_mask.clone(),
            }),
            rope: Some(self.table.clone()),
        };
        for l in 0..c.num_hidden_layers {
            let pre = format!("roformer.encoder.layer.{l}");
            let linear = |g: &mut Graph, name: &str, x: TensorId| -> Result<TensorId> {
                let name = format!("{pre}.{name}");
                let (w, b) = (
                    p(g, &format!("{name}.weight"))?,
                    p(g, &format!("{name}.bias"))?,
                );
                g.linear(&name, x, w, Some(b))
            };
            let q = linear(g, "attention.self.query", h)?;
            let k = linear(g, "attention.self.key", h)?;
            let v = linear(g, "attention.self.value", h)?;
            let att_name = format!("{pre}.attention.self");
            let a = match c.attention {
                AttentionKind::Softmax => g.attention(&att_name, q, k, v, spec.clone())?,
                AttentionKind::FusedSoftmax => {
                    g.fused_attention(&att_name, q, k, v, spec.clone())?
                }
                AttentionKind::Linear => g.linear_attention(&att_name, q, k, v, spec.clone())?,
            };
            let o = linear(g, "attention.output.dense", a)?;
            // Residual add and LayerNorm run as one kernel; the graph keeps them as two
            // stages so the backward pass is unchanged.
            let add_norm = |g: &mut Graph, name: &str, x: TensorId, skip: TensorId| {
                let name = format!("{pre}.{name}");
                let (w, b) = (
                    g.param(s, &format!("{name}.weight"))?,
                    g.param(s, &format!("{name}.bias"))?,
                );
                g.add_layer_norm(&name, x, skip, w, b, eps)
            };
            let h1 = add_norm(g, "attention.output.LayerNorm", o, h)?;
            let i = {
                let name = format!("{pre}.intermediate.dense");
                let (w, b) = (
                    p(g, &format!("{name}.weight"))?,
                    p(g, &format!("{name}.bias"))?,
                );
                g.linear_gelu(&name, &format!("{pre}.intermediate.gelu"), h1, w, Some(b))?
            };
            let o2 = linear(g, "output.dense", i)?;
            h = add_norm(g, "output.LayerNorm", o2, h1)?;
            hidden.push(h);
        }

        // head
        let linear = |g: &mut Graph, name: &str, x: TensorId| -> Result<TensorId> {
            let (w, b) = (
                g.param(s, &format!("{name}.weight"))?,
                g.param(s, &format!("{name}.bias"))?,
            );
            g.linear(name, x, w, Some(b))
        };
        let logits = match self.head {
            Head::MaskedLm => {
                let (w, b) = (
                    g.param(s, "cls.predictions.transform.dense.weight")?,
                    g.param(s, "cls.predictions.transform.dense.bias")?,
                );
                let x = g.linear_gelu(
                    "cls.predictions.transform.dense",
                    "cls.predictions.transform.gelu",
                    h,
                    w,
                    Some(b),
                )?;
                let (w, b) = (
                    g.param(s, "cls.predictions.transform.LayerNorm.weight")?,
                    g.param(s, "cls.predictions.transform.LayerNorm.bias")?,
                );
                let x = g.layer_norm("cls.predictions.transform.LayerNorm", x, w, b, eps)?;
                // The decoder is tied to the word embeddings: the same graph tensor.
                let bias = g.param(s, "cls.predictions.bias")?;
                g.linear("cls.predictions.decoder", x, words, Some(bias))?
            }
            Head::Classification => {
                let x = g.first_token("classifier.first_token", h)?;
                let x = linear(g, "classifier.dense", x)?;
                let x = g.gelu("classifier.gelu", x)?;
                linear(g, "classifier.out_proj", x)?
            }
        };

        // loss
        let loss = g.cross_entropy("loss", logits, &inputs.labels)?;
        Ok(Outputs {
            hidden,
            logits,
            loss,
        })
    }
}

fn detect_head(c: &RoFormerConfig, tensors: &HostTensors) -> Option<Head> {
    let arch = c
        .extra
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str());
    match arch {
        Some("RoFormerForMaskedLM") => return Some(Head::MaskedLm),
        Some("RoFormerForSequenceClassification") => return Some(Head::Classification),
        _ => {}
    }
    if tensors.keys().any(|k| k.starts_with("classifier.")) {
        Some(Head::Classification)
    } else if tensors.keys().any(|k| k.starts_with("cls.predictions.")) {
        Some(Head::MaskedLm)
    } else {
        None
    }
}

/// Standard normal by Box–Muller.
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// What a session computes per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Forward pass and loss; logits are kept for reading.
    Inference,
    /// Forward and backward; logits, hidden states and parameter gradients can be read.
    Gradients,
    /// Forward, backward, gradient clipping and AdamW: one training step.
    Train(TrainOptions),
}

/// One batch of inputs, row-major `[batch, seq]` (labels `[batch, seq]` for MLM, `[batch]`
/// for classification; −100 marks a position without a label).
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
}

/// Per-step inputs, written before each run.
struct Inputs {
    ids: TokenIds,
    types: TokenIds,
    /// `[B, T]`: 0 for tokens, −f32::MAX for padding (softmax attention).
    additive_mask: Tensor,
    /// `[B, T]`: 1 for tokens, 0 for padding (linear attention).
    key_mask: Tensor,
    labels: Labels,
}

struct Outputs {
    hidden: Vec<TensorId>,
    logits: TensorId,
    loss: TensorId,
}

/// What one step reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// Mean cross-entropy over the labelled positions.
    pub loss: f32,
    /// Labelled positions (rows that count in the loss).
    pub counted: u32,
    /// Labelled positions whose argmax is the label.
    pub correct: u32,
    /// Global gradient norm before clipping (training only).
    pub grad_norm: Option<f32>,
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
    inputs: Inputs,
    plan: Plan,
    outputs: Outputs,
    optimizer: Option<Optimizer>,
    calls: (usize, usize),
    readback: wgpu::Buffer,
    /// Timestamps at the start and end of the step's pass, when the device offers them.
    timer: Option<PassTimer>,
}

impl<'m> Session<'m> {
    fn new(
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
        let labels_len = match model.head {
            Head::MaskedLm => batch * seq,
            Head::Classification => batch,
        };
        let inputs = Inputs {
            ids: TokenIds::new(ctx, &vec![0; batch * seq], &[batch, seq], c.vocab_size)?,
            types: TokenIds::new(ctx, &vec![0; batch * seq], &[batch, seq], c.type_vocab_size)?,
            additive_mask: Tensor::zeros(ctx, &[batch, seq], crate::DType::F32)?,
            key_mask: Tensor::full(ctx, &[batch, seq], 1.0)?,
            labels: Labels::new(
                ctx,
                &vec![IGNORE_INDEX; labels_len],
                &[labels_len],
                model.classes(),
                IGNORE_INDEX,
            )?,
        };
        let mut g = Graph::new();
        let outputs = model.build(&mut g, &inputs)?;
        g.keep(outputs.loss);
        if mode != Mode::Inference {
            g.backward(outputs.loss)?;
        }
        if matches!(mode, Mode::Inference | Mode::Gradients) {
            g.keep(outputs.logits);
        }
        if mode == Mode::Gradients {
            for &h in &outputs.hidden {
                g.keep(h);
            }
        }
        let plan = g.plan_with(ctx, &model.store, mode != Mode::Inference, plan_options)?;
        let optimizer = match mode {
            Mode::Train(options) => Some(Optimizer::new(ctx, &model.store, options)?),
            _ => None,
        };
        let readback = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("step metrics"),
            size: 48,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let timer = PassTimer::new(ctx, "step time", 1);
        Ok(Session {
            model,
            batch,
            seq,
            inputs,
            plan,
            outputs,
            optimizer,
            calls: g.call_counts(),
            readback,
            timer,
        })
    }

    /// Checks and uploads a batch (token ids below the vocabulary, labels in range).
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
        check("labels", b.labels.len(), self.inputs.labels.len())?;
        if let Some(bad) = mask.iter().position(|&m| m > 1) {
            return Err(Error::invalid(format!(
                "attention_mask[{bad}] is {}, not 0 or 1",
                mask[bad]
            )));
        }
        self.inputs.ids.write(ctx, &b.input_ids)?;
        self.inputs.types.write(ctx, &types)?;
        self.inputs.labels.write(ctx, &b.labels)?;
        let additive: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 1 { 0.0 } else { f32::MIN })
            .collect();
        self.inputs.additive_mask.write(ctx, &additive)?;
        let keys: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
        self.inputs.key_mask.write(ctx, &keys)
    }

    /// Runs one step on the last batch set: one submission, then the metrics are read back.
    pub fn run(&mut self, ctx: &Context) -> Result<StepMetrics> {
        let lr = self
            .optimizer
            .as_mut()
            .map(|o| o.prepare(ctx))
            .transpose()?;
        let start = Instant::now();
        let loss = self.plan.tensor(self.outputs.loss)?;
        let index = ctx.scoped("training step", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("step"),
                    });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: self.timer.as_ref().map(|t| t.writes(0)),
                });
                self.plan.encode(&mut pass);
                if let Some(o) = &self.optimizer {
                    for d in o.dispatches() {
                        d.encode(&mut pass);
                    }
                }
            }
            encoder.copy_buffer_to_buffer(loss.buffer(), loss.offset(), &self.readback, 0, 16);
            if let Some(o) = &self.optimizer {
                encoder.copy_buffer_to_buffer(
                    o.stats().buffer(),
                    o.stats().offset(),
                    &self.readback,
                    16,
                    8,
                );
            }
            if let Some(timer) = &self.timer {
                timer.copy_to(&mut encoder, &self.readback, 32);
            }
            ctx.queue().submit([encoder.finish()])
        })?;
        let encode = start.elapsed();
        let (values, ticks) = read_back(ctx, &self.readback, index)?;
        let gpu = self
            .timer
            .as_ref()
            .map(|_| PassTimer::elapsed(ctx, [ticks[0], ticks[1]]));
        Ok(StepMetrics {
            loss: values[0],
            counted: values[1] as u32,
            correct: values[2] as u32,
            grad_norm: self.optimizer.as_ref().map(|_| values[5]),
            lr,
            encode,
            gpu,
        })
    }

    /// Logits of the last run (`Inference` and `Gradients` sessions).
    pub fn logits(&self, ctx: &Context) -> Result<Vec<f32>> {
        self.plan.tensor(self.outputs.logits)?.to_vec(ctx)
    }

    /// Shape of [`Session::logits`].
    pub fn logits_shape(&self) -> Result<Vec<usize>> {
        Ok(self.plan.tensor(self.outputs.logits)?.shape().to_vec())
    }

    /// Hidden state `i` of the last run (0: embeddings, L: last layer; `Gradients` sessions).
    pub fn hidden_state(&self, ctx: &Context, i: usize) -> Result<Vec<f32>> {
        let id = *self
            .outputs
            .hidden
            .get(i)
            .ok_or_else(|| Error::invalid(format!("no hidden state {i}")))?;
        self.plan.tensor(id)?.to_vec(ctx)
    }

    /// The GPU memory the planned step holds.
    pub fn memory(&self) -> &MemoryReport {
        self.plan.memory()
    }

    /// Dispatches per step (graph + optimizer).
    pub fn dispatch_count(&self) -> usize {
        self.plan.dispatches().len()
            + self
                .optimizer
                .as_ref()
                .map_or(0, |o| o.dispatches().count())
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

/// The metrics buffer once submission `index` is done: 8 floats, then 2 timestamps.
fn read_back(
    ctx: &Context,
    buffer: &wgpu::Buffer,
    index: wgpu::SubmissionIndex,
) -> Result<([f32; 8], [u64; 2])> {
    let bytes = ctx.read_mapped(buffer, index)?;
    let mut v = [0f32; 8];
    v.copy_from_slice(&bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..32]));
    let mut t = [0u64; 2];
    t.copy_from_slice(&bytemuck::pod_collect_to_vec::<u8, u64>(&bytes[32..48]));
    Ok((v, t))
}
