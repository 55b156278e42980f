//! Training without a file system, as a browser tab trains: a tokenizer from its files'
//! bytes, a dataset from a data file's bytes, and the trained folder's files in memory. Each
//! must equal what the path-based functions give for the same files.

#![cfg(feature = "text")]

mod common;

use std::path::Path;

use common::{ctx, manifest_dir};
use roformer_wgpu::io::read_checkpoint;
use roformer_wgpu::model::RoFormerConfig;
use roformer_wgpu::text::Tokenizer;
use roformer_wgpu::train::{
    model_for, model_for_async, DataOptions, Dataset, LabelNames, Task, Trainer, TrainingArguments,
};

/// Every file of a folder, by name, in memory.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn borrowed(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect()
}

#[test]
fn a_tokenizer_from_its_files_bytes_is_the_one_from_its_folder() {
    let texts = [
        "good brown happy",
        "Hello, world! unknownword 123",
        "今天天气不错，我们去公园",
        "",
    ];
    for case in [
        "tests/fixtures/trainer/text_classification/initial", // tokenizer.json
        "tests/fixtures/text/wordpiece",
        "tests/fixtures/text/jieba", // RoFormerTokenizer over tokenizer.json
        "tests/fixtures/text/jieba_vocab_only", // RoFormerTokenizer over vocab.txt
    ] {
        let dir = manifest_dir().join(case);
        let from_dir = Tokenizer::from_dir(&dir).unwrap();
        let files = files_of(&dir);
        let from_files = Tokenizer::from_files(&dir, &borrowed(&files)).unwrap();
        assert_eq!(from_files.kind(), from_dir.kind(), "{case}");
        assert_eq!(from_files.source(), from_dir.source(), "{case}");
        assert_eq!(from_files.vocab_size(), from_dir.vocab_size(), "{case}");
        assert_eq!(
            from_files.special_tokens(),
            from_dir.special_tokens(),
            "{case}"
        );
        assert_eq!(
            from_files.model_max_length(),
            from_dir.model_max_length(),
            "{case}"
        );
        for text in texts {
            assert_eq!(
                from_files.encode(text).unwrap(),
                from_dir.encode(text).unwrap(),
                "{case}: {text:?}"
            );
        }
    }
    // No tokenizer among the files, or a broken one: errors naming the folder or file.
    let none = Tokenizer::from_files("picked", &[("config.json", b"{}".as_slice())]).unwrap_err();
    assert!(none.to_string().contains("picked: no tokenizer"), "{none}");
    let broken =
        Tokenizer::from_files("picked", &[("tokenizer.json", b"{oops".as_slice())]).unwrap_err();
    assert!(
        broken.to_string().contains("picked/tokenizer.json"),
        "{broken}"
    );
}

#[test]
fn a_dataset_from_a_files_bytes_is_the_one_from_the_file() {
    let case = manifest_dir().join("tests/fixtures/trainer/text_classification");
    let tokenizer = Tokenizer::from_dir(case.join("initial")).unwrap();
    let config = RoFormerConfig::from_file(case.join("initial/config.json")).unwrap();
    let options = DataOptions::new(Task::TextClassification, 64);
    let path = case.join("train.csv");
    let mut labels = LabelNames::of_model(&config).unwrap();
    let from_file = Dataset::load(&path, &options, &tokenizer, &mut labels).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut labels_bytes = LabelNames::of_model(&config).unwrap();
    let from_bytes =
        Dataset::from_bytes("train.csv", &bytes, &options, &tokenizer, &mut labels_bytes).unwrap();
    assert_eq!(from_bytes.source, "train.csv");
    assert_eq!(from_bytes.examples, from_file.examples);
    assert_eq!(from_bytes.masking, from_file.masking);
    assert_eq!(labels_bytes, labels);
    // Labels from the data when the model has none: the same, sorted.
    let (mut a, mut b) = (LabelNames::default(), LabelNames::default());
    Dataset::load(&path, &options, &tokenizer, &mut a).unwrap();
    Dataset::from_bytes("train.csv", &bytes, &options, &tokenizer, &mut b).unwrap();
    assert_eq!(a.names, ["neg", "neu", "pos"]);
    assert_eq!(b, a);
    // A bad line is an error naming the given name and the line.
    let mut fixed = LabelNames::of_model(&config).unwrap();
    let bad = Dataset::from_bytes(
        "mine.csv",
        b"text,label\ngood,pos\nbad,awful\n",
        &options,
        &tokenizer,
        &mut fixed,
    )
    .unwrap_err();
    assert!(bad.to_string().contains("mine.csv:3"), "{bad}");
}

#[test]
fn the_trained_folders_files_in_memory_are_the_saved_folders() {
    let ctx = &ctx();
    let case = manifest_dir().join("tests/fixtures/trainer/text_classification");
    let initial = case.join("initial");
    let tokenizer = Tokenizer::from_dir(&initial).unwrap();
    let config = RoFormerConfig::from_file(initial.join("config.json")).unwrap();
    let mut labels = LabelNames::default();
    let train = Dataset::load(
        case.join("train.csv"),
        &DataOptions::new(Task::TextClassification, 64),
        &tokenizer,
        &mut labels,
    )
    .unwrap();
    let args = TrainingArguments {
        max_steps: Some(2),
        per_device_train_batch_size: 4,
        learning_rate: 1e-3,
        ..TrainingArguments::default()
    };
    let weights = read_checkpoint(initial.join("model.safetensors")).unwrap();
    let task = Task::TextClassification;
    // The awaited model is the waited-for one.
    let (model, fresh) =
        model_for(ctx, config.clone(), task, &labels, &args, Some(&weights)).unwrap();
    let (same, same_fresh) = ctx
        .block_on(model_for_async(
            ctx,
            config,
            task,
            &labels,
            &args,
            Some(&weights),
        ))
        .unwrap();
    assert!(fresh.is_empty() && same_fresh.is_empty());
    assert_eq!(
        model.params().download(ctx).unwrap(),
        same.params().download(ctx).unwrap()
    );
    let out = std::env::temp_dir().join(format!("roformer-in-memory-{}", std::process::id()));
    let mut trainer = Trainer::new(
        ctx,
        &model,
        task,
        args,
        train,
        None,
        &labels,
        &out,
        vec![initial.join("tokenizer.json")],
    )
    .unwrap();
    for _ in 0..2 {
        ctx.block_on(trainer.step()).unwrap();
    }
    let saved = out.join("saved");
    trainer.save_model(&saved).unwrap();
    let tokenizer_json = std::fs::read(initial.join("tokenizer.json")).unwrap();
    let mut in_memory = ctx
        .block_on(trainer.model_files(&[("tokenizer.json".into(), tokenizer_json)]))
        .unwrap();
    in_memory.sort();
    assert_eq!(in_memory, files_of(&saved));
    let config: serde_json::Value = serde_json::from_slice(&in_memory[0].1).unwrap();
    assert_eq!(in_memory[0].0, "config.json");
    assert_eq!(
        config["label2id"],
        serde_json::json!({"neg": 0, "neu": 1, "pos": 2})
    );
    std::fs::remove_dir_all(&out).unwrap();
}
