//! The RoFormer as a graph, in data-flow order: token ids → embeddings → layers → head →
//! loss. Training sessions and the inference encoder build the same graph; they differ in
//! what they keep, whether there is a loss, and where the weights and activations live.

use super::generation::LayerCache;
use super::performer::Projections;
use super::{Head, RoFormerConfig, TrainingLoss, WORDS};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{AttentionSpec, Graph, TensorId};
use crate::model::AttentionKind;
use crate::ops::attention::{cached, linear, recurrent};
use crate::ops::bce_mse::Targets;
use crate::ops::cross_entropy::{Labels, IGNORE_INDEX};
use crate::ops::elementwise;
use crate::ops::embedding::TokenIds;
use crate::params::ParamStore;
use crate::tensor::{DType, Tensor};

/// Per-run inputs of a planned graph for batches of `batch` sequences of `seq` tokens,
/// written before each run.
pub(crate) struct GraphInputs {
    pub batch: usize,
    pub seq: usize,
    pub ids: TokenIds,
    pub types: TokenIds,
    /// `[B, T]`: 0 for tokens, −f32::MAX for padding (softmax attention).
    pub additive_mask: Tensor,
    /// `[B, T]`: 1 for tokens, 0 for padding (linear attention).
    pub key_mask: Tensor,
    /// `[B]` (u32): the position the multiple-choice head summarises, per sequence.
    pub summary_positions: Option<Tensor>,
    /// The labels of the loss (training sessions).
    pub labels: Option<LossLabels>,
}

/// What a loss learns from: class labels or float targets.
pub(crate) enum LossLabels {
    /// Cross-entropy's class labels (−100: none).
    Classes(Labels),
    /// Binary cross-entropy's or the squared error's targets, `[B, num_labels]`.
    Targets(Targets),
}

impl GraphInputs {
    /// Zeroed inputs (all tokens 0, no padding, every label −100 or 0.0), with the labels of
    /// the head's training loss when `with_loss`.
    pub fn new(
        ctx: &Context,
        config: &RoFormerConfig,
        head: Head,
        batch: usize,
        seq: usize,
        with_loss: bool,
    ) -> Result<GraphInputs> {
        let n = batch * seq;
        let labels = if with_loss {
            Some(match head.training_loss(config) {
                None => {
                    return Err(Error::invalid(format!(
                        "{} has no training loss",
                        head.architecture()
                    )))
                }
                Some(TrainingLoss::CrossEntropy) => {
                    let len = if head == Head::Classification {
                        batch
                    } else {
                        n
                    };
                    LossLabels::Classes(Labels::new(
                        ctx,
                        &vec![IGNORE_INDEX; len],
                        &[len],
                        head.classes(config),
                        IGNORE_INDEX,
                    )?)
                }
                Some(TrainingLoss::Targets(kind)) => {
                    let labels = head.classes(config);
                    LossLabels::Targets(Targets::new(
                        ctx,
                        &vec![0.0; batch * labels],
                        batch,
                        labels,
                        kind,
                    )?)
                }
            })
        } else {
            None
        };
        Ok(GraphInputs {
            batch,
            seq,
            ids: TokenIds::new(ctx, &vec![0; n], &[batch, seq], config.vocab_size)?,
            types: TokenIds::new(ctx, &vec![0; n], &[batch, seq], config.type_vocab_size)?,
            additive_mask: Tensor::zeros(ctx, &[batch, seq], DType::F32)?,
            key_mask: Tensor::full(ctx, &[batch, seq], 1.0)?,
            summary_positions: (head == Head::MultipleChoice)
                .then(|| Tensor::from_slice(ctx, &vec![(seq - 1) as u32; batch], &[batch]))
                .transpose()?,
            labels,
        })
    }

    /// Writes the masks from `mask` (1 token, 0 padding; `[B, T]`, checked by the caller).
    pub fn write_mask(&self, ctx: &Context, mask: &[u32]) -> Result<()> {
        let additive: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 1 { 0.0 } else { f32::MIN })
            .collect();
        self.additive_mask.write(ctx, &additive)?;
        let keys: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
        self.key_mask.write(ctx, &keys)
    }
}

