//! Examples for a task, from the records of a data file ([`super::data`]), tokenized as
//! transformers' example scripts tokenize them:
//!
//! - text classification (`run_classification.py`): a text, or a pair (token types 0 and 1),
//!   cut to the longest allowed; its label's name mapped through the model's `label2id`
//!   when the model has one, else through the data's label names sorted;
//! - token classification (`run_ner.py`): words and their tags, tokenized as words
//!   (`is_split_into_words`), the first token of each word labelled with its tag and the
//!   others −100;
//! - fill-mask (`run_mlm.py`): a text a record, masked at batch time
//!   ([`Masking`]: 15%, 80/10/10, whole words if asked), or token ids with their labels
//!   given in the data (masks chosen elsewhere);
//! - text generation (`run_clm.py`): the texts tokenized, concatenated and cut into blocks
//!   (the remainder dropped), each block its own labels; or token ids given in the data.
//!
//! Records holding `input_ids` are taken as already tokenized, for every task.

use std::collections::BTreeSet;
#[cfg(feature = "text")]
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[cfg(feature = "text")]
use super::data::{self, Record, Records};
use crate::error::{Error, Result};
use crate::model::{Head, RoFormerConfig};
use crate::ops::cross_entropy::IGNORE_INDEX;
#[cfg(feature = "text")]
use crate::text::{EncodeOptions, Tokenizer, Truncation};

/// What a model learns from its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// A label per text (or text pair): `RoFormerForSequenceClassification`.
    TextClassification,
    /// A tag per word: `RoFormerForTokenClassification`.
    TokenClassification,
    /// Masked-language-model pre-training: `RoFormerForMaskedLM`.
    FillMask,
    /// Causal-language-model training: `RoFormerForCausalLM`.
    TextGeneration,
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Task> {
        match s {
            "text-classification" => Ok(Task::TextClassification),
            "token-classification" => Ok(Task::TokenClassification),
            "fill-mask" => Ok(Task::FillMask),
            "text-generation" => Ok(Task::TextGeneration),
            other => Err(Error::invalid(format!(
                "task {other:?}: it is text-classification, token-classification, fill-mask \
                 or text-generation"
            ))),
        }
    }
}

impl Task {
    /// The model head the task trains.
    pub fn head(self) -> Head {
        match self {
            Task::TextClassification => Head::Classification,
            Task::TokenClassification => Head::TokenClassification,
            Task::FillMask => Head::MaskedLm,
            Task::TextGeneration => Head::CausalLm,
        }
    }

    /// Whether the task has named labels (and a `label2id` in the saved config).
    pub fn has_labels(self) -> bool {
        matches!(self, Task::TextClassification | Task::TokenClassification)
    }
}

/// The columns of the data files (transformers' scripts' defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    /// The text (text classification, fill-mask, text generation).
    pub text: String,
    /// The second text of a pair (text classification; used when the file has it).
    pub text_pair: String,
    /// The label (text classification).
    pub label: String,
    /// The words (token classification).
    pub tokens: String,
    /// The words' tags (token classification).
    pub tags: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            text: "text".into(),
            text_pair: "text_pair".into(),
            label: "label".into(),
            tokens: "tokens".into(),
            tags: "tags".into(),
        }
    }
}

/// The label names of a classification task, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelNames {
    /// Name of label i.
    pub names: Vec<String>,
    /// Fixed by the model's config (a name outside them is an error), rather than taken
    /// from the data.
    pub from_model: bool,
}

impl LabelNames {
    /// The model's `id2label`, when it names its labels (not transformers' default
    /// `LABEL_i`).
    pub fn of_model(config: &RoFormerConfig) -> Option<LabelNames> {
        let map = config.id2label.as_ref()?;
        let mut names = Vec::with_capacity(map.len());
        for i in 0..map.len() {
            names.push(map.get(&i.to_string())?.clone());
        }
        let defaults = names
            .iter()
            .enumerate()
            .all(|(i, n)| *n == format!("LABEL_{i}"));
        (!defaults).then_some(LabelNames {
            names,
            from_model: true,
        })
    }

    /// The names found in `found`, sorted as transformers' scripts sort them (numerically
    /// when every name is a number).
    pub fn sorted(found: BTreeSet<String>) -> LabelNames {
        let mut names: Vec<String> = found.into_iter().collect();
        if names.iter().all(|n| n.parse::<i64>().is_ok()) {
            names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
        }
        LabelNames {
            names,
            from_model: false,
        }
    }

    /// The id of a name.
    pub fn id(&self, name: &str) -> Option<i32> {
        self.names.iter().position(|n| n == name).map(|i| i as i32)
    }
}

