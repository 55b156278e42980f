//! The main job: train a RoFormer classifier on ListOps (Long Range Arena) and show it learns.
//!
//!     cargo run --release --example train                      # defaults picked from the adapter
//!     cargo run --release --example train -- --preset lra      # LRA's setting (lengths 500-2000)
//!     cargo run --release --example train -- --resume          # continue the last run in --out
//!     cargo run --release --example train -- --precision mixed # f16 passes, f32 master weights
//!
//! On a CPU adapter (llvmpipe) the default is a small, fast setting; on a GPU it is LRA's
//! ListOps. `--help` lists every option. Writes checkpoints (HF layout), `curves.png` and
//! `summary.json` to `--out` (default `runs/listops`).

use roformer_lab::args;
use roformer_lab::fonts;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use roformer_lab::listops::{self, ListOps, ListOpsConfig};
use roformer_lab::train::{
    self, EvalRecord, Event, ModelSize, TrainConfig, TrainPrecision, TrainState, Trainer,
};
use roformer_wgpu::model::AttentionKind;
use roformer_wgpu::optim::Decay;
use roformer_wgpu::Context;

fn preset(name: &str) -> Result<TrainConfig, String> {
    let model = |layers, hidden, heads, intermediate| ModelSize {
        layers,
        hidden,
        heads,
        intermediate,
        attention: AttentionKind::Softmax,
    };
    match name {
        // Minutes on a 2-core machine with llvmpipe: short, shallow trees and a small model.
        "cpu" => Ok(TrainConfig {
            seed: 1,
            listops: ListOpsConfig {
                max_depth: 4,
                max_args: 5,
                min_length: 8,
                max_length: 40,
                train: 6000,
                valid: 500,
                test: 500,
            },
            model: model(2, 64, 4, 128),
            batch: 32,
            steps: 400,
            lr: 2e-3,
            warmup: 40,
            decay: Decay::Linear,
            weight_decay: 0.01,
            clip_norm: Some(1.0),
            bucket: 16,
            eval_every: 100,
            checkpoint_every: 100,
            precision: Default::default(),
        }),
        // LRA's ListOps: depth 10, up to 10 arguments, 500 < length < 2000, 96K/2K/2K.
        "lra" => Ok(TrainConfig {
            seed: 1,
            listops: ListOpsConfig::default(),
            model: model(4, 256, 4, 1024),
            batch: 32,
            steps: 10_000,
            lr: 5e-4,
            warmup: 1000,
            decay: Decay::Cosine,
            weight_decay: 0.01,
            clip_norm: Some(1.0),
            bucket: 128,
            eval_every: 500,
            checkpoint_every: 500,
            precision: Default::default(),
        }),
        other => Err(format!("unknown preset {other:?} (cpu or lra)")),
    }
}

/// Train a RoFormer on ListOps (Long Range Arena) and show it learns. Options left out keep
/// the preset's values.
#[derive(Parser)]
#[command(name = "train")]
struct Cli {
    /// Starting point (default: cpu on a CPU adapter, lra on a GPU).
    #[arg(long, value_enum)]
    preset: Option<PresetArg>,
    /// Output folder.
    #[arg(long, default_value = "runs/listops")]
    out: PathBuf,
    /// Continue from the output folder's latest checkpoint (its saved settings win).
    #[arg(long)]
    resume: bool,
    /// Seed of the data and the initial weights.
    #[arg(long)]
    seed: Option<u64>,

    /// Deepest tree.
    #[arg(long, help_heading = "Data")]
    depth: Option<usize>,
    /// Most arguments of an operator.
    #[arg(long, help_heading = "Data")]
    args: Option<usize>,
    /// Kept sequences are longer than this.
    #[arg(long, help_heading = "Data")]
    min_len: Option<usize>,
    /// Kept sequences are shorter than this.
    #[arg(long, help_heading = "Data")]
    max_len: Option<usize>,
    /// Training trees.
    #[arg(long, help_heading = "Data")]
    train: Option<usize>,
    /// Validation trees.
    #[arg(long, help_heading = "Data")]
    valid: Option<usize>,
    /// Test trees.
    #[arg(long, help_heading = "Data")]
    test: Option<usize>,

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
}

#[derive(Clone, Copy, ValueEnum)]
enum DecayArg {
    Linear,
    Cosine,
    Constant,
}

