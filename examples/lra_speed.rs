//! Training speed and memory against sequence length, as the Long Range Arena paper's
//! Table 2 measures them: its byte-level text classification model (vocabulary 256, 4 layers,
//! hidden 256, 4 heads, feed-forward 1024), batch 32, lengths 1K to 4K (here up to 16K), for
//! every attention kind the library has ([`KINDS`]): materialised and fused softmax, linear
//! attention, sliding-window local attention and Performer's random features.
//!
//!     cargo run --release --example lra_speed [-- --lengths 1024,2048,4096 --batch 32 --steps 5
//!         --kinds softmax,fused,linear,local,performer --window 128 --globals 1 --features 256
//!         --rounds 1
//!         --out runs/lra_speed --plot FILE.png]
//!
//! Where a batch does not fit (the adapter's binding or memory limits), it is halved until it
//! does, and the table says so. Speed is training examples per second (steps/s × batch), GPU
//! time from timestamp queries when the adapter has them; memory is the planned step's peak
//! (parameters, gradients, optimizer state, activations). With `--rounds N` every kind is
//! measured N times, interleaved (kind by kind, round by round), and the median is reported:
//! on a shared machine only ratios within one run mean anything. Prints markdown tables with
//! each value's ratio to materialised softmax and how memory and time grow with the length,
//! and writes `results.json` and a plot. On a CPU adapter the model is small (2 layers,
//! hidden 64) and the batch 2.

use roformer_lab::args;
use roformer_lab::fonts;

use std::time::Instant;

use clap::builder::TypedValueParser;
use clap::Parser;

use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::ops::attention::flash::{self, FlashKernels};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::Context;

/// One attention kind the benchmark measures.
struct Kind {
    /// Its name on the command line.
    name: &'static str,
    /// Its label in the tables and the plot.
    label: &'static str,
    /// The config's `attention_kind`.
    attention_kind: &'static str,
    /// Further config keys the kind takes, at a length (`, "key": value` each).
    keys: fn(&Cli, usize) -> String,
    /// The fused attention kernels it runs with: every kind but `fused-tiled` lets the
    /// adapter choose.
    kernels: FlashKernels,
}

impl Kind {
    const fn new(name: &'static str, label: &'static str, attention_kind: &'static str) -> Kind {
        Kind {
            name,
            label,
            attention_kind,
            keys: |_, _| String::new(),
            kernels: FlashKernels::Auto,
        }
    }

    const fn with_keys(self, keys: fn(&Cli, usize) -> String) -> Kind {
        Kind { keys, ..self }
    }

    const fn with_kernels(self, kernels: FlashKernels) -> Kind {
        Kind { kernels, ..self }
    }

    /// The config's keys for this kind at `length`.
    fn config(&self, cli: &Cli, length: usize) -> String {
        format!(
            r#""attention_kind": "{}"{}"#,
            self.attention_kind,
            (self.keys)(cli, length)
        )
    }
}

/// Local attention's window and global tokens, as the command line sets them.
fn local_keys(cli: &Cli, length: usize) -> String {
    format!(
        r#", "attention_window": {}, "global_tokens": {}"#,
        cli.window.clamp(1, length),
        cli.globals.min(length)
    )
}

/// Performer's random features, as the command line sets them.
fn performer_keys(cli: &Cli, _length: usize) -> String {
    format!(r#", "performer_features": {}"#, cli.features)
}

/// Every kind, in table order; the first is the baseline of the ratios. A kind joins here,
/// with one line.
const KINDS: &[Kind] = &[
    Kind::new("softmax", "materialised softmax", "softmax"),
    Kind::new("fused", "fused softmax", "fused_softmax"),
    Kind::new("linear", "linear (eq. 19)", "linear"),
    Kind::new("local", "local window", "local").with_keys(local_keys),
    Kind::new("performer", "performer (FAVOR+)", "performer").with_keys(performer_keys),
    // Not in the default list: fused softmax on the tiled kernels whatever the adapter (a
    // GPU's choice; on a CPU adapter the kernels it ran before issue 32), to compare.
    Kind::new(
        "fused-tiled",
        "fused softmax, tiled kernels",
        "fused_softmax",
    )
    .with_kernels(FlashKernels::Tiled),
];

fn kind_named(name: &str) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.name == name)
        .expect("clap checked the name")
}

