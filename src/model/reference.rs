//! The same RoFormer on the CPU in f64, forward pass only, composed from each op's own
//! `reference`. Slow and simple: it exists to check the GPU graph independently, and its
//! gradients by finite differences (for linear attention, which has no HF fixture).

use std::collections::HashMap;

use super::{AttentionKind, Batch, Head, RoFormerConfig, TrainingLoss};
use crate::error::{Error, Result};
use crate::ops::{
    attention, attention::linear as linear_attention, bce_mse, cross_entropy, embedding, gelu,
    layernorm, matmul, rope,
};

/// Parameters by HF name, in f64 (with a performer model's random projections, by
/// [`super::performer_projection_name`]).
pub type Weights = HashMap<String, Vec<f64>>;

fn get<'a>(w: &'a Weights, name: &str) -> Result<&'a [f64]> {
    w.get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| Error::invalid(format!("reference: no parameter {name:?}")))
}

/// `x · Wᵀ + b` for `rows` rows of x.
fn linear(
    w: &Weights,
    name: &str,
    x: &[f64],
    rows: usize,
    inp: usize,
    out: usize,
) -> Result<Vec<f64>> {
    let weight = get(w, &format!("{name}.weight"))?;
    let bias = get(w, &format!("{name}.bias"))?;
    let mut y = matmul::reference::matmul(x, weight, (rows, out, inp), false, true);
    for (i, v) in y.iter_mut().enumerate() {
        *v += bias[i % out];
    }
    Ok(y)
}

fn norm(w: &Weights, name: &str, x: &[f64], eps: f64) -> Result<Vec<f64>> {
    Ok(layernorm::reference::forward(
        x,
        get(w, &format!("{name}.weight"))?,
        get(w, &format!("{name}.bias"))?,
        eps,
    ))
}

fn gelu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| gelu::reference::forward(v)).collect()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `[B, T, heads, d]` ↔ `[B, heads, T, d]`.
fn swap_heads(x: &[f64], b: usize, t: usize, heads: usize, d: usize, to_bhtd: bool) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for bb in 0..b {
        for tt in 0..t {
            for h in 0..heads {
                for i in 0..d {
                    let bthd = ((bb * t + tt) * heads + h) * d + i;
                    let bhtd = ((bb * heads + h) * t + tt) * d + i;
                    if to_bhtd {
                        y[bhtd] = x[bthd];
                    } else {
                        y[bthd] = x[bhtd];
                    }
                }
            }
        }
    }
    y
}

