//! Text in, answers out: transformers' `pipeline(...)` tasks on a RoFormer model folder as
//! `save_pretrained` writes it (`config.json`, `model.safetensors` or its sharded index,
//! `tokenizer.json` and/or `vocab.txt` + `tokenizer_config.json`).
//!
//! [`TextModel::load`] reads the folder; each task is a module with an `async fn` doing the
//! work (submitting every batch before awaiting the first) and a `_blocking` twin for scripts:
//! [`fill_mask`], [`classify`] (text classification), [`token_classify`] (token classification,
//! `simple` aggregation), [`answer`] (extractive question answering, as transformers 4's
//! pipeline), [`embed`] (feature extraction and pooled sentence embeddings) and [`generate`]
//! (greedy or sampled text generation with a causal RoFormer). Outputs have the fields and
//! values of transformers' pipelines of the same names (`serde` serializes them with its
//! field names).
//!
//! ```no_run
//! use roformer_wgpu::pipelines::{fill_mask, TextModel, TextOptions};
//! use roformer_wgpu::Context;
//!
//! let ctx = Context::new()?;
//! let model = TextModel::load(&ctx, "my-roformer-mlm", TextOptions::default())?;
//! let texts = ["今天天气[MASK]好。"];
//! // per text, per mask in it: the 5 best guesses
//! for guess in &fill_mask::run_blocking(&ctx, &model, &texts, 5)?[0][0] {
//!     println!("{:.3} {}", guess.score, guess.sequence);
//! }
//! # Ok::<(), roformer_wgpu::Error>(())
//! ```

use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::{
    Encoder, EncoderOptions, Head, Request, Results, RoFormerConfig, Sequence, Want,
};
use crate::readback::Pending;
use crate::text::{quote, EncodeOptions, Encoding, Tokenizer, Truncation};

pub mod answer;
pub mod classify;
pub mod embed;
pub mod fill_mask;
pub mod generate;
pub mod token_classify;

/// How a [`TextModel`] treats its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    /// A text longer than the model takes: cut it to the maximum (`true`), or refuse it with
    /// an error naming it (`false`, transformers' default).
    pub truncate: bool,
    /// Most texts per GPU request; more are split into several requests.
    pub max_batch: usize,
    /// Weights and activations in f32, or f16 (see [`EncoderOptions::precision`]).
    pub precision: crate::DType,
    /// Send texts to the GPU sorted by length (results still come in the inputs' order),
    /// so that one long text does not pad a whole batch of short ones.
    pub sort_by_length: bool,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            truncate: false,
            max_batch: 16,
            precision: crate::DType::F32,
            sort_by_length: true,
        }
    }
}

/// A model folder loaded for text: the encoder with its head, and its tokenizer.
pub struct TextModel {
    encoder: Encoder,
    tokenizer: Tokenizer,
    dir: PathBuf,
    options: TextOptions,
    /// `generation_config.json`'s settings (`eos_token_id` from `config.json` where it has
    /// none).
    generation: generate::GenerationConfig,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("dir", &self.dir)
            .field("head", &self.encoder.head())
            .field("tokenizer", &self.tokenizer)
            .finish_non_exhaustive()
    }
}

/// A file the folder must have.
fn required(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::invalid(format!(
            "{}: the model folder has no {name}",
            dir.display()
        )))
    }
}