/// Training speed and peak memory against sequence length (LRA Table 2's setting).
/// Defaults are small on a CPU adapter.
#[derive(Parser)]
#[command(name = "lra_speed")]
struct Cli {
    /// Sequence lengths [default: 1024,2048,3072,4096,8192,16384; 1024,2048,4096 on a CPU].
    #[arg(long, value_delimiter = ',')]
    lengths: Option<Vec<usize>>,
    /// Sequences per step (halved where it does not fit) [default: 32; 2 on a CPU].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// Timed steps per point (the median is reported) [default: 5; 2 on a CPU].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Attention kinds to measure [default: every kind but fused-tiled].
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(KINDS.iter().map(|k| k.name)))]
    kinds: Option<Vec<String>>,
    /// Times each kind is measured, interleaved; the median is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Attention heads, a power of two that divides the hidden size [default: 4, as LRA's
    /// model]. Fewer heads make materialised softmax's `[B, H, T, T]` tensors smaller: on a
    /// CPU adapter (hidden 64) one head of 4K fits a 128 MiB binding. The fused and local
    /// kernels take heads up to 128 wide (hidden 256 on a GPU: at least 2 heads).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["1", "2", "4", "8", "16"])
        .map(|s| s.parse::<usize>().unwrap_or(4)))]
    heads: Option<usize>,
    /// Local attention's window w (each side of a query).
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Local attention's global tokens g.
    #[arg(long, default_value_t = 1)]
    globals: usize,
    /// Performer attention's random features m.
    #[arg(long, default_value_t = 256)]
    features: usize,
    /// Output folder (results.json; the plot unless --plot says where).
    #[arg(long, default_value = "runs/lra_speed")]
    out: std::path::PathBuf,
    /// Where to write the plot (PNG) [default: OUT/speed_memory.png].
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Measure nothing: the tables and plot of an earlier run's results.json.
    #[arg(long)]
    from: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Measurement {
    kind: &'static str,
    length: usize,
    round: usize,
    batch: usize,
    examples_per_s: Option<f64>,
    step_ms: Option<f64>,
    peak_bytes: Option<u64>,
    error: Option<String>,
}

