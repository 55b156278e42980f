//! Fine-tuning a classifier on a file the user picked, in the tab: the library's trainer
//! (`roformer_wgpu::train`) over a model folder and a data file held in memory (a browser
//! page has files' bytes, not paths), and the trained folder handed back in memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use js_sys::Promise;
use roformer_wgpu::io::parse_safetensors;
use roformer_wgpu::model::{Encoder, EncoderOptions, Request, RoFormerConfig, Sequence, Want};
use roformer_wgpu::text::{EncodeOptions, Tokenizer, Truncation};
use roformer_wgpu::train::{
    model_for_async, Columns, DataOptions, Dataset, LabelNames, Task, Trainer, TrainingArguments,
};
use roformer_wgpu::Context;
use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::{argmax, promise, Failure};

/// A tokenizer's files, which the trained folder gets as they were.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

/// A folder's files in memory, by name (a model folder the user picked, or the bundled one).
#[wasm_bindgen]
#[derive(Clone, Debug, Default)]
pub struct Folder {
    name: String,
    files: Vec<(String, Vec<u8>)>,
}

#[wasm_bindgen]
impl Folder {
    /// An empty folder called `name` (errors name its files as `name/config.json`).
    #[wasm_bindgen(constructor)]
    pub fn new(name: String) -> Folder {
        Folder {
            name,
            files: Vec::new(),
        }
    }

    /// Adds (or replaces) the file `name` (a path picked with its folder keeps only its
    /// last part).
    pub fn add(&mut self, name: String, bytes: Vec<u8>) {
        let name = name.rsplit('/').next().unwrap_or_default().to_string();
        self.files.retain(|(n, _)| *n != name);
        self.files.push((name, bytes));
    }

    /// The files' names.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }
}

impl Folder {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    fn require(&self, name: &str) -> Result<&[u8], Failure> {
        self.get(name).ok_or_else(|| {
            format!(
                "{}: the model folder has no {name} (it has: {})",
                self.name,
                self.names().join(", ")
            )
            .into()
        })
    }
}

/// The page's fine-tuning options; anything left out takes the default below
/// (transformers' scripts' columns; a few epochs at a rate that moves a small model).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FineTuneOptions {
    /// The column of the texts.
    pub text_column: String,
    /// The column of the second texts of pairs (used when the file has it).
    pub text_pair_column: String,
    /// The column of the labels.
    pub label_column: String,
    /// Passes over the training data.
    pub epochs: f64,
    /// AdamW's peak learning rate.
    pub learning_rate: f64,
    /// Sequences per update.
    pub batch: usize,
    /// Longest sequence in tokens (longer texts are cut); `None`: the model's positions.
    pub max_length: Option<usize>,
    /// Warm-up as a share of the updates.
    pub warmup_ratio: f64,
    /// AdamW's weight decay.
    pub weight_decay: f64,
    /// Everything random (the data's order, a new head's weights) follows from it.
    pub seed: u64,
    /// A new classifier head, its labels the data's, even when the model names its own.
    pub new_head: bool,
}

impl Default for FineTuneOptions {
    fn default() -> Self {
        FineTuneOptions {
            text_column: "text".into(),
            text_pair_column: "text_pair".into(),
            label_column: "label".into(),
            epochs: 3.0,
            learning_rate: 5e-5,
            batch: 8,
            max_length: None,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            seed: 42,
            new_head: false,
        }
    }
}

/// A fine-tuned classifier: the trained folder's files (a transformers folder: config with
/// the labels, weights, the tokenizer's files), the run's summary, and the model loaded
/// back from those files to classify texts with.
#[wasm_bindgen]
pub struct FineTuned {
    ctx: Rc<Context>,
    summary: String,
    files: Vec<(String, Vec<u8>)>,
    tokenizer: Rc<Tokenizer>,
    max_length: usize,
}

#[wasm_bindgen]
impl FineTuned {
    /// The run as JSON: updates, seconds, examples, labels, the losses, every evaluation,
    /// the majority class's share, the newly initialised weights, the files and their sizes.
    pub fn summary(&self) -> String {
        self.summary.clone()
    }

    /// The trained folder's file names.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }

    /// A file of the trained folder, by name.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    }

    /// The trained folder as one zip file (stored, not compressed), its files in a folder
    /// `folder`.
    pub fn zip(&self, folder: &str) -> Result<Vec<u8>, JsError> {
        let entries: Vec<(String, &[u8])> = self
            .files
            .iter()
            .map(|(n, b)| (format!("{folder}/{n}"), b.as_slice()))
            .collect();
        crate::zip::stored(&entries).map_err(|e| JsError::new(&e))
    }

