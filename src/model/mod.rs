//! RoFormer (Su et al. 2021) as HuggingFace transformers defines it, built as a graph:
//! token ids → embeddings → layers → head → loss → gradients → optimizer.
//!
//! Parameters carry HF's own names, so a `config.json` and `.safetensors` checkpoint from
//! transformers load as they are (any of its seven RoFormer classes, see [`Head`]), and what
//! [`RoFormer::save`] writes loads back into it. Two ways to run one:
//! - [`RoFormer`] + [`Session`]: training (weights, gradients, AdamW moments; one batch
//!   shape per session), for the heads with a loss this library trains;
//! - [`Encoder`]: inference on any head, weights only, any batch up to a maximum and any
//!   length, asynchronous.

mod config;
mod encoder;
mod generation;
mod graph;
mod performer;
pub mod reference;
mod session;

use std::path::Path;

use rand::{Rng, SeedableRng};

pub use config::{AttentionKind, RoFormerConfig};
pub use encoder::{Array, Encoder, EncoderOptions, Request, Results, Sequence, Want};
pub use generation::{Generation, NextLogits};
pub use performer::performer_projection_name;
pub use session::{Batch, Mode, Session, StepMetrics};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::PlanOptions;
use crate::io::{self, HostTensor, HostTensors};
use crate::ops::bce_mse::Kind;
use crate::ops::loss_scale::LossScaling;
use crate::ops::rope;
use crate::params::ParamStore;
use crate::tensor::Tensor;
use performer::Projections;

/// The loss a head trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrainingLoss {
    /// Cross-entropy over class labels ([`Batch::labels`]).
    CrossEntropy,
    /// Binary cross-entropy with logits or squared error against float targets
    /// ([`Batch::float_labels`]).
    Targets(Kind),
}

/// The task head on top of the encoder: which of transformers' RoFormer classes a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// `RoFormerModel`: the encoder alone (hidden states).
    Encoder,
    /// `RoFormerForMaskedLM`: per-token logits over the vocabulary, decoder tied to the
    /// word embeddings (unless `tie_word_embeddings` is false).
    MaskedLm,
    /// `RoFormerForCausalLM`: the masked LM's head on a causal encoder (`is_decoder`);
    /// trained on the next token.
    CausalLm,
    /// `RoFormerForSequenceClassification`: logits over `num_labels` from the first token
    /// (single- or multi-label classification, or regression, as
    /// [`RoFormerConfig::classification_problem`] says).
    Classification,
    /// `RoFormerForTokenClassification`: logits over `num_labels` for every token.
    TokenClassification,
    /// `RoFormerForQuestionAnswering`: start and end logits for every token.
    QuestionAnswering,
    /// `RoFormerForMultipleChoice`: one score per choice, from a summary token of each.
    MultipleChoice,
}

impl Head {
    /// Every head.
    pub const ALL: [Head; 7] = [
        Head::Encoder,
        Head::MaskedLm,
        Head::CausalLm,
        Head::Classification,
        Head::TokenClassification,
        Head::QuestionAnswering,
        Head::MultipleChoice,
    ];