fn measure(
    ctx: &Context,
    config: &RoFormerConfig,
    kind: &'static Kind,
    (length, round): (usize, usize),
    batch: usize,
    steps: usize,
) -> Measurement {
    flash::set_kernels(ctx, kind.kernels);
    let mut b = batch;
    let mut last_error = None;
    while b >= 1 {
        match run_one(ctx, config, length, b, steps) {
            Ok((ms, peak)) => {
                return Measurement {
                    kind: kind.label,
                    length,
                    round,
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
        kind: kind.label,
        length,
        round,
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
    Ok((median(&mut times), session.memory().peak()))
}

/// The median (of an even count, the mean of the middle two); sorts `xs`.
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    (xs[(n - 1) / 2] + xs[n / 2]) / 2.0
}

/// One kind at one length over the rounds: the median speed, the batch and peak memory
/// (the same every round), the rounds' range of speeds.
struct Point {
    examples_per_s: Option<f64>,
    range: Option<(f64, f64)>,
    batch: usize,
    peak_bytes: Option<u64>,
}

fn point(results: &[Measurement], label: &str, length: usize) -> Point {
    let runs: Vec<&Measurement> = results
        .iter()
        .filter(|m| m.kind == label && m.length == length)
        .collect();
    let mut speeds: Vec<f64> = runs.iter().filter_map(|m| m.examples_per_s).collect();
    let fitted = runs.iter().find(|m| m.examples_per_s.is_some());
    Point {
        examples_per_s: (!speeds.is_empty()).then(|| median(&mut speeds)),
        range: (speeds.len() > 1).then(|| (speeds[0], speeds[speeds.len() - 1])),
        batch: fitted.map_or(0, |m| m.batch),
        peak_bytes: fitted.and_then(|m| m.peak_bytes),
    }
}

fn main() -> std::process::ExitCode {
    args::exit_code(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli: Cli = args::parse_args();
    if let Some(file) = &cli.from {
        return replot(&cli, file);
    }
    let ctx = Context::new()?;
    let caps = ctx.capabilities().clone();
    let cpu = caps.is_cpu();
    let lengths = cli.lengths.clone().unwrap_or_else(|| {
        if cpu {
            vec![1024, 2048, 4096]
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
    let heads = cli.heads.unwrap_or(heads);
    let kinds: Vec<&'static Kind> = match &cli.kinds {
        Some(names) => {
            let mut kinds: Vec<&'static Kind> = Vec::new();
            for name in names {
                let kind = kind_named(name);
                if !kinds.iter().any(|k| k.name == kind.name) {
                    kinds.push(kind);
                }
            }
            kinds
        }
        None => KINDS
            .iter()
            .filter(|k| k.kernels == FlashKernels::Auto)
            .collect(),
    };
    let rounds = cli.rounds as usize;
    let out = cli.out.clone();
    std::fs::create_dir_all(&out)?;
    println!(
        "adapter {} ({:?}); model: byte-level, {layers} layers, hidden {hidden}, {heads} heads, ffn {ffn}; batch {batch}; median of {steps} steps ({}){}; local: window {}, {} global tokens; performer: {} features",
        caps.adapter_name,
        caps.backend,
        if caps.timestamp_query { "GPU time from timestamps" } else { "wall time" },
        if rounds > 1 { format!(", median of {rounds} interleaved rounds") } else { String::new() },
        cli.window,
        cli.globals,
        cli.features
    );
    let mut results: Vec<Measurement> = Vec::new();
    for &length in &lengths {
        for round in 0..rounds {
            for &kind in &kinds {
                let config = RoFormerConfig::from_json(
                    &format!(
                        r#"{{"vocab_size": 256, "hidden_size": {hidden}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
                            "intermediate_size": {ffn}, "max_position_embeddings": {length}, "num_labels": 2, {}}}"#,
                        kind.config(&cli, length)
                    ),
                    "lra_speed",
                )?;
                // A shape that did not fit in round 0 does not fit later either.
                let refused = results
                    .iter()
                    .any(|m| m.kind == kind.label && m.length == length && m.batch == 0);
                if refused {
                    continue;
                }
                let m = measure(&ctx, &config, kind, (length, round), batch, steps);
                let label = kind.label;
                match (&m.examples_per_s, &m.error) {
                    (Some(e), _) => eprintln!(
                        "{label:30} T={length:>6} round {round} batch {:>3}: {e:.3} examples/s, peak {:.1} MiB",
                        m.batch,
                        m.peak_bytes.unwrap() as f64 / 1048576.0
                    ),
                    (None, err) => eprintln!(
                        "{label:30} T={length:>6}: does not run ({})",
                        err.as_deref().unwrap_or("?")
                    ),
                }
                results.push(m);
            }
        }
    }
    flash::set_kernels(&ctx, FlashKernels::Auto);
    println!("\n{}", tables(&results, &kinds, &lengths, batch));
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "adapter": caps.adapter_name, "backend": format!("{:?}", caps.backend), "batch": batch, "steps": steps,
            "rounds": rounds,
            "model": {"layers": layers, "hidden": hidden, "heads": heads, "ffn": ffn, "vocab": 256},
            "timestamps": caps.timestamp_query, "results": results,
        }))?,
    )?;
    let plot_path = cli.plot.clone().unwrap_or(out.join("speed_memory.png"));
    plot(&plot_path, &results, &kinds, &lengths)?;
    println!(
        "wrote {} and {}",
        out.join("results.json").display(),
        plot_path.display()
    );
    Ok(())
}