    /// Classifies `texts` with the model loaded back from the trained folder's files (what a
    /// download holds); resolves to JSON: each text's label, its id and the labels'
    /// probabilities.
    pub fn classify(&self, texts: Vec<String>) -> Promise {
        let ctx = self.ctx.clone();
        let tokenizer = self.tokenizer.clone();
        let max_length = self.max_length;
        let config = self.file("config.json").unwrap_or_default();
        let weights = self.file("model.safetensors").unwrap_or_default();
        promise(async move {
            let config = String::from_utf8(config)?;
            let cfg = RoFormerConfig::from_json(&config, "config.json")?;
            let options = EncodeOptions {
                truncation: Some(Truncation::LongestFirst),
                max_length: Some(max_length),
                ..EncodeOptions::default()
            };
            let sequences = texts
                .iter()
                .map(|t| {
                    let e = tokenizer.encode_with(t, None, &options)?;
                    let n = e.input_ids.len();
                    Ok(Sequence {
                        input_ids: e.input_ids,
                        token_type_ids: e.token_type_ids,
                        attention_mask: vec![1; n],
                    })
                })
                .collect::<roformer_wgpu::Result<Vec<_>>>()?;
            let encoder = Encoder::from_bytes(
                &ctx,
                &config,
                &weights,
                EncoderOptions {
                    max_batch: texts.len().max(1),
                    ..EncoderOptions::default()
                },
            )?;
            let results = encoder
                .run(&ctx, &Request::new(sequences, Want::logits()))?
                .await?;
            let mut out = Vec::new();
            for (r, text) in texts.iter().enumerate() {
                let logits = &results.logits(r)?.data;
                let top = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let exp: Vec<f32> = logits.iter().map(|l| (l - top).exp()).collect();
                let sum: f32 = exp.iter().sum();
                let id = argmax(logits);
                let label = cfg
                    .id2label
                    .as_ref()
                    .and_then(|m| m.get(&id.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{id}"));
                out.push(json!({
                    "text": text,
                    "label": label,
                    "id": id,
                    "probabilities": exp.iter().map(|e| e / sum).collect::<Vec<_>>(),
                }));
            }
            Ok(json!(out))
        })
    }
}

/// The share of the most common single label among examples (the accuracy of always
/// answering it), with that label's id.
fn majority(data: &Dataset) -> (i32, f64) {
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    let mut n = 0;
    for e in &data.examples {
        if let [label] = e.labels[..] {
            *counts.entry(label).or_default() += 1;
            n += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(label, c)| (c, std::cmp::Reverse(label)))
        .map_or((0, 0.0), |(label, c)| (label, c as f64 / n.max(1) as f64))
}

/// The fine-tuning run behind [`crate::Lab::fine_tune`].
pub(crate) async fn run(
    ctx: Rc<Context>,
    options: &str,
    model: Folder,
    (data_name, data): (String, Vec<u8>),
    eval: Option<(String, Vec<u8>)>,
    report: impl Fn(serde_json::Value),
) -> Result<FineTuned, Failure> {
    let o: FineTuneOptions =
        serde_json::from_str(options).map_err(|e| format!("fine-tuning options: {e}"))?;
    let task = Task::TextClassification;
    let dir = Path::new(&model.name);
    let config_path = dir.join("config.json");
    let config_text = std::str::from_utf8(model.require("config.json")?)
        .map_err(|_| format!("{}: not UTF-8", config_path.display()))?;
    let mut config = RoFormerConfig::from_json(config_text, &config_path.display().to_string())?;
    let weights_path = dir.join("model.safetensors");
    let mut weights = parse_safetensors(&weights_path, model.require("model.safetensors")?)?;
    let files: Vec<(&str, &[u8])> = model
        .files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let tokenizer = Tokenizer::from_files(dir, &files)?;
    if tokenizer.id_bound() > config.vocab_size {
        return Err(format!(
            "{}: the tokenizer has ids up to {}, the model's vocabulary {} (not this model's \
             tokenizer?)",
            model.name,
            tokenizer.id_bound(),
            config.vocab_size
        )
        .into());
    }
    let problem_type = config.classification_problem().to_string();
    config.problem_type = Some(problem_type.clone());
    let positions = config.max_position_embeddings;
    let max_length = o.max_length.unwrap_or(positions).clamp(1, positions);
    let options = DataOptions {
        columns: Columns {
            text: o.text_column.clone(),
            text_pair: o.text_pair_column.clone(),
            label: o.label_column.clone(),
            ..Columns::default()
        },
        problem_type: problem_type.clone(),
        ..DataOptions::new(task, max_length)
    };
    // Labels: the model's when it is a classifier that names them (and no new head is
    // asked for); else the training file's, under a new head.
    let architecture = config
        .extra
        .get("architectures")
        .and_then(|v| v.get(0))
        .and_then(|v| v.as_str());
    let same_head = architecture == Some(task.head().architecture());
    let mut labels = match LabelNames::of_model(&config) {
        Some(l) if same_head && !o.new_head => l,
        _ => LabelNames::default(),
    };
    let train =
        Dataset::from_bytes(&data_name, &data, &options, &tokenizer, &mut labels).map_err(|e| {
            let hint = if labels.from_model && e.to_string().contains("is not one of") {
                " (tick \"new classifier head\" to take the labels from the file)"
            } else {
                ""
            };
            format!("{e}{hint}")
        })?;
    if problem_type == "regression" {
        config.num_labels = Some(train.examples[0].float_labels.len());
    }
    let eval = eval
        .map(|(name, bytes)| {
            let mut fixed = LabelNames {
                from_model: true,
                ..labels.clone()
            };
            Dataset::from_bytes(&name, &bytes, &options, &tokenizer, &mut fixed)
        })
        .transpose()?;
    let new_head = !labels.from_model;
    if new_head {
        // The checkpoint's classifier (if any) has another width: a new one, from the seed.
        weights.retain(|name, _| !name.starts_with("classifier."));
    }
    let args = TrainingArguments {
        learning_rate: o.learning_rate,
        weight_decay: o.weight_decay,
        warmup_ratio: o.warmup_ratio,
        per_device_train_batch_size: o.batch,
        per_device_eval_batch_size: o.batch.max(32),
        num_train_epochs: o.epochs,
        seed: o.seed,
        max_length: Some(max_length),
        logging_steps: 1,
        save_steps: 0,
        ..TrainingArguments::default()
    };
    args.check()?;
    let (model_out, fresh) =
        model_for_async(&ctx, config, task, &labels, &args, Some(&weights)).await?;
    let examples = train.examples.len();
    let per_epoch = examples.div_ceil(o.batch) as u64;
    let evaluated = eval.as_ref().unwrap_or(&train);
    let (majority_id, majority_share) = majority(evaluated);
    let (eval_source, eval_examples) = (evaluated.source.clone(), evaluated.examples.len());
    let mut trainer = Trainer::new(
        &ctx,
        &model_out,
        task,
        args,
        train,
        eval,
        &labels,
        "",
        vec![],
    )?;
    let total = trainer.state().max_steps;
    report(json!({
        "kind": "start",
        "steps": total,
        "per_epoch": per_epoch,
        "examples": examples,
        "eval": { "source": eval_source, "examples": eval_examples },
        "labels": labels.names,
        "new_head": new_head,
        "fresh": fresh,
    }));
    let mut evals = Vec::new();
    let mut losses = Vec::new();
    let evaluate = |e: roformer_wgpu::train::LogEntry| json!(e);
    let first = trainer.evaluate().await?;
    report(json!({ "kind": "eval", "record": evaluate(first.clone()) }));
    evals.push(evaluate(first));
    while trainer.state().global_step < total {
        let tokens_per_s = trainer.step().await?;
        let log = trainer.log();
        let loss = log.get("loss").unwrap_or(f64::NAN);
        losses.push(loss);
        report(json!({ "kind": "step", "steps": total, "record": {
            "step": log.step,
            "epoch": log.epoch,
            "loss": loss,
            "accuracy": trainer.last_accuracy(),
            "learning_rate": log.get("learning_rate"),
            "tokens_per_s": tokens_per_s,
        }}));
        if log.step % per_epoch == 0 || log.step == total {
            let e = trainer.evaluate().await?;
            report(json!({ "kind": "eval", "record": evaluate(e.clone()) }));
            evals.push(evaluate(e));
        }
    }
    let tokenizer_files: Vec<(String, Vec<u8>)> = model
        .files
        .iter()
        .filter(|(n, _)| TOKENIZER_FILES.contains(&n.as_str()))
        .cloned()
        .collect();
    let files = trainer.model_files(&tokenizer_files).await?;
    let summary = json!({
        "steps": trainer.state().global_step,
        "epochs": o.epochs,
        "seconds": trainer.state().seconds,
        "examples": examples,
        "eval": { "source": eval_source, "examples": eval_examples },
        "labels": labels.names,
        "new_head": new_head,
        "fresh": fresh,
        "first_loss": losses.first(),
        "last_loss": losses.last(),
        "losses": losses,
        "evals": evals,
        "majority": {
            "label": labels.names.get(majority_id as usize),
            "accuracy": majority_share,
        },
        "files": files.iter().map(|(n, b)| json!({ "name": n, "bytes": b.len() })).collect::<Vec<_>>(),
    });
    drop(trainer);
    Ok(FineTuned {
        ctx,
        summary: summary.to_string(),
        files,
        tokenizer: Rc::new(tokenizer),
        max_length,
    })
}
