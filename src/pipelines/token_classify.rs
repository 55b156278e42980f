//! `token-classification`: per-token labels, grouped into entities with transformers'
//! `simple` aggregation (or not grouped: `none`), as `TokenClassificationPipeline` returns
//! them.

use serde::Serialize;

use super::{argmax, gather, label, softmax, TextModel};
use crate::context::Context;
use crate::error::Result;
use crate::model::{Head, Want};
use crate::text::Encoding;

/// One labelled token (aggregation `none`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLabel {
    /// The token's most likely label.
    pub entity: String,
    /// Its probability.
    pub score: f64,
    /// The token's position in the tokenized input.
    pub index: usize,
    /// The token (the text under it, for an unknown token).
    pub word: String,
    /// Its first character in the text.
    pub start: usize,
    /// One past its last character.
    pub end: usize,
}

/// Adjacent tokens of one entity (aggregation `simple`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entity {
    /// The label without its `B-`/`I-` prefix.
    pub entity_group: String,
    /// The mean of its tokens' probabilities.
    pub score: f64,
    /// Its tokens, decoded together.
    pub word: String,
    /// Its first character in the text.
    pub start: usize,
    /// One past its last character.
    pub end: usize,
}

/// Labels whose tokens and entities are left out (transformers' `ignore_labels` default).
const IGNORE: [&str; 1] = ["O"];

/// Every non-special token of each text with its most likely label, `O` left out.
pub async fn run_tokens(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
) -> Result<Vec<Vec<TokenLabel>>> {
    let all = labelled(ctx, model, texts).await?;
    Ok(all
        .into_iter()
        .map(|tokens| {
            tokens
                .into_iter()
                .filter(|t| !IGNORE.contains(&t.entity.as_str()))
                .collect()
        })
        .collect())
}

/// The entities of each text (`simple` aggregation), `O` left out.
pub async fn run(ctx: &Context, model: &TextModel, texts: &[&str]) -> Result<Vec<Vec<Entity>>> {
    let all = labelled(ctx, model, texts).await?;
    all.into_iter()
        .map(|tokens| group(model, &tokens))
        .collect()
}

#[cfg(not(target_arch = "wasm32"))]
/// [`run`], blocking until the answers are back.
pub fn run_blocking(ctx: &Context, model: &TextModel, texts: &[&str]) -> Result<Vec<Vec<Entity>>> {
    ctx.block_on(run(ctx, model, texts))
}

#[cfg(not(target_arch = "wasm32"))]
/// [`run_tokens`], blocking until the answers are back.
pub fn run_tokens_blocking(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
) -> Result<Vec<Vec<TokenLabel>>> {
    ctx.block_on(run_tokens(ctx, model, texts))
}

/// Every non-special token's label, `O` included (grouping needs them).
async fn labelled(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
) -> Result<Vec<Vec<TokenLabel>>> {
    model.need("token classification", &[Head::TokenClassification])?;
    let encodings = model.encode(texts, None)?;
    let results = gather(model.submit(ctx, &encodings, Want::logits(), None)?).await?;
    let labels = model.config().labels();
    encodings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (r, j) = results.locate(i);
            let logits = &r.logits(j)?.data;
            tokens(model, texts[i], e, logits, labels)
        })
        .collect()
}

fn tokens(
    model: &TextModel,
    text: &str,
    e: &Encoding,
    logits: &[f32],
    labels: usize,
) -> Result<Vec<TokenLabel>> {
    let tok = model.tokenizer();
    let unk = tok.special_tokens().unk;
    let mut out = Vec::new();
    for t in 0..e.len() {
        if e.special_tokens_mask[t] == 1 {
            continue;
        }
        let probs = softmax(&logits[t * labels..(t + 1) * labels]);
        let best = argmax(&probs);
        let (start, end) = e.offsets[t];
        let word = if Some(e.input_ids[t]) == unk {
            text.chars().skip(start).take(end - start).collect()
        } else {
            e.tokens[t].clone()
        };
        out.push(TokenLabel {
            entity: label(model.config(), best),
            score: probs[best],
            index: t,
            word,
            start,
            end,
        });
    }
    Ok(out)
}

/// `B-`/`I-` tag split: a label without either prefix continues (`I`).
fn tag(label: &str) -> (bool, &str) {
    match label.split_once('-') {
        Some(("B", t)) => (true, t),
        Some(("I", t)) => (false, t),
        _ => (false, label),
    }
}

/// transformers' `group_entities`: adjacent tokens of one tag join unless the next begins
/// (`B-`) a new one; `O` groups are dropped afterwards.
fn group(model: &TextModel, tokens: &[TokenLabel]) -> Result<Vec<Entity>> {
    let mut groups: Vec<Vec<&TokenLabel>> = Vec::new();
    for t in tokens {
        let (begins, name) = tag(&t.entity);
        match groups.last_mut() {
            Some(g) if !begins && tag(&g[g.len() - 1].entity).1 == name => g.push(t),
            _ => groups.push(vec![t]),
        }
    }
    let mut out = Vec::new();
    for g in groups {
        let first = g[0];
        let name = first
            .entity
            .split_once('-')
            .map_or(first.entity.as_str(), |(_, n)| n)
            .to_string();
        if IGNORE.contains(&name.as_str()) {
            continue;
        }
        let words: Vec<String> = g.iter().map(|t| t.word.clone()).collect();
        out.push(Entity {
            entity_group: name,
            score: g.iter().map(|t| t.score).sum::<f64>() / g.len() as f64,
            word: model.tokenizer().tokens_to_string(&words)?,
            start: first.start,
            end: g[g.len() - 1].end,
        });
    }
    Ok(out)
}
