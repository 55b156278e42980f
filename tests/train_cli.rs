//! `roformer train` and the trainer as a user meets them: a run resumed from a checkpoint
//! gives the uninterrupted run's losses bit for bit (shuffled data, masks drawn at batch
//! time); the saved folder answers `roformer classify`; bad data files are errors naming
//! file and line, and leave nothing behind.

#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::ctx;
use roformer_wgpu::model::{RoFormer, RoFormerConfig};
use roformer_wgpu::text::Tokenizer;
use roformer_wgpu::train::{
    model_for, DataOptions, Dataset, LabelNames, Task, TextStream, TrainData, Trainer,
    TrainingArguments,
};

fn fixture(name: &str) -> PathBuf {
    common::manifest_dir()
        .join("tests/fixtures/trainer")
        .join(name)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roformer-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn roformer(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roformer"));
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    command.args(args).output().unwrap()
}

/// A fill-mask corpus from the classification fixture's texts: masks drawn at batch time.
fn corpus(dir: &Path) -> PathBuf {
    let csv = std::fs::read_to_string(fixture("text_classification").join("train.csv")).unwrap();
    let texts: String = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n")
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, texts).unwrap();
    path
}

/// Ten updates, a checkpoint, a new model and trainer from it, ten more: the same losses,
/// bit for bit, as twenty updates in one go (shuffled epochs, masks drawn per example).
#[test]
fn a_resumed_run_continues_bit_for_bit() {
    let ctx = &ctx();
    let dir = temp("resume");
    let initial = fixture("fill_mask").join("initial");
    let tokenizer = Tokenizer::from_dir(&initial).unwrap();
    let options = DataOptions {
        whole_word_mask: true,
        ..DataOptions::new(Task::FillMask, 64)
    };
    let mut labels = LabelNames::default();
    let data = || {
        Dataset::load(
            corpus(&dir),
            &options,
            &tokenizer,
            &mut LabelNames::default(),
        )
        .unwrap()
    };
    assert!(data().masking.is_some(), "masks drawn at batch time");
    let args = TrainingArguments {
        learning_rate: 2e-3,
        warmup_steps: 2,
        per_device_train_batch_size: 4,
        max_steps: Some(20),
        logging_steps: 1,
        seed: 3,
        ..TrainingArguments::default()
    };
    let config = RoFormerConfig::from_file(initial.join("config.json")).unwrap();
    let weights = roformer_wgpu::io::read_checkpoint(initial.join("model.safetensors")).unwrap();
    let run = |out: &Path, stop_at: u64| -> (Vec<f64>, Option<PathBuf>) {
        let (model, _) = model_for(
            ctx,
            config.clone(),
            Task::FillMask,
            &labels,
            &args,
            Some(&weights),
        )
        .unwrap();
        let mut t = Trainer::new(
            ctx,
            &model,
            Task::FillMask,
            args.clone(),
            data(),
            None,
            &labels,
            out,
            Vec::new(),
        )
        .unwrap();
        let mut losses = Vec::new();
        for _ in 0..stop_at {
            ctx.block_on(t.step()).unwrap();
            losses.push(t.log().get("loss").unwrap());
        }
        let saved = (stop_at < 20).then(|| t.save_checkpoint().unwrap());
        (losses, saved)
    };
    let (whole, _) = run(&dir.join("whole"), 20);
    let (first, checkpoint) = run(&dir.join("parts"), 10);
    let checkpoint = checkpoint.unwrap();
    let model = RoFormer::from_pretrained(
        ctx,
        checkpoint.join("config.json"),
        checkpoint.join("model.safetensors"),
    )
    .unwrap();
    let mut t = Trainer::resume(
        ctx,
        &model,
        data(),
        None,
        &checkpoint,
        dir.join("parts"),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(t.state().global_step, 10);
    let mut rest = Vec::new();
    for _ in 10..20 {
        ctx.block_on(t.step()).unwrap();
        rest.push(t.log().get("loss").unwrap());
    }
    let resumed: Vec<u64> = first.iter().chain(&rest).map(|l| l.to_bits()).collect();
    let uninterrupted: Vec<u64> = whole.iter().map(|l| l.to_bits()).collect();
    assert_eq!(resumed, uninterrupted);
    labels.names.clear();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run that streams its corpus from the file: in file order it is the in-memory run,
/// loss for loss (masks drawn at batch time, gradient accumulation, the batches prepared on
/// a background thread against on the training thread); shuffled in a buffer, a run
/// resumed from a checkpoint in its second pass continues as the uninterrupted one, bit for
/// bit.
#[test]
fn a_streamed_run_is_the_in_memory_run_and_resumes_bit_for_bit() {
    let ctx = &ctx();
    let dir = temp("stream");
    let corpus = corpus(&dir);
    let initial = fixture("fill_mask").join("initial");
    let tokenizer = Tokenizer::from_dir(&initial).unwrap();
    let options = DataOptions {
        whole_word_mask: true,
        ..DataOptions::new(Task::FillMask, 64)
    };
    let labels = LabelNames::default();
    // 40 texts, batches of 4, 2 an update: 5 updates a pass.
    let args = TrainingArguments {
        learning_rate: 2e-3,
        warmup_steps: 2,
        per_device_train_batch_size: 4,
        gradient_accumulation_steps: 2,
        max_steps: Some(10),
        logging_steps: 1,
        seed: 3,
        ..TrainingArguments::default()
    };
    let config = RoFormerConfig::from_file(initial.join("config.json")).unwrap();
    let weights = roformer_wgpu::io::read_checkpoint(initial.join("model.safetensors")).unwrap();
    let stream = |buffer| TextStream::open(&corpus, &options, &tokenizer, buffer).unwrap();
    let run = |data: TrainData, args: &TrainingArguments, out: &Path, steps| {
        let (model, _) = model_for(
            ctx,
            config.clone(),
            Task::FillMask,
            &labels,
            args,
            Some(&weights),
        )
        .unwrap();
        let mut t = Trainer::new(
            ctx,
            &model,
            Task::FillMask,
            args.clone(),
            data,
            None,
            &labels,
            out,
            Vec::new(),
        )
        .unwrap();
        let mut losses = Vec::new();
        for _ in 0..steps {
            ctx.block_on(t.step()).unwrap();
            losses.push(t.log().get("loss").unwrap().to_bits());
        }
        let saved = (steps < 10).then(|| t.save_checkpoint().unwrap());
        (losses, saved)
    };
    let in_order = TrainingArguments {
        shuffle: false,
        ..args.clone()
    };
    let memory = Dataset::load(&corpus, &options, &tokenizer, &mut LabelNames::default()).unwrap();
    let on_thread = TrainingArguments {
        dataloader_num_workers: 0,
        ..in_order.clone()
    };
    let (from_memory, _) = run(memory.into(), &on_thread, &dir.join("memory"), 10);
    let (streamed, _) = run(stream(8).into(), &in_order, &dir.join("streamed"), 10);
    assert_eq!(streamed, from_memory, "file order: the in-memory run");

    let (whole, _) = run(stream(8).into(), &args, &dir.join("whole"), 10);
    assert_ne!(whole, streamed, "shuffled in the buffer");
    let (first, checkpoint) = run(stream(8).into(), &args, &dir.join("parts"), 6);
    let checkpoint = checkpoint.unwrap();
    let state = roformer_wgpu::train::read_state(&checkpoint).unwrap();
    let position = state.stream.unwrap();
    assert_eq!((position.epoch, position.updates), (1, 1), "{position:?}");
    let model = RoFormer::from_pretrained(
        ctx,
        checkpoint.join("config.json"),
        checkpoint.join("model.safetensors"),
    )
    .unwrap();
    let mut t = Trainer::resume(
        ctx,
        &model,
        stream(8),
        None,
        &checkpoint,
        dir.join("parts"),
        Vec::new(),
    )
    .unwrap();
    let mut resumed = first;
    for _ in 6..10 {
        ctx.block_on(t.step()).unwrap();
        resumed.push(t.log().get("loss").unwrap().to_bits());
    }
    assert_eq!(resumed, whole);
    // A streamed run's checkpoint does not resume with the data in memory.
    let memory = Dataset::load(&corpus, &options, &tokenizer, &mut LabelNames::default()).unwrap();
    let err = Trainer::resume(
        ctx,
        &model,
        memory,
        None,
        &checkpoint,
        dir.join("x"),
        vec![],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("streamed"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `roformer train --streaming` on a corpus with a line that is not UTF-8 far into it:
/// the updates before it are trained and checkpointed, then an error naming file and line,
/// status 1, no half-written checkpoint and no final model.
#[test]
fn a_bad_line_mid_stream_is_an_error_naming_file_and_line() {
    let dir = temp("stream-bad");
    let mut text = std::fs::read(corpus(&dir)).unwrap();
    text.extend(b"one more line\ncaf\xe9 au lait\nand more\n");
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, &text).unwrap();
    let initial = fixture("fill_mask").join("initial");
    let out = dir.join("out");
    let train = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--task",
            "fill-mask",
            "--model",
            initial.to_str().unwrap(),
            "--train",
            file.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--per-device-train-batch-size",
            "4",
            "--save-steps",
            "3",
            "--logging-steps",
            "1",
            "--json",
        ];
        args.extend(extra);
        roformer(&args)
    };
    let o = train(&bad, &["--streaming", "--no-shuffle", "--max-steps", "40"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.txt:42: not UTF-8 (byte 3)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The 40 good texts and the next: 10 updates, then the error while reading update 11.
    let logged = String::from_utf8_lossy(&o.stdout).lines().count();
    assert_eq!(logged, 10, "{}", String::from_utf8_lossy(&o.stdout));
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["checkpoint-3", "checkpoint-6", "checkpoint-9"]);
    let state = roformer_wgpu::train::read_state(out.join("checkpoint-9")).unwrap();
    assert_eq!(state.global_step, 9);
    // What the command line refuses before training.
    let csv = fixture("text_classification").join("train.csv");
    let o = train(&csv, &["--streaming", "--max-steps", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("streaming reads plain text"));
    for extra in [
        &["--streaming"][..],
        &["--streaming", "--max-steps", "2", "--group-by-length"],
    ] {
        assert_eq!(train(&bad, extra).status.code(), Some(2), "{extra:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The command trains a classifier, writes a transformers folder and `roformer classify`
/// answers from it; `--json` lines carry transformers' log_history keys.
#[test]
fn the_trained_folder_answers_classify() {
    let dir = temp("classify");
    let f = fixture("text_classification");
    let out = dir.join("out");
    let o = roformer(&[
        "train",
        "--task",
        "text-classification",
        "--model",
        f.join("initial").to_str().unwrap(),
        "--train",
        f.join("train.csv").to_str().unwrap(),
        "--eval",
        f.join("train.csv").to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--max-steps",
        "6",
        "--logging-steps",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "three logs and an evaluation: {lines:?}");
    for key in ["loss", "grad_norm", "learning_rate", "epoch", "step"] {
        assert!(
            lines[0].get(key).is_some(),
            "{key} missing from {}",
            lines[0]
        );
    }
    for key in ["eval_loss", "eval_accuracy", "eval_f1"] {
        assert!(
            lines[3].get(key).is_some(),
            "{key} missing from {}",
            lines[3]
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"]["0"], "neg");
    assert_eq!(config["label2id"]["pos"], 2);
    let answer = roformer(&[
        "classify",
        "--json",
        "--model",
        out.to_str().unwrap(),
        "a good day",
    ]);
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let label: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    let name = label[0]["label"]
        .as_str()
        .or(label["label"].as_str())
        .unwrap()
        .to_string();
    assert!(["neg", "neu", "pos"].contains(&name.as_str()), "{label}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad data: an error naming file and line (or the column), status 1, and no output folder
/// content.
#[test]
fn bad_data_files_are_errors_naming_file_and_line() {
    let dir = temp("bad");
    let f = fixture("text_classification");
    let initial = f.join("initial");
    let tokens = fixture("token_classification").join("initial");
    let cases: Vec<(&str, &Path, &str, &[u8], &str)> = vec![
        (
            "text-classification",
            &initial,
            "nolabel.csv",
            b"text,target\nhello,pos\n",
            "no column \"label\"",
        ),
        (
            "text-classification",
            &initial,
            "unknown.csv",
            b"text,label\nhello,pos\nworld,maybe\n",
            "unknown.csv:3: label \"maybe\" is not one of the model's labels",
        ),
        ("text-classification", &initial, "empty.csv", b"", "empty.csv: no records"),
        (
            "text-classification",
            &initial,
            "bytes.csv",
            b"text,label\nfine,pos\n\xff\xfe,neg\n",
            "bytes.csv:3: not UTF-8",
        ),
        (
            "text-classification",
            &initial,
            "ragged.csv",
            b"text,label\na,pos\nb,neg,extra\n",
            "ragged.csv:3: 3 fields, but the header has 2",
        ),
        (
            "token-classification",
            &tokens,
            "counts.jsonl",
            b"{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\", \"O\"]}\n{\"tokens\": [\"a\"], \"tags\": [\"O\", \"O\"]}\n",
            "counts.jsonl:2: 1 tokens but 2 tags",
        ),
    ];
    for (task, model, file, bytes, want) in cases {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        let out = dir.join(format!("out-{file}"));
        let o = roformer(&[
            "train",
            "--task",
            task,
            "--model",
            model.to_str().unwrap(),
            "--train",
            path.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--max-steps",
            "2",
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{file}: {stderr}");
        assert!(stderr.contains(want), "{file}: want {want:?} in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "{file}: {} was created", out.display());
    }
    // Numbers out of range are the command line's errors (status 2).
    for (flag, value) in [
        ("--learning-rate", "-1"),
        ("--per-device-train-batch-size", "0"),
        ("--warmup-ratio", "2"),
        ("--mlm-probability", "1"),
    ] {
        let o = roformer(&[
            "train",
            "--task",
            "fill-mask",
            "--model",
            "m",
            "--train",
            "t.txt",
            "--output-dir",
            "o",
            flag,
            value,
        ]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