    /// HF's class name, as `config.json`'s `architectures` lists it.
    pub fn architecture(self) -> &'static str {
        match self {
            Head::Encoder => "RoFormerModel",
            Head::MaskedLm => "RoFormerForMaskedLM",
            Head::CausalLm => "RoFormerForCausalLM",
            Head::Classification => "RoFormerForSequenceClassification",
            Head::TokenClassification => "RoFormerForTokenClassification",
            Head::QuestionAnswering => "RoFormerForQuestionAnswering",
            Head::MultipleChoice => "RoFormerForMultipleChoice",
        }
    }

    /// The head of an HF class name.
    pub fn from_architecture(name: &str) -> Option<Head> {
        Head::ALL.into_iter().find(|h| h.architecture() == name)
    }

    /// Whether the head's logits have a row per token (the LM heads, token classification,
    /// question answering) rather than one per sequence.
    pub fn logits_per_token(self) -> bool {
        matches!(
            self,
            Head::MaskedLm | Head::CausalLm | Head::TokenClassification | Head::QuestionAnswering
        )
    }

    /// Width of the head's output per row: the vocabulary for the LM heads, the labels for
    /// classification, 2 for question answering (start, end), 1 for multiple choice.
    pub fn classes(self, c: &RoFormerConfig) -> usize {
        match self {
            Head::Encoder => c.hidden_size,
            Head::MaskedLm | Head::CausalLm => c.vocab_size,
            Head::Classification | Head::TokenClassification => c.labels(),
            Head::QuestionAnswering => 2,
            Head::MultipleChoice => 1,
        }
    }

    /// The loss a training session of this head takes as `c` configures it, `None` for a
    /// head this library does not train.
    pub(crate) fn training_loss(self, c: &RoFormerConfig) -> Option<TrainingLoss> {
        match self {
            Head::MaskedLm | Head::CausalLm | Head::TokenClassification => {
                Some(TrainingLoss::CrossEntropy)
            }
            Head::Classification => match c.classification_problem() {
                "single_label_classification" => Some(TrainingLoss::CrossEntropy),
                "multi_label_classification" => {
                    Some(TrainingLoss::Targets(Kind::BinaryCrossEntropy))
                }
                "regression" => Some(TrainingLoss::Targets(Kind::MeanSquaredError)),
                _ => None,
            },
            Head::Encoder | Head::QuestionAnswering | Head::MultipleChoice => None,
        }
    }

    /// `Ok` when this library trains the head as `c` configures it: masked LM, causal LM and
    /// token classification (cross-entropy over class labels), sequence classification with
    /// transformers' three problem types (single-label: cross-entropy over class labels;
    /// multi-label: binary cross-entropy with logits, and regression: squared error, both
    /// against [`Batch::float_labels`]).
    pub fn check_trainable(self, c: &RoFormerConfig) -> Result<()> {
        if self.training_loss(c).is_some() {
            return Ok(());
        }
        let what = match self {
            Head::Classification => format!(
                "{} with problem_type {}",
                self.architecture(),
                c.classification_problem()
            ),
            _ => self.architecture().to_string(),
        };
        Err(Error::invalid(format!(
            "training {what} is not supported (this library trains masked and causal LMs, \
             token classification and sequence classification: single-label, multi-label or \
             regression); run it for inference with model::Encoder"
        )))
    }

    /// Config keys this head reads that this library does not implement: an error rather
    /// than a different function.
    fn check_config(self, c: &RoFormerConfig) -> Result<()> {
        let unsupported = |message: String| {
            Err(Error::Format {
                path: "config".into(),
                message,
            })
        };
        if self == Head::MultipleChoice {
            match c.extra.get("summary_type").and_then(|v| v.as_str()) {
                None | Some("last") | Some("first") => {}
                Some(other) => {
                    return unsupported(format!(
                        "summary_type {other:?} is not supported (\"last\", the default, and \"first\" are)"
                    ))
                }
            }
            if c.extra.get("summary_use_proj").and_then(|v| v.as_bool()) == Some(true) {
                return unsupported(
                    "summary_use_proj: a projection in the sequence summary is not supported"
                        .into(),
                );
            }
            if c.extra
                .get("summary_activation")
                .is_some_and(|v| !v.is_null())
            {
                return unsupported(
                    "summary_activation: an activation in the sequence summary is not supported"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Whether the multiple-choice summary reads each sequence's last token (transformers'
    /// default) rather than its first.
    fn summary_is_last(c: &RoFormerConfig) -> bool {
        c.extra.get("summary_type").and_then(|v| v.as_str()) != Some("first")
    }
}

/// Why performer attention refuses half precision.
const PERFORMER_F32: &str = "performer attention runs in f32 only: its random features span \
                             orders of magnitude that f16 does not hold (train without mixed \
                             precision, run the encoder in f32)";

/// The HF name of the sinusoidal position table (not a trained parameter).
pub const POSITION_TABLE: &str = "roformer.encoder.embed_positions.weight";
const WORDS: &str = "roformer.embeddings.word_embeddings.weight";
/// The prefix of the encoder's names inside a model with a head (a `RoFormerModel` saves
/// its names without it).
const PREFIX: &str = "roformer.";

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
        Head::Encoder => {}
        Head::MaskedLm | Head::CausalLm => {
            linear(&mut p, "cls.predictions.transform.dense", e, h);
            norm(&mut p, "cls.predictions.transform.LayerNorm", e);
            if !c.tie_word_embeddings {
                p.push((
                    "cls.predictions.decoder.weight".into(),
                    vec![c.vocab_size, e],
                ));
            }
            p.push(("cls.predictions.bias".into(), vec![c.vocab_size]));
        }
        Head::Classification => {
            linear(&mut p, "classifier.dense", h, h);
            linear(&mut p, "classifier.out_proj", c.labels(), h);
        }
        Head::TokenClassification => linear(&mut p, "classifier", c.labels(), h),
        Head::QuestionAnswering => linear(&mut p, "qa_outputs", 2, h),
        Head::MultipleChoice => linear(&mut p, "classifier", 1, h),
    }
    p
}

/// The head a checkpoint is: its config's `architectures`, else what its tensors are named.
/// An architecture that is not one of transformers' RoFormer classes is an error.
pub fn detect_head(c: &RoFormerConfig, tensors: &HostTensors) -> Result<Head> {
    let arch = c
        .extra
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str());
    if let Some(arch) = arch {
        return Head::from_architecture(arch).ok_or_else(|| Error::Format {
            path: "config".into(),
            message: format!(
                "architecture {arch:?} is not a RoFormer class this library runs (it runs {})",
                Head::ALL.map(Head::architecture).join(", ")
            ),
        });
    }
    let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    let classifier_rows = tensors.get("classifier.weight").map(|t| t.shape[0]);
    Ok(if has("qa_outputs.") {
        Head::QuestionAnswering
    } else if has("cls.predictions.") {
        if c.is_decoder {
            Head::CausalLm
        } else {
            Head::MaskedLm
        }
    } else if has("classifier.dense.") {
        Head::Classification
    } else if classifier_rows == Some(1) && c.labels() != 1 {
        Head::MultipleChoice
    } else if classifier_rows.is_some() {
        Head::TokenClassification
    } else if has("roformer.embeddings.") || has("embeddings.") {
        Head::Encoder
    } else {
        return Err(Error::Format {
            path: "checkpoint".into(),
            message: "cannot tell the model: no architectures in the config, and no RoFormer \
                      tensor names"
                .into(),
        });
    })
}