/// The graph tensors a caller may keep and read.
pub(crate) struct GraphOutputs {
    /// Hidden states: 0 the embeddings' output, L the last layer's.
    pub hidden: Vec<TensorId>,
    /// The head's output (`None` for the bare encoder): `[B, T, vocab]` for the LM heads,
    /// `[B, labels]` for sequence classification, `[B, T, labels]` for token
    /// classification, `[B, T, 2]` (start, end) for question answering, `[B, 1]` for
    /// multiple choice (B counting every choice).
    pub logits: Option<TensorId>,
    /// `(loss, counted, correct, 0)` when the inputs have labels (see [`super::StepMetrics`]).
    pub loss: Option<TensorId>,
}

/// Builds the whole model on `g`: encoder, head, and the loss when `inputs` has labels.
pub(crate) fn build(
    c: &RoFormerConfig,
    head: Head,
    store: &ParamStore,
    table: &Tensor,
    projections: &Projections,
    g: &mut Graph,
    inputs: &GraphInputs,
) -> Result<GraphOutputs> {
    let hidden = encoder(c, store, table, projections, g, inputs)?;
    let last = hidden[hidden.len() - 1]; // the embeddings' output at least
    let logits = head_logits(c, head, store, g, inputs, last)?;
    let loss = match (&inputs.labels, logits) {
        (Some(LossLabels::Classes(labels)), Some(logits)) => {
            Some(g.cross_entropy("loss", logits, labels)?)
        }
        (Some(LossLabels::Targets(targets)), Some(logits)) => {
            Some(g.bce_mse("loss", logits, targets)?)
        }
        _ => None,
    };
    Ok(GraphOutputs {
        hidden,
        logits,
        loss,
    })
}

/// Embeddings and layers: every hidden state.
fn encoder(
    c: &RoFormerConfig,
    s: &ParamStore,
    table: &Tensor,
    projections: &Projections,
    g: &mut Graph,
    inputs: &GraphInputs,
) -> Result<Vec<TensorId>> {
    let h = embeddings(c, s, g, &inputs.ids, &inputs.types)?;
    let spec = AttentionSpec {
        heads: c.num_attention_heads,
        causal: c.is_causal(),
        rotary_value: c.rotary_value,
        mask: Some(match c.attention {
            AttentionKind::Softmax | AttentionKind::FusedSoftmax | AttentionKind::Local => {
                inputs.additive_mask.clone()
            }
            AttentionKind::Linear | AttentionKind::Performer => inputs.key_mask.clone(),
        }),
        rope: Some(table.clone()),
    };
    let mut attend = |g: &mut Graph, layer: usize, name: &str, q, k, v| match c.attention {
        AttentionKind::Softmax => g.attention(name, q, k, v, spec.clone()),
        AttentionKind::FusedSoftmax => g.fused_attention(name, q, k, v, spec.clone()),
        AttentionKind::Linear => g.linear_attention(name, q, k, v, spec.clone()),
        AttentionKind::Local => {
            let window = c.local_window().ok_or_else(|| {
                crate::Error::invalid("local attention without its window (attention_window)")
            })?;
            g.local_attention(name, q, k, v, spec.clone(), window)
        }
        AttentionKind::Performer => {
            let projection = projections.layer(layer).ok_or_else(|| {
                crate::Error::invalid(format!(
                    "performer attention without layer {layer}'s projection"
                ))
            })?;
            g.performer_attention(name, q, k, v, spec.clone(), projection)
        }
    };
    let mut hidden = vec![h];
    hidden.extend(layers(c, s, g, h, &mut attend)?);
    Ok(hidden)
}

