//! Benchmarks.
//!
//!     cargo run --release --example bench [-- kernels] [--out runs/bench] [--torch FILE]
//!     cargo run --release --example bench -- step [--layers 12] [--hidden 768] [--heads 12]
//!         [--intermediate 3072] [--vocab 32000] [--batch 8] [--seq 512] [--steps 5]
//!         [--attention softmax|fused|linear|performer] [--features 256] [--causal]
//!         [--precision f32|fast|mixed] [--profile]
//!         [--model h200|rtx4090|m3-max|local] [--profile-reps 5] [--profile-csv FILE]
//!         [--ranks 1,8,64]
//!
//! `kernels` (the default) measures the adapter's FP32 rate and copy bandwidth, then every
//! kernel family at a representative shape (large on a GPU, small on a CPU adapter), and
//! prints a table: kernel, shape, GPU time, GFLOP/s or GB/s, and the fraction of the measured
//! ceiling; it writes `bench.json` and `bench.png`. With `--torch FILE` (the output of
//! `tools/bench_torch_kernels.py`, run on the same device) it adds each kernel's speed as a
//! fraction of PyTorch's at the same shape. Then it times a training step (on a GPU
//! the named shape of issue 6: 12 layers, hidden 768, T 512, batch 8).
//!
//! `step` prints a training step's plan (dispatches and submissions per step, peak memory),
//! the time to build it, the first step (pipelines compile lazily on some drivers), the host
//! time to encode and submit a step, the GPU time per step and tokens per second. `--model`
//! predicts the step with the cost model (`roformer_lab::cost_model`) on a named GPU, or on
//! this CPU adapter from its measured figures (`local`); with `--profile` as well, each
//! dispatch's prediction is held against its measured time. `--ranks` adds data-parallel
//! training's prediction for those counts of GPUs: the gradients' ring all-reduce over NVLink
//! and over InfiniBand, GPU to GPU and staged through the host as this library's MPI
//! reduction does it, the step and the scaling efficiency (`cost_model::data_parallel`).
//!
//!     cargo run --release --example bench -- infer [the model options of step] [--batch 8] [--seq 512]
//!
//! `infer` runs the inference encoder (weights only, masked-LM head; causal-LM with
//! `--causal`) on one request of that
//! shape: its memory report beside the device's own count of buffer memory, and the time of
//! a request from submission to results on the host.
//!
//!     cargo run --release --example bench -- train-data --config C --tokenizer DIR --train FILE.txt
//!         [--task fill-mask] [--streaming] [--max-length 32] [--batch 32] [--steps 10] [--rounds 3]
//!
//! `train-data` times the trainer's updates with their batches prepared on the training
//! thread and on a background thread, in alternating rounds (`train_data.rs`).

use roformer_lab::args;
use roformer_lab::fonts;
use roformer_lab::inputs;

use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};

use roformer_lab::cost_model;
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::ops::matmul::{self, coop, MatmulPrecision};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::timing;
use roformer_wgpu::{Context, DType};

mod kernels;
#[cfg(feature = "text")]
mod text;
#[cfg(feature = "text")]
mod train_data;

/// Benchmarks: kernels (the default), a training step, an inference request.
#[derive(Parser)]
#[command(name = "bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    kernels: KernelArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Every kernel family at a representative shape, against the adapter's ceilings (and
    /// PyTorch's times with --torch), then a training step.
    Kernels(KernelArgs),
    /// A training step's plan, memory, first-step breakdown and speed.
    Step(ModelArgs),
    /// The inference encoder on one request: memory and latency.
    Infer(ModelArgs),
    /// Generation: new tokens per second at several positions, over the key/value cache and
    /// recomputing; the cache's memory.
    #[cfg(feature = "text")]
    Generate(text::GenerateArgs),
    /// Sentence embeddings of texts of mixed lengths, batched in order and sorted by length.
    #[cfg(feature = "text")]
    Embed(text::EmbedArgs),
    /// The trainer's time per update with batches prepared on the training thread and on a
    /// background thread, interleaved.
    #[cfg(feature = "text")]
    TrainData(train_data::TrainDataArgs),
}

