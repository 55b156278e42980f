//! Training speed and memory against sequence length, as the Long Range Arena paper's
//! Table 2 measures them: byte-level input (vocabulary 256), 4 layers, hidden 256, 4 heads,
//! feed-forward 1024, batch 32, for materialised softmax, fused softmax, linear attention,
//! sliding-window local attention and Performer's random features.
//!
//!     cargo run --release --example lra_speed [-- --lengths 1024,2048,4096 --batch 32 --steps 5
//!         --kinds softmax,fused,linear,local,performer --window 128 --globals 1 --features 256
//!         --out runs/lra_speed]
//!
//! Where a batch does not fit (the adapter's binding or memory limits), it is halved until it
//! does, and the table says so. Speed is training examples per second (steps/s × batch), GPU
//! time from timestamp queries when the adapter has them; memory is the planned step's peak
//! (parameters, gradients, optimizer state, activations). Prints markdown tables with each
//! column's ratio to materialised softmax, and writes `results.json` and `speed_memory.png`.
//! On a CPU adapter the default lengths and model are small.

use roformer_lab::args;
use roformer_lab::fonts;

use std::time::Instant;

use clap::{Parser, ValueEnum};

use roformer_wgpu::model::{AttentionKind, Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::Context;

/// Training speed and peak memory against sequence length (LRA Table 2's setting).
/// Defaults are small on a CPU adapter.
#[derive(Parser)]
#[command(name = "lra_speed")]
struct Cli {
    /// Sequence lengths [default: 1024,2048,3072,4096,8192,16384; 64,128,256 on a CPU].
    #[arg(long, value_delimiter = ',')]
    lengths: Option<Vec<usize>>,
    /// Sequences per step (halved where it does not fit) [default: 32; 2 on a CPU].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// Timed steps per point (the median is reported) [default: 5; 2 on a CPU].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Attention kinds to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "softmax,fused,linear"
    )]
    kinds: Vec<Kind>,
    /// Local attention's window w (each side of a query).
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Local attention's global tokens g.
    #[arg(long, default_value_t = 1)]
    globals: usize,
    /// Performer attention's random features m.
    #[arg(long, default_value_t = 256)]
    features: usize,
    /// Output folder.
    #[arg(long, default_value = "runs/lra_speed")]
    out: std::path::PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    /// Materialised softmax (HF's).
    Softmax,
    /// Fused softmax.
    Fused,
    /// Linear attention (RoFormer eq. 19).
    Linear,
    /// Sliding-window softmax attention with global tokens (`--window`, `--globals`).
    Local,
    /// Performer's FAVOR+ random features (`--features`).
    Performer,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Measurement {
    kind: &'static str,
    length: usize,
    batch: usize,
    examples_per_s: Option<f64>,
    step_ms: Option<f64>,
    peak_bytes: Option<u64>,
    error: Option<String>,
}

fn kind_of(kind: Kind) -> (AttentionKind, &'static str) {
    match kind {
        Kind::Softmax => (AttentionKind::Softmax, "materialised softmax"),
        Kind::Fused => (AttentionKind::FusedSoftmax, "fused softmax"),
        Kind::Linear => (AttentionKind::Linear, "linear (eq. 19)"),
        Kind::Local => (AttentionKind::Local, "local window"),
        Kind::Performer => (AttentionKind::Performer, "performer"),
    }
}

fn measure(
    ctx: &Context,
    config: &RoFormerConfig,
    kind: &'static str,
    length: usize,
    batch: usize,
    steps: usize,
) -> Measurement {
    let mut b = batch;
    let mut last_error = None;
    while b >= 1 {
        match run_one(ctx, config, length, b, steps) {
            Ok((ms, peak)) => {
                return Measurement {
                    kind,
                    length,
                    batch: b,
                    examples_per_s: Some(b as f64 / ms * 1e3),
                    step_ms: Some(ms),
                    peak_bytes: Some(peak),
                    error: None,
                }
            }
            Err(e) => {
                last_error = Some(e.to_string());
                b /= 2;
            }
        }
    }
    Measurement {
        kind,
        length,
        batch: 0,
        examples_per_s: None,
        step_ms: None,
        peak_bytes: None,
        error: last_error,
    }
}