/// One tokenized example.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Token types (0 for the first text, 1 for the second of a pair).
    pub token_type_ids: Vec<u32>,
    /// The labels, by the session's conventions: one per sequence (text classification) or
    /// one per token (the others; a causal LM's are its own ids, shifted by the session);
    /// −100: none. Empty for fill-mask examples masked at batch time, and for the float
    /// labels' problems.
    pub labels: Vec<i32>,
    /// Multi-label classification (1 where a label applies, else 0, one per label) and
    /// regression (the targets): the float labels of `Batch::float_labels`.
    pub float_labels: Vec<f32>,
    /// Each token's word (whole-word masking).
    pub word_ids: Vec<Option<u32>>,
    /// 1 for special tokens (never masked).
    pub special: Vec<u32>,
    /// The file line it comes from (0 for blocks of concatenated texts).
    pub line: usize,
}

impl Example {
    /// Tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether it has no tokens (never, once built).
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// How fill-mask examples without labels are masked at batch time, as transformers'
/// `DataCollatorForLanguageModeling` (or `DataCollatorForWholeWordMask`) masks them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Masking {
    /// Share of tokens masked (special tokens never).
    pub probability: f64,
    /// Mask whole words (a word's tokens together).
    pub whole_word: bool,
    /// The `[MASK]` token.
    pub mask_id: u32,
    /// Random replacements are drawn below this.
    pub vocab_size: u32,
}

/// The examples of a data file for a task.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where they come from.
    pub source: String,
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Fill-mask examples without labels: masked at batch time.
    pub masking: Option<Masking>,
}

/// How examples are made from records.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// The task.
    pub task: Task,
    /// Its columns.
    pub columns: Columns,
    /// Longest example, in tokens.
    pub max_length: usize,
    /// Fill-mask: the share of tokens masked.
    pub mlm_probability: f64,
    /// Fill-mask: mask whole words.
    pub whole_word_mask: bool,
    /// Text classification: transformers' `problem_type` (`single_label_classification`,
    /// `multi_label_classification`: a list of label names a record, in a JSON list or
    /// separated by commas; `regression`: a number a record, or a list of them).
    pub problem_type: String,
}

impl DataOptions {
    /// The defaults of transformers' scripts for `task` at `max_length` tokens: the default
    /// columns, 15% masked, single-label classification.
    pub fn new(task: Task, max_length: usize) -> DataOptions {
        DataOptions {
            task,
            columns: Columns::default(),
            max_length,
            mlm_probability: 0.15,
            whole_word_mask: false,
            problem_type: "single_label_classification".into(),
        }
    }
}

// Reading files and tokenizing them needs the tokenizers (the `text` feature); the trainer
// itself does not (pre-tokenized datasets, as the examples' ListOps, are built directly).
#[cfg(feature = "text")]
impl Dataset {
    /// Reads a data file (its format from its extension) and makes the task's examples.
    /// `labels` are the label names: fixed (the model's, or the training file's for an
    /// evaluation file), or filled from this file's when empty and not from the model.
    pub fn load(
        path: impl AsRef<Path>,
        options: &DataOptions,
        tokenizer: &Tokenizer,
        labels: &mut LabelNames,
    ) -> Result<Dataset> {
        let records = data::read(path)?;
        Dataset::from_records(&records, options, tokenizer, labels)
    }

    /// [`Dataset::load`] for a file's contents already in memory (a file picked in a
    /// browser page): `name` gives the format by its extension and names the file in errors.
    pub fn from_bytes(
        name: impl AsRef<Path>,
        bytes: &[u8],
        options: &DataOptions,
        tokenizer: &Tokenizer,
        labels: &mut LabelNames,
    ) -> Result<Dataset> {
        let records = data::read_bytes(name, bytes)?;
        Dataset::from_records(&records, options, tokenizer, labels)
    }

    /// The task's examples from records (see [`Dataset::load`]).
    pub fn from_records(
        records: &Records,
        options: &DataOptions,
        tokenizer: &Tokenizer,
        labels: &mut LabelNames,
    ) -> Result<Dataset> {
        let source = records.path.display().to_string();
        let pretokenized = records.columns.iter().any(|c| c == "input_ids");
        let examples = if pretokenized {
            records
                .records
                .iter()
                .map(|r| token_ids(records, r, options))
                .collect::<Result<Vec<_>>>()?
        } else {
            match options.task {
                Task::TextClassification => texts_with_labels(records, options, tokenizer, labels)?,
                Task::TokenClassification => words_with_tags(records, options, tokenizer, labels)?,
                Task::FillMask => texts(records, options, tokenizer)?,
                Task::TextGeneration => blocks(records, options, tokenizer)?,
            }
        };
        if examples.is_empty() {
            return Err(Error::Format {
                path: source,
                message: "no examples (for text generation: fewer tokens than one block)".into(),
            });
        }
        let masking = (options.task == Task::FillMask
            && examples.iter().all(|e| e.labels.is_empty()))
        .then(|| Masking::of(options, tokenizer))
        .transpose()?;
        Ok(Dataset {
            source,
            examples,
            masking,
        })
    }
}

