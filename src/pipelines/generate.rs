//! `text-generation` with a causal RoFormer (`RoFormerForCausalLM`): greedy decoding, or
//! sampling with temperature, top-k and top-p from a seeded generator. The result is the
//! prompt followed by the new tokens decoded, as transformers' pipeline returns it
//! (`generated_text`); the prompt is tokenized with its special tokens, as there.
//!
//! Each step runs the whole sequence again (no key/value cache): simple, and cheap at the
//! lengths a RoFormer takes. Every prompt of a call steps together in one request.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{argmax, at_input, gather, locate, softmax, TextModel};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::{Head, Want};
use crate::text::{EncodeOptions, Encoding};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decoding {
    /// The most likely token (the first of equals).
    Greedy,
    /// A draw from the distribution at `temperature`, kept to the `top_k` most likely tokens
    /// (0: all) and to the smallest set whose probability reaches `top_p` (1: all).
    Sample {
        /// Divides the logits (must be above 0).
        temperature: f32,
        /// Keep only this many most likely tokens (0 keeps all).
        top_k: usize,
        /// Keep the most likely tokens up to this total probability (1 keeps all).
        top_p: f32,
        /// The generator's seed: the same seed, model and prompts give the same text.
        seed: u64,
    },
}

/// Options of [`run`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerateOptions {
    /// New tokens at most (fewer if the end-of-sequence token comes).
    pub max_new_tokens: usize,
    /// How to pick them.
    pub decoding: Decoding,
}

/// A generated text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generated {
    /// The prompt and its continuation.
    pub generated_text: String,
}

/// Continues each prompt. A prompt with too little room for `max_new_tokens` after it is
/// cut from the left or refused, as [`prompt_room`] says.
pub async fn run(
    ctx: &Context,
    model: &TextModel,
    prompts: &[&str],
    options: GenerateOptions,
) -> Result<Vec<Generated>> {
    model.need("text generation", &[Head::CausalLm])?;
    if let Decoding::Sample {
        temperature, top_p, ..
    } = options.decoding
    {
        if !(temperature > 0.0 && temperature.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p})"
            )));
        }
    }
    if prompts.is_empty() {
        return Err(Error::invalid("no input texts"));
    }
    let room = prompt_room(model, options.max_new_tokens)?;
    let mut sequences = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            prompt_tokens(model, p, room, options.max_new_tokens).map_err(|e| at_input(i, p, e))
        })
        .collect::<Result<Vec<Encoding>>>()?;
    let prompt_lens: Vec<usize> = sequences.iter().map(|e| e.len()).collect();
    let vocab = model.config().vocab_size;
    let mut rng = match options.decoding {
        Decoding::Sample { seed, .. } => Some(StdRng::seed_from_u64(seed)),
        Decoding::Greedy => None,
    };
    let mut done = vec![false; prompts.len()];
    for _ in 0..options.max_new_tokens {
        let live: Vec<usize> = (0..prompts.len()).filter(|&i| !done[i]).collect();
        if live.is_empty() {
            break;
        }
        let batch: Vec<_> = live.iter().map(|&i| sequences[i].clone()).collect();
        let results = gather(model.submit(ctx, &batch, Want::logits())?).await?;
        for (k, &i) in live.iter().enumerate() {
            let (r, j) = locate(&results, k);
            let logits = &r.logits(j)?.data;
            let last = sequences[i].len() - 1;
            let row = &logits[last * vocab..(last + 1) * vocab];
            let next = match (options.decoding, rng.as_mut()) {
                (
                    Decoding::Sample {
                        temperature,
                        top_k,
                        top_p,
                        ..
                    },
                    Some(rng),
                ) => sample(row, temperature, top_k, top_p, rng),
                _ => argmax(row),
            } as u32;
            let s = &mut sequences[i];
            s.input_ids.push(next);
            s.token_type_ids.push(0);
            s.attention_mask.push(1);
            if Some(next) == model.eos_token_id {
                done[i] = true;
            }
        }
    }
    let tok = model.tokenizer();
    prompts
        .iter()
        .zip(&sequences)
        .zip(&prompt_lens)
        .map(|((prompt, s), &n)| {
            Ok(Generated {
                generated_text: format!("{prompt}{}", tok.decode(&s.input_ids[n..], true)?),
            })
        })
        .collect()
}

/// The most tokens a prompt may have so that `max_new_tokens` more fit the model's maximum
/// (an error when that leaves none): longer prompts are cut from the left to it, or refused,
/// as [`TextOptions::truncate`](super::TextOptions::truncate) says.
pub fn prompt_room(model: &TextModel, max_new_tokens: usize) -> Result<usize> {
    let max = model.max_tokens();
    match max.checked_sub(max_new_tokens) {
        Some(room) if room > 0 => Ok(room),
        _ => Err(Error::invalid(format!(
            "max_new_tokens {max_new_tokens} leaves no room for a prompt: the model takes \
             {max} tokens at most, the prompt's and the new ones together"
        ))),
    }
}

/// A prompt's tokens (special tokens included, as transformers' pipeline has them), at most
/// `room` of them: a longer prompt loses its start (truncation) or is refused.
fn prompt_tokens(model: &TextModel, prompt: &str, room: usize, new: usize) -> Result<Encoding> {
    if prompt.trim().is_empty() {
        return Err(Error::invalid("empty"));
    }
    let mut e = model
        .tokenizer()
        .encode_with(prompt, None, &EncodeOptions::default())?;
    if e.len() > room {
        if !model.options().truncate {
            return Err(Error::invalid(format!(
                "{} tokens: with {new} new ones it would pass the model's maximum of {} \
                 (TextOptions::truncate cuts the prompt from the left to make room)",
                e.len(),
                model.max_tokens()
            )));
        }
        e.keep_last(room);
    }
    Ok(e)
}

#[cfg(not(target_arch = "wasm32"))]
/// [`run`], blocking until the answers are back.
pub fn run_blocking(
    ctx: &Context,
    model: &TextModel,
    prompts: &[&str],
    options: GenerateOptions,
) -> Result<Vec<Generated>> {
    ctx.block_on(run(ctx, model, prompts, options))
}

/// A draw from `softmax(row / temperature)` kept to the top-k, then the top-p nucleus.
fn sample(row: &[f32], temperature: f32, top_k: usize, top_p: f32, rng: &mut StdRng) -> usize {
    let scaled: Vec<f32> = row.iter().map(|&x| x / temperature).collect();
    let probs = softmax(&scaled);
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let mut kept = Vec::with_capacity(order.len());
    let mut total = 0.0;
    for id in order {
        kept.push(id);
        total += probs[id];
        if total >= top_p as f64 {
            break;
        }
    }
    let mut draw = rng.random::<f64>() * total;
    for &id in &kept {
        draw -= probs[id];
        if draw <= 0.0 {
            return id;
        }
    }
    kept[kept.len() - 1]
}
