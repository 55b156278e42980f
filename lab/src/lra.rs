//! The Long Range Arena tasks the examples train (ListOps, Pathfinder, Path-X), as datasets of the library's trainer
//! ([`roformer_wgpu::train`]): pre-tokenized examples (`[CLS]` then the task's tokens, one
//! label a sequence) for a sequence classifier read from its first token, and the RoFormer
//! configuration that fits them.

use roformer_wgpu::model::{AttentionKind, RoFormerConfig};
use roformer_wgpu::train::{Dataset, Example, LabelNames};
use roformer_wgpu::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::listops::{self, ListOps, ListOpsConfig};
use crate::pathfinder::{self, Pathfinder, PathfinderConfig};

/// The encoder of a run: its depth, widths and attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSize {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// How attention is computed.
    pub attention: AttentionKind,
    /// Local attention: a query sees keys at most this far away (cut to the positions).
    #[serde(default)]
    pub window: usize,
    /// Local attention: the first positions see, and are seen by, every position.
    #[serde(default)]
    pub global_tokens: usize,
}

/// A task's three splits as trainer datasets, with what a model for them needs.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// The task's name, for messages.
    pub name: String,
    /// Training examples.
    pub train: Dataset,
    /// Validation examples (evaluated during training).
    pub valid: Dataset,
    /// Test examples (evaluated at the end).
    pub test: Dataset,
    /// The classes, named by their numbers.
    pub labels: LabelNames,
    /// Token ids are below this.
    pub vocab_size: usize,
    /// The padding token.
    pub pad: u32,
    /// The longest example, in tokens (`[CLS]` included).
    pub longest: usize,
    /// The training set's most frequent label, and its share of the test set: the accuracy
    /// of always answering it.
    pub majority: (u32, f64),
}

/// Examples `[CLS, tokens...]` labelled `label`, from pre-tokenized sequences; `line` is the
/// example's number (1-based), which the trainer's messages quote.
fn dataset(source: &str, cls: u32, sequences: &[(&[u32], u32)]) -> Dataset {
    let examples = sequences
        .iter()
        .enumerate()
        .map(|(i, &(tokens, label))| {
            let mut input_ids = Vec::with_capacity(tokens.len() + 1);
            input_ids.push(cls);
            input_ids.extend_from_slice(tokens);
            let mut special = vec![0; input_ids.len()];
            special[0] = 1;
            Example {
                token_type_ids: vec![0; input_ids.len()],
                input_ids,
                labels: vec![label as i32],
                special,
                line: i + 1,
                ..Example::default()
            }
        })
        .collect();
    Dataset {
        source: source.to_string(),
        examples,
        masking: None,
    }
}

fn class_names(classes: usize) -> LabelNames {
    LabelNames {
        names: (0..classes).map(|c| c.to_string()).collect(),
        from_model: false,
    }
}

/// ListOps generated from `seed` (see [`ListOps::generate`]).
pub fn listops(config: ListOpsConfig, seed: u64) -> Result<TaskData> {
    let data = ListOps::generate(config, seed).map_err(Error::InvalidArgument)?;
    let split = |name: &str, examples: &[listops::Example]| {
        let pairs: Vec<(&[u32], u32)> = examples
            .iter()
            .map(|e| (e.tokens.as_slice(), e.label))
            .collect();
        dataset(&format!("ListOps {name}"), listops::CLS, &pairs)
    };
    let (label, _) = listops::majority(&data.train);
    let share = data.test.iter().filter(|e| e.label == label).count() as f64
        / data.test.len().max(1) as f64;
    let longest = [&data.train, &data.valid, &data.test]
        .iter()
        .flat_map(|s| s.iter().map(|e| e.tokens.len() + 1))
        .max()
        .unwrap_or(1);
    Ok(TaskData {
        name: "ListOps".into(),
        train: split("train", &data.train),
        valid: split("valid", &data.valid),
        test: split("test", &data.test),
        labels: class_names(listops::CLASSES),
        vocab_size: listops::VOCAB_SIZE,
        pad: listops::PAD,
        longest,
        majority: (label, share),
    })
}

/// Pathfinder (or Path-X, by `config`'s side) generated from `seed` (see
/// [`Pathfinder::generate`]): each image's pixels as grey-level tokens, row by row.
pub fn pathfinder(config: PathfinderConfig, seed: u64) -> Result<TaskData> {
    let data = Pathfinder::generate(config, seed).map_err(Error::InvalidArgument)?;
    let name = if config.side > 32 {
        "Path-X"
    } else {
        "Pathfinder"
    };
    let split = |split: &str, examples: &[pathfinder::Example]| {
        let tokens: Vec<Vec<u32>> = examples.iter().map(pathfinder::Example::tokens).collect();
        let pairs: Vec<(&[u32], u32)> = tokens
            .iter()
            .zip(examples)
            .map(|(t, e)| (t.as_slice(), e.label))
            .collect();
        dataset(&format!("{name} {split}"), pathfinder::CLS, &pairs)
    };
    let (label, _) = pathfinder::majority(&data.train);
    let share = data.test.iter().filter(|e| e.label == label).count() as f64
        / data.test.len().max(1) as f64;
    Ok(TaskData {
        name: name.into(),
        train: split("train", &data.train),
        valid: split("valid", &data.valid),
        test: split("test", &data.test),
        labels: class_names(pathfinder::CLASSES),
        vocab_size: pathfinder::VOCAB_SIZE,
        pad: pathfinder::PAD,
        longest: config.seq_len() + 1,
        majority: (label, share),
    })
}