/// The tables and plot of an earlier run, from its results.json.
fn replot(cli: &Cli, file: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let bad = || format!("{}: not an lra_speed results.json", file.display());
    let batch = json["batch"].as_u64().ok_or_else(bad)? as usize;
    let (mut kinds, mut lengths, mut results) =
        (Vec::<&'static Kind>::new(), Vec::new(), Vec::new());
    for m in json["results"].as_array().ok_or_else(bad)? {
        let label = m["kind"].as_str().ok_or_else(bad)?;
        let kind = KINDS
            .iter()
            .find(|k| k.label == label)
            .ok_or_else(|| format!("{}: unknown kind {label:?}", file.display()))?;
        let length = m["length"].as_u64().ok_or_else(bad)? as usize;
        if !kinds.iter().any(|k| k.name == kind.name) {
            kinds.push(kind);
        }
        if !lengths.contains(&length) {
            lengths.push(length);
        }
        results.push(Measurement {
            kind: kind.label,
            length,
            round: m["round"].as_u64().unwrap_or(0) as usize,
            batch: m["batch"].as_u64().ok_or_else(bad)? as usize,
            examples_per_s: m["examples_per_s"].as_f64(),
            step_ms: m["step_ms"].as_f64(),
            peak_bytes: m["peak_bytes"].as_u64(),
            error: m["error"].as_str().map(str::to_string),
        });
    }
    println!("{}", tables(&results, &kinds, &lengths, batch));
    let plot_path = cli.plot.clone().unwrap_or(cli.out.join("speed_memory.png"));
    plot(&plot_path, &results, &kinds, &lengths)?;
    println!("wrote {}", plot_path.display());
    Ok(())
}

fn length_name(l: usize) -> String {
    if l % 1024 == 0 {
        format!("{}K", l / 1024)
    } else {
        l.to_string()
    }
}

/// The speed and memory tables, LRA style (each value with its ratio to the first kind's at
/// that length), and how each kind's memory and time grow with the length.
fn tables(
    results: &[Measurement],
    kinds: &[&'static Kind],
    lengths: &[usize],
    batch: usize,
) -> String {
    let baseline = KINDS[0].label;
    let header: String = lengths
        .iter()
        .map(|&l| format!(" {} |", length_name(l)))
        .collect();
    let rule: String = lengths.iter().map(|_| "---|").collect();
    let mut speed = format!("| examples/s (ratio to {baseline}) |{header}\n|---|{rule}\n");
    let mut memory = format!("| peak memory MiB (ratio) |{header}\n|---|{rule}\n");
    let mut growth = String::from(
        "| growth with the length (log-log slope: 1 linear, 2 quadratic) | memory | time per example |\n|---|---|---|\n",
    );
    for kind in kinds {
        let label = kind.label;
        speed.push_str(&format!("| {label} |"));
        memory.push_str(&format!("| {label} |"));
        for &length in lengths {
            let p = point(results, label, length);
            let base = point(results, baseline, length);
            let note = if p.batch != batch && p.batch > 0 {
                format!(" (batch {})", p.batch)
            } else {
                String::new()
            };
            match (p.examples_per_s, p.peak_bytes) {
                (Some(e), Some(bytes)) => {
                    let rs = base
                        .examples_per_s
                        .map_or("-".to_string(), |b| format!("{:.2}x", e / b));
                    let rm = base.peak_bytes.map_or("-".to_string(), |b| {
                        format!("{:.2}x", bytes as f64 / b as f64)
                    });
                    let range = p.range.map_or(String::new(), |(lo, hi)| {
                        format!(" [{}-{}]", three_digits(lo), three_digits(hi))
                    });
                    speed.push_str(&format!(" {}{range} ({rs}){note} |", three_digits(e)));
                    memory.push_str(&format!(
                        " {} ({rm}){note} |",
                        three_digits(bytes as f64 / 1048576.0)
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
        // The slope between the shortest and the longest length that ran at the full batch.
        let fitted: Vec<(usize, Point)> = lengths
            .iter()
            .map(|&l| (l, point(results, label, l)))
            .filter(|(_, p)| p.batch == batch && p.examples_per_s.is_some())
            .collect();
        if let (Some((l0, p0)), Some((l1, p1))) = (fitted.first(), fitted.last()) {
            if l1 > l0 {
                let x = (*l1 as f64 / *l0 as f64).ln();
                let slope = |a: f64, b: f64| format!("{:.2}", (b / a).ln() / x);
                growth.push_str(&format!(
                    "| {label}, {}-{} | {} | {} |\n",
                    length_name(*l0),
                    length_name(*l1),
                    slope(p0.peak_bytes.unwrap() as f64, p1.peak_bytes.unwrap() as f64),
                    slope(
                        1.0 / p0.examples_per_s.unwrap(),
                        1.0 / p1.examples_per_s.unwrap()
                    ),
                ));
            }
        }
    }
    if growth.lines().count() > 2 {
        format!("{speed}\n{memory}\n{growth}")
    } else {
        format!("{speed}\n{memory}")
    }
}

fn plot(
    path: &std::path::Path,
    results: &[Measurement],
    kinds: &[&'static Kind],
    lengths: &[usize],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let text = crate::fonts::register_sans_serif();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    // x is log2 of the length, so each doubling is one tick.
    let (lo, hi) = (
        (*lengths.iter().min().unwrap() as f64).log2(),
        (*lengths.iter().max().unwrap() as f64).log2(),
    );
    let colours = [
        RGBColor(228, 26, 28),
        RGBColor(55, 126, 184),
        RGBColor(77, 175, 74),
        RGBColor(152, 78, 163),
        RGBColor(255, 127, 0),
        RGBColor(166, 86, 40),
        RGBColor(80, 80, 80),
    ];
    for (area, title, value) in [
        (
            &left,
            "ms per training example",
            &(|p: &Point| p.examples_per_s.map(|e| 1e3 / e)) as &dyn Fn(&Point) -> Option<f64>,
        ),
        (&right, "peak memory (MiB)", &|p: &Point| {
            p.peak_bytes.map(|b| b as f64 / 1048576.0)
        }),
    ] {
        let series: Vec<Vec<(f64, f64)>> = kinds
            .iter()
            .map(|k| {
                lengths
                    .iter()
                    .filter_map(|&l| {
                        value(&point(results, k.label, l)).map(|v| ((l as f64).log2(), v))
                    })
                    .collect()
            })
            .collect();
        let ys: Vec<f64> = series.iter().flatten().map(|p| p.1).collect();
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
        let mut chart =
            b.build_cartesian_2d(lo - 0.3..hi + 0.3, (ymin * 0.8..ymax * 1.25).log_scale())?;
        let ticks = |x: &f64| {
            if (x - x.round()).abs() < 1e-6 {
                length_name(2f64.powf(x.round()) as usize)
            } else {
                String::new()
            }
        };
        let values = |y: &f64| {
            if *y >= 100.0 {
                format!("{y:.0}")
            } else {
                three_digits(*y)
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE).y_label_formatter(&values);
        if text {
            mesh.x_desc("sequence length")
                .x_labels((hi - lo).round() as usize + 1)
                .x_label_formatter(&ticks);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        for (i, (kind, pts)) in kinds.iter().zip(&series).enumerate() {
            let c = colours[i % colours.len()];
            let s = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            if text {
                s.label(kind.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
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
