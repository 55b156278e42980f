//! The trainer against transformers' Trainer (tests/fixtures/trainer, made by
//! tools/make_trainer_fixtures.py): the same initial folder, data file and arguments, file
//! order, dropout 0; every update's loss within 1e-4 relative of transformers' logged loss,
//! the gradient norm and learning rate too, the final evaluation loss, and the trained
//! weights within 1e-3 relative L2.

#![cfg(feature = "text")]

mod common;

use std::path::{Path, PathBuf};

use common::ctx;
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::model::{RoFormer, RoFormerConfig};
use roformer_wgpu::text::Tokenizer;
use roformer_wgpu::train::{
    DataOptions, Dataset, LabelNames, SchedulerType, Task, Trainer, TrainingArguments,
};
use serde_json::Value;

fn case_dir(name: &str) -> PathBuf {
    common::manifest_dir()
        .join("tests/fixtures/trainer")
        .join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Trains case `name` as its arguments say and holds it to transformers' record.
fn check(name: &str) {
    let ctx = &ctx();
    let dir = case_dir(name);
    let a = json(&dir.join("args.json"));
    let expected = json(&dir.join("expected.json"));
    let num = |k: &str| a[k].as_f64().unwrap();
    let args = TrainingArguments {
        learning_rate: num("learning_rate"),
        weight_decay: num("weight_decay"),
        warmup_steps: num("warmup_steps") as u64,
        lr_scheduler_type: a["lr_scheduler_type"]
            .as_str()
            .unwrap()
            .parse::<SchedulerType>()
            .unwrap(),
        per_device_train_batch_size: num("per_device_train_batch_size") as usize,
        per_device_eval_batch_size: num("per_device_eval_batch_size") as usize,
        gradient_accumulation_steps: num("gradient_accumulation_steps") as usize,
        max_steps: Some(num("max_steps") as u64),
        max_grad_norm: num("max_grad_norm") as f32,
        seed: num("seed") as u64,
        logging_steps: 1,
        shuffle: false,
        ..TrainingArguments::default()
    };
    let task: Task = a["task"].as_str().unwrap().parse().unwrap();
    let initial = dir.join("initial");
    let tokenizer = Tokenizer::from_dir(&initial).unwrap();
    let config = RoFormerConfig::from_file(initial.join("config.json")).unwrap();
    let mut labels = LabelNames::of_model(&config).unwrap_or_default();
    let mut options = DataOptions::new(task, 64);
    if let Some(p) = a.get("problem_type").and_then(Value::as_str) {
        options.problem_type = p.to_string();
    }
    let train = Dataset::load(
        dir.join(a["train"].as_str().unwrap()),
        &options,
        &tokenizer,
        &mut labels,
    )
    .unwrap();
    let model = RoFormer::from_pretrained(
        ctx,
        initial.join("config.json"),
        initial.join("model.safetensors"),
    )
    .unwrap();
    let out = std::env::temp_dir().join(format!("roformer-parity-{name}-{}", std::process::id()));
    let mut trainer = Trainer::new(
        ctx,
        &model,
        task,
        args.clone(),
        train,
        None,
        &labels,
        &out,
        Vec::new(),
    )
    .unwrap();
    let logs: Vec<&Value> = expected["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("loss").is_some())
        .collect();
    assert_eq!(
        logs.len() as u64,
        args.max_steps.unwrap(),
        "{name}: the record's updates"
    );
    let mut worst = (0.0f64, 0.0f64);
    for (k, want) in logs.iter().enumerate() {
        ctx.block_on(trainer.step()).unwrap();
        let got = trainer.log();
        let rel = |key: &str| {
            let (g, w) = (got.get(key).unwrap(), want[key].as_f64().unwrap());
            (g - w).abs() / w.abs().max(1e-12)
        };
        let (loss, norm) = (rel("loss"), rel("grad_norm"));
        worst = (worst.0.max(loss), worst.1.max(norm));
        assert!(
            loss < 1e-4,
            "{name} update {}: loss {:?} vs {}",
            k + 1,
            got.get("loss"),
            want["loss"]
        );
        assert!(
            norm < 1e-4,
            "{name} update {}: grad_norm {:?} vs {}",
            k + 1,
            got.get("grad_norm"),
            want["grad_norm"]
        );
        let lr =
            (got.get("learning_rate").unwrap() - want["learning_rate"].as_f64().unwrap()).abs();
        assert!(
            lr < 1e-12,
            "{name} update {}: learning rate off by {lr}",
            k + 1
        );
        assert_eq!(got.step, want["step"].as_u64().unwrap());
        assert!(
            (got.epoch - want["epoch"].as_f64().unwrap()).abs() < 1e-9,
            "{name}: epoch"
        );
    }
    let eval = ctx.block_on(trainer.evaluate()).unwrap();
    let (e, w) = (
        eval.get("eval_loss").unwrap(),
        expected["eval_loss"].as_f64().unwrap(),
    );
    assert!((e - w).abs() / w < 1e-4, "{name}: eval_loss {e} vs {w}");
    // The trained weights.
    let ours = model.params().download(ctx).unwrap();
    let theirs = roformer_wgpu::io::read_checkpoint(dir.join("trained/model.safetensors")).unwrap();
    let (mut a_all, mut b_all) = (Vec::new(), Vec::new());
    for (name, _, values) in &ours {
        let t = theirs
            .get(name)
            .or_else(|| theirs.get(name.strip_prefix("roformer.").unwrap_or(name)))
            .unwrap_or_else(|| panic!("{name} is not in transformers' trained weights"));
        a_all.extend(values.iter().copied());
        b_all.extend(t.to_f32());
    }
    let weights = rel_l2(&a_all, &b_all);
    eprintln!(
        "{name}: worst loss {:.1e}, grad_norm {:.1e}, eval_loss {:.1e}, weights {weights:.1e}",
        worst.0,
        worst.1,
        (e - w).abs() / w
    );
    assert!(weights < 1e-3, "{name}: trained weights off by {weights}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn text_classification_as_transformers_trains_it() {
    check("text_classification");
}

#[test]
fn text_pair_classification_as_transformers_trains_it() {
    check("text_pair_classification");
}

#[test]
fn token_classification_as_transformers_trains_it() {
    check("token_classification");
}

#[test]
fn fill_mask_with_the_datas_masks_as_transformers_trains_it() {
    check("fill_mask");
}

#[test]
fn causal_lm_blocks_as_transformers_trains_them() {
    check("text_generation");
}

#[test]
fn multi_label_classification_as_transformers_trains_it() {
    check("multi_label_classification");
}

#[test]
fn regression_as_transformers_trains_it() {
    check("regression");
}

#[test]
fn gradient_accumulation_as_transformers_sums_it() {
    check("text_classification_ga2");
    check("text_generation_ga2");
}