#[cfg(feature = "text")]
/// A record's `input_ids` (and `token_type_ids`, `labels`) as given.
fn token_ids(records: &Records, r: &Record, options: &DataOptions) -> Result<Example> {
    let numbers = |column: &str| -> Result<Option<Vec<i64>>> {
        let Some(v) = r.fields.get(column) else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| records.error(r, format!("{column} is not a list of numbers")))?;
        list.iter()
            .map(|x| {
                x.as_i64().ok_or_else(|| {
                    records.error(r, format!("{column} holds {x}, not a whole number"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    };
    let ids: Vec<u32> = numbers("input_ids")?
        .unwrap_or_default()
        .into_iter()
        .map(|x| u32::try_from(x).map_err(|_| records.error(r, format!("input_ids holds {x}"))))
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Err(records.error(r, "input_ids is empty"));
    }
    if ids.len() > options.max_length {
        return Err(records.error(
            r,
            format!(
                "{} token ids, more than max_length {}",
                ids.len(),
                options.max_length
            ),
        ));
    }
    let n = ids.len();
    let types: Vec<u32> = match numbers("token_type_ids")? {
        Some(t) => t.into_iter().map(|x| x.max(0) as u32).collect(),
        None => vec![0; n],
    };
    let mut labels: Vec<i32> = match numbers("labels")? {
        Some(l) => l
            .into_iter()
            .map(|x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
            .collect(),
        None => Vec::new(),
    };
    if options.task == Task::TextGeneration && labels.is_empty() {
        labels = ids.iter().map(|&i| i as i32).collect();
    }
    let want = match options.task {
        Task::TextClassification => 1,
        _ => n,
    };
    if types.len() != n || !(labels.is_empty() || labels.len() == want) {
        return Err(records.error(
            r,
            format!(
                "{n} input_ids, {} token_type_ids and {} labels (want {want})",
                types.len(),
                labels.len()
            ),
        ));
    }
    if labels.is_empty() && options.task != Task::FillMask {
        return Err(records.error(r, "no labels"));
    }
    Ok(Example {
        token_type_ids: types,
        labels,
        float_labels: Vec::new(),
        word_ids: (0..n as u32).map(Some).collect(),
        special: vec![0; n],
        input_ids: ids,
        line: r.line,
    })
}

#[cfg(feature = "text")]
pub(crate) fn encode_options(options: &DataOptions) -> EncodeOptions {
    EncodeOptions {
        truncation: Some(Truncation::LongestFirst),
        max_length: Some(options.max_length),
        ..EncodeOptions::default()
    }
}

#[cfg(feature = "text")]
pub(crate) fn example_of(e: crate::text::Encoding, labels: Vec<i32>, line: usize) -> Example {
    Example {
        input_ids: e.input_ids,
        token_type_ids: e.token_type_ids,
        labels,
        float_labels: Vec::new(),
        word_ids: e.word_ids,
        special: e.special_tokens_mask,
        line,
    }
}

#[cfg(feature = "text")]
/// A record's label field as names: a JSON list, or text with names separated by commas
/// (multi-label), or one name.
fn label_names(records: &Records, r: &Record, column: &str, multi: bool) -> Result<Vec<String>> {
    if multi {
        if let Some(serde_json::Value::Array(_)) = r.fields.get(column) {
            return records.strings(r, column);
        }
        let text = records.text(r, column)?;
        return Ok(text
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect());
    }
    Ok(vec![records.text(r, column)?])
}

#[cfg(feature = "text")]
/// A record's regression targets: a number, or a list of them.
fn targets(records: &Records, r: &Record, column: &str) -> Result<Vec<f32>> {
    let bad = || records.error(r, format!("{column} is not a number (regression)"));
    let number = |v: &serde_json::Value| -> Result<f32> {
        let x = match v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        x.filter(|x| x.is_finite())
            .map(|x| x as f32)
            .ok_or_else(bad)
    };
    match records.field(r, column)? {
        serde_json::Value::Array(items) => items.iter().map(number).collect(),
        one => Ok(vec![number(one)?]),
    }
}

#[cfg(feature = "text")]
fn texts_with_labels(
    records: &Records,
    options: &DataOptions,
    tokenizer: &Tokenizer,
    labels: &mut LabelNames,
) -> Result<Vec<Example>> {
    let c = &options.columns;
    records.require(&[&c.text, &c.label])?;
    let pairs = records.columns.contains(&c.text_pair);
    let (multi, regression) = match options.problem_type.as_str() {
        "single_label_classification" => (false, false),
        "multi_label_classification" => (true, false),
        "regression" => (false, true),
        other => {
            return Err(Error::invalid(format!(
                "problem_type {other:?}: it is single_label_classification, \
                 multi_label_classification or regression"
            )))
        }
    };
    if labels.names.is_empty() && !regression {
        let mut found = BTreeSet::new();
        for r in &records.records {
            found.extend(label_names(records, r, &c.label, multi)?);
        }
        *labels = LabelNames::sorted(found);
    }
    let id_of = |r: &Record, name: &str| {
        labels.id(name).ok_or_else(|| {
            records.error(
                r,
                format!(
                    "label {name:?} is not one of {} ({})",
                    if labels.from_model {
                        "the model's labels"
                    } else {
                        "the training file's labels"
                    },
                    labels.names.join(", ")
                ),
            )
        })
    };
    let mut width = None;
    records
        .records
        .iter()
        .map(|r| {
            let text = records.text(r, &c.text)?;
            let pair = pairs.then(|| records.text(r, &c.text_pair)).transpose()?;
            if text.trim().is_empty() {
                return Err(records.error(r, format!("{} is empty", c.text)));
            }
            let e = tokenizer.encode_with(&text, pair.as_deref(), &encode_options(options))?;
            let mut example = example_of(e, Vec::new(), r.line);
            if regression {
                let t = targets(records, r, &c.label)?;
                if *width.get_or_insert(t.len()) != t.len() {
                    return Err(records.error(
                        r,
                        format!(
                            "{} targets, where earlier records have {}",
                            t.len(),
                            width.unwrap_or(0)
                        ),
                    ));
                }
                example.float_labels = t;
            } else if multi {
                let mut hot = vec![0.0f32; labels.names.len()];
                for name in label_names(records, r, &c.label, true)? {
                    hot[id_of(r, &name)? as usize] = 1.0;
                }
                example.float_labels = hot;
            } else {
                let name = records.text(r, &c.label)?;
                example.labels = vec![id_of(r, &name)?];
            }
            Ok(example)
        })
        .collect()
}

#[cfg(feature = "text")]
fn words_with_tags(
    records: &Records,
    options: &DataOptions,
    tokenizer: &Tokenizer,
    labels: &mut LabelNames,
) -> Result<Vec<Example>> {
    let c = &options.columns;
    records.require(&[&c.tokens, &c.tags])?;
    let mut rows = Vec::with_capacity(records.records.len());
    for r in &records.records {
        let words = records.strings(r, &c.tokens)?;
        let tags = records.strings(r, &c.tags)?;
        if words.len() != tags.len() {
            return Err(records.error(r, format!("{} tokens but {} tags", words.len(), tags.len())));
        }
        if words.is_empty() {
            return Err(records.error(r, "no tokens"));
        }
        rows.push((r, words, tags));
    }
    if labels.names.is_empty() {
        let found: BTreeSet<String> = rows
            .iter()
            .flat_map(|(_, _, t)| t.iter().cloned())
            .collect();
        *labels = LabelNames::sorted(found);
    }
    rows.into_iter()
        .map(|(r, words, tags)| {
            let ids = tags
                .iter()
                .map(|t| {
                    labels.id(t).ok_or_else(|| {
                        records.error(
                            r,
                            format!("tag {t:?} is not one of {}", labels.names.join(", ")),
                        )
                    })
                })
                .collect::<Result<Vec<i32>>>()?;
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let e = tokenizer.encode_words(&words, &encode_options(options))?;
            // The first token of each word carries its tag.
            let mut token_labels = Vec::with_capacity(e.len());
            let mut previous = None;
            for &w in &e.word_ids {
                token_labels.push(match w {
                    Some(w) if Some(w) != previous => ids[w as usize],
                    _ => IGNORE_INDEX,
                });
                previous = w;
            }
            Ok(example_of(e, token_labels, r.line))
        })
        .collect()
}

#[cfg(feature = "text")]
fn texts(records: &Records, options: &DataOptions, tokenizer: &Tokenizer) -> Result<Vec<Example>> {
    let c = &options.columns;
    records.require(&[&c.text])?;
    records
        .records
        .iter()
        .filter_map(|r| match records.text(r, &c.text) {
            Ok(t) if t.trim().is_empty() => None,
            Ok(t) => Some(
                tokenizer
                    .encode_with(&t, None, &encode_options(options))
                    .map(|e| example_of(e, Vec::new(), r.line)),
            ),
            Err(e) => Some(Err(e)),
        })
        .collect()
}

#[cfg(feature = "text")]
fn blocks(records: &Records, options: &DataOptions, tokenizer: &Tokenizer) -> Result<Vec<Example>> {
    let c = &options.columns;
    records.require(&[&c.text])?;
    let mut stream = Vec::new();
    for r in &records.records {
        let t = records.text(r, &c.text)?;
        if !t.trim().is_empty() {
            stream.extend(tokenizer.encode(&t)?.input_ids);
        }
    }
    Ok(stream
        .chunks_exact(options.max_length)
        .map(block_example)
        .collect())
}

#[cfg(feature = "text")]
/// A causal-LM block of the concatenated token stream: its own labels, no special tokens,
/// no line (a block spans lines).
pub(crate) fn block_example(block: &[u32]) -> Example {
    let size = block.len();
    Example {
        input_ids: block.to_vec(),
        token_type_ids: vec![0; size],
        labels: block.iter().map(|&i| i as i32).collect(),
        float_labels: Vec::new(),
        word_ids: (0..size as u32).map(Some).collect(),
        special: vec![0; size],
        line: 0,
    }
}

#[cfg(feature = "text")]
impl Masking {
    /// The masking `options` ask for, with `tokenizer`'s mask token and vocabulary.
    pub(crate) fn of(options: &DataOptions, tokenizer: &Tokenizer) -> Result<Masking> {
        let mask_id = tokenizer.special_tokens().mask.ok_or_else(|| {
            Error::invalid("fill-mask training needs a tokenizer with a mask token")
        })?;
        Ok(Masking {
            probability: options.mlm_probability,
            whole_word: options.whole_word_mask,
            mask_id,
            vocab_size: tokenizer.vocab_size() as u32,
        })
    }
}

impl Masking {
    /// `e` masked as transformers' collators mask: each token (not special) picked with
    /// `probability` (whole words together, when asked: a word's tokens share its word id),
    /// then each picked token replaced by `[MASK]` (80%), a random token (10%) or kept
    /// (10%); the labels are the picked tokens' ids, −100 elsewhere. `rng` decides.
    pub fn apply(&self, e: &Example, rng: &mut StdRng) -> (Vec<u32>, Vec<i32>) {
        let n = e.len();
        let mut picked = vec![false; n];
        if self.whole_word {
            // The words, in order; as DataCollatorForWholeWordMask, shuffled, then taken
            // whole until the share of tokens is reached.
            let mut words: Vec<Vec<usize>> = Vec::new();
            let mut last = None;
            for t in 0..n {
                if e.special.get(t) == Some(&1) {
                    last = None;
                    continue;
                }
                let w = e.word_ids.get(t).copied().flatten();
                match (w, last) {
                    (Some(w), Some(l)) if w == l => words.last_mut().expect("a word").push(t),
                    _ => words.push(vec![t]),
                }
                last = w;
            }
            let tokens: usize = words.iter().map(Vec::len).sum();
            let want = ((tokens as f64 * self.probability).round() as usize).max(1);
            words.shuffle(rng);
            let mut count = 0;
            for word in words {
                if count >= want || count + word.len() > want {
                    continue;
                }
                count += word.len();
                for t in word {
                    picked[t] = true;
                }
            }
        } else {
            for (t, p) in picked.iter_mut().enumerate() {
                *p = e.special.get(t) != Some(&1) && rng.random::<f64>() < self.probability;
            }
        }
        let mut ids = e.input_ids.clone();
        let mut labels = vec![IGNORE_INDEX; n];
        for t in 0..n {
            if !picked[t] {
                continue;
            }
            labels[t] = e.input_ids[t] as i32;
            let r = rng.random::<f64>();
            if r < 0.8 {
                ids[t] = self.mask_id;
            } else if r < 0.9 {
                ids[t] = rng.random_range(0..self.vocab_size);
            }
        }
        (ids, labels)
    }
}

/// A generator for one example of one epoch, so that masks depend on the seed, the epoch
/// and the example alone (and a resumed run masks as the uninterrupted one).
pub(crate) fn example_rng(seed: u64, epoch: u64, index: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03),
    )
}