impl TextModel {
    /// Reads a model folder: its config, its weights (any head) and its tokenizer. A missing
    /// file, or a tokenizer whose ids do not fit the model's vocabulary, is an error.
    pub fn load(ctx: &Context, dir: impl AsRef<Path>, options: TextOptions) -> Result<TextModel> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "{}: not a model folder",
                dir.display()
            )));
        }
        // The encoder's batch is a power of two; usize's largest has none above it.
        let encoder_batch = Some(options.max_batch)
            .filter(|&b| b > 0)
            .and_then(usize::checked_next_power_of_two)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "max_batch must be at least 1 and at most 2^{} (got {})",
                    usize::BITS - 1,
                    options.max_batch
                ))
            })?;
        let config = required(dir, "config.json")?;
        let single = dir.join("model.safetensors");
        let weights = if single.is_dir() {
            return Err(Error::invalid(format!(
                "{}: a folder, where the model's weights (one .safetensors file) should be",
                single.display()
            )));
        } else if single.exists() {
            single
        } else {
            required(dir, "model.safetensors.index.json").map_err(|_| {
                Error::invalid(format!(
                    "{}: the model folder has no model.safetensors (nor a sharded \
                     model.safetensors.index.json)",
                    dir.display()
                ))
            })?
        };
        let tokenizer = Tokenizer::from_dir(dir)?;
        let cfg = RoFormerConfig::from_file(&config)?;
        if tokenizer.id_bound() > cfg.vocab_size {
            return Err(Error::invalid(format!(
                "{}: the tokenizer ({}) has ids up to {} but the model's vocabulary has {} \
                 (vocab_size in config.json): they do not belong together",
                dir.display(),
                tokenizer.source().display(),
                tokenizer.id_bound() - 1,
                cfg.vocab_size
            )));
        }
        let encoder = Encoder::from_pretrained(
            ctx,
            &config,
            &weights,
            EncoderOptions {
                max_batch: encoder_batch,
                precision: options.precision,
                ..EncoderOptions::default()
            },
        )?;
        let generation = read_generation_config(dir, &cfg)?;
        Ok(TextModel {
            encoder,
            tokenizer,
            dir: dir.to_path_buf(),
            options,
            generation,
        })
    }

    /// The model's head (which tasks it can do).
    pub fn head(&self) -> Head {
        self.encoder.head()
    }

    /// The model's configuration.
    pub fn config(&self) -> &RoFormerConfig {
        self.encoder.config()
    }

    /// What its `generation_config.json` says (see [`generate::GenerateOptions::for_model`]).
    pub fn generation_config(&self) -> &generate::GenerationConfig {
        &self.generation
    }

    /// The options it was loaded with.
    pub fn options(&self) -> TextOptions {
        self.options
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The encoder (for requests of one's own).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The folder it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The most tokens one sequence may have: the model's positions, and the tokenizer's
    /// `model_max_length` if smaller.
    pub fn max_tokens(&self) -> usize {
        let positions = self.config().max_position_embeddings;
        self.tokenizer
            .model_max_length()
            .map_or(positions, |m| m.min(positions))
    }

    /// Tokens `text` (with `pair`) takes, special tokens included, before any truncation.
    pub fn count_tokens(&self, text: &str, pair: Option<&str>) -> Result<usize> {
        Ok(self
            .tokenizer
            .encode_with(text, pair, &EncodeOptions::default())?
            .len())
    }

    /// An error unless the model has one of these heads.
    fn need(&self, task: &str, heads: &[Head]) -> Result<()> {
        if heads.contains(&self.head()) {
            return Ok(());
        }
        let names: Vec<&str> = heads.iter().map(|h| h.architecture()).collect();
        Err(Error::invalid(format!(
            "{}: {task} needs a {} model, and this is a {}",
            self.dir.display(),
            names.join(" or "),
            self.head().architecture()
        )))
    }

    /// Tokenizes texts (with pairs) for the model as [`TextModel::encode_one`] does; an
    /// error names the input (`input 3, "its start…": ...`).
    fn encode(&self, texts: &[&str], pairs: Option<&[&str]>) -> Result<Vec<Encoding>> {
        if texts.is_empty() {
            return Err(Error::invalid("no input texts"));
        }
        if let Some(p) = pairs.filter(|p| p.len() != texts.len()) {
            return Err(Error::invalid(format!(
                "{} texts but {} pairs",
                texts.len(),
                p.len()
            )));
        }
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                self.encode_one(text, pairs.map(|p| p[i]))
                    .map_err(|e| at_input(i, text, e))
            })
            .collect()
    }

    /// Tokenizes one text (with its pair) as the pipelines do: an empty (or all-whitespace)
    /// text is refused, a long one cut or refused as [`TextOptions::truncate`] says. The
    /// error says what is wrong, not which input: the caller names it.
    fn encode_one(&self, text: &str, pair: Option<&str>) -> Result<Encoding> {
        if text.trim().is_empty() {
            return Err(Error::invalid("empty"));
        }
        let max = self.max_tokens();
        let options = EncodeOptions {
            truncation: self.options.truncate.then_some(Truncation::LongestFirst),
            max_length: Some(max),
            ..EncodeOptions::default()
        };
        let e = self.tokenizer.encode_with(text, pair, &options)?;
        if e.len() > max {
            return Err(Error::invalid(format!(
                "{} tokens, more than the model's maximum of {max} (TextOptions::truncate \
                 cuts it)",
                e.len()
            )));
        }
        Ok(e)
    }

    /// Submits the encodings in requests of at most `max_batch`, every one before returning;
    /// with `positions`, the logits of those positions of each encoding only (see
    /// [`Request::logit_positions`]). Unless [`TextOptions::sort_by_length`] is off, the
    /// encodings go to the GPU sorted by length, so a long text pads only texts of its own
    /// length; [`Batched::locate`] finds each one's results wherever it went.
    fn submit(
        &self,
        ctx: &Context,
        encodings: &[Encoding],
        want: Want,
        positions: Option<&[Vec<usize>]>,
    ) -> Result<Submitted> {
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        if self.options.sort_by_length {
            // Stable: equal lengths keep their order.
            order.sort_by_key(|&i| encodings[i].len());
        }
        let mut slots = vec![0; encodings.len()];
        for (slot, &i) in order.iter().enumerate() {
            slots[i] = slot;
        }
        let pending = order
            .chunks(self.options.max_batch)
            .map(|chunk| {
                let sequences = chunk
                    .iter()
                    .map(|&i| Sequence {
                        input_ids: encodings[i].input_ids.clone(),
                        token_type_ids: encodings[i].token_type_ids.clone(),
                        attention_mask: encodings[i].attention_mask.clone(),
                    })
                    .collect();
                let request = Request {
                    logit_positions: positions
                        .map(|p| chunk.iter().map(|&i| p[i].clone()).collect()),
                    ..Request::new(sequences, want)
                };
                self.encoder.run(ctx, &request)
            })
            .collect::<Result<_>>()?;
        Ok(Submitted { pending, slots })
    }
}

