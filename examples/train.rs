//! The main job: train a RoFormer classifier on ListOps (Long Range Arena) and show it learns;
//! `--task pathfinder|pathx` trains LRA's Pathfinder or Path-X instead.
//!
//!     cargo run --release --example train                      # defaults picked from the adapter
//!     cargo run --release --example train -- --preset lra      # LRA's setting (lengths 500-2000)
//!     cargo run --release --example train -- --resume          # continue the last run in --out
//!     cargo run --release --example train -- --precision mixed # f16 passes, f32 master weights
//!
//! On a CPU adapter (llvmpipe) the default is a small, fast setting; on a GPU it is LRA's
//! ListOps. `--help` lists every option. The library's trainer (`roformer_wgpu::train`) runs
//! it: ListOps is a pre-tokenized dataset (`roformer_lab::lra`) of a text-classification
//! task. Writes to `--out` (default `runs/listops`): `run.json` (the settings),
//! `checkpoint-N` folders (transformers' layout, the optimizer state and
//! `trainer_state.json`), the trained model, `curves.png` and `summary.json`.
//!
//! Built with the `mpi` feature, `mpirun -np N` runs it data-parallel, a rank per adapter
//! (`roformer_wgpu::train::distributed`): the preset's batch is per rank, rank 0 prints and
//! saves.
//!
//!     cargo build --release --features mpi --example train
//!     mpirun -np 2 target/release/examples/train --preset lra

use roformer_lab::args;
use roformer_lab::fonts;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use roformer_lab::listops::ListOpsConfig;
use roformer_lab::lra::{self, ModelSize};
use roformer_lab::pathfinder::PathfinderConfig;
use roformer_wgpu::model::AttentionKind;
use roformer_wgpu::train::{
    checkpoints, Distributed, LogEntry, Precision, SchedulerType, Task, TrainEvent, Trainer,
    TrainingArguments,
};
use roformer_wgpu::Context;
use serde::{Deserialize, Serialize};

/// Everything that defines a run, saved as `run.json` in the output folder (a resumed run
/// takes it from there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Run {
    task: TaskArg,
    listops: ListOpsConfig,
    pathfinder: PathfinderConfig,
    model: ModelSize,
    args: TrainingArguments,
}

