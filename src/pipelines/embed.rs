//! `feature-extraction` (every token's last hidden state, as transformers' pipeline returns
//! it) and sentence embeddings pooled from it (mean over the tokens, or the first token),
//! optionally L2-normalised, as sentence-transformers does.

use super::{gather, TextModel};
use crate::context::Context;
use crate::error::Result;
use crate::model::Want;

/// How token states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the sequence's tokens (special tokens included, padding not).
    Mean,
    /// The first token's (`[CLS]`).
    Cls,
}

/// Every token's last hidden state, `[tokens][hidden]`, for each text.
pub async fn features(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let encodings = model.encode(texts, None)?;
    let results = gather(model.submit(ctx, &encodings, Want::last_hidden_state(), None)?).await?;
    let hidden = model.config().hidden_size;
    (0..texts.len())
        .map(|i| {
            let (r, j) = results.locate(i);
            Ok(r.last_hidden_state(j)?
                .data
                .chunks(hidden)
                .map(<[f32]>::to_vec)
                .collect())
        })
        .collect()
}

/// One vector per text: its tokens' states pooled, L2-normalised if asked.
pub async fn sentences(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<Vec<f32>>> {
    let states = features(ctx, model, texts).await?;
    Ok(states
        .into_iter()
        .map(|tokens| {
            let mut v: Vec<f64> = match pooling {
                Pooling::Cls => tokens[0].iter().map(|&x| x as f64).collect(),
                Pooling::Mean => {
                    let mut sum = vec![0.0f64; tokens[0].len()];
                    for t in &tokens {
                        for (s, &x) in sum.iter_mut().zip(t) {
                            *s += x as f64;
                        }
                    }
                    sum.iter().map(|s| s / tokens.len() as f64).collect()
                }
            };
            if normalize {
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
            v.into_iter().map(|x| x as f32).collect()
        })
        .collect())
}

#[cfg(not(target_arch = "wasm32"))]
/// [`features`], blocking until the answers are back.
pub fn features_blocking(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
) -> Result<Vec<Vec<Vec<f32>>>> {
    ctx.block_on(features(ctx, model, texts))
}

#[cfg(not(target_arch = "wasm32"))]
/// [`sentences`], blocking until the answers are back.
pub fn sentences_blocking(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<Vec<f32>>> {
    ctx.block_on(sentences(ctx, model, texts, pooling, normalize))
}