/// Checks a config against a head and builds the RoPE table: what every model needs
/// besides its parameters.
fn prepare(ctx: &Context, config: &RoFormerConfig, head: Head) -> Result<Tensor> {
    config.validate().map_err(|message| Error::Format {
        path: "config".into(),
        message,
    })?;
    head.check_config(config)?;
    rope::table(ctx, config.max_position_embeddings, config.head_dim())
}

/// Uploads every parameter of `store` and every performer projection from HF-named
/// tensors, whether the checkpoint names the encoder with the `roformer.` prefix (a model
/// with a head) or without (a `RoFormerModel`). A missing tensor, a shape that does not
/// match the config or a non-finite value is an error naming the tensor, and then nothing
/// is written.
fn load_weights(
    ctx: &Context,
    store: &ParamStore,
    projections: &Projections,
    config: &RoFormerConfig,
    tensors: &HostTensors,
) -> Result<()> {
    let lookup = |name: &str| {
        tensors
            .get(name)
            .or_else(|| name.strip_prefix(PREFIX).and_then(|n| tensors.get(n)))
    };
    if let Some(t) = lookup(POSITION_TABLE) {
        let want = [config.max_position_embeddings, config.head_dim()];
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
    let drawn = projections.read(lookup)?;
    store.load_by(ctx, lookup)?;
    projections.write(ctx, drawn)
}

/// Reads a config and a checkpoint (a `.safetensors` file, or the
/// `model.safetensors.index.json` of a sharded one) and tells the head.
fn read_pretrained(config: &Path, weights: &Path) -> Result<(RoFormerConfig, Head, HostTensors)> {
    let cfg = RoFormerConfig::from_file(config)?;
    let tensors = io::read_checkpoint(weights)?;
    let head = detect_head(&cfg, &tensors).map_err(|e| with_path(e, weights))?;
    Ok((cfg, head, tensors))
}

/// `config.json`'s text and one safetensors file's bytes (a browser's checkpoint: no
/// files), with the head they hold.
fn parse_pretrained(config: &str, weights: &[u8]) -> Result<(RoFormerConfig, Head, HostTensors)> {
    let cfg = RoFormerConfig::from_json(config, "config.json")?;
    let tensors = io::parse_safetensors(Path::new("model.safetensors"), weights)?;
    let head = detect_head(&cfg, &tensors)?;
    Ok((cfg, head, tensors))
}

/// A checkpoint `Format` error names the file it came from.
fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Format { path: p, message } if p == "checkpoint" || p == "config" => Error::Format {
            path: path.display().to_string(),
            message,
        },
        other => other,
    }
}