/// Token ids → embeddings (words and token types, LayerNorm, the projection to the hidden
/// size where the embeddings are narrower): `[B, T, hidden]`.
fn embeddings(
    c: &RoFormerConfig,
    s: &ParamStore,
    g: &mut Graph,
    ids: &TokenIds,
    token_types: &TokenIds,
) -> Result<TensorId> {
    let eps = c.layer_norm_eps as f32;
    let p = |g: &mut Graph, name: &str| g.param(s, name);
    let words = g.param(s, WORDS)?;
    let w = g.embedding("roformer.embeddings.word_embeddings", words, ids)?;
    let types = p(g, "roformer.embeddings.token_type_embeddings.weight")?;
    let t = g.embedding(
        "roformer.embeddings.token_type_embeddings",
        types,
        token_types,
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
    Ok(h)
}

/// How a layer's self-attention turns its query, key and value projections (`[B, T,
/// hidden]` each) into its output: `(graph, layer, stage name, q, k, v)`.
type Attend<'a> =
    dyn FnMut(&mut Graph, usize, &str, TensorId, TensorId, TensorId) -> Result<TensorId> + 'a;

/// The layers on the embeddings' output `h`: each layer's hidden state, in order.
fn layers(
    c: &RoFormerConfig,
    s: &ParamStore,
    g: &mut Graph,
    mut h: TensorId,
    attend: &mut Attend<'_>,
) -> Result<Vec<TensorId>> {
    let eps = c.layer_norm_eps as f32;
    let p = |g: &mut Graph, name: &str| g.param(s, name);
    let mut hidden = Vec::with_capacity(c.num_hidden_layers);
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
        let a = attend(g, l, &format!("{pre}.attention.self"), q, k, v)?;
        let o = linear(g, "attention.output.dense", a)?;
        // Residual add and LayerNorm run as one kernel; the graph keeps them as two stages
        // so the backward pass is unchanged.
        let add_norm = |g: &mut Graph, name: &str, x: TensorId, skip: TensorId| {
            let name = format!("{pre}.{name}");
            let (w, b) = (
                p(g, &format!("{name}.weight"))?,
                p(g, &format!("{name}.bias"))?,
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
    Ok(hidden)
}

/// The head on the last hidden state `h` (`[B, T, hidden]`): its logits, or `None` for the
/// bare encoder.
fn head_logits(
    c: &RoFormerConfig,
    head: Head,
    s: &ParamStore,
    g: &mut Graph,
    inputs: &GraphInputs,
    h: TensorId,
) -> Result<Option<TensorId>> {
    let linear = |g: &mut Graph, name: &str, x: TensorId| -> Result<TensorId> {
        let (w, b) = (
            g.param(s, &format!("{name}.weight"))?,
            g.param(s, &format!("{name}.bias"))?,
        );
        g.linear(name, x, w, Some(b))
    };
    Ok(Some(match head {
        Head::Encoder => return Ok(None),
        Head::MaskedLm | Head::CausalLm => lm_head(c, s, g, h)?,
        Head::Classification => {
            let x = g.first_token("classifier.first_token", h)?;
            let x = linear(g, "classifier.dense", x)?;
            let x = g.gelu("classifier.gelu", x)?;
            linear(g, "classifier.out_proj", x)?
        }
        Head::TokenClassification => linear(g, "classifier", h)?,
        Head::QuestionAnswering => linear(g, "qa_outputs", h)?,
        Head::MultipleChoice => {
            // transformers' sequence summary: one token per sequence, at a position the
            // caller's lengths decide (the last by default), then a Linear to one score.
            let positions = inputs.summary_positions.clone().ok_or_else(|| {
                crate::Error::invalid("multiple-choice inputs need summary positions")
            })?;
            let shape = [inputs.batch, c.hidden_size];
            let x = g.custom("sequence_summary", &[h], &shape, move |ctx, ins, out| {
                Ok(vec![elementwise::plan_gather_positions(
                    ctx, ins[0], &positions, out,
                )?])
            })?;
            linear(g, "classifier", x)?
        }
    }))
}

/// The language-model head (`cls.predictions`) on hidden states `h` (`[..., hidden]`):
/// `[..., vocab]`.
fn lm_head(c: &RoFormerConfig, s: &ParamStore, g: &mut Graph, h: TensorId) -> Result<TensorId> {
    let eps = c.layer_norm_eps as f32;
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
    // The decoder is the word embeddings (the same graph tensor, so training sums both uses'
    // gradients), unless the checkpoint unties them.
    let decoder = if c.tie_word_embeddings {
        g.param(s, WORDS)?
    } else {
        g.param(s, "cls.predictions.decoder.weight")?
    };
    let bias = g.param(s, "cls.predictions.bias")?;
    g.linear("cls.predictions.decoder", x, decoder, Some(bias))
}

/// Per-step inputs of a planned generation step over a key/value cache or recurrent state:
/// `batch` sequences of `new_tokens` new tokens each, written before each run.
pub(crate) struct CachedInputs {
    pub batch: usize,
    pub new_tokens: usize,
    /// `[B, new]`.
    pub ids: TokenIds,
    /// `[B, new]`, all 0 (generation continues the first segment).
    pub types: TokenIds,
    /// `[B]` (u32): each row's position of its first new token.
    pub starts: Tensor,
    /// `[B]` (u32): how many of each row's new tokens count (a linear-attention model's
    /// state takes those only; key/value caches are overwritten past a row's length).
    pub counts: Tensor,
    /// `[B]` (u32): which new token of each row the logits are wanted for.
    pub last: Tensor,
}

impl CachedInputs {
    /// Zeroed inputs (every row at position 0).
    pub fn new(
        ctx: &Context,
        config: &RoFormerConfig,
        batch: usize,
        new_tokens: usize,
    ) -> Result<CachedInputs> {
        let n = batch * new_tokens;
        Ok(CachedInputs {
            batch,
            new_tokens,
            ids: TokenIds::new(ctx, &vec![0; n], &[batch, new_tokens], config.vocab_size)?,
            types: TokenIds::new(
                ctx,
                &vec![0; n],
                &[batch, new_tokens],
                config.type_vocab_size,
            )?,
            starts: Tensor::from_slice(ctx, &vec![0u32; batch], &[batch])?,
            counts: Tensor::from_slice(ctx, &vec![0u32; batch], &[batch])?,
            last: Tensor::from_slice(ctx, &vec![0u32; batch], &[batch])?,
        })
    }
}

/// A causal LM stepping over key/value caches (one per layer): the new tokens' keys and
/// values join the caches at their positions, their queries attend to the cached positions
/// up to their own (local attention: those in its window, and the global tokens), and the
/// LM head runs on each row's `last` new token only. A linear-attention model's layers
/// instead add each row's counted new tokens to their recurrent state and read it. Returns
/// the logits, `[B, vocab]`.
pub(crate) fn build_cached(
    c: &RoFormerConfig,
    s: &ParamStore,
    table: &Tensor,
    g: &mut Graph,
    inputs: &CachedInputs,
    caches: &[LayerCache],
) -> Result<TensorId> {
    let (batch, new) = (inputs.batch, inputs.new_tokens);
    let heads = c.num_attention_heads;
    let shape = [batch, new, c.hidden_size];
    let heads_shape = [batch, new, heads, c.hidden_size / heads];
    let h = embeddings(c, s, g, &inputs.ids, &inputs.types)?;
    let mut attend = |g: &mut Graph, layer: usize, name: &str, q, k, v| {
        let (cache, table) = (caches[layer].clone(), table.clone());
        let (starts, counts) = (inputs.starts.clone(), inputs.counts.clone());
        let (rotary_value, local) = (c.rotary_value, c.local_window());
        g.custom(name, &[q, k, v], &shape, move |ctx, ins, out| {
            let [q, k, v] = [ins[0], ins[1], ins[2]].map(|t| t.reshape(&heads_shape));
            let (q, k, v) = (q?, k?, v?);
            let out = out.reshape(&heads_shape)?;
            Ok(match &cache {
                LayerCache::KeysValues(cache) => {
                    let mut plan =
                        cached::plan_append(ctx, &k, &v, &table, &starts, cache, rotary_value)?;
                    plan.push(cached::plan_attend(
                        ctx, &q, &table, &starts, cache, local, &out,
                    )?);
                    plan
                }
                LayerCache::Linear(state) => vec![recurrent::plan_step(
                    ctx,
                    &q,
                    &k,
                    &v,
                    &table,
                    &starts,
                    &counts,
                    state,
                    linear::EPS,
                    &out,
                )?],
            })
        })
    };
    let hidden = layers(c, s, g, h, &mut attend)?;
    let last_layer = hidden[hidden.len() - 1];
    let positions = inputs.last.clone();
    let x = g.custom(
        "generation.last_tokens",
        &[last_layer],
        &[batch, c.hidden_size],
        move |ctx, ins, out| {
            Ok(vec![elementwise::plan_gather_positions(
                ctx, ins[0], &positions, out,
            )?])
        },
    )?;
    lm_head(c, s, g, x)
}
