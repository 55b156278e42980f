//! Extractive question answering: the span of a context that answers a question, as
//! transformers 4's `QuestionAnsweringPipeline` computed it (transformers 5 removed the
//! pipeline; its models' start and end logits are unchanged).
//!
//! The question and the context are tokenized as a pair, the context cut into windows of
//! at most `min(max tokens, 384)` tokens overlapping by `min(that / 2, 128)`. In each window,
//! start and end logits outside the context are masked, each turned into probabilities by a
//! softmax; a span's score is `p_start · p_end`, over spans of at most `max_answer_len`
//! tokens. A span is widened to whole words of the context; spans giving the same text
//! (ignoring case) add their scores.

use serde::Serialize;

use super::{at_input, gather, softmax, TextModel};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::{Head, Want};
use crate::text::{EncodeOptions, Encoding, Truncation};

/// An answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answer {
    /// Its probability (summed over the spans that give this text).
    pub score: f64,
    /// Its first character in the context.
    pub start: usize,
    /// One past its last character in the context.
    pub end: usize,
    /// The context's text from `start` to `end`.
    pub answer: String,
}

/// Options of [`run`], transformers' defaults by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerOptions {
    /// Answers to return, best first.
    pub top_k: usize,
    /// Longest answer, in tokens.
    pub max_answer_len: usize,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        AnswerOptions {
            top_k: 1,
            max_answer_len: 15,
        }
    }
}

/// The best answers to each `(question, context)`.
pub async fn run(
    ctx: &Context,
    model: &TextModel,
    inputs: &[(&str, &str)],
    options: AnswerOptions,
) -> Result<Vec<Vec<Answer>>> {
    model.need("question answering", &[Head::QuestionAnswering])?;
    if inputs.is_empty() {
        return Err(Error::invalid("no questions"));
    }
    if options.top_k == 0 || options.max_answer_len == 0 {
        return Err(Error::invalid(
            "top_k and max_answer_len must be at least 1",
        ));
    }
    // Every window of every input, and which input it belongs to.
    let mut windows: Vec<Encoding> = Vec::new();
    let mut owner = Vec::new();
    for (i, (question, context)) in inputs.iter().enumerate() {
        let mut e = encode(model, question, context).map_err(|e| at_input(i, context, e))?;
        let rest = std::mem::take(&mut e.overflowing);
        for w in std::iter::once(e).chain(rest) {
            windows.push(w);
            owner.push(i);
        }
    }
    let results = gather(model.submit(ctx, &windows, Want::logits(), None)?).await?;
    let mut answers: Vec<Vec<Answer>> = vec![Vec::new(); inputs.len()];
    for (w, window) in windows.iter().enumerate() {
        let (r, j) = results.locate(w);
        let (start, end) = (r.start_logits(j)?, r.end_logits(j)?);
        let context = inputs[owner[w]].1;
        let found = &mut answers[owner[w]];
        for (s, e, score) in best_spans(
            window,
            &start,
            &end,
            model.tokenizer().special_tokens().cls,
            options,
        ) {
            let (a, b) = word_span(window, s, e);
            let text: String = context.chars().skip(a).take(b - a).collect();
            match found
                .iter_mut()
                .find(|x| x.answer.to_lowercase() == text.to_lowercase())
            {
                Some(x) => x.score += score,
                None => found.push(Answer {
                    score,
                    start: a,
                    end: b,
                    answer: text,
                }),
            }
        }
    }
    for found in &mut answers {
        // stable: equal scores keep the order they were found in, as Python's sorted
        found.sort_by(|a, b| b.score.total_cmp(&a.score));
        found.truncate(options.top_k);
    }
    Ok(answers)
}

/// What [`run`] would refuse in one question and context, found without the GPU: either is
/// empty, or the question leaves no room for the context. The error says what is wrong, not
/// which input: the caller names it.
pub fn check(model: &TextModel, question: &str, context: &str) -> Result<()> {
    encode(model, question, context).map(|_| ())
}

/// The question and the context tokenized as a pair, the context cut into windows of at most
/// `min(max tokens, 384)` tokens overlapping by `min(that / 2, 128)` (the first window, the
/// others in its `overflowing`).
fn encode(model: &TextModel, question: &str, context: &str) -> Result<Encoding> {
    if question.trim().is_empty() || context.trim().is_empty() {
        return Err(Error::invalid(
            "the question and the context must not be empty",
        ));
    }
    let max_len = model.max_tokens().min(384);
    let options = EncodeOptions {
        truncation: Some(Truncation::OnlySecond),
        max_length: Some(max_len),
        stride: (max_len / 2).min(128),
        pad_to_longest: false,
    };
    model
        .tokenizer()
        .encode_with(question, Some(context), &options)
        .map_err(|e| Error::invalid(format!("{e} (is the question too long?)")))
}