/// Median step time (ms) and planned peak memory.
fn run_one(
    ctx: &Context,
    config: &RoFormerConfig,
    length: usize,
    batch: usize,
    steps: usize,
) -> roformer_wgpu::Result<(f64, u64)> {
    let model = RoFormer::new(ctx, config.clone(), Head::Classification)?;
    model.init_random(ctx, 0)?;
    let mut session = model.session(ctx, batch, length, Mode::Train(TrainOptions::default()))?;
    let n = batch * length;
    session.set_batch(
        ctx,
        &Batch {
            input_ids: (0..n).map(|i| ((i * 2654435761) % 256) as u32).collect(),
            labels: (0..batch).map(|i| (i % 2) as i32).collect(),
            ..Default::default()
        },
    )?;
    session.run(ctx)?; // warm-up: pipelines, first allocation touches
    let mut times = Vec::new();
    for _ in 0..steps {
        let t0 = Instant::now();
        let m = session.run(ctx)?;
        times.push(
            m.gpu
                .map_or(t0.elapsed().as_secs_f64() * 1e3, |g| g.as_secs_f64() * 1e3),
        );
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((times[times.len() / 2], session.memory().peak()))
}

fn main() -> std::process::ExitCode {
    args::exit_code(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli: Cli = args::parse_args();
    let ctx = Context::new()?;
    let caps = ctx.capabilities().clone();
    let cpu = caps.is_cpu();
    let lengths = cli.lengths.clone().unwrap_or_else(|| {
        if cpu {
            vec![64, 128, 256]
        } else {
            vec![1024, 2048, 3072, 4096, 8192, 16384]
        }
    });
    let batch = cli.batch.map_or(if cpu { 2 } else { 32 }, |b| b as usize);
    let steps = cli.steps.map_or(if cpu { 2 } else { 5 }, |s| s as usize);
    let (layers, hidden, heads, ffn) = if cpu {
        (2, 64, 4, 256)
    } else {
        (4, 256, 4, 1024)
    };
    let kinds = cli.kinds.clone();
    let out = cli.out.clone();
    std::fs::create_dir_all(&out)?;
    println!(
        "adapter {} ({:?}); model: byte-level, {layers} layers, hidden {hidden}, {heads} heads, ffn {ffn}; batch {batch}; median of {steps} steps ({}); local: window {}, {} global tokens; performer: {} features",
        caps.adapter_name,
        caps.backend,
        if caps.timestamp_query { "GPU time from timestamps" } else { "wall time" },
        cli.window,
        cli.globals,
        cli.features
    );
    let mut results: Vec<Measurement> = Vec::new();
    for &kind in &kinds {
        let (attention, label) = kind_of(kind);
        for &length in &lengths {
            let config = RoFormerConfig::from_json(
                &format!(
                    r#"{{"vocab_size": 256, "hidden_size": {hidden}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
                        "intermediate_size": {ffn}, "max_position_embeddings": {length}, "num_labels": 2,
                        "attention_kind": "{}"{}}}"#,
                    match attention {
                        AttentionKind::Softmax => "softmax",
                        AttentionKind::FusedSoftmax => "fused_softmax",
                        AttentionKind::Linear => "linear",
                        AttentionKind::Local => "local",
                        AttentionKind::Performer => "performer",
                    },
                    if attention == AttentionKind::Local {
                        format!(
                            r#", "attention_window": {}, "global_tokens": {}"#,
                            cli.window.clamp(1, length),
                            cli.globals.min(length)
                        )
                    } else if attention == AttentionKind::Performer {
                        format!(r#", "performer_features": {}"#, cli.features)
                    } else {
                        String::new()
                    }
                ),
                "lra_speed",
            )?;
            let m = measure(&ctx, &config, label, length, batch, steps);
            match (&m.examples_per_s, &m.error) {
                (Some(e), _) => eprintln!(
                    "{label:22} T={length:>6} batch {:>3}: {e:.2} examples/s, peak {:.1} MiB",
                    m.batch,
                    m.peak_bytes.unwrap() as f64 / 1048576.0
                ),
                (None, err) => eprintln!(
                    "{label:22} T={length:>6}: does not run ({})",
                    err.as_deref().unwrap_or("?")
                ),
            }
            results.push(m);
        }
    }
    // Tables, LRA style: each value with its ratio to materialised softmax.
    let baseline = |length: usize| {
        results
            .iter()
            .find(|m| m.kind == "materialised softmax" && m.length == length)
    };
    let header: String = lengths
        .iter()
        .map(|l| {
            format!(
                " {} |",
                if l % 1024 == 0 {
                    format!("{}K", l / 1024)
                } else {
                    l.to_string()
                }
            )
        })
        .collect();
    let rule: String = lengths.iter().map(|_| "---|").collect();
    let mut speed = format!("| examples/s (ratio) |{header}\n|---|{rule}\n");
    let mut memory = format!("| peak memory MiB (ratio) |{header}\n|---|{rule}\n");
    for &kind in &kinds {
        let label = kind_of(kind).1;
        speed.push_str(&format!("| {label} |"));
        memory.push_str(&format!("| {label} |"));
        for &length in &lengths {
            let m = results
                .iter()
                .find(|m| m.kind == label && m.length == length)
                .unwrap();
            let base = baseline(length);
            let note = if m.batch != batch && m.batch > 0 {
                format!(" (batch {})", m.batch)
            } else {
                String::new()
            };
            match (m.examples_per_s, m.peak_bytes) {
                (Some(e), Some(p)) => {
                    let rs = base
                        .and_then(|b| b.examples_per_s)
                        .map_or("-".to_string(), |b| format!("{:.2}x", e / b));
                    let rm = base
                        .and_then(|b| b.peak_bytes)
                        .map_or("-".to_string(), |b| format!("{:.2}x", p as f64 / b as f64));
                    speed.push_str(&format!(" {} ({rs}){note} |", three_digits(e)));
                    memory.push_str(&format!(
                        " {} ({rm}){note} |",
                        three_digits(p as f64 / 1048576.0)
                    ));
                }
                _ => {
                    speed.push_str(" does not fit |");
                    memory.push_str(" does not fit |");
                }
            }
        }
        speed.push('\n');
        memory.push('\n');
    }
    println!("\n{speed}\n{memory}");
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "adapter": caps.adapter_name, "backend": format!("{:?}", caps.backend), "batch": batch, "steps": steps,
            "model": {"layers": layers, "hidden": hidden, "heads": heads, "ffn": ffn, "vocab": 256},
            "timestamps": caps.timestamp_query, "results": results,
        }))?,
    )?;
    plot(&out.join("speed_memory.png"), &results, &kinds, &lengths)?;
    println!(
        "wrote {} and {}",
        out.join("results.json").display(),
        out.join("speed_memory.png").display()
    );
    Ok(())
}

