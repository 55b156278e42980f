//! `text-classification`: labels and scores of a sequence classifier, as transformers'
//! `TextClassificationPipeline` returns them.

use serde::Serialize;

use super::{gather, label, softmax, TextModel};
use crate::context::Context;
use crate::error::Result;
use crate::model::{Head, RoFormerConfig, Want};

/// A label and its score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelScore {
    /// The label's name (`id2label`, else `LABEL_i`).
    pub label: String,
    /// Its score (see [`Scoring`]).
    pub score: f64,
}

/// How logits become scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// Softmax over the labels (single-label classification).
    Softmax,
    /// Each label's sigmoid (multi-label classification, or one label).
    Sigmoid,
    /// The logits as they are (regression).
    None,
}

impl Scoring {
    /// transformers' choice for a config: regression → none; multi-label or one label →
    /// sigmoid; otherwise softmax.
    pub fn for_config(c: &RoFormerConfig) -> Scoring {
        match c.problem_type.as_deref() {
            Some("regression") => Scoring::None,
            Some("multi_label_classification") => Scoring::Sigmoid,
            _ if c.labels() == 1 => Scoring::Sigmoid,
            _ => Scoring::Softmax,
        }
    }

    fn apply(self, logits: &[f32]) -> Vec<f64> {
        match self {
            Scoring::Softmax => softmax(logits),
            Scoring::Sigmoid => logits
                .iter()
                .map(|&x| 1.0 / (1.0 + (-(x as f64)).exp()))
                .collect(),
            Scoring::None => logits.iter().map(|&x| x as f64).collect(),
        }
    }
}

/// Every label's score for each text (pairs: each text with its pair), best first; the
/// first is what transformers' pipeline returns by default, the list what it returns with
/// `top_k=None`. `scoring` `None` lets the config decide, as transformers does.
pub async fn run(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
    pairs: Option<&[&str]>,
    scoring: Option<Scoring>,
) -> Result<Vec<Vec<LabelScore>>> {
    model.need("text classification", &[Head::Classification])?;
    let encodings = model.encode(texts, pairs)?;
    let results = gather(model.submit(ctx, &encodings, Want::logits(), None)?).await?;
    let config = model.config();
    let scoring = scoring.unwrap_or_else(|| Scoring::for_config(config));
    (0..texts.len())
        .map(|i| {
            let (r, j) = results.locate(i);
            let scores = scoring.apply(&r.logits(j)?.data);
            let mut labels: Vec<LabelScore> = scores
                .into_iter()
                .enumerate()
                .map(|(k, score)| LabelScore {
                    label: label(config, k),
                    score,
                })
                .collect();
            labels.sort_by(|a, b| b.score.total_cmp(&a.score));
            Ok(labels)
        })
        .collect()
}

#[cfg(not(target_arch = "wasm32"))]
/// [`run`], blocking until the answers are back.
pub fn run_blocking(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
    pairs: Option<&[&str]>,
    scoring: Option<Scoring>,
) -> Result<Vec<Vec<LabelScore>>> {
    ctx.block_on(run(ctx, model, texts, pairs, scoring))
}
