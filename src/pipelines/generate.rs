//! `text-generation` with a causal RoFormer (`RoFormerForCausalLM`): greedy decoding, or
//! sampling with temperature, top-k and top-p from a seeded generator, with transformers'
//! `repetition_penalty` and `no_repeat_ngram_size`, each sequence stopping at its
//! end-of-sequence token or its length limit. The result is the prompt followed by the new
//! tokens decoded, as transformers' pipeline returns it (`generated_text`); the prompt is
//! tokenized with its special tokens, as there. Defaults come from the model folder's
//! `generation_config.json` ([`GenerationConfig`]).
//!
//! Softmax-, local- and linear-attention models generate over a cache
//! ([`Encoder::generate`]): the prompts run once, then each step runs one token per sequence
//! (a local model's reading only its window and global tokens of the cache; a linear model
//! keeping a recurrent state instead). A performer-attention model runs its whole sequence
//! again at each step. Either way every prompt of a call steps
//! together, and [`stream`] hands out each step's tokens as they come.
//!
//! [`Encoder::generate`]: crate::model::Encoder::generate

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{argmax, at_input, gather, softmax, TextModel};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::{AttentionKind, Generation, Head, NextLogits, Want};
use crate::readback::Pending;
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

/// What a model folder's `generation_config.json` says about generating (the fields this
/// library honours; absent ones are `None`). transformers also reads `eos_token_id` from
/// `config.json` when the generation config has none, and so does [`TextModel::load`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    /// Tokens that end a sequence (a number or a list in the file).
    pub eos_token_id: Vec<u32>,
    /// Most tokens of a sequence, the prompt's included.
    pub max_length: Option<usize>,
    /// Most new tokens (wins over `max_length`, as in transformers).
    pub max_new_tokens: Option<usize>,
    /// Sample rather than take the most likely token.
    pub do_sample: Option<bool>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Sampling from the K most likely tokens.
    pub top_k: Option<usize>,
    /// Sampling from the nucleus of probability P.
    pub top_p: Option<f32>,
    /// transformers' repetition penalty (1: none).
    pub repetition_penalty: Option<f32>,
    /// No n-gram of this size twice (0: no rule).
    pub no_repeat_ngram_size: Option<usize>,
    /// Step over a key/value cache.
    pub use_cache: Option<bool>,
}

impl GenerationConfig {
    /// Reads the fields of a `generation_config.json` (or of a `config.json`, for its
    /// `eos_token_id`); a field of the wrong type is an error naming it.
    pub fn from_json(value: &serde_json::Value, path: &str) -> Result<GenerationConfig> {
        let field_error = |name: &str, expected: &str| Error::Format {
            path: path.to_string(),
            message: format!("{name}: expected {expected}"),
        };
        let get = |name: &str| value.get(name).filter(|v| !v.is_null());
        let count = |name: &str| -> Result<Option<usize>> {
            get(name)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| field_error(name, "a whole number"))
                })
                .transpose()
        };
        let real = |name: &str| -> Result<Option<f32>> {
            get(name)
                .map(|v| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| field_error(name, "a number"))
                })
                .transpose()
        };
        let token = |v: &serde_json::Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| field_error("eos_token_id", "a token id or a list of them"))
        };
        let eos_token_id = match get("eos_token_id") {
            None => Vec::new(),
            Some(serde_json::Value::Array(ids)) => ids.iter().map(token).collect::<Result<_>>()?,
            Some(one) => vec![token(one)?],
        };
        Ok(GenerationConfig {
            eos_token_id,
            max_length: count("max_length")?,
            max_new_tokens: count("max_new_tokens")?,
            do_sample: get("do_sample")
                .map(|v| {
                    v.as_bool()
                        .ok_or_else(|| field_error("do_sample", "true or false"))
                })
                .transpose()?,
            temperature: real("temperature")?,
            top_k: count("top_k")?,
            top_p: real("top_p")?,
            repetition_penalty: real("repetition_penalty")?,
            no_repeat_ngram_size: count("no_repeat_ngram_size")?,
            use_cache: get("use_cache")
                .map(|v| {
                    v.as_bool()
                        .ok_or_else(|| field_error("use_cache", "true or false"))
                })
                .transpose()?,
        })
    }
}

