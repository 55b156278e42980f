//! Evaluation metrics, as transformers' example scripts compute them: accuracy and macro-F1
//! (text classification, scikit-learn's `f1_score(average="macro")` over the labels that
//! occur), entity-level precision, recall and F1 as seqeval computes them (token
//! classification, its default scheme) with token accuracy, and accuracy of the predicted
//! tokens (fill-mask over the masked tokens, text generation over the next tokens).

use std::collections::{BTreeMap, BTreeSet};

use super::dataset::Task;
use crate::model::Batch;
use crate::ops::cross_entropy::IGNORE_INDEX;

/// Predictions and labels gathered over an evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictions {
    /// `(predicted, label)` per labelled sequence or token.
    pub pairs: Vec<(i32, i32)>,
    /// Token classification: per sequence, `(predicted, label)` of its labelled tokens.
    pub sequences: Vec<Vec<(i32, i32)>>,
}

fn argmax(row: &[f32]) -> i32 {
    (0..row.len()).fold(0, |b, k| if row[k] > row[b] { k } else { b }) as i32
}

impl Predictions {
    /// Adds a batch's: its first `rows` rows of length `seq`, with `width` logits a row (or
    /// a token).
    pub fn add(
        &mut self,
        task: Task,
        batch: &Batch,
        logits: &[f32],
        rows: usize,
        seq: usize,
        width: usize,
    ) {
        for r in 0..rows {
            match task {
                Task::TextClassification => {
                    let label = batch.labels[r];
                    if label != IGNORE_INDEX {
                        let p = argmax(&logits[r * width..(r + 1) * width]);
                        self.pairs.push((p, label));
                    }
                }
                Task::TokenClassification | Task::FillMask | Task::TextGeneration => {
                    let mut sequence = Vec::new();
                    // A causal LM's logits at t predict the token at t + 1.
                    let shift = usize::from(task == Task::TextGeneration);
                    for t in 0..seq.saturating_sub(shift) {
                        let label = batch.labels[r * seq + t + shift];
                        if label == IGNORE_INDEX {
                            continue;
                        }
                        let at = (r * seq + t) * width;
                        let p = argmax(&logits[at..at + width]);
                        self.pairs.push((p, label));
                        sequence.push((p, label));
                    }
                    if task == Task::TokenClassification {
                        self.sequences.push(sequence);
                    }
                }
            }
        }
    }
}

/// The task's metrics, by transformers' names (`eval_accuracy`, ...); `labels` are the
/// label names (token classification reads entities from them).
pub fn compute(task: Task, p: &Predictions, labels: &[String]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if !p.pairs.is_empty() {
        let correct = p.pairs.iter().filter(|(a, b)| a == b).count();
        out.insert(
            "eval_accuracy".into(),
            correct as f64 / p.pairs.len() as f64,
        );
    }
    match task {
        Task::TextClassification => {
            out.insert("eval_f1".into(), macro_f1(&p.pairs));
        }
        Task::TokenClassification => {
            let name = |i: i32| {
                labels
                    .get(i as usize)
                    .cloned()
                    .unwrap_or_else(|| "O".into())
            };
            let truth: Vec<Vec<String>> = p
                .sequences
                .iter()
                .map(|s| s.iter().map(|&(_, l)| name(l)).collect())
                .collect();
            let predicted: Vec<Vec<String>> = p
                .sequences
                .iter()
                .map(|s| s.iter().map(|&(x, _)| name(x)).collect())
                .collect();
            let (precision, recall, f1) = entity_scores(&truth, &predicted);
            out.insert("eval_precision".into(), precision);
            out.insert("eval_recall".into(), recall);
            out.insert("eval_f1".into(), f1);
        }
        Task::FillMask | Task::TextGeneration => {}
    }
    out
}

/// scikit-learn's macro F1: the mean over every label that occurs (as truth or prediction)
/// of its F1 (0 where it has no true or predicted positives).
pub fn macro_f1(pairs: &[(i32, i32)]) -> f64 {
    let labels: BTreeSet<i32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    if labels.is_empty() {
        return 0.0;
    }
    let f1s: Vec<f64> = labels
        .iter()
        .map(|&c| {
            let tp = pairs.iter().filter(|&&(p, t)| p == c && t == c).count() as f64;
            let fp = pairs.iter().filter(|&&(p, t)| p == c && t != c).count() as f64;
            let fn_ = pairs.iter().filter(|&&(p, t)| p != c && t == c).count() as f64;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            }
        })
        .collect();
    f1s.iter().sum::<f64>() / f1s.len() as f64
}