/// A sequence classifier's configuration for `data`: `size`, positions for its longest
/// example rounded up to `multiple`, dropout off (the runs compare bit for bit).
pub fn model_config(data: &TaskData, size: &ModelSize, multiple: usize) -> Result<RoFormerConfig> {
    let attention =
        serde_json::to_value(size.attention).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let positions = data.longest.next_multiple_of(multiple.max(1));
    let mut json = serde_json::json!({
        "vocab_size": data.vocab_size,
        "hidden_size": size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "intermediate_size": size.intermediate,
        "max_position_embeddings": positions,
        "num_labels": data.labels.names.len(),
        "pad_token_id": data.pad,
        "attention_kind": attention,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    });
    if size.attention == AttentionKind::Local {
        json["attention_window"] = size.window.min(positions).into();
        json["global_tokens"] = size.global_tokens.into();
    }
    RoFormerConfig::from_json(&json.to_string(), &format!("{} model", data.name))
}

/// The classifier of a run on `data`: the one saved in `checkpoint` (a trainer's
/// `checkpoint-N` folder, to resume), or a new one of `size` (HF's initialisation from the
/// seed), in the arguments' precision. Native only: it reads files.
#[cfg(not(target_arch = "wasm32"))]
pub fn model(
    ctx: &roformer_wgpu::Context,
    data: &TaskData,
    size: &ModelSize,
    args: &roformer_wgpu::train::TrainingArguments,
    checkpoint: Option<&std::path::Path>,
) -> Result<roformer_wgpu::model::RoFormer> {
    let (config, weights) = match checkpoint {
        Some(dir) => (
            RoFormerConfig::from_file(dir.join("config.json"))?,
            Some(roformer_wgpu::io::read_checkpoint(
                dir.join("model.safetensors"),
            )?),
        ),
        None => (model_config(data, size, args.pad_to_multiple_of)?, None),
    };
    let task = roformer_wgpu::train::Task::TextClassification;
    let (model, _) =
        roformer_wgpu::train::model_for(ctx, config, task, &data.labels, args, weights.as_ref())?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listops_examples_start_with_cls_and_keep_their_labels() {
        let config = ListOpsConfig {
            max_depth: 3,
            max_args: 4,
            min_length: 4,
            max_length: 20,
            train: 50,
            valid: 5,
            test: 5,
        };
        let raw = ListOps::generate(config, 2).unwrap();
        let data = listops(config, 2).unwrap();
        assert_eq!(data.train.examples.len(), 50);
        for (e, r) in data.train.examples.iter().zip(&raw.train) {
            assert_eq!(e.input_ids[0], listops::CLS);
            assert_eq!(&e.input_ids[1..], r.tokens.as_slice());
            assert_eq!(e.labels, vec![r.label as i32]);
            assert_eq!(e.token_type_ids.len(), e.input_ids.len());
        }
        assert!(data.longest <= 20 && data.longest > 4);
        let size = ModelSize {
            layers: 1,
            hidden: 16,
            heads: 2,
            intermediate: 24,
            attention: AttentionKind::Linear,
            window: 0,
            global_tokens: 0,
        };
        let c = model_config(&data, &size, 16).unwrap();
        assert_eq!(c.max_position_embeddings, data.longest.next_multiple_of(16));
        assert_eq!(c.labels(), 10);
        assert_eq!(c.attention, AttentionKind::Linear);
        let local = ModelSize {
            attention: AttentionKind::Local,
            window: 1000,
            global_tokens: 1,
            ..size
        };
        let c = model_config(&data, &local, 16).unwrap();
        assert_eq!(c.attention_window, Some(c.max_position_embeddings));
        assert_eq!(c.global_tokens, Some(1));
    }

    #[test]
    fn pathfinder_examples_are_cls_then_every_pixel() {
        let config = PathfinderConfig {
            train: 6,
            valid: 2,
            test: 2,
            ..PathfinderConfig::pathfinder()
        };
        let raw = Pathfinder::generate(config, 4).unwrap();
        let data = pathfinder(config, 4).unwrap();
        assert_eq!(data.longest, 32 * 32 + 1);
        for (e, r) in data.train.examples.iter().zip(&raw.train) {
            assert_eq!(e.input_ids.len(), 32 * 32 + 1);
            assert_eq!(e.input_ids[0], pathfinder::CLS);
            assert_eq!(&e.input_ids[1..], r.tokens().as_slice());
            assert_eq!(e.labels, vec![r.label as i32]);
        }
        assert_eq!(data.labels.names, vec!["0", "1"]);
    }
}