/// Options of [`run`] and [`stream`].
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// New tokens at most, per prompt (fewer if the end-of-sequence token comes).
    pub max_new_tokens: usize,
    /// Most tokens of a sequence, the prompt's included, if less than the prompt and
    /// `max_new_tokens` (transformers' `max_length`); a prompt that already has this many is
    /// an error.
    pub max_length: Option<usize>,
    /// How to pick them.
    pub decoding: Decoding,
    /// transformers' `repetition_penalty`: every token already in the sequence (the prompt
    /// included) has its logit divided by it when positive, multiplied when negative. 1
    /// leaves the logits alone.
    pub repetition_penalty: f32,
    /// transformers' `no_repeat_ngram_size`: a token that would repeat an n-gram of the
    /// sequence is never chosen (0: no rule).
    pub no_repeat_ngram_size: usize,
    /// Tokens that end a sequence (kept in its text, as transformers does); `None`: the
    /// model's (`generation_config.json`'s `eos_token_id`, else `config.json`'s).
    pub eos_token_ids: Option<Vec<u32>>,
    /// Step over a key/value cache (transformers' `use_cache`, the default); `false` runs
    /// the whole sequence again at every step (the only way for linear attention).
    pub use_cache: bool,
}

impl Default for GenerateOptions {
    /// 20 new tokens, greedy, no penalties, the model's end-of-sequence tokens.
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 20,
            max_length: None,
            decoding: Decoding::Greedy,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            eos_token_ids: None,
            use_cache: true,
        }
    }
}

impl GenerateOptions {
    /// The options the model folder's `generation_config.json` sets (transformers'
    /// defaults for the rest): what `pipeline("text-generation")` would do with the folder.
    pub fn for_model(model: &TextModel) -> GenerateOptions {
        let g = model.generation_config();
        let decoding = if g.do_sample == Some(true) {
            Decoding::Sample {
                temperature: g.temperature.unwrap_or(1.0),
                top_k: g.top_k.unwrap_or(50),
                top_p: g.top_p.unwrap_or(1.0),
                seed: 0,
            }
        } else {
            Decoding::Greedy
        };
        let (max_new_tokens, max_length) = match (g.max_new_tokens, g.max_length) {
            (Some(new), _) => (new, None),
            (None, Some(total)) => (total, Some(total)),
            (None, None) => (20, Some(20)),
        };
        GenerateOptions {
            max_new_tokens,
            max_length,
            decoding,
            repetition_penalty: g.repetition_penalty.unwrap_or(1.0),
            no_repeat_ngram_size: g.no_repeat_ngram_size.unwrap_or(0),
            eos_token_ids: Some(g.eos_token_id.clone()),
            use_cache: g.use_cache.unwrap_or(true),
        }
    }

    fn check(&self) -> Result<()> {
        if let Decoding::Sample {
            temperature, top_p, ..
        } = self.decoding
        {
            if !(temperature > 0.0 && temperature.is_finite() && top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::invalid(format!(
                    "sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, \
                     {top_p})"
                )));
            }
        }
        let p = self.repetition_penalty;
        if !(p > 0.0 && p.is_finite()) {
            return Err(Error::invalid(format!(
                "repetition_penalty must be a positive number, not {p}"
            )));
        }
        Ok(())
    }
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
    let mut s = stream(ctx, model, prompts, options)?;
    while s.next().await?.is_some() {}
    (0..prompts.len()).map(|i| s.generated(i)).collect()
}