/// A tag's prefix and type: `B-PER` is `('B', "PER")`, `O` is `('O', "")`.
fn split_tag(tag: &str) -> (char, &str) {
    match tag.split_once('-') {
        Some((p, t)) if p.len() == 1 => (p.chars().next().unwrap_or('O'), t),
        _ if tag == "O" => ('O', ""),
        // A bare type (no prefix), as seqeval reads it: inside a chunk of that type.
        _ => ('I', tag),
    }
}

/// The entities `(type, start, end)` of one tag sequence, as seqeval's default
/// `get_entities` finds them (conlleval's chunk rules).
pub fn entities(tags: &[String]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let (mut prev_tag, mut prev_type) = ('O', String::new());
    let mut begin = 0;
    for (i, tag) in tags
        .iter()
        .chain(std::iter::once(&"O".to_string()))
        .enumerate()
    {
        let (t, ty) = split_tag(tag);
        let end_of_chunk = matches!(prev_tag, 'E' | 'S')
            || (matches!(prev_tag, 'B' | 'I') && matches!(t, 'B' | 'S' | 'O'))
            || (prev_tag != 'O' && prev_tag != '.' && prev_type != ty);
        if end_of_chunk && prev_tag != 'O' {
            out.push((prev_type.clone(), begin, i - 1));
        }
        let start_of_chunk = matches!(t, 'B' | 'S')
            || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(t, 'E' | 'I'))
            || (t != 'O' && t != '.' && prev_type != ty);
        if start_of_chunk {
            begin = i;
        }
        prev_tag = t;
        prev_type = ty.to_string();
    }
    out
}

/// seqeval's micro-averaged entity precision, recall and F1 over sequences.
pub fn entity_scores(truth: &[Vec<String>], predicted: &[Vec<String>]) -> (f64, f64, f64) {
    let (mut correct, mut true_n, mut pred_n) = (0usize, 0usize, 0usize);
    for (t, p) in truth.iter().zip(predicted) {
        let te: BTreeSet<_> = entities(t).into_iter().collect();
        let pe: BTreeSet<_> = entities(p).into_iter().collect();
        correct += te.intersection(&pe).count();
        true_n += te.len();
        pred_n += pe.len();
    }
    let precision = if pred_n == 0 {
        0.0
    } else {
        correct as f64 / pred_n as f64
    };
    let recall = if true_n == 0 {
        0.0
    } else {
        correct as f64 / true_n as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (precision, recall, f1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// seqeval's documented examples (its README and get_entities docstring).
    #[test]
    fn entities_follow_seqeval() {
        assert_eq!(
            entities(&tags("B-PER I-PER O B-LOC")),
            [("PER".into(), 0, 1), ("LOC".into(), 3, 3)]
        );
        // An I- without its B- starts a chunk; a type change ends one.
        assert_eq!(
            entities(&tags("I-PER I-PER B-LOC I-ORG")),
            [
                ("PER".into(), 0, 1),
                ("LOC".into(), 2, 2),
                ("ORG".into(), 3, 3)
            ]
        );
        let y_true = vec![tags("O O O B-MISC I-MISC I-MISC O"), tags("B-PER I-PER O")];
        let y_pred = vec![
            tags("O O B-MISC I-MISC I-MISC I-MISC O"),
            tags("B-PER I-PER O"),
        ];
        let (p, r, f) = entity_scores(&y_true, &y_pred);
        // seqeval: precision 0.5, recall 0.5, f1 0.5 for this pair.
        assert!((p - 0.5).abs() < 1e-12 && (r - 0.5).abs() < 1e-12 && (f - 0.5).abs() < 1e-12);
    }

    #[test]
    fn macro_f1_is_scikit_learns() {
        // sklearn.metrics.f1_score([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1], average="macro")
        // = 0.26666...
        let pairs = [(0, 0), (2, 1), (1, 2), (0, 0), (0, 1), (1, 2)];
        assert!((macro_f1(&pairs) - 0.266_666_666_666_666_66).abs() < 1e-12);
    }
}