fn plot(
    path: &std::path::Path,
    results: &[Measurement],
    kinds: &[Kind],
    lengths: &[usize],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let text = crate::fonts::register_sans_serif();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let (lo, hi) = (
        *lengths.iter().min().unwrap() as f64,
        *lengths.iter().max().unwrap() as f64,
    );
    let colours = [RED, BLUE, GREEN];
    for (area, title, value) in [
        (
            &left,
            "ms per example",
            &(|m: &Measurement| m.examples_per_s.map(|e| 1e3 / e))
                as &dyn Fn(&Measurement) -> Option<f64>,
        ),
        (&right, "peak memory (MiB)", &|m: &Measurement| {
            m.peak_bytes.map(|p| p as f64 / 1048576.0)
        }),
    ] {
        let ys: Vec<f64> = results.iter().filter_map(value).collect();
        let (ymin, ymax) = (
            ys.iter().cloned().fold(f64::MAX, f64::min).max(1e-6),
            ys.iter().cloned().fold(0.0, f64::max).max(1e-5),
        );
        let mut b = ChartBuilder::on(area);
        b.margin(15);
        if text {
            b.caption(title, ("sans-serif", 22))
                .x_label_area_size(35)
                .y_label_area_size(55);
        }
        let mut chart = b.build_cartesian_2d(
            (lo * 0.9..hi * 1.1).log_scale(),
            (ymin * 0.8..ymax * 1.25).log_scale(),
        )?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("sequence length");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        for (i, &kind) in kinds.iter().enumerate() {
            let label = kind_of(kind).1;
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|m| m.kind == label)
                .filter_map(|m| value(m).map(|v| (m.length as f64, v)))
                .collect();
            let c = colours[i % 3];
            let s = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            if text {
                s.label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
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

/// 3 significant digits (at least one decimal): 0.0412, 4.41, 338.2.
fn three_digits(x: f64) -> String {
    let decimals = if x > 0.0 {
        (2 - x.log10().floor() as i32).clamp(1, 6)
    } else {
        1
    };
    format!("{x:.*}", decimals as usize)
}