#[derive(Args)]
pub struct KernelArgs {
    /// Output folder (bench.json, bench.png).
    #[arg(long, default_value = "runs/bench")]
    pub out: std::path::PathBuf,
    /// tools/bench_torch_kernels.py's output on the same device, to compare with.
    #[arg(long)]
    pub torch: Option<std::path::PathBuf>,
    /// Row kernels (softmax, LayerNorm, cross-entropy) always a workgroup per row, never a
    /// subgroup (to compare the two layouts).
    #[arg(long)]
    pub workgroup_rows: bool,
    /// Tensor element types of the families that store f16 (matmul, softmax, LayerNorm,
    /// GELU, RoPE, embedding, cross-entropy): both puts each f16 row after its f32 row, in
    /// the same run (f32 only where the adapter has no f16).
    #[arg(long, value_enum, default_value_t = KernelPrecision::Both)]
    pub precision: KernelPrecision,
}

/// `bench kernels --precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelPrecision {
    /// f32 tensors only.
    F32,
    /// f16 tensors only (an error where the adapter has no f16).
    F16,
    /// Both, each f16 row beside its f32 row.
    Both,
}

/// The model and batch of `step` and `infer`.
#[derive(Args)]
struct ModelArgs {
    #[arg(long, default_value_t = 12)]
    layers: usize,
    #[arg(long, default_value_t = 768)]
    hidden: usize,
    #[arg(long, default_value_t = 12)]
    heads: usize,
    /// Feed-forward width [default: 4 × hidden].
    #[arg(long)]
    intermediate: Option<usize>,
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    seq: u64,
    /// Timed steps (requests) [default: 5 for step, 3 for infer].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    #[arg(long, value_enum, default_value_t = AttentionArg::Softmax)]
    attention: AttentionArg,
    /// Performer attention's random features m.
    #[arg(long, default_value_t = 256)]
    features: usize,
    /// Causal attention (`is_decoder`, a causal LM's head): linear and performer attention
    /// then run their chunked causal kernels.
    #[arg(long)]
    causal: bool,
    /// Arithmetic: f32; fast (f32 tensors, matmuls on tensor cores where the adapter has
    /// them); f16 (`infer`: f16 weights and activations); mixed (`step`: f16 passes with
    /// f32 master weights and loss scaling). f16 and mixed need SHADER_F16 and put the
    /// matmuls on tensor cores where the adapter has them.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// How matmul tilings are chosen: auto (timed on a GPU, cached on disk), timed (on any
    /// adapter), heuristic.
    #[arg(long, value_enum, default_value_t = TilingArg::Auto)]
    tiling: TilingArg,
    /// Time every dispatch of the step on its own, per kernel.
    #[arg(long)]
    profile: bool,
    /// Row kernels always a workgroup per row, never a subgroup (to compare the layouts).
    #[arg(long)]
    workgroup_rows: bool,
    /// Plan the step without running it and predict its time on this GPU with the cost
    /// model (h200, rtx4090, m3-max; local: this CPU adapter, from its measured ceilings,
    /// cores and SIMD width); with --profile, run it too and print each kernel family's
    /// measured time beside its prediction, and how the two agree dispatch by dispatch (on
    /// that GPU: the model's calibration).
    #[arg(long, value_name = "GPU", value_parser = gpu_name)]
    model: Option<String>,
    /// With --profile: time the step's dispatches this many times (each figure a
    /// dispatch's fastest: other work on the machine only ever adds time).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    profile_reps: u32,
    /// With --profile and --model: write each dispatch's kernel, predicted and measured
    /// time (µs) here, as CSV.
    #[arg(long, value_name = "FILE")]
    profile_csv: Option<std::path::PathBuf>,
    /// With --model: predict data-parallel training on these counts of GPUs (e.g. 1,8,64),
    /// each with this step's batch.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    ranks: Vec<u32>,
}

