//! `bench train-data`: the trainer's host time per update with its batches prepared on the
//! training thread (`dataloader_num_workers` 0) against on a background thread (1), in
//! alternating rounds on the same data, model and seed: the wall time of an update, and
//! the part of it spent waiting for batches (reading and tokenizing streamed text, masking,
//! padding). The two must give the same losses; the bench checks that too.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use roformer_wgpu::model::RoFormerConfig;
use roformer_wgpu::text::Tokenizer;
use roformer_wgpu::train::{
    model_for, DataOptions, Dataset, LabelNames, Task, TextStream, TrainData, Trainer,
    TrainingArguments,
};
use roformer_wgpu::Context;

/// The run of `bench train-data`.
#[derive(Args)]
pub struct TrainDataArgs {
    /// The model's config.json (a new model from the seed).
    #[arg(long)]
    config: PathBuf,
    /// The tokenizer's folder.
    #[arg(long)]
    tokenizer: PathBuf,
    /// A plain-text corpus (.txt, a document a line).
    #[arg(long)]
    train: PathBuf,
    /// fill-mask or text-generation.
    #[arg(long, default_value = "fill-mask")]
    task: String,
    /// Stream the file (else: load it into memory first).
    #[arg(long)]
    streaming: bool,
    #[arg(long, default_value_t = 32)]
    max_length: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Updates timed per round and setting (after two untimed ones: planning).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Rounds, each running both settings, in alternating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One setting's rounds: the mean update time, the mean wait for batches, every loss.
#[derive(Default)]
struct Rounds {
    walls: Vec<f64>,
    waits: Vec<f64>,
    losses: Vec<Vec<u64>>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: &TrainDataArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    let task: Task = a.task.parse()?;
    let tokenizer = Tokenizer::from_dir(&a.tokenizer)?;
    let config = RoFormerConfig::from_file(&a.config)?;
    let options = DataOptions::new(task, a.max_length);
    let labels = LabelNames::default();
    let data: TrainData = if a.streaming {
        TextStream::open(&a.train, &options, &tokenizer, 1000)?.into()
    } else {
        let start = Instant::now();
        let d = Dataset::load(&a.train, &options, &tokenizer, &mut LabelNames::default())?;
        println!(
            "loaded    {} examples in {:.1} s",
            d.examples.len(),
            start.elapsed().as_secs_f64()
        );
        d.into()
    };
    println!("adapter   {}", ctx.capabilities().adapter_name);
    let warmup = 2;
    let out = std::env::temp_dir().join(format!("bench-train-data-{}", std::process::id()));
    // By setting: workers 0, then 1.
    let mut per_setting: [Rounds; 2] = Default::default();
    for round in 0..a.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for workers in order {
            let args = TrainingArguments {
                learning_rate: 1e-3,
                per_device_train_batch_size: a.batch,
                max_length: Some(a.max_length),
                max_steps: Some((warmup + a.steps) as u64),
                save_steps: 0,
                seed: 0,
                dataloader_num_workers: workers,
                ..TrainingArguments::default()
            };
            let (model, _) = model_for(&ctx, config.clone(), task, &labels, &args, None)?;
            let mut t = Trainer::new(
                &ctx,
                &model,
                task,
                args,
                data.clone(),
                None,
                &labels,
                &out,
                vec![],
            )?;
            let (mut walls, mut waits, mut losses) = (Vec::new(), Vec::new(), Vec::new());
            for step in 0..warmup + a.steps {
                let start = Instant::now();
                ctx.block_on(t.step())?;
                let wall = start.elapsed().as_secs_f64();
                losses.push(t.log().get("loss").unwrap_or(f64::NAN).to_bits());
                if step >= warmup {
                    walls.push(wall);
                    waits.push(t.last_data_wait());
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            println!(
                "round {round} workers {workers}: {:.1} ms an update, {:.2} ms of it waiting for batches",
                1e3 * mean(&walls),
                1e3 * mean(&waits)
            );
            let s = &mut per_setting[workers];
            s.walls.push(mean(&walls));
            s.waits.push(mean(&waits));
            s.losses.push(losses);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    let same = per_setting[0].losses == per_setting[1].losses;
    println!("\nthe same losses, bit for bit, both ways: {same}");
    println!(
        "\n| batches prepared | an update (ms, median of rounds) | waiting for batches (ms) |"
    );
    println!("|---|---|---|");
    for (workers, name) in [(0, "on the training thread"), (1, "on a background thread")] {
        let s = &per_setting[workers];
        println!(
            "| {name} | {:.1} | {:.2} |",
            1e3 * median(s.walls.clone()),
            1e3 * median(s.waits.clone())
        );
    }
    if !same {
        return Err("the two settings gave different losses".into());
    }
    Ok(())
}