fn preset(task: TaskArg, name: &str) -> Result<Run, String> {
    let model = |layers, hidden, heads, intermediate, attention| ModelSize {
        layers,
        hidden,
        heads,
        intermediate,
        attention,
        window: 128,
        global_tokens: 1,
    };
    let args = |batch, steps, lr, warmup, scheduler, multiple, every, logging| TrainingArguments {
        seed: 1,
        per_device_train_batch_size: batch,
        per_device_eval_batch_size: batch,
        max_steps: Some(steps),
        learning_rate: lr,
        warmup_steps: warmup,
        lr_scheduler_type: scheduler,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        pad_to_multiple_of: multiple,
        group_by_length: true,
        eval_steps: Some(every),
        save_steps: every,
        save_total_limit: Some(2),
        logging_steps: logging,
        ..TrainingArguments::default()
    };
    let default = Run {
        task,
        listops: ListOpsConfig::default(),
        pathfinder: PathfinderConfig::pathfinder(),
        model: model(1, 32, 2, 64, AttentionKind::Softmax),
        args: TrainingArguments::default(),
    };
    match (task, name) {
        // Minutes on a 2-core machine with llvmpipe: short, shallow trees and a small model.
        (TaskArg::Listops, "cpu") => Ok(Run {
            listops: ListOpsConfig {
                max_depth: 4,
                max_args: 5,
                min_length: 8,
                max_length: 40,
                train: 6000,
                valid: 500,
                test: 500,
            },
            model: model(2, 64, 4, 128, AttentionKind::Softmax),
            args: args(32, 400, 2e-3, 40, SchedulerType::Linear, 16, 100, 5),
            ..default
        }),
        // LRA's ListOps: depth 10, up to 10 arguments, 500 < length < 2000, 96K/2K/2K.
        (TaskArg::Listops, "lra") => Ok(Run {
            listops: ListOpsConfig::default(),
            model: model(4, 256, 4, 1024, AttentionKind::Softmax),
            args: args(32, 10_000, 5e-4, 1000, SchedulerType::Cosine, 128, 500, 50),
            ..default
        }),
        // 32 x 32 images (1,025 tokens with CLS), few of them, a small linear-attention model.
        (TaskArg::Pathfinder, "cpu") => Ok(Run {
            pathfinder: PathfinderConfig {
                train: 2000,
                valid: 200,
                test: 200,
                ..PathfinderConfig::pathfinder()
            },
            model: model(1, 32, 2, 64, AttentionKind::Linear),
            args: args(16, 250, 2e-3, 25, SchedulerType::Linear, 1, 50, 5),
            ..default
        }),
        // LRA's Pathfinder-32 model (4 layers of 128, 8 heads, FFN 128) on 160K/20K/20K.
        (TaskArg::Pathfinder, "lra") => Ok(Run {
            pathfinder: PathfinderConfig::pathfinder(),
            model: model(4, 128, 8, 128, AttentionKind::Softmax),
            args: args(64, 20_000, 5e-4, 1000, SchedulerType::Cosine, 1, 1000, 50),
            ..default
        }),
        // 16,385-token sequences: a handful of one-layer steps with linear attention.
        (TaskArg::Pathx, "cpu") => Ok(Run {
            pathfinder: PathfinderConfig {
                train: 8,
                valid: 2,
                test: 2,
                ..PathfinderConfig::path_x()
            },
            model: model(1, 32, 2, 64, AttentionKind::Linear),
            args: args(1, 4, 1e-3, 0, SchedulerType::Linear, 1, 4, 1),
            ..default
        }),
        (TaskArg::Pathx, "lra") => Ok(Run {
            pathfinder: PathfinderConfig {
                train: 20_000,
                valid: 2_000,
                test: 2_000,
                ..PathfinderConfig::path_x()
            },
            model: model(4, 128, 8, 128, AttentionKind::Linear),
            args: args(8, 20_000, 5e-4, 1000, SchedulerType::Cosine, 1, 1000, 50),
            ..default
        }),
        (_, other) => Err(format!("unknown preset {other:?} (cpu or lra)")),
    }
}

/// Train a RoFormer on ListOps (Long Range Arena) and show it learns. Options left out keep
/// the preset's values.
#[derive(Parser)]
#[command(name = "train")]
struct Cli {
    /// The LRA task: listops (default), pathfinder (32 x 32 images: is there a path between
    /// the two dots) or pathx (128 x 128).
    #[arg(long, value_enum, default_value = "listops")]
    task: TaskArg,
    /// Starting point (default: cpu on a CPU adapter, lra on a GPU).
    #[arg(long, value_enum)]
    preset: Option<PresetArg>,
    /// Output folder (default runs/TASK).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the output folder's latest checkpoint (its saved settings win).
    #[arg(long)]
    resume: bool,
    /// Seed of the data and the initial weights.
    #[arg(long)]
    seed: Option<u64>,

    /// ListOps: deepest tree.
    #[arg(long, help_heading = "Data")]
    depth: Option<usize>,
    /// ListOps: most arguments of an operator.
    #[arg(long, help_heading = "Data")]
    args: Option<usize>,
    /// ListOps: kept sequences are longer than this.
    #[arg(long, help_heading = "Data")]
    min_len: Option<usize>,
    /// ListOps: kept sequences are shorter than this.
    #[arg(long, help_heading = "Data")]
    max_len: Option<usize>,
    /// Training examples.
    #[arg(long, help_heading = "Data")]
    train: Option<usize>,
    /// Validation examples.
    #[arg(long, help_heading = "Data")]
    valid: Option<usize>,
    /// Test examples.
    #[arg(long, help_heading = "Data")]
    test: Option<usize>,
    /// Pathfinder and Path-X: paddles per target path, LRA's split (6 easy, 9, 14 hard).
    #[arg(long, help_heading = "Data")]
    contour_length: Option<usize>,