fn configure(cli: &Cli, cpu: bool) -> Result<TrainConfig, String> {
    let name = match cli.preset {
        Some(PresetArg::Cpu) => "cpu",
        Some(PresetArg::Lra) => "lra",
        None if cpu => "cpu",
        None => "lra",
    };
    let mut c = preset(name)?;
    fn set<T: Copy>(into: &mut T, given: Option<T>) {
        if let Some(v) = given {
            *into = v;
        }
    }
    set(&mut c.seed, cli.seed);
    let l = &mut c.listops;
    set(&mut l.max_depth, cli.depth);
    set(&mut l.max_args, cli.args);
    set(&mut l.min_length, cli.min_len);
    set(&mut l.max_length, cli.max_len);
    set(&mut l.train, cli.train);
    set(&mut l.valid, cli.valid);
    set(&mut l.test, cli.test);
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
        };
    }
    set(&mut c.batch, cli.batch);
    set(&mut c.steps, cli.steps);
    set(&mut c.lr, cli.lr);
    set(&mut c.warmup, cli.warmup);
    if let Some(d) = cli.decay {
        c.decay = match d {
            DecayArg::Linear => Decay::Linear,
            DecayArg::Cosine => Decay::Cosine,
            DecayArg::Constant => Decay::Constant,
        };
    }
    set(&mut c.weight_decay, cli.weight_decay);
    if let Some(clip) = cli.clip {
        c.clip_norm = (clip > 0.0).then_some(clip);
    }
    set(&mut c.bucket, cli.bucket);
    set(&mut c.eval_every, cli.eval_every);
    set(&mut c.checkpoint_every, cli.checkpoint_every);
    match cli.precision {
        None => {}
        Some(PrecisionArg::F32) => c.precision = TrainPrecision::F32,
        Some(PrecisionArg::Mixed) => c.precision = TrainPrecision::Mixed,
        Some(PrecisionArg::F16) => {
            return Err(
                "--precision f16: training keeps f32 master weights, as AdamW's small \
                        updates vanish in f16; --precision mixed runs the passes in f16"
                    .into(),
            )
        }
    }
    Ok(c)
}

fn main() -> std::process::ExitCode {
    args::exit_code(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli: Cli = args::parse_args();
    let resume = cli.resume;
    let out = cli.out.clone();

    let ctx = Context::new()?;
    let caps = ctx.capabilities();
    let mut config = configure(&cli, caps.is_cpu())?;
    println!(
        "adapter   {} ({:?}{})",
        caps.adapter_name,
        caps.backend,
        if caps.is_cpu() {
            ", CPU: small setting"
        } else {
            ""
        }
    );

    let checkpoint = if resume {
        train::latest_checkpoint(&out)?
    } else {
        None
    };
    if resume && checkpoint.is_none() {
        println!(
            "resume    no checkpoint in {}: starting a new run",
            out.display()
        );
    }
    if let Some(dir) = &checkpoint {
        let state = train::read_state(dir)?;
        if state.config != config {
            println!("resume    using the run's saved settings (command-line settings ignored)");
        }
        config = state.config;
    } else if out.join("checkpoints").exists() {
        std::fs::remove_dir_all(out.join("checkpoints"))?;
    }

    let t0 = Instant::now();
    let data = ListOps::generate(config.listops, config.seed)?;
    let (majority_label, _) = listops::majority(&data.train);
    let baseline = data
        .test
        .iter()
        .filter(|e| e.label == majority_label)
        .count() as f64
        / data.test.len() as f64;
    let mean_len =
        data.train.iter().map(|e| e.tokens.len()).sum::<usize>() as f64 / data.train.len() as f64;
    println!(
        "data      ListOps depth {}, {}-{} args, {} < length < {} (mean {mean_len:.0}): {} train / {} valid / {} test, made in {:.1} s",
        config.listops.max_depth,
        2,
        config.listops.max_args,
        config.listops.min_length,
        config.listops.max_length,
        data.train.len(),
        data.valid.len(),
        data.test.len(),
        t0.elapsed().as_secs_f64()
    );

    let model = match &checkpoint {
        Some(dir) => config.load_model(&ctx, dir)?,
        None => config.new_model(&ctx)?,
    };
    let m = config.model;
    println!(
        "model     RoFormer {} layers, hidden {}, {} heads, ffn {}, {:?} attention: {} parameters",
        m.layers,
        m.hidden,
        m.heads,
        m.intermediate,
        m.attention,
        model.params().count()
    );
    println!(
        "training  {} steps of {} sequences, AdamW lr {} ({} warm-up, {:?} decay), weight decay {}, clip {:?}, {:?} precision",
        config.steps, config.batch, config.lr, config.warmup, config.decay, config.weight_decay, config.clip_norm, config.precision
    );
    let mut trainer = match &checkpoint {
        Some(dir) => Trainer::resume(&ctx, &model, data, dir, &out)?,
        None => Trainer::new(&ctx, &model, data, config.clone(), &out)?,
    };
    if let Some(dir) = &checkpoint {
        println!(
            "resume    from {} (step {})",
            dir.display(),
            trainer.state().step
        );
    }

    let bar = ProgressBar::new(config.steps);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta}]",
    )?);
    bar.set_position(trainer.state().step);
    let (mut loss_ema, mut acc_ema) = (None::<f64>, None::<f64>);
    let mut last_line = Instant::now();
    trainer.run(|event| match event {
        Event::Step(r) => {
            let ema = |e: &mut Option<f64>, x: f64| *e.get_or_insert(x) * 0.95 + x * 0.05;
            let l = ema(&mut loss_ema, r.loss as f64);
            loss_ema = Some(l);
            let a = ema(&mut acc_ema, r.accuracy as f64);
            acc_ema = Some(a);
            bar.set_position(r.step);
            let msg = format!(
                "loss {l:.3} acc {:.1}% {:.0} tok/s",
                100.0 * a,
                r.tokens_per_s
            );
            if bar.is_hidden() && last_line.elapsed().as_secs() >= 10 {
                println!("step {:>6}/{}  {msg}", r.step, config.steps);
                last_line = Instant::now();
            }
            bar.set_message(msg);
        }
        Event::Eval(e) => bar.suspend(|| {
            println!(
                "eval      step {:>6} {:<5} loss {:.4} accuracy {:.2}%",
                e.step,
                e.split,
                e.loss,
                100.0 * e.accuracy
            )
        }),
        Event::Checkpoint { step, path } => {
            bar.suspend(|| println!("saved     step {step:>6} {}", path.display()))
        }
    })?;
    bar.finish_and_clear();

    let state = trainer.state();
    let last = |split: &str| state.evals.iter().rev().find(|e| e.split == split).cloned();
    let (valid, test) = (
        last("valid").expect("evaluated"),
        last("test").expect("evaluated"),
    );
    let tokens_per_s =
        state.steps.iter().map(|s| s.tokens_per_s).sum::<f64>() / state.steps.len().max(1) as f64;
    println!(
        "\nsummary   {} steps in {:.0} s of training, {tokens_per_s:.0} tokens/s",
        state.step, state.seconds
    );
    if state.config.precision == TrainPrecision::Mixed {
        let last_scale = state.steps.iter().rev().find_map(|s| s.loss_scale);
        println!(
            "          mixed precision: {} steps skipped (f16 overflow), last step's loss scale {}",
            state.skipped(),
            last_scale.map_or("?".into(), |s| format!("{s}"))
        );
    }
    println!(
        "          validation accuracy {:.2}%, test accuracy {:.2}%",
        100.0 * valid.accuracy,
        100.0 * test.accuracy
    );
    println!(
        "          majority-class baseline (always {majority_label}) {:.2}% on test: {:+.2} points, {:.1}x",
        100.0 * baseline,
        100.0 * (test.accuracy - baseline),
        test.accuracy / baseline
    );
    let summary = serde_json::json!({
        "adapter": caps.adapter_name,
        "config": state.config,
        "steps": state.step,
        "skipped_steps": state.skipped(),
        "train_seconds": state.seconds,
        "tokens_per_s": tokens_per_s,
        "valid_accuracy": valid.accuracy,
        "test_accuracy": test.accuracy,
        "majority_label": majority_label,
        "majority_baseline": baseline,
    });
    roformer_wgpu::io::write_atomic(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    match plot(&out.join("curves.png"), state, baseline) {
        Ok(()) => println!(
            "          curves in {}, checkpoints in {}",
            out.join("curves.png").display(),
            out.join("checkpoints").display()
        ),
        Err(e) => println!("          (no plot: {e})"),
    }
    Ok(())
}