/// Starts generating from each prompt: the returned [`TokenStream`] hands out each step's
/// tokens as they come (and the texts so far). Checks and tokenizes every prompt first, as
/// [`run`] does.
pub fn stream<'a>(
    ctx: &'a Context,
    model: &'a TextModel,
    prompts: &[&str],
    options: GenerateOptions,
) -> Result<TokenStream<'a>> {
    model.need("text generation", &[Head::CausalLm])?;
    options.check()?;
    if prompts.is_empty() {
        return Err(Error::invalid("no input texts"));
    }
    // Room for a prompt: below max_length where it is set (it bounds the whole sequence),
    // else before max_new_tokens more within the model's positions.
    let room = match options.max_length {
        Some(total) => total.min(max_length(model)).saturating_sub(1).max(1),
        None => prompt_room(model, options.max_new_tokens)?,
    };
    let encodings = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            prompt_tokens(model, p, room, options.max_new_tokens).map_err(|e| at_input(i, p, e))
        })
        .collect::<Result<Vec<Encoding>>>()?;
    let prompt_lens: Vec<usize> = encodings.iter().map(Encoding::len).collect();
    // Each sequence's length limit: the model's, the new tokens', and max_length.
    let mut limits = Vec::with_capacity(prompts.len());
    for (i, &n) in prompt_lens.iter().enumerate() {
        let mut limit = (n + options.max_new_tokens).min(max_length(model));
        if let Some(total) = options.max_length {
            if n >= total {
                return Err(at_input(
                    i,
                    prompts[i],
                    Error::invalid(format!(
                        "{n} tokens, and max_length is {total}: no room for a new one"
                    )),
                ));
            }
            limit = limit.min(total);
        }
        limits.push(limit);
    }
    let sequences: Vec<Vec<u32>> = encodings.into_iter().map(|e| e.input_ids).collect();
    let capacity = *limits.iter().max().unwrap_or(&1);
    let (stepper, first) =
        if !options.use_cache || model.config().attention == AttentionKind::Performer {
            (Stepper::Recompute, None)
        } else {
            let (g, first) = model.encoder().generate(ctx, &sequences, capacity)?;
            (Stepper::Cached(Box::new(g)), Some(first))
        };
    let rng = match options.decoding {
        Decoding::Sample { seed, .. } => Some(StdRng::seed_from_u64(seed)),
        Decoding::Greedy => None,
    };
    let eos = options
        .eos_token_ids
        .clone()
        .unwrap_or_else(|| model.generation_config().eos_token_id.clone());
    Ok(TokenStream {
        eos,
        ctx,
        model,
        prompts: prompts.iter().map(|p| p.to_string()).collect(),
        done: limits
            .iter()
            .zip(&prompt_lens)
            .map(|(limit, n)| limit <= n)
            .collect(),
        sequences,
        prompt_lens,
        limits,
        options,
        rng,
        stepper,
        pending: first,
    })
}

/// How a stream gets each step's logits.
enum Stepper<'a> {
    /// Over a key/value cache.
    Cached(Box<Generation<'a>>),
    /// The whole sequence again (linear attention).
    Recompute,
}

/// A generation in progress, a step at a time (see [`stream`]).
pub struct TokenStream<'a> {
    ctx: &'a Context,
    model: &'a TextModel,
    prompts: Vec<String>,
    /// Each prompt's tokens and the new ones so far.
    sequences: Vec<Vec<u32>>,
    prompt_lens: Vec<usize>,
    /// Each sequence's most tokens.
    limits: Vec<usize>,
    done: Vec<bool>,
    /// The tokens that end a sequence.
    eos: Vec<u32>,
    options: GenerateOptions,
    rng: Option<StdRng>,
    stepper: Stepper<'a>,
    /// The cached step submitted and not yet read (the prompts' pass, at first).
    pending: Option<Pending<NextLogits>>,
}