    /// Encoder layers.
    #[arg(long, help_heading = "Model")]
    layers: Option<usize>,
    /// Hidden size.
    #[arg(long, help_heading = "Model")]
    hidden: Option<usize>,
    /// Attention heads.
    #[arg(long, help_heading = "Model")]
    heads: Option<usize>,
    /// Feed-forward width.
    #[arg(long, help_heading = "Model")]
    intermediate: Option<usize>,
    /// Attention kind.
    #[arg(long, value_enum, help_heading = "Model")]
    attention: Option<AttentionArg>,
    /// Local attention: a query sees keys at most this far away (default 128, at most the
    /// model's positions).
    #[arg(long, help_heading = "Model", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    window: Option<usize>,
    /// Local attention: the first N positions see and are seen by every position (default 1,
    /// the CLS token the classifier reads).
    #[arg(long, help_heading = "Model", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000))]
    global_tokens: Option<usize>,

    /// Sequences per step.
    #[arg(long, help_heading = "Training")]
    batch: Option<usize>,
    /// Optimizer steps.
    #[arg(long, help_heading = "Training")]
    steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long, help_heading = "Training")]
    lr: Option<f64>,
    /// Warm-up steps.
    #[arg(long, help_heading = "Training")]
    warmup: Option<u64>,
    /// Learning-rate decay after the warm-up.
    #[arg(long, value_enum, help_heading = "Training")]
    decay: Option<DecayArg>,
    /// AdamW's weight decay.
    #[arg(long, help_heading = "Training")]
    weight_decay: Option<f64>,
    /// Gradient-norm clip (0: off).
    #[arg(long, help_heading = "Training")]
    clip: Option<f32>,
    /// Lengths are padded to a multiple of this.
    #[arg(long, help_heading = "Training")]
    bucket: Option<usize>,
    /// Evaluate every N steps.
    #[arg(long, help_heading = "Training")]
    eval_every: Option<u64>,
    /// Save a checkpoint every N steps.
    #[arg(long, help_heading = "Training")]
    checkpoint_every: Option<u64>,
    /// Arithmetic: f32, or mixed (f16 forward and backward passes, f32 master weights and
    /// AdamW state, dynamic loss scaling; needs SHADER_F16).
    #[arg(long, value_enum, help_heading = "Training")]
    precision: Option<PrecisionArg>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum PrecisionArg {
    /// Everything in f32.
    F32,
    /// Not for training: AdamW needs f32 weights (see mixed).
    F16,
    /// f16 passes, f32 master weights and optimizer state, dynamic loss scaling.
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
enum TaskArg {
    /// LRA's ListOps: the value of a nested list expression, 10 classes.
    Listops,
    /// LRA's Pathfinder: 32 x 32 pixels, 2 classes.
    Pathfinder,
    /// LRA's Path-X: 128 x 128 pixels (16,384 tokens), 2 classes.
    Pathx,
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    /// Minutes on 2 CPU cores: short trees, a small model.
    Cpu,
    /// LRA's ListOps: lengths 500-2000, depth 10, 96K trees.
    Lra,
}

#[derive(Clone, Copy, ValueEnum)]
enum AttentionArg {
    /// HF's softmax attention.
    Softmax,
    /// The same, fused (memory linear in the length).
    #[value(alias = "fused_softmax")]
    Fused,
    /// Linear attention with RoPE (RoFormer eq. 19).
    Linear,
    /// Sliding-window attention with global tokens (--window, --global-tokens).
    Local,
}

#[derive(Clone, Copy, ValueEnum)]
enum DecayArg {
    Linear,
    Cosine,
    Constant,
}

fn configure(cli: &Cli, cpu: bool) -> Result<Run, String> {
    let name = match cli.preset {
        Some(PresetArg::Cpu) => "cpu",
        Some(PresetArg::Lra) => "lra",
        None if cpu => "cpu",
        None => "lra",
    };
    let mut c = preset(cli.task, name)?;
    fn set<T: Copy>(into: &mut T, given: Option<T>) {
        if let Some(v) = given {
            *into = v;
        }
    }
    let l = &mut c.listops;
    set(&mut l.max_depth, cli.depth);
    set(&mut l.max_args, cli.args);
    set(&mut l.min_length, cli.min_len);
    set(&mut l.max_length, cli.max_len);
    set(&mut l.train, cli.train);
    set(&mut l.valid, cli.valid);
    set(&mut l.test, cli.test);
    let p = &mut c.pathfinder;
    set(&mut p.train, cli.train);
    set(&mut p.valid, cli.valid);
    set(&mut p.test, cli.test);
    if let Some(n) = cli.contour_length {
        *p = p.with_contour_length(n)?;
    }
    let m = &mut c.model;
    set(&mut m.layers, cli.layers);
    set(&mut m.hidden, cli.hidden);
    set(&mut m.heads, cli.heads);
    set(&mut m.intermediate, cli.intermediate);
    if let Some(a) = cli.attention {
        m.attention = match a {
            AttentionArg::Softmax => AttentionKind::Softmax,
            AttentionArg::Fused => AttentionKind::FusedSoftmax,
            AttentionArg::Linear => AttentionKind::Linear,
            AttentionArg::Local => AttentionKind::Local,
        };
    }
    set(&mut m.window, cli.window);
    set(&mut m.global_tokens, cli.global_tokens);
    let a = &mut c.args;
    set(&mut a.seed, cli.seed);
    if let Some(b) = cli.batch {
        a.per_device_train_batch_size = b;
        a.per_device_eval_batch_size = b;
    }
    if let Some(steps) = cli.steps {
        a.max_steps = Some(steps);
    }
    set(&mut a.learning_rate, cli.lr);
    set(&mut a.warmup_steps, cli.warmup);
    if let Some(d) = cli.decay {
        a.lr_scheduler_type = match d {
            DecayArg::Linear => SchedulerType::Linear,
            DecayArg::Cosine => SchedulerType::Cosine,
            DecayArg::Constant => SchedulerType::ConstantWithWarmup,
        };
    }
    set(&mut a.weight_decay, cli.weight_decay);
    set(&mut a.max_grad_norm, cli.clip);
    set(&mut a.pad_to_multiple_of, cli.bucket);
    if let Some(e) = cli.eval_every {
        a.eval_steps = (e > 0).then_some(e);
    }
    set(&mut a.save_steps, cli.checkpoint_every);
    match cli.precision {
        None => {}
        Some(PrecisionArg::F32) => a.precision = Precision::F32,
        Some(PrecisionArg::Mixed) => a.precision = Precision::Mixed,
        Some(PrecisionArg::F16) => {
            return Err(
                "--precision f16: training keeps f32 master weights, as AdamW's small \
                        updates vanish in f16; --precision mixed runs the passes in f16"
                    .into(),
            )
        }
    }
    a.check().map_err(|e| e.to_string())?;
    Ok(c)
}

fn main() -> std::process::ExitCode {
    let cli: Cli = args::parse_args();
    #[cfg(feature = "mpi")]
    {
        use std::io::Write;
        let timeout = roformer_wgpu::train::distributed::DEFAULT_TIMEOUT;
        match Distributed::from_launcher(timeout) {
            Ok(Some(d)) => {
                return match run(cli, Some(&d)) {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => {
                        let _ = writeln!(std::io::stderr(), "rank {}: error: {e}", d.rank());
                        // Returning would finalise MPI, which waits for the other ranks.
                        d.abort(1)
                    }
                };
            }
            Ok(None) => {}
            Err(e) => return args::exit_code(Err(e.into())),
        }
    }
    args::exit_code(run(cli, None))
}

fn run(cli: Cli, distributed: Option<&Distributed>) -> Result<(), Box<dyn std::error::Error>> {
    // A data-parallel run's rank 0 alone prints and writes.
    let main = distributed.is_none_or(Distributed::is_main);
    macro_rules! say {
        ($($t:tt)*) => {
            if main {
                println!($($t)*)
            }
        };
    }
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{:?}", cli.task).to_lowercase()));

    let ctx = match distributed {
        Some(d) => Context::with_options(d.context_options())?,
        None => Context::new()?,
    };
    let caps = ctx.capabilities();
    let mut config = configure(&cli, caps.is_cpu())?;
    say!(
        "adapter   {} ({:?}{})",
        caps.adapter_name,
        caps.backend,
        if caps.is_cpu() {
            ", CPU: small setting"
        } else {
            ""
        }
    );

    let checkpoint = if cli.resume {
        checkpoints(&out)?.pop().map(|(_, dir)| dir)
    } else {
        None
    };
    if cli.resume && checkpoint.is_none() {
        say!(
            "resume    no checkpoint in {}: starting a new run",
            out.display()
        );
    }
    let run_file = out.join("run.json");
    if checkpoint.is_some() {
        let text = std::fs::read_to_string(&run_file)
            .map_err(|e| format!("{}: {e} (the run's settings)", run_file.display()))?;
        let saved: Run =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", run_file.display()))?;
        if saved != config {
            say!("resume    using the run's saved settings (command-line settings ignored)");
        }
        config = saved;
    } else if main {
        // A new run: the last run's checkpoints would be mistaken for this one's.
        for (_, old) in checkpoints(&out)? {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::create_dir_all(&out)?;
        roformer_wgpu::io::write_atomic(
            &run_file,
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
    }
    let args = &config.args;

    let t0 = Instant::now();
    let data = match config.task {
        TaskArg::Listops => lra::listops(config.listops, args.seed)?,
        TaskArg::Pathfinder | TaskArg::Pathx => lra::pathfinder(config.pathfinder, args.seed)?,
    };
    let sizes = format!(
        "{} train / {} valid / {} test, made in {:.1} s",
        data.train.examples.len(),
        data.valid.examples.len(),
        data.test.examples.len(),
        t0.elapsed().as_secs_f64()
    );
    if config.task == TaskArg::Listops {
        let mean_len = data
            .train
            .examples
            .iter()
            .map(|e| e.len() - 1)
            .sum::<usize>() as f64
            / data.train.examples.len() as f64;
        let l = &config.listops;
        say!(
            "data      ListOps depth {}, 2-{} args, {} < length < {} (mean {mean_len:.0}): {sizes}",
            l.max_depth,
            l.max_args,
            l.min_length,
            l.max_length,
        );
    } else {
        let side = config.pathfinder.side;
        say!(
            "data      {} {side} x {side} ({} tokens with CLS): {sizes}",
            data.name,
            data.longest
        );
    }

    let task = Task::TextClassification;
    let model = lra::model(&ctx, &data, &config.model, args, checkpoint.as_deref())?;
    let m = config.model;
    let window = match model.config().attention_window {
        Some(w) => format!(
            " (window {w}, {} global)",
            model.config().global_tokens.unwrap_or(0)
        ),
        None => String::new(),
    };
    say!(
        "model     RoFormer {} layers, hidden {}, {} heads, ffn {}, {:?} attention{window}: {} parameters",
        m.layers,
        m.hidden,
        m.heads,
        m.intermediate,
        m.attention,
        model.params().count()
    );
    say!(
        "training  {} steps of {} sequences, AdamW lr {} ({} warm-up, {:?}), weight decay {}, clip {}, {:?} precision",
        args.max_steps.unwrap_or(0),
        args.per_device_train_batch_size,
        args.learning_rate,
        args.warmup_steps,
        args.lr_scheduler_type,
        args.weight_decay,
        args.max_grad_norm,
        args.precision
    );
    let (train, valid) = (data.train.clone(), Some(data.valid.clone()));
    let mut trainer = match &checkpoint {
        Some(dir) => Trainer::resume(&ctx, &model, train, valid, dir, &out, vec![])?,
        None => Trainer::new(
            &ctx,
            &model,
            task,
            args.clone(),
            train,
            valid,
            &data.labels,
            &out,
            vec![],
        )?,
    };
    if let Some(d) = distributed {
        trainer = trainer.distributed(d)?;
        say!(
            "ranks     {} (one adapter each; {} sequences per update)",
            d.size(),
            d.size() * args.per_device_train_batch_size
        );
    }
    if let Some(dir) = &checkpoint {
        say!(
            "resume    from {} (step {})",
            dir.display(),
            trainer.state().global_step
        );
    }

    let total = trainer.state().max_steps;
    let bar = match main {
        true => ProgressBar::new(total),
        false => ProgressBar::hidden(),
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta}]",
    )?);
    bar.set_position(trainer.state().global_step);
    let (mut loss_ema, mut acc_ema) = (None::<f64>, None::<f64>);
    let mut speeds = Vec::new();
    let mut last_line = Instant::now();
    trainer.train(|event| match event {
        TrainEvent::Step {
            step,
            of,
            loss,
            accuracy,
            tokens_per_s,
            ..
        } => {
            let ema = |e: Option<f64>, x: f64| e.map_or(x, |e| e * 0.95 + x * 0.05);
            loss_ema = Some(ema(loss_ema, loss));
            if let Some(a) = accuracy {
                acc_ema = Some(ema(acc_ema, a));
            }
            speeds.push(tokens_per_s);
            bar.set_position(step);
            let msg = format!(
                "loss {:.3} acc {:.1}% {tokens_per_s:.0} tok/s",
                loss_ema.unwrap_or(f64::NAN),
                100.0 * acc_ema.unwrap_or(f64::NAN),
            );
            if bar.is_hidden() && last_line.elapsed().as_secs() >= 10 {
                say!("step {step:>6}/{of}  {msg}");
                last_line = Instant::now();
            }
            bar.set_message(msg);
        }
        TrainEvent::Log(_) => {}
        TrainEvent::Eval(e) => bar.suspend(|| {
            say!(
                "eval      step {:>6} valid loss {:.4} accuracy {:.2}%",
                e.step,
                e.get("eval_loss").unwrap_or(f64::NAN),
                100.0 * e.get("eval_accuracy").unwrap_or(f64::NAN)
            )
        }),
        TrainEvent::Checkpoint(path) => bar.suspend(|| {
            say!(
                "saved     step {:>6} {}",
                trainer_step(path),
                path.display()
            )
        }),
    })?;
    bar.finish_and_clear();
    if !main {
        return Ok(());
    }

    let test = ctx.block_on(trainer.evaluate_on(&data.test, "test"))?;
    say!(
        "eval      step {:>6} test  loss {:.4} accuracy {:.2}%",
        test.step,
        test.get("test_loss").unwrap_or(f64::NAN),
        100.0 * test.get("test_accuracy").unwrap_or(f64::NAN)
    );
    let state = trainer.state();
    let valid = state
        .log_history
        .iter()
        .rev()
        .find_map(|e| e.get("eval_accuracy"))
        .ok_or("no validation accuracy was recorded")?;
    let test_accuracy = test.get("test_accuracy").ok_or("no test accuracy")?;
    // (0 when this process ran no update: an empty sum of f64 is -0, printed "-0".)
    let tokens_per_s = match speeds.len() {
        0 => 0.0,
        n => speeds.iter().sum::<f64>() / n as f64,
    };
    let (majority_label, baseline) = data.majority;
    say!(
        "\nsummary   {} steps in {:.0} s of training, {tokens_per_s:.0} tokens/s",
        state.global_step,
        state.seconds
    );
    if args.precision == Precision::Mixed {
        say!(
            "          mixed precision: {} updates skipped (f16 overflow)",
            state.skipped_updates
        );
    }
    say!(
        "          validation accuracy {:.2}%, test accuracy {:.2}%",
        100.0 * valid,
        100.0 * test_accuracy
    );
    say!(
        "          majority-class baseline (always {majority_label}) {:.2}% on test: {:+.2} points{}",
        100.0 * baseline,
        100.0 * (test_accuracy - baseline),
        // (A test split too small to hold the majority label has no ratio.)
        if baseline > 0.0 {
            format!(", {:.1}x", test_accuracy / baseline)
        } else {
            String::new()
        }
    );
    let summary = serde_json::json!({
        "adapter": caps.adapter_name,
        "run": config,
        "steps": state.global_step,
        "skipped_updates": state.skipped_updates,
        "train_seconds": state.seconds,
        "tokens_per_s": tokens_per_s,
        "valid_accuracy": valid,
        "test_accuracy": test_accuracy,
        "majority_label": majority_label,
        "majority_baseline": baseline,
    });
    roformer_wgpu::io::write_atomic(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    match plot(
        &out.join("curves.png"),
        &data.name,
        &state.log_history,
        total,
        baseline,
    ) {
        Ok(()) => say!(
            "          curves in {}, the model and checkpoints in {}",
            out.join("curves.png").display(),
            out.display()
        ),
        Err(e) => say!("          (no plot: {e})"),
    }
    Ok(())
}

/// The update a checkpoint folder (`checkpoint-N`) holds.
fn trainer_step(path: &Path) -> u64 {
    path.file_name()
        .and_then(|n| n.to_str()?.strip_prefix("checkpoint-")?.parse().ok())
        .unwrap_or(0)
}

/// Loss and accuracy against the step: training loss (smoothed) and validation, and the
/// majority-class baseline.
fn plot(
    path: &Path,
    task: &str,
    history: &[LogEntry],
    steps: u64,
    baseline: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let text = fonts::register_sans_serif();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let steps = steps.max(1) as f64;
    let series = |name: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|e| Some((e.step as f64, e.get(name)?)))
            .collect()
    };
    let mut smoothed = None::<f64>;
    let train_loss: Vec<(f64, f64)> = series("loss")
        .into_iter()
        .map(|(s, l)| {
            let v = smoothed.map_or(l, |p| 0.8 * p + 0.2 * l);
            smoothed = Some(v);
            (s, v)
        })
        .collect();
    let max_loss = train_loss.iter().map(|p| p.1).fold(2.5f64, f64::max);
    for (area, title, train_series, valid_series, y_max, base) in [
        (
            &left,
            "loss",
            train_loss,
            series("eval_loss"),
            max_loss * 1.05,
            None,
        ),
        (
            &right,
            "accuracy",
            Vec::new(),
            series("eval_accuracy"),
            1.0,
            Some(baseline),
        ),
    ] {
        let mut b = ChartBuilder::on(area);
        b.margin(15);
        if text {
            b.caption(format!("{task} {title}"), ("sans-serif", 22))
                .x_label_area_size(35)
                .y_label_area_size(50);
        }
        let mut chart = b.build_cartesian_2d(0f64..steps, 0f64..y_max)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("step");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        if !train_series.is_empty() {
            let train_line =
                chart.draw_series(LineSeries::new(train_series, BLUE.stroke_width(2)))?;
            if text {
                train_line
                    .label("train (smoothed)")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
            }
        }
        let valid_line =
            chart.draw_series(LineSeries::new(valid_series.clone(), RED.stroke_width(2)))?;
        if text {
            valid_line
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        chart.draw_series(
            valid_series
                .iter()
                .map(|&p| Circle::new(p, 4, RED.filled())),
        )?;
        if let Some(base) = base {
            let l = chart.draw_series(LineSeries::new(
                vec![(0.0, base), (steps, base)],
                BLACK.stroke_width(1),
            ))?;
            if text {
                l.label("majority class")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