/// Loss and accuracy against the step: training (smoothed) and validation, and the
/// majority-class baseline.
fn plot(path: &Path, state: &TrainState, baseline: f64) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let text = fonts::register_sans_serif();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let steps = state.config.steps.max(1) as f64;
    let smooth = |f: &dyn Fn(&train::StepRecord) -> f64| -> Vec<(f64, f64)> {
        let mut e = None::<f64>;
        state
            .steps
            .iter()
            .map(|s| {
                let v = e.map_or(f(s), |p| 0.95 * p + 0.05 * f(s));
                e = Some(v);
                (s.step as f64, v)
            })
            .collect()
    };
    let valid = |f: &dyn Fn(&EvalRecord) -> f64| -> Vec<(f64, f64)> {
        state
            .evals
            .iter()
            .filter(|e| e.split == "valid")
            .map(|e| (e.step as f64, f(e)))
            .collect()
    };
    let train_loss = smooth(&|s| s.loss as f64);
    let max_loss = train_loss.iter().map(|p| p.1).fold(2.5f64, f64::max);
    for (area, title, train_series, valid_series, y_max, base) in [
        (
            &left,
            "loss",
            train_loss,
            valid(&|e| e.loss),
            max_loss * 1.05,
            None,
        ),
        (
            &right,
            "accuracy",
            smooth(&|s| s.accuracy as f64),
            valid(&|e| e.accuracy),
            1.0,
            Some(baseline),
        ),
    ] {
        let mut b = ChartBuilder::on(area);
        b.margin(15);
        if text {
            b.caption(format!("ListOps {title}"), ("sans-serif", 22))
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
        let legend = |c: Option<&str>| c.filter(|_| text).map(str::to_string);
        let train_line = chart.draw_series(LineSeries::new(train_series, BLUE.stroke_width(2)))?;
        if let Some(l) = legend(Some("train (smoothed)")) {
            train_line
                .label(l)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        let valid_line =
            chart.draw_series(LineSeries::new(valid_series.clone(), RED.stroke_width(2)))?;
        if let Some(l) = legend(Some("validation")) {
            valid_line
                .label(l)
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