/// The loss of `batch` (shape `[b, t]`) under `w`: the loss the head trains with
/// (cross-entropy over `batch.labels`, or for multi-label and regression classifiers binary
/// cross-entropy or squared error against `batch.float_labels`).
pub fn loss(
    c: &RoFormerConfig,
    head: Head,
    w: &Weights,
    batch: &Batch,
    b: usize,
    t: usize,
) -> Result<f64> {
    let (e, hsz, isz, nh) = (
        c.embedding_size(),
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
    );
    let d = hsz / nh;
    let eps = c.layer_norm_eps;
    let n = b * t;
    let mask: Vec<u32> = if batch.attention_mask.is_empty() {
        vec![1; n]
    } else {
        batch.attention_mask.clone()
    };
    let types: Vec<u32> = if batch.token_type_ids.is_empty() {
        vec![0; n]
    } else {
        batch.token_type_ids.clone()
    };

    // token ids → embeddings
    let words = get(w, super::WORDS)?;
    let x = add(
        &embedding::reference::forward(words, e, &batch.input_ids),
        &embedding::reference::forward(
            get(w, "roformer.embeddings.token_type_embeddings.weight")?,
            e,
            &types,
        ),
    );
    let mut h = norm(w, "roformer.embeddings.LayerNorm", &x, eps)?;
    if e != hsz {
        h = linear(w, "roformer.embeddings_project", &h, n, e, hsz)?;
    }

    // layers
    let additive: Vec<f64> = mask
        .iter()
        .map(|&m| if m == 1 { 0.0 } else { f32::MIN as f64 })
        .collect();
    let keys: Vec<f64> = mask.iter().map(|&m| m as f64).collect();
    for l in 0..c.num_hidden_layers {
        let pre = format!("roformer.encoder.layer.{l}");
        let proj = |name: &str, x: &[f64]| linear(w, &format!("{pre}.{name}"), x, n, hsz, hsz);
        let split = |x: Vec<f64>| swap_heads(&x, b, t, nh, d, true);
        let (q, k, mut v) = (
            split(proj("attention.self.query", &h)?),
            split(proj("attention.self.key", &h)?),
            split(proj("attention.self.value", &h)?),
        );
        let zeros = vec![0.0; v.len()];
        let a = match c.attention {
            AttentionKind::Softmax | AttentionKind::FusedSoftmax => {
                if c.rotary_value {
                    v = rope::reference::rotate(&v, d, |i| i % t, 1.0);
                }
                attention::reference::forward_backward(
                    &q,
                    &k,
                    &v,
                    &zeros,
                    (b, nh, t, d),
                    c.is_causal(),
                    true,
                    Some(&additive),
                )
                .0
            }
            AttentionKind::Local => {
                if c.rotary_value {
                    v = rope::reference::rotate(&v, d, |i| i % t, 1.0);
                }
                crate::ops::attention::local::reference::forward_backward(
                    &q,
                    &k,
                    &v,
                    &zeros,
                    (b, nh, t, d),
                    c.is_causal(),
                    true,
                    Some(&additive),
                    c.local_window().unwrap_or_default(),
                )
                .0
            }
            AttentionKind::Linear => {
                let p = linear_attention::reference::Problem {
                    q: &q,
                    k: &k,
                    v: &v,
                    dims: (b, nh, t, d, d),
                    causal: c.is_causal(),
                    rope: true,
                    mask: Some(&keys),
                    eps: linear_attention::EPS as f64,
                };
                linear_attention::reference::forward_backward(&p, &zeros).0
            }
            AttentionKind::Performer => {
                let p = attention::performer::reference::Problem {
                    q: &q,
                    k: &k,
                    v: &v,
                    projection: get(w, &super::performer_projection_name(l))?,
                    dims: (b, nh, t, d, d),
                    causal: c.is_causal(),
                    rope: true,
                    mask: Some(&keys),
                };
                attention::performer::reference::forward_backward(&p, &zeros).0
            }
        };
        let a = swap_heads(&a, b, t, nh, d, false);
        let o = proj("attention.output.dense", &a)?;
        let h1 = norm(
            w,
            &format!("{pre}.attention.output.LayerNorm"),
            &add(&o, &h),
            eps,
        )?;
        let i = gelu(&linear(
            w,
            &format!("{pre}.intermediate.dense"),
            &h1,
            n,
            hsz,
            isz,
        )?);
        let o2 = linear(w, &format!("{pre}.output.dense"), &i, n, isz, hsz)?;
        h = norm(w, &format!("{pre}.output.LayerNorm"), &add(&o2, &h1), eps)?;
    }

    // head → loss
    let (logits, classes) = match head {
        Head::MaskedLm => {
            let x = gelu(&linear(
                w,
                "cls.predictions.transform.dense",
                &h,
                n,
                hsz,
                e,
            )?);
            let x = norm(w, "cls.predictions.transform.LayerNorm", &x, eps)?;
            let mut y = matmul::reference::matmul(&x, words, (n, c.vocab_size, e), false, true);
            let bias = get(w, "cls.predictions.bias")?;
            for (i, v) in y.iter_mut().enumerate() {
                *v += bias[i % c.vocab_size];
            }
            (y, c.vocab_size)
        }
        Head::Classification => {
            let first: Vec<f64> = (0..b)
                .flat_map(|bb| h[bb * t * hsz..(bb * t + 1) * hsz].to_vec())
                .collect();
            let x = gelu(&linear(w, "classifier.dense", &first, b, hsz, hsz)?);
            (
                linear(w, "classifier.out_proj", &x, b, hsz, c.labels())?,
                c.labels(),
            )
        }
        other => {
            return Err(Error::invalid(format!(
                "reference: the {} head is not implemented",
                other.architecture()
            )))
        }
    };
    if let Some(TrainingLoss::Targets(kind)) = head.training_loss(c) {
        if batch.float_labels.len() != logits.len() {
            return Err(Error::invalid(format!(
                "reference: {} float labels for {} logits",
                batch.float_labels.len(),
                logits.len()
            )));
        }
        let y: Vec<f64> = batch.float_labels.iter().map(|&v| v as f64).collect();
        return Ok(bce_mse::reference::forward_backward(&logits, &y, kind).0);
    }
    Ok(cross_entropy::reference::forward_backward(
        &logits,
        classes,
        &batch.labels,
        cross_entropy::IGNORE_INDEX,
    )
    .0)
}