impl TokenStream<'_> {
    /// The next token of every sequence still generating (`None` for one that has
    /// finished), or `None` once every sequence has finished.
    pub async fn next(&mut self) -> Result<Option<Vec<Option<u32>>>> {
        if self.done.iter().all(|&d| d) {
            return Ok(None);
        }
        let logits = self.logits().await?;
        let mut chosen = vec![None; self.sequences.len()];
        for (i, row) in logits.into_iter().enumerate() {
            if self.done[i] {
                continue;
            }
            let next = self.choose(i, row);
            let s = &mut self.sequences[i];
            s.push(next);
            chosen[i] = Some(next);
            if self.eos.contains(&next) || s.len() >= self.limits[i] {
                self.done[i] = true;
            }
        }
        // The next step goes to the GPU before the caller looks at these tokens.
        if let Stepper::Cached(g) = &mut self.stepper {
            if !self.done.iter().all(|&d| d) {
                let tokens: Vec<Option<u32>> = (0..chosen.len())
                    .map(|i| chosen[i].filter(|_| !self.done[i]))
                    .collect();
                self.pending = Some(g.append(self.ctx, &tokens)?);
            }
        }
        Ok(Some(chosen))
    }

    /// The logits of each sequence's newest token (empty rows for finished ones when
    /// recomputing).
    async fn logits(&mut self) -> Result<NextLogits> {
        if let Some(pending) = self.pending.take() {
            return pending.await;
        }
        let vocab = self.model.config().vocab_size;
        let live: Vec<usize> = (0..self.sequences.len())
            .filter(|&i| !self.done[i])
            .collect();
        let batch: Vec<Encoding> = live
            .iter()
            .map(|&i| {
                let ids = &self.sequences[i];
                // Token types 0 and no padding: what the pipeline generates with.
                Encoding {
                    input_ids: ids.clone(),
                    token_type_ids: vec![0; ids.len()],
                    attention_mask: vec![1; ids.len()],
                    ..Encoding::default()
                }
            })
            .collect();
        // Only each sequence's last row of logits comes back.
        let last: Vec<Vec<usize>> = batch.iter().map(|e| vec![e.len() - 1]).collect();
        let pending = self
            .model
            .submit(self.ctx, &batch, Want::logits(), Some(&last))?;
        let results = gather(pending).await?;
        let mut rows = vec![Vec::new(); self.sequences.len()];
        for (k, &i) in live.iter().enumerate() {
            let (r, j) = results.locate(k);
            rows[i] = r.logits(j)?.data[..vocab].to_vec();
        }
        Ok(rows)
    }

    /// Sequence i's next token from its newest logits, as transformers' processors and
    /// warpers choose it: penalties first, then greedy or the sampler.
    fn choose(&mut self, i: usize, mut row: Vec<f32>) -> u32 {
        let seq = &self.sequences[i];
        penalize_repetition(&mut row, seq, self.options.repetition_penalty);
        ban_repeated_ngrams(&mut row, seq, self.options.no_repeat_ngram_size);
        (match (self.options.decoding, self.rng.as_mut()) {
            (
                Decoding::Sample {
                    temperature,
                    top_k,
                    top_p,
                    ..
                },
                Some(rng),
            ) => sample(&row, temperature, top_k, top_p, rng),
            _ => argmax(&row),
        }) as u32
    }

    /// Sequence i's new tokens so far.
    pub fn new_tokens(&self, i: usize) -> &[u32] {
        &self.sequences[i][self.prompt_lens[i]..]
    }

    /// Sequence i's prompt and its continuation so far, decoded.
    pub fn generated(&self, i: usize) -> Result<Generated> {
        let text = self.model.tokenizer().decode(self.new_tokens(i), true)?;
        Ok(Generated {
            generated_text: format!("{}{text}", self.prompts[i]),
        })
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: each token of the sequence so far has
/// its logit divided by `penalty` when positive, multiplied when negative.
fn penalize_repetition(row: &mut [f32], sequence: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; row.len()];
    for &t in sequence {
        let t = t as usize;
        if t < row.len() && !seen[t] {
            seen[t] = true;
            let x = row[t];
            row[t] = if x < 0.0 { x * penalty } else { x / penalty };
        }
    }
}