/// A RoFormer model on the GPU for training: its configuration, head, parameters with their
/// gradients and AdamW moments. For inference alone, [`Encoder`] holds a quarter of the
/// memory.
pub struct RoFormer {
    config: RoFormerConfig,
    head: Head,
    store: ParamStore,
    /// RoPE sin/cos table `[max_position_embeddings, head_dim]`.
    table: Tensor,
    /// Performer attention's random projections (none for other kinds).
    projections: Projections,
}

impl RoFormer {
    /// A model with zeroed parameters (see [`RoFormer::init_random`] and
    /// [`RoFormer::load_tensors`]); a performer model's random projections are drawn from
    /// its config's `performer_seed`.
    pub fn new(ctx: &Context, config: RoFormerConfig, head: Head) -> Result<RoFormer> {
        let table = prepare(ctx, &config, head)?;
        let store = ParamStore::new(ctx, &param_shapes(&config, head))?;
        let projections = Projections::new(ctx, &config)?;
        Ok(RoFormer {
            config,
            head,
            store,
            table,
            projections,
        })
    }

    /// Loads `config.json` and a checkpoint (`.safetensors`, or a sharded checkpoint's
    /// `model.safetensors.index.json`; f16, bf16 and f32 tensors). The head comes from the
    /// config's `architectures`, else from the tensor names.
    pub fn from_pretrained(
        ctx: &Context,
        config: impl AsRef<Path>,
        weights: impl AsRef<Path>,
    ) -> Result<RoFormer> {
        let weights = weights.as_ref();
        let (cfg, head, tensors) = read_pretrained(config.as_ref(), weights)?;
        let model = RoFormer::new(ctx, cfg, head).map_err(|e| with_path(e, weights))?;
        model
            .load_tensors(ctx, &tensors)
            .map_err(|e| with_path(e, weights))?;
        Ok(model)
    }

    /// [`RoFormer::from_pretrained`] from `config.json`'s text and a safetensors file's bytes
    /// (in a browser, what the page fetched).
    pub fn from_bytes(ctx: &Context, config: &str, weights: &[u8]) -> Result<RoFormer> {
        let (cfg, head, tensors) = parse_pretrained(config, weights)?;
        let model = RoFormer::new(ctx, cfg, head)?;
        model.load_tensors(ctx, &tensors)?;
        Ok(model)
    }

    /// Uploads every parameter from HF-named tensors (extra tensors are ignored), and a
    /// performer model's random projections ([`performer_projection_name`]). A missing
    /// tensor (a performer checkpoint without its projections included), a shape that does
    /// not match the config, or a NaN or infinite value is an error naming the tensor, and
    /// leaves the model as it was.
    pub fn load_tensors(&self, ctx: &Context, tensors: &HostTensors) -> Result<()> {
        load_weights(ctx, &self.store, &self.projections, &self.config, tensors)
    }

    /// Draws a performer model's random projections again (layer `l` from `seed + l`), as
    /// Performer's training may every so many steps; nothing else draws them after the
    /// model is made. Sessions planned before keep working and use the new ones from their
    /// next step. An error for a model whose attention is not performer.
    pub fn redraw_performer_projections(&self, ctx: &Context, seed: u64) -> Result<()> {
        if self.config.attention != AttentionKind::Performer {
            return Err(Error::invalid(format!(
                "{:?} attention has no random projections to draw",
                self.config.attention
            )));
        }
        self.projections.draw(ctx, seed)
    }

    /// A performer model's random projections, per layer (`[performer_features,
    /// head_dim]` row-major; empty for other attention kinds), as saved.
    pub fn performer_projections(&self) -> Vec<Vec<f32>> {
        self.projections.values()
    }

    /// HF's initialisation: weights ~ N(0, initializer_range), biases 0, LayerNorm (1, 0),
    /// the padding token's embedding row 0. Deterministic from `seed`. A performer model's
    /// random projections are left as they are (drawn from `performer_seed`).
    pub fn init_random(&self, ctx: &Context, seed: u64) -> Result<()> {
        init_random(ctx, &self.store, &self.config, seed)
    }