/// Requests on the GPU, and where each input went among them.
struct Submitted {
    pending: Vec<Pending<Results>>,
    /// Input i is the `slots[i]`th sequence of the requests, counted across them.
    slots: Vec<usize>,
}

/// The results of [`Submitted`] requests.
struct Batched {
    results: Vec<Results>,
    slots: Vec<usize>,
}

impl Batched {
    /// Input i's results: `(the request's results, its index in them)`.
    fn locate(&self, i: usize) -> (&Results, usize) {
        let mut at = self.slots[i];
        for r in &self.results {
            if at < r.len() {
                return (r, at);
            }
            at -= r.len();
        }
        unreachable!("asked for a sequence past the requests")
    }
}

/// Awaits submitted requests in order.
async fn gather(submitted: Submitted) -> Result<Batched> {
    let mut results = Vec::with_capacity(submitted.pending.len());
    for p in submitted.pending {
        results.push(p.await?);
    }
    Ok(Batched {
        results,
        slots: submitted.slots,
    })
}

/// The folder's `generation_config.json` (none: all defaults), with `config.json`'s
/// `eos_token_id` where it names none, as transformers reads them. A file that is there but
/// broken is an error naming it.
fn read_generation_config(dir: &Path, cfg: &RoFormerConfig) -> Result<generate::GenerationConfig> {
    let path = dir.join("generation_config.json");
    let mut g = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Format {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            generate::GenerationConfig::from_json(&value, &path.display().to_string())?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => {
            return Err(Error::Io {
                path: path.display().to_string(),
                source: e,
            })
        }
    };
    if g.eos_token_id.is_empty() {
        let eos = serde_json::json!({ "eos_token_id": cfg.extra.get("eos_token_id") });
        let path = dir.join("config.json").display().to_string();
        g.eos_token_id = generate::GenerationConfig::from_json(&eos, &path)?.eos_token_id;
    }
    Ok(g)
}

/// An error about the `i`th input: its number, its start (a long text is not repeated
/// whole) and what is wrong.
fn at_input(i: usize, text: &str, e: Error) -> Error {
    Error::invalid(format!("input {i}, {}: {e}", quote(text)))
}

/// The index of a row's largest value: the first of equals, as numpy's and torch's.
fn argmax<T: PartialOrd>(row: &[T]) -> usize {
    (0..row.len()).fold(0, |b, k| if row[k] > row[b] { k } else { b })
}

/// Softmax of a row in f64 (transformers computes it in f32: to ~1e-7).
fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let exps: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The label name of class `i`: `id2label`'s, else transformers' `LABEL_i`.
fn label(config: &RoFormerConfig, i: usize) -> String {
    config
        .id2label
        .as_ref()
        .and_then(|m| m.get(&i.to_string()).cloned())
        .unwrap_or_else(|| format!("LABEL_{i}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input's error names it and quotes its start: a megabyte of text gives a short line.
    #[test]
    fn input_errors_quote_only_the_start() {
        let text = "a\n".repeat(500_000);
        let e = at_input(3, &text, Error::invalid("no mask token")).to_string();
        assert!(e.len() < 200, "{} bytes", e.len());
        assert!(e.starts_with("input 3, \"a\\na\\n"), "{e}");
        assert!(e.ends_with("… (1000000 characters): no mask token"), "{e}");
    }
}