/// transformers' `NoRepeatNGramLogitsProcessor`: a token that would complete an n-gram the
/// sequence already holds gets no chance (−∞).
fn ban_repeated_ngrams(row: &mut [f32], sequence: &[u32], n: usize) {
    if n == 0 || sequence.len() + 1 < n {
        return;
    }
    let prefix = &sequence[sequence.len() + 1 - n..];
    for start in 0..=sequence.len() - n {
        if &sequence[start..start + n - 1] == prefix {
            let banned = sequence[start + n - 1] as usize;
            if banned < row.len() {
                row[banned] = f32::NEG_INFINITY;
            }
        }
    }
}

/// The most tokens a sequence may reach, prompt included: the model's positions
/// (`max_position_embeddings`). The tokenizer's `model_max_length` bounds what it tokenizes
/// for the other tasks, not how far generation goes, as in transformers.
pub fn max_length(model: &TextModel) -> usize {
    model.config().max_position_embeddings
}

/// The most tokens a prompt may have so that `max_new_tokens` more fit [`max_length`] (an
/// error when that leaves none): longer prompts are cut from the left to it, or refused, as
/// [`TextOptions::truncate`](super::TextOptions::truncate) says.
pub fn prompt_room(model: &TextModel, max_new_tokens: usize) -> Result<usize> {
    let max = max_length(model);
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
                max_length(model)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_fields_are_read_as_transformers_writes_them() {
        let read = |text: &str| {
            GenerationConfig::from_json(&serde_json::from_str(text).unwrap(), "g.json")
        };
        let g = read(
            r#"{"eos_token_id": [3, 7], "max_length": 48, "do_sample": true,
                         "top_k": 5, "repetition_penalty": 1.2, "pad_token_id": 0,
                         "transformers_version": "5.25.0"}"#,
        )
        .unwrap();
        assert_eq!(g.eos_token_id, [3, 7]);
        assert_eq!(g.max_length, Some(48));
        assert_eq!(g.do_sample, Some(true));
        assert_eq!(g.top_k, Some(5));
        assert_eq!(g.repetition_penalty, Some(1.2));
        assert_eq!(read(r#"{"eos_token_id": 2}"#).unwrap().eos_token_id, [2]);
        assert!(read(r#"{"eos_token_id": null}"#)
            .unwrap()
            .eos_token_id
            .is_empty());
        for (bad, field) in [
            (r#"{"eos_token_id": "2"}"#, "eos_token_id"),
            (r#"{"max_length": -1}"#, "max_length"),
            (r#"{"do_sample": 1}"#, "do_sample"),
            (r#"{"temperature": "hot"}"#, "temperature"),
        ] {
            let e = read(bad).unwrap_err().to_string();
            assert!(e.starts_with("g.json: ") && e.contains(field), "{e}");
        }
    }

    #[test]
    fn penalties_follow_transformers_processors() {
        // RepetitionPenaltyLogitsProcessor: divided when positive, multiplied when not, once
        // per token however often it occurs.
        let mut row = vec![2.0, -2.0, 4.0, 1.0];
        penalize_repetition(&mut row, &[0, 1, 0], 2.0);
        assert_eq!(row, [1.0, -4.0, 4.0, 1.0]);
        // NoRepeatNGramLogitsProcessor with n = 2: after "... 1 2 ... 1", 2 is banned.
        let mut row = vec![0.0; 4];
        ban_repeated_ngrams(&mut row, &[1, 2, 3, 1], 2);
        assert_eq!(row, [0.0, 0.0, f32::NEG_INFINITY, 0.0]);
        // Too short a sequence for an n-gram bans nothing; n = 1 bans every token seen.
        let mut row = vec![0.0; 4];
        ban_repeated_ngrams(&mut row, &[1], 3);
        assert_eq!(row, [0.0; 4]);
        ban_repeated_ngrams(&mut row, &[1, 3], 1);
        assert_eq!(row, [0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
    }
}