    /// Writes `config.json` and `model.safetensors` (HF names, position table included)
    /// into `dir`, each atomically. A bare encoder is written as `RoFormerModel` saves
    /// itself: without the `roformer.` prefix. Native only (a browser has no folders: see
    /// [`RoFormer::to_files`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, ctx: &Context, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        for (name, bytes) in self.files_of(self.store.download(ctx)?)? {
            io::write_atomic(dir.join(name), &bytes)?;
        }
        Ok(())
    }

    /// The files [`RoFormer::save`] writes, in memory: `("config.json", bytes)` and
    /// `("model.safetensors", bytes)`, with the parameters as they are once the work
    /// submitted so far is done. Awaited, so it runs in a browser tab too (which offers the
    /// files for download).
    pub async fn to_files(&self, ctx: &Context) -> Result<Vec<(String, Vec<u8>)>> {
        let values = self.store.read_values(ctx)?.await?;
        self.files_of(values)
    }

    /// `config.json` and `model.safetensors` of these parameter values.
    fn files_of(&self, mut tensors: Vec<io::NamedTensor>) -> Result<Vec<(String, Vec<u8>)>> {
        tensors.extend(self.projections.named());
        tensors.push((
            POSITION_TABLE.into(),
            vec![self.config.max_position_embeddings, self.config.head_dim()],
            rope::sinusoidal_table(self.config.max_position_embeddings, self.config.head_dim()),
        ));
        if self.head == Head::Encoder {
            for (name, _, _) in &mut tensors {
                if let Some(bare) = name.strip_prefix(PREFIX) {
                    *name = bare.to_string();
                }
            }
        }
        let weights = io::safetensors_bytes("model.safetensors", &tensors, &[("format", "pt")])?;
        let mut config = self.config.clone();
        config.extra.insert(
            "architectures".into(),
            serde_json::json!([self.head.architecture()]),
        );
        config
            .extra
            .insert("model_type".into(), serde_json::json!("roformer"));
        if matches!(self.head, Head::Classification | Head::TokenClassification)
            && config.num_labels.is_none()
            && config.id2label.is_none()
        {
            config.num_labels = Some(config.labels());
        }
        Ok(vec![
            ("config.json".into(), config.to_json().into_bytes()),
            ("model.safetensors".into(), weights),
        ])
    }

    /// Trains in mixed precision from now on, as PyTorch's autocast + `GradScaler` do: the
    /// weights, gradients and AdamW moments stay f32, the forward and backward passes run
    /// in f16 (activations and their gradients, weights cast to an f16 copy at the start of
    /// each step), and training steps scale the loss dynamically as `scaling` says
    /// (skipping and halving on overflow, reported in [`StepMetrics`]). Sessions made
    /// before cannot exist (they borrow the model). Needs `SHADER_F16` (an `Unsupported`
    /// error names it where the adapter lacks it).
    pub fn use_mixed_precision(&mut self, ctx: &Context, scaling: LossScaling) -> Result<()> {
        if self.config.attention == AttentionKind::Performer {
            return Err(Error::invalid(PERFORMER_F32));
        }
        self.store.use_mixed_precision(ctx, scaling)
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

    /// Classes the loss is taken over: the vocabulary (LM heads) or the labels.
    pub fn classes(&self) -> usize {
        self.head.classes(&self.config)
    }

    /// Plans a step for batches of `batch` sequences of `seq` tokens. See [`Mode`]. Needs a
    /// head this library trains ([`Head::check_trainable`]).
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

    /// An inference model with this model's configuration, head and current weights
    /// (copied on the GPU into a store of weights only).
    pub fn to_encoder(&self, ctx: &Context, options: EncoderOptions) -> Result<Encoder> {
        let encoder = Encoder::new(ctx, self.config.clone(), self.head, options)?;
        encoder.params().copy_values_from(ctx, &self.store)?;
        encoder
            .projections()
            .write(ctx, self.projections.values())?;
        Ok(encoder)
    }
}

/// HF's initialisation of every parameter of `store` (see [`RoFormer::init_random`]).
fn init_random(
    ctx: &Context,
    store: &ParamStore,
    config: &RoFormerConfig,
    seed: u64,
) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let std = config.initializer_range;
    let mut tensors = HostTensors::new();
    for s in store.specs() {
        let n = s.numel();
        let data: Vec<f32> = if s.name.contains("LayerNorm.weight") {
            vec![1.0; n]
        } else if s.name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let mut v: Vec<f32> = (0..n).map(|_| (normal(&mut rng) * std) as f32).collect();
            if s.name == WORDS {
                if let Some(pad) = config.pad_token_id {
                    let e = s.shape[1];
                    v[pad as usize * e..(pad as usize + 1) * e].fill(0.0);
                }
            }
            v
        };
        tensors.insert(s.name.clone(), HostTensor::f32(&s.shape, data));
    }
    store.load(ctx, &tensors)
}

/// Standard normal by Box–Muller.
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