#[cfg(not(target_arch = "wasm32"))]
/// [`run`], blocking until the answers are back.
pub fn run_blocking(
    ctx: &Context,
    model: &TextModel,
    inputs: &[(&str, &str)],
    options: AnswerOptions,
) -> Result<Vec<Vec<Answer>>> {
    ctx.block_on(run(ctx, model, inputs, options))
}

/// The window's best `(start token, end token, score)` spans inside the context, best first
/// (transformers' `select_starts_ends` + `decode_spans`, asking for `2·top_k + 10` candidates
/// since aligning to words may merge some).
fn best_spans(
    w: &Encoding,
    start: &[f32],
    end: &[f32],
    cls: Option<u32>,
    options: AnswerOptions,
) -> Vec<(usize, usize, f64)> {
    let n = w.len();
    // Context tokens that are not padding may be in an answer; the CLS token is unmasked
    // before the softmax (some models answer "impossible" there) but never chosen.
    let allowed: Vec<bool> = (0..n)
        .map(|t| w.sequence_ids[t] == Some(1) && w.attention_mask[t] == 1)
        .collect();
    let unmasked = |t: usize| allowed[t] || Some(w.input_ids[t]) == cls && w.attention_mask[t] == 1;
    let probs = |logits: &[f32]| {
        let masked: Vec<f32> = (0..n)
            .map(|t| if unmasked(t) { logits[t] } else { -10000.0 })
            .collect();
        let mut p = softmax(&masked);
        p[0] = 0.0;
        p
    };
    let (ps, pe) = (probs(start), probs(end));
    let mut spans = Vec::new();
    for (s, &p) in ps.iter().enumerate() {
        let ends = pe.iter().enumerate().skip(s).take(options.max_answer_len);
        spans.extend(ends.map(|(e, &q)| (s, e, p * q)));
    }
    // Best first; ties in token order (row-major), as numpy's stable argsort of the flat
    // score matrix. Candidates outside the context are dropped after choosing, as there.
    spans.sort_by(|a, b| b.2.total_cmp(&a.2));
    // Saturating: a huge top_k asks for every candidate, not for a wrapped-around few.
    spans.truncate(options.top_k.saturating_mul(2).saturating_add(10));
    spans.retain(|&(s, e, _)| allowed[s] && allowed[e]);
    spans
}

/// The character span of the context's words under tokens `s..=e` (tokens' own offsets
/// where a token has no word).
fn word_span(w: &Encoding, s: usize, e: usize) -> (usize, usize) {
    let words = w.word_ids[s].zip(w.word_ids[e]);
    words
        .and_then(|(a, b)| Some((w.word_to_chars(a, 1)?.0, w.word_to_chars(b, 1)?.1)))
        .unwrap_or((w.offsets[s].0, w.offsets[e].1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[CLS] q [SEP]`, eight context tokens, `[SEP]`: 36 spans inside the context.
    fn window() -> Encoding {
        let n = 12;
        let seq = |t: usize| match t {
            0 | 2 | 11 => None,
            1 => Some(0),
            _ => Some(1),
        };
        Encoding {
            input_ids: (0..n as u32).collect(),
            attention_mask: vec![1; n],
            sequence_ids: (0..n).map(seq).collect(),
            ..Encoding::default()
        }
    }

    /// A top_k near usize::MAX keeps every candidate (`2·top_k + 10` overflowed: a panic
    /// with overflow checks, 10 candidates without).
    #[test]
    fn a_huge_top_k_keeps_every_span() {
        let logits: Vec<f32> = (0..12).map(|t| t as f32 * 0.1).collect();
        let spans = |top_k| {
            let options = AnswerOptions {
                top_k,
                max_answer_len: 15,
            };
            best_spans(&window(), &logits, &logits, Some(0), options)
        };
        assert_eq!(spans(100).len(), 36);
        assert_eq!(spans(usize::MAX / 2 + 1), spans(100));
        assert_eq!(spans(usize::MAX), spans(100));
    }
}