fn gpu_name(name: &str) -> Result<String, String> {
    if name.eq_ignore_ascii_case("local") {
        return Ok("local".to_string());
    }
    match cost_model::gpu(name) {
        Some(g) => Ok(g.name.to_string()),
        None => {
            let known: Vec<&str> = cost_model::GPUS.iter().map(|g| g.name.as_ref()).collect();
            Err(format!(
                "no GPU named {name:?} in the cost model (known: {}, local)",
                known.join(", ")
            ))
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AttentionArg {
    Softmax,
    Fused,
    Linear,
    Performer,
}

#[derive(Clone, Copy, ValueEnum)]
enum TilingArg {
    Auto,
    Timed,
    Heuristic,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    Fast,
    F16,
    Mixed,
}

impl ModelArgs {
    fn attention(&self) -> &'static str {
        match self.attention {
            AttentionArg::Softmax => "softmax",
            AttentionArg::Fused => "fused_softmax",
            AttentionArg::Linear => "linear",
            AttentionArg::Performer => "performer",
        }
    }

    /// The config keys the attention kind needs besides `attention_kind`, and
    /// `is_decoder` where causal.
    fn attention_keys(&self) -> String {
        let features = match self.attention {
            AttentionArg::Performer => format!(r#", "performer_features": {}"#, self.features),
            _ => String::new(),
        };
        let causal = if self.causal {
            r#", "is_decoder": true"#
        } else {
            ""
        };
        format!("{features}{causal}")
    }

    /// The head the model is built with: a causal LM's where causal, else the masked LM's.
    fn head(&self) -> Head {
        if self.causal {
            Head::CausalLm
        } else {
            Head::MaskedLm
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// What `--model` names: a GPU the cost model knows, or this adapter as measured.
enum Modelled {
    Named(&'static cost_model::Gpu),
    Local(cost_model::Measured),
}

impl Modelled {
    fn gpu(&self) -> cost_model::Gpu {
        match self {
            Modelled::Named(g) => (*g).clone(),
            Modelled::Local(m) => cost_model::Gpu::measured(m),
        }
    }
}

/// Times every dispatch of the step (`Session::dispatches`) on its own, `reps` times (each
/// figure a dispatch's fastest), and adds up the time per kernel: GPU time from timestamp
/// queries around each dispatch where the adapter has them (each in its own compute pass),
/// else the wall clock around each submission and wait, which on a GPU is mostly submission
/// latency. The header says which. With a model, also each kernel's prediction and how the
/// two agree dispatch by dispatch (written to `csv` too, where given); this adapter's
/// figures are measured again between the reps, and the best of them predicts.
fn profile(
    ctx: &Context,
    session: &mut roformer_wgpu::model::Session<'_>,
    mut modelled: Option<Modelled>,
    reps: u32,
    csv: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::collections::BTreeMap;
    let dispatches: Vec<roformer_wgpu::Dispatch> = session.dispatches().cloned().collect();
    // One list of times per rep, each in launch order (the reps are steps in a row).
    let mut runs = Vec::new();
    for _ in 0..reps {
        runs.push(timing::time_each(ctx, &dispatches)?);
        if let Some(Modelled::Local(m)) = &mut modelled {
            *m = m.best(&roformer_lab::profile::measure(ctx)?);
        }
    }
    let gpu = modelled.as_ref().map(Modelled::gpu);
    let prediction = gpu
        .as_ref()
        .map(|g| cost_model::StepPrediction::of(g, &dispatches));
    let predicted = prediction.as_ref();
    if let (Some(Modelled::Local(_)), Some(g)) = (&modelled, &gpu) {
        println!("model     {} (best of the reps)", g.description);
    }
    // The fastest of the reps: on a shared machine the noise only ever adds time.
    let times: Vec<f64> = (0..dispatches.len())
        .map(|i| {
            runs.iter()
                .map(|r| r[i].as_secs_f64() * 1e3)
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    // launches, measured ms, predicted ms (same dispatches, same order)
    let mut per: BTreeMap<(&str, &str), (usize, f64, f64)> = BTreeMap::new();
    for (i, (d, t)) in dispatches.iter().zip(&times).enumerate() {
        let e = per.entry(d.kernel()).or_default();
        e.0 += 1;
        e.1 += t;
        e.2 += predicted.map_or(0.0, |p| p.dispatches[i].time_us / 1e3);
    }
    let total: f64 = per.values().map(|v| v.1).sum();
    let mut rows: Vec<_> = per.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    println!(
        "profile   ({} dispatches one by one, timed by {}, fastest of {reps}: {total:.1} ms)",
        dispatches.len(),
        timing::method(ctx)
    );
    if predicted.is_some() {
        println!(
            "  {:<36} {:>14} {:>12} {:>6} {:>12} {:>9}",
            "kernel", "launches", "measured", "share", "predicted", "ratio"
        );
    }
    for ((shader, entry), (n, ms, predicted_ms)) in rows {
        let kernel = format!("{shader}::{entry}");
        match predicted {
            // measured beside the cost model's lower bound, per kernel family
            Some(_) => println!(
                "  {kernel:<36} {n:>5} launches {ms:>9.2} ms {:>5.1}% {predicted_ms:>9.3} ms {:>8.2}x",
                100.0 * ms / total,
                ms / predicted_ms.max(1e-9)
            ),
            None => println!(
                "  {kernel:<36} {n:>5} launches {ms:>9.1} ms {:>5.1}%",
                100.0 * ms / total
            ),
        }
    }
    if let Some(p) = predicted {
        let predicted_us: Vec<f64> = p.dispatches.iter().map(|d| d.time_us).collect();
        let measured_us: Vec<f64> = times.iter().map(|ms| ms * 1e3).collect();
        if let Some(path) = csv {
            let mut out = String::from(
                "index,kernel,workgroups,threads,workgroup_memory,bytes_read,bytes_written,\
                 flops,serial_steps,accumulators,predicted_us,measured_us\n",
            );
            for (i, (d, m)) in p.dispatches.iter().zip(&measured_us).enumerate() {
                let w = &d.work;
                out += &format!(
                    "{i},{},{},{},{},{},{},{},{},{},{:.3},{m:.3}\n",
                    d.kernel,
                    d.workgroups,
                    w.threads_per_workgroup,
                    w.workgroup_memory,
                    w.bytes_read,
                    w.bytes_written,
                    w.flops,
                    w.serial_steps,
                    w.accumulators,
                    d.time_us
                );
            }
            std::fs::write(path, out)?;
        }
        match cost_model::Agreement::of(&predicted_us, &measured_us) {
            Some(a) => {
                let at = |i: usize| {
                    let d = &p.dispatches[i];
                    format!(
                        "{} #{i}, {:.0} µs predicted, {:.0} measured",
                        d.kernel, d.time_us, measured_us[i]
                    )
                };
                println!(
                    "agreement predicted / measured per dispatch ({}): median {:.3}, lowest {:.3} \
                     ({}), highest {:.3} ({}); {:.1}% over 1; Spearman {:.3}; total {:.3}",
                    a.dispatches,
                    a.median,
                    a.lowest.0,
                    at(a.lowest.1),
                    a.highest.0,
                    at(a.highest.1),
                    100.0 * a.over,
                    a.spearman,
                    a.total
                );
            }
            None => println!("agreement: a dispatch measured no time (timer resolution)"),
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    args::exit_code(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cli: Cli = args::parse_args();
    match cli.command {
        Some(Command::Step(m)) => step(&m),
        Some(Command::Infer(m)) => infer(&m),
        Some(Command::Kernels(k)) => kernels::run(&k),
        #[cfg(feature = "text")]
        Some(Command::Generate(g)) => text::generate(&g),
        #[cfg(feature = "text")]
        Some(Command::Embed(e)) => text::embed(&e),
        #[cfg(feature = "text")]
        Some(Command::TrainData(t)) => train_data::run(&t),
        None => kernels::run(&cli.kernels),
    }
}

/// The predicted step cut where data parallelism treats it differently: the weight casts
/// and forward pass, the backward pass, the optimizer (`Session::dispatches`' order).
fn step_parts(
    session: &mut roformer_wgpu::model::Session<'_>,
    p: &cost_model::StepPrediction,
) -> cost_model::StepParts {
    let forward_calls = session.call_counts().0;
    let plan = session.plan();
    let forward = plan.calls()[..forward_calls]
        .last()
        .map_or(0, |c| c.dispatches.end);
    let graph = plan.dispatches().len();
    let optimizer = session.optimizer().map_or(0, |o| o.dispatches().count());
    let before = p.dispatches.len() - graph - optimizer;
    let sum = |r: std::ops::Range<usize>| p.dispatches[r].iter().map(|d| d.time_us).sum();
    cost_model::StepParts {
        forward_us: sum(0..before + forward),
        backward_us: sum(before + forward..before + graph),
        optimizer_us: sum(before + graph..p.dispatches.len()),
    }
}

fn step(args: &ModelArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (layers, hidden, heads) = (args.layers, args.hidden, args.heads);
    let intermediate = args.intermediate.unwrap_or(4 * hidden);
    let vocab = args.vocab;
    let (batch, seq, steps) = (
        args.batch as usize,
        args.seq as usize,
        args.steps.unwrap_or(5) as usize,
    );
    let attention = args.attention();
    let keys = args.attention_keys();
    let precision = match args.precision {
        PrecisionArg::Fast | PrecisionArg::Mixed => MatmulPrecision::Fast,
        PrecisionArg::F32 => MatmulPrecision::F32,
        PrecisionArg::F16 => {
            return Err(
                "bench step --precision f16: training keeps f32 master weights; \
                        --precision mixed runs its passes in f16"
                    .into(),
            )
        }
    };
    let mixed = matches!(args.precision, PrecisionArg::Mixed);
    // The cost model alone only plans: for a GPU larger than this adapter, its limits are
    // waived. With --profile the step runs, on this adapter's limits.
    // `local` is this adapter, measured: it runs kernels, and plans as itself.
    let local = args.model.as_deref() == Some("local");
    let plan_only = args.model.is_some() && !args.profile && !local;
    let mut ctx = Context::with_options(roformer_wgpu::ContextOptions {
        plan_only,
        ..Default::default()
    })?;
    let modelled = match args.model.as_deref() {
        None => None,
        Some("local") => Some(Modelled::Local(roformer_lab::profile::measure(&ctx)?)),
        Some(name) => Some(Modelled::Named(
            cost_model::gpu(name).expect("checked when parsed"),
        )),
    };
    // Planned for the modelled GPU, its variants are the ones that GPU would run.
    if let (true, Some(m)) = (plan_only, &modelled) {
        let caps = m.gpu().capabilities(ctx.capabilities());
        ctx.plan_as(caps)?;
    }
    matmul::set_precision(&ctx, precision);
    roformer_wgpu::ops::rows::set_row_subgroups(&ctx, !args.workgroup_rows);
    matmul::set_tiling(
        &ctx,
        match args.tiling {
            TilingArg::Auto => matmul::TilingChoice::Auto,
            TilingArg::Timed => matmul::TilingChoice::Timed,
            TilingArg::Heuristic => matmul::TilingChoice::Heuristic,
        },
    );
    let caps = ctx.capabilities();
    println!(
        "adapter   {} ({:?}), matmul {}",
        caps.adapter_name,
        caps.backend,
        match (precision, coop::fragment_for(caps)) {
            (MatmulPrecision::Fast, Some(f)) => format!("on cooperative matrices ({f:?})"),
            _ => "f32".to_string(),
        }
    );
    let config = RoFormerConfig::from_json(
        &format!(
            r#"{{"vocab_size": {vocab}, "hidden_size": {hidden}, "num_hidden_layers": {layers},
                "num_attention_heads": {heads}, "intermediate_size": {intermediate},
                "max_position_embeddings": {}, "attention_kind": "{attention}"{keys}}}"#,
            seq.max(512)
        ),
        "bench",
    )?;
    // The first step is timed from here: model, plan (compilation, tuning), step 1.
    let first_from = Instant::now();
    let mut model = RoFormer::new(&ctx, config, args.head())?;
    model.init_random(&ctx, 0)?;
    if mixed {
        model.use_mixed_precision(&ctx, Default::default())?;
    }
    println!(
        "model     {layers} layers, hidden {hidden}, {heads} heads, {}{attention} attention, {} parameters{}",
        if args.causal { "causal " } else { "" },
        model.params().count(),
        if mixed { ", mixed precision" } else { "" }
    );

    let t0 = Instant::now();
    let mut session = model.session(&ctx, batch, seq, Mode::Train(TrainOptions::default()))?;
    let plan_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(m) = &modelled {
        let gpu = m.gpu();
        let p = cost_model::StepPrediction::of(&gpu, session.dispatches());
        print!("{}", p.report(&gpu, batch * seq));
        if !args.ranks.is_empty() {
            let parts = step_parts(&mut session, &p);
            let bytes = 4 * model.params().count() as u64;
            print!(
                "{}",
                cost_model::scaling_report(&parts, bytes, &args.ranks, batch * seq)
            );
        }
        if !args.profile {
            return Ok(());
        }
        // With --profile: the step runs, and each kernel family's measured time is printed
        // beside its prediction.
    }
    let (fwd, bwd) = session.call_counts();
    let m = session.memory();
    println!(
        "plan      {fwd} forward + {bwd} backward calls, {} dispatches in 1 submission per step; built in {plan_ms:.0} ms",
        session.dispatch_count()
    );
    println!(
        "memory    peak {:.1} MiB (parameters+grads+AdamW {:.1}, pooled {:.1} in {} buffers, {:.1} without reuse)",
        m.peak() as f64 / 1048576.0,
        m.params as f64 / 1048576.0,
        m.pooled as f64 / 1048576.0,
        m.buffers,
        m.unpooled as f64 / 1048576.0
    );

    let n = batch * seq;
    let b = Batch {
        input_ids: (0..n).map(|i| ((i * 7919) % vocab) as u32).collect(),
        labels: (0..n)
            .map(|i| {
                if i % 7 == 0 {
                    ((i * 31) % vocab) as i32
                } else {
                    -100
                }
            })
            .collect(),
        ..Default::default()
    };
    session.set_batch(&ctx, &b)?;
    let t0 = Instant::now();
    let first = session.run(&ctx)?;
    println!(
        "step 1    {:.0} ms (loss {:.4}{})",
        t0.elapsed().as_secs_f64() * 1e3,
        first.loss,
        match first.loss_scale {
            Some(s) => format!(
                ", loss scale {s}{}",
                if first.skipped { ", skipped" } else { "" }
            ),
            None => String::new(),
        }
    );
    let setup = ctx.setup_costs();
    println!(
        "first     {:.2} s from model creation to the first step's end; in it {} pipelines \
         compiled in {:.2} s, {} kinds of matmul shape tuned in {:.2} s (their compilation included)",
        first_from.elapsed().as_secs_f64(),
        setup.pipelines,
        setup.compiling.as_secs_f64(),
        setup.tunings,
        setup.tuning.as_secs_f64()
    );
    let (mut encode, mut wall, mut gpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 1..steps {
        let t0 = Instant::now();
        let s = session.run(&ctx)?;
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
        encode.push(s.encode.as_secs_f64() * 1e3);
        gpu.extend(s.gpu.map(|g| g.as_secs_f64() * 1e3));
    }
    if args.profile {
        profile(
            &ctx,
            &mut session,
            modelled,
            args.profile_reps,
            args.profile_csv.as_deref(),
        )?;
    }
    if !wall.is_empty() {
        let w = median(wall);
        let g = (!gpu.is_empty()).then(|| median(gpu));
        println!(
            "steady    {w:.1} ms per step wall, {} GPU (median of {}), host encode+submit {:.3} ms, {:.0} tokens/s",
            g.map_or("no timestamps".to_string(), |g| format!("{g:.1} ms")),
            steps - 1,
            median(encode),
            n as f64 / g.unwrap_or(w) * 1e3
        );
    }
    Ok(())
}

/// The model options `step` and `infer` share, as a config.
fn model_config(args: &ModelArgs) -> Result<RoFormerConfig, Box<dyn std::error::Error>> {
    let hidden = args.hidden;
    let attention = args.attention();
    let keys = args.attention_keys();
    Ok(RoFormerConfig::from_json(
        &format!(
            r#"{{"vocab_size": {}, "hidden_size": {hidden}, "num_hidden_layers": {},
                "num_attention_heads": {}, "intermediate_size": {},
                "max_position_embeddings": {}, "attention_kind": "{attention}"{keys}}}"#,
            args.vocab,
            args.layers,
            args.heads,
            args.intermediate.unwrap_or(4 * hidden),
            (args.seq as usize).max(512)
        ),
        "bench",
    )?)
}

fn infer(args: &ModelArgs) -> Result<(), Box<dyn std::error::Error>> {
    use roformer_wgpu::model::{Encoder, EncoderOptions, Request, Sequence, Want};
    let (batch, seq) = (args.batch as usize, args.seq as usize);
    let config = model_config(args)?;
    let vocab = config.vocab_size as u32;
    let (dtype, matmul_precision) = match args.precision {
        PrecisionArg::F32 => (DType::F32, MatmulPrecision::F32),
        PrecisionArg::Fast => (DType::F32, MatmulPrecision::Fast),
        PrecisionArg::F16 => (DType::F16, MatmulPrecision::Fast),
        PrecisionArg::Mixed => {
            return Err(
                "bench infer --precision mixed: mixed precision is for training; \
                        --precision f16 runs inference in f16"
                    .into(),
            )
        }
    };
    let ctx = Context::new()?;
    roformer_wgpu::ops::rows::set_row_subgroups(&ctx, !args.workgroup_rows);
    matmul::set_precision(&ctx, matmul_precision);
    let caps = ctx.capabilities();
    println!(
        "adapter   {} ({:?}), weights and activations {dtype:?}",
        caps.adapter_name, caps.backend
    );
    let counted = || {
        ctx.device()
            .get_internal_counters()
            .hal
            .buffer_memory
            .read() as f64
    };
    let before = counted();
    let encoder = Encoder::new(
        &ctx,
        config,
        args.head(),
        EncoderOptions {
            max_batch: batch,
            precision: dtype,
            ..Default::default()
        },
    )?;
    encoder.init_random(&ctx, 0)?;
    let sequences = (0..batch)
        .map(|b| {
            Sequence::new(
                (0..seq)
                    .map(|i| ((b * 131 + i * 7919) as u32) % vocab)
                    .collect(),
            )
        })
        .collect();
    let request = Request::new(sequences, Want::logits());
    let t0 = Instant::now();
    encoder.run_blocking(&ctx, &request)?;
    let first = t0.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..args.steps.unwrap_or(3) {
        let t0 = Instant::now();
        encoder.run_blocking(&ctx, &request)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let m = encoder.memory();
    let mib = |b: f64| b / 1048576.0;
    let reported = m.peak() as f64;
    let device = counted() - before;
    println!(
        "memory    reported {:.1} MiB: weights {:.1}, activations {:.1} in {} pooled buffers, inputs {:.2}",
        mib(reported),
        mib(m.params as f64),
        mib(m.pooled as f64),
        m.buffers,
        mib(m.inputs as f64)
    );
    println!(
        "          the device counts {:.1} MiB of buffers made since the encoder was created ({:+.1}%: \
         the RoPE table, parameter blocks, read-back)",
        mib(device),
        100.0 * (device - reported) / reported
    );
    println!(
        "request   batch {batch} x {seq} tokens, logits back on the host: first {:.2} s (planning, \
         compilation), then {:.1} ms (median of {})",
        first,
        median(times.clone()),
        times.len()
    );
    Ok(())
}
