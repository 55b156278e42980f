//! The kernel table: every family at a representative shape, against the adapter's ceilings.

use std::time::Instant;

use crate::inputs::{filled, filled_as, zeros, zeros_as};
use roformer_lab::profile;
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::ops::attention::heads::HeadLayout;
use roformer_wgpu::ops::attention::linear::{self, LinearAttentionOptions};
use roformer_wgpu::ops::attention::AttentionOptions;
use roformer_wgpu::ops::attention::{chunked_linear as chunked, flash};
use roformer_wgpu::ops::cross_entropy::{self, Labels, LossState};
use roformer_wgpu::ops::embedding::{self, TokenIds};
use roformer_wgpu::ops::matmul::{self, coop, MatmulOptions, MatmulPrecision};
use roformer_wgpu::ops::{adamw, gelu, layernorm, rope, softmax};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::timing::{self, time_dispatches};
use roformer_wgpu::{Context, DType, Dispatch};

#[derive(Clone, Debug, serde::Serialize)]
struct Row {
    kernel: String,
    shape: String,
    ms: f64,
    /// GFLOP/s for compute-bound kernels, GB/s for memory-bound ones.
    rate: f64,
    unit: &'static str,
    fraction: f64,
    /// PyTorch's time at the same shape (from `--torch`), and ours as a fraction of its speed.
    #[serde(skip_serializing_if = "Option::is_none")]
    torch_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    of_torch: Option<f64>,
}

/// `{"kernel", "shape", "ms"}` lines from `tools/bench_torch_kernels.py`, by (kernel, shape).
fn read_torch_times(
    path: &std::path::Path,
) -> Result<std::collections::HashMap<(String, String), f64>, Box<dyn std::error::Error>> {
    let mut times = std::collections::HashMap::new();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // anything else the script's run printed
        };
        if let (Some(k), Some(s), Some(ms)) =
            (v["kernel"].as_str(), v["shape"].as_str(), v["ms"].as_f64())
        {
            times.insert((k.to_string(), s.to_string()), ms);
        }
    }
    Ok(times)
}

pub fn run(args: &super::KernelArgs) -> Result<(), Box<dyn std::error::Error>> {
    let out = args.out.clone();
    std::fs::create_dir_all(&out)?;
    let torch = match &args.torch {
        Some(file) => read_torch_times(file)?,
        None => Default::default(),
    };
    let ctx = Context::new()?;
    roformer_wgpu::ops::rows::set_row_subgroups(&ctx, !args.workgroup_rows);
    let caps = ctx.capabilities().clone();
    let cpu = caps.is_cpu();
    println!(
        "adapter {} ({:?}), kernels and ceilings timed by {}",
        caps.adapter_name,
        caps.backend,
        timing::method(&ctx)
    );
    let (flops_groups, copy_bytes) = if cpu {
        (64, 64 << 20)
    } else {
        (65536, 1 << 30)
    };
    let peak_gflops = profile::fp32_rate(&ctx, flops_groups, if cpu { 256 } else { 4096 })?;
    let peak_gbs = profile::copy_bandwidth(&ctx, copy_bytes)?;
    println!("ceilings: FP32 {peak_gflops:.0} GFLOP/s (vec4 FMA chains), copy {peak_gbs:.0} GB/s (a vec4 copy kernel, read + write)\n");

    let s = |x: usize, y: usize| if cpu { x } else { y };
    // The element types of the families that store f16: f32, and f16 where the adapter has
    // it (rows named "... f16", bytes counted at 2 per element).
    let dtypes: Vec<DType> = match args.precision {
        super::KernelPrecision::F32 => vec![DType::F32],
        super::KernelPrecision::F16 | super::KernelPrecision::Both if !caps.shader_f16 => {
            if args.precision == super::KernelPrecision::F16 {
                return Err(
                    format!("--precision f16: {} has no SHADER_F16", caps.adapter_name).into(),
                );
            }
            println!("(no f16 rows: {} has no SHADER_F16)", caps.adapter_name);
            vec![DType::F32]
        }
        super::KernelPrecision::F16 => vec![DType::F16],
        super::KernelPrecision::Both => vec![DType::F32, DType::F16],
    };
    let tag = |dt: DType| if dt == DType::F16 { " f16" } else { "" };
    let width = |dt: DType| dt.size() as f64;
    let reps = s(3, 20) as u32;
    let mut rows: Vec<Row> = Vec::new();
    let mut add = |kernel: &str,
                   shape: String,
                   dispatches: Vec<Dispatch>,
                   flops: f64,
                   bytes: f64|
     -> Result<(), Box<dyn std::error::Error>> {
        time_dispatches(&ctx, &dispatches, 1)?;
        let t = time_dispatches(&ctx, &dispatches, reps)?.as_secs_f64();
        let (rate, unit, fraction) = if flops > 0.0 {
            (flops / t / 1e9, "GFLOP/s", flops / t / 1e9 / peak_gflops)
        } else {
            (bytes / t / 1e9, "GB/s", bytes / t / 1e9 / peak_gbs)
        };
        let torch_ms = torch.get(&(kernel.to_string(), shape.clone())).copied();
        let of_torch = torch_ms.map(|tm| tm / (t * 1e3));
        println!(
            "{kernel:<40} {shape:<22} {:>9.3} ms {rate:>9.1} {unit:<7} {:>6.1}% {}",
            t * 1e3,
            100.0 * fraction,
            of_torch.map_or(String::new(), |r| format!("{r:>8.3}x"))
        );
        rows.push(Row {
            kernel: kernel.into(),
            shape,
            ms: t * 1e3,
            rate,
            unit,
            fraction,
            torch_ms,
            of_torch,
        });
        Ok(())
    };
    println!(
        "{:<40} {:<22} {:>12} {:>17} {:>7} {}",
        "kernel",
        "shape",
        "GPU time",
        "rate",
        "ceiling",
        if torch.is_empty() { "" } else { "of torch" }
    );

    // matmul, each operand layout
    let n = s(256, 4096);
    let (a, b) = (filled(&ctx, &[n, n]), filled(&ctx, &[n, n]));
    let c = zeros(&ctx, &[n, n]);
    for (name, ta, tb) in [
        ("matmul A B", false, false),
        ("matmul A Bᵀ (forward)", false, true),
        ("matmul Aᵀ B (weight grad)", true, false),
    ] {
        let o = MatmulOptions {
            trans_a: ta,
            trans_b: tb,
            ..Default::default()
        };
        for &dt in &dtypes {
            let (a, b, c) = (
                filled_as(&ctx, &[n, n], dt),
                filled_as(&ctx, &[n, n], dt),
                zeros_as(&ctx, &[n, n], dt),
            );
            let d = matmul::plan(&ctx, &a, &b, None, &c, &o)?;
            add(
                &format!("{name}{}", tag(dt)),
                format!("{n}³"),
                vec![d],
                2.0 * (n as f64).powi(3),
                0.0,
            )?;
        }
    }
    // Tensor cores, where the device has them.
    if let Some(fragment) = coop::fragment_for(&caps) {
        let d = matmul::plan_with(
            &ctx,
            MatmulPrecision::Fast,
            &a,
            &b,
            None,
            &c,
            &MatmulOptions::default(),
        )?;
        add(
            &format!("matmul A B, coop {fragment:?}"),
            format!("{n}³"),
            vec![d],
            2.0 * (n as f64).powi(3),
            0.0,
        )?;
    }
    // What tuning sees: every tiling on the same products.
    for (name, ta, tb) in [
        ("A B", false, false),
        ("A Bᵀ", false, true),
        ("Aᵀ B", true, false),
    ] {
        let times = matmul::time_tilings(&ctx, (n, n, n), ta, tb)?;
        let line: Vec<String> = times
            .iter()
            .map(|(t, d)| {
                format!(
                    "{t} {:.0}",
                    2.0 * (n as f64).powi(3) / d.as_secs_f64() / 1e9
                )
            })
            .collect();
        println!("  tilings, {name} {n}³ (GFLOP/s): {}", line.join(", "));
    }
    // softmax rows (on a CPU adapter at burnbench's SCALE 0.0625 shape, to compare with Burn)
    let (rows_n, cols) = (s(4096, 65536), 1024);
    for &dt in &dtypes {
        let x = filled_as(&ctx, &[rows_n, cols], dt);
        let y = zeros_as(&ctx, &[rows_n, cols], dt);
        let d = softmax::plan_forward(&ctx, &x, &softmax::SoftmaxOptions::default(), &y)?;
        add(
            &format!("softmax forward{}", tag(dt)),
            format!("{rows_n}×{cols}"),
            vec![d],
            0.0,
            2.0 * width(dt) * (rows_n * cols) as f64,
        )?;
        let dx = zeros_as(&ctx, &[rows_n, cols], dt);
        let d = softmax::plan_backward(&ctx, &y, &x, 1.0, &dx)?;
        add(
            &format!("softmax backward{}", tag(dt)),
            format!("{rows_n}×{cols}"),
            vec![d],
            0.0,
            3.0 * width(dt) * (rows_n * cols) as f64,
        )?;
    }
    // layernorm
    let (r, h) = (s(1024, 4096), s(256, 768));
    for &dt in &dtypes {
        let x = filled_as(&ctx, &[r, h], dt);
        let (g, bt) = (filled_as(&ctx, &[h], dt), filled_as(&ctx, &[h], dt));
        let stats = zeros(&ctx, &[r, 2]);
        let y = zeros_as(&ctx, &[r, h], dt);
        let d = layernorm::plan_forward(&ctx, &x, &g, &bt, 1e-12, &y, &stats)?;
        add(
            &format!("layernorm forward{}", tag(dt)),
            format!("{r}×{h}"),
            vec![d],
            0.0,
            2.0 * width(dt) * (r * h) as f64,
        )?;
        let dx = zeros_as(&ctx, &[r, h], dt);
        let d = layernorm::plan_backward(&ctx, &x, &g, &stats, &y, &dx)?;
        add(
            &format!("layernorm backward (dx){}", tag(dt)),
            format!("{r}×{h}"),
            vec![d],
            0.0,
            3.0 * width(dt) * (r * h) as f64,
        )?;
    }
    // gelu
    let n = s(1 << 18, 1 << 24);
    for &dt in &dtypes {
        let x = filled_as(&ctx, &[n], dt);
        let d = gelu::plan_forward(&ctx, &x, &zeros_as(&ctx, &[n], dt))?;
        let bytes = 2.0 * width(dt) * n as f64;
        add(
            &format!("gelu forward{}", tag(dt)),
            format!("{n}"),
            vec![d],
            0.0,
            bytes,
        )?;
    }
    // rope [B, T, H, d]
    let (bb, t, hh, dd) = (s(2, 8), s(128, 512), s(4, 12), 64);
    let table = rope::table(&ctx, t, dd)?;
    for &dt in &dtypes {
        let x = filled_as(&ctx, &[bb, t, hh, dd], dt);
        let d = rope::plan(
            &ctx,
            &x,
            HeadLayout::Bthd,
            &table,
            &zeros_as(&ctx, &[bb, t, hh, dd], dt),
            HeadLayout::Bthd,
            false,
        )?;
        add(
            &format!("rope{}", tag(dt)),
            format!("[{bb},{t},{hh},{dd}]"),
            vec![d],
            0.0,
            2.0 * width(dt) * (bb * t * hh * dd) as f64,
        )?;
    }
    // embedding lookup
    let (vocab, dim, tokens) = (s(1000, 32000), s(128, 768), s(1024, 4096));
    let ids: Vec<u32> = (0..tokens).map(|i| ((i * 7919) % vocab) as u32).collect();
    let ids = TokenIds::new(&ctx, &ids, &[tokens], vocab)?;
    for &dt in &dtypes {
        let table = filled_as(&ctx, &[vocab, dim], dt);
        let out = zeros_as(&ctx, &[tokens, dim], dt);
        let d = embedding::plan_forward(&ctx, &table, &ids, &out, false)?;
        add(
            &format!("embedding lookup{}", tag(dt)),
            format!("{tokens} of {vocab}×{dim}"),
            vec![d],
            0.0,
            2.0 * width(dt) * (tokens * dim) as f64,
        )?;
    }
    // cross-entropy
    let (rows_n, classes) = (s(256, 4096), s(1000, 32000));
    let labels: Vec<i32> = (0..rows_n).map(|i| (i % classes) as i32).collect();
    let labels = Labels::new(
        &ctx,
        &labels,
        &[rows_n],
        classes,
        cross_entropy::IGNORE_INDEX,
    )?;
    let state = LossState::new(&ctx, rows_n)?;
    for &dt in &dtypes {
        let logits = filled_as(&ctx, &[rows_n, classes], dt);
        let mut d = cross_entropy::plan_forward(&ctx, &logits, &labels, &state)?;
        d.push(cross_entropy::plan_backward(
            &ctx,
            &logits,
            &labels,
            &state,
            1.0,
            None,
            &zeros_as(&ctx, &[rows_n, classes], dt),
        )?);
        add(
            &format!("cross-entropy forward+backward{}", tag(dt)),
            format!("{rows_n}×{classes}"),
            d,
            0.0,
            3.0 * width(dt) * (rows_n * classes) as f64,
        )?;
    }
    // AdamW over a parameter vector
    let n = s(1 << 20, 110_000_000);
    let (p, gr) = (filled(&ctx, &[n]), filled(&ctx, &[n]));
    let st = adamw::AdamWState::zeros(&ctx, &[n])?;
    let step = adamw::plan_step(&ctx, &adamw::AdamWConfig::default(), &p, &gr, &st, None)?;
    add(
        "adamw",
        format!("{n}"),
        vec![step.dispatch],
        0.0,
        28.0 * n as f64,
    )?;
    // attention, B1 H8 d64, f32 and f16 q, k, v
    let t = s(256, 4096);
    let shape = [1, 8, t, 64];
    for &dt in &dtypes {
        let (q, k, v) = (
            filled_as(&ctx, &shape, dt),
            filled_as(&ctx, &shape, dt),
            filled_as(&ctx, &shape, dt),
        );
        let opts = AttentionOptions::default();
        let saved = flash::FlashSaved::new(&ctx, &q, HeadLayout::Bhtd, &opts)?;
        let d = flash::plan_forward(
            &ctx,
            &q,
            &k,
            &v,
            HeadLayout::Bhtd,
            &opts,
            &saved,
            &zeros_as(&ctx, &shape, dt),
        )?;
        add(
            &format!("fused softmax attention forward{}", tag(dt)),
            format!("B1 H8 T{t} d64"),
            d.clone(),
            4.0 * 8.0 * (t * t * 64) as f64,
            0.0,
        )?;
        // Forward and backward, as a training step runs them (what PyTorch's SDPA is timed on).
        let forward_backward = || -> roformer_wgpu::Result<Vec<Dispatch>> {
            let o = zeros_as(&ctx, &shape, dt);
            let mut fb =
                flash::plan_forward(&ctx, &q, &k, &v, HeadLayout::Bhtd, &opts, &saved, &o)?;
            fb.extend(flash::plan_backward(
                &ctx,
                &q,
                &k,
                &v,
                HeadLayout::Bhtd,
                &opts,
                &saved,
                &o,
                &filled_as(&ctx, &shape, dt),
                &flash::FlashScratch::new(&ctx, &q, &opts)?,
                &zeros_as(&ctx, &shape, dt),
                &zeros_as(&ctx, &shape, dt),
                &zeros_as(&ctx, &shape, dt),
            )?);
            Ok(fb)
        };
        // forward 2 products, backward 5 (QKᵀ recomputed, dV, dP, dQ, dK): 2 T² d each
        let fb_flops = 14.0 * 8.0 * (t * t * 64) as f64;
        add(
            &format!("fused softmax attention forward+backward{}", tag(dt)),
            format!("B1 H8 T{t} d64"),
            forward_backward()?,
            fb_flops,
            0.0,
        )?;
        if cpu {
            // A CPU adapter runs the row kernels; the tiled ones (a GPU's) beside them.
            flash::set_kernels(&ctx, flash::FlashKernels::Tiled);
            let tiled = forward_backward();
            flash::set_kernels(&ctx, flash::FlashKernels::Auto);
            add(
                &format!("fused softmax attention fwd+bwd, tiled{}", tag(dt)),
                format!("B1 H8 T{t} d64"),
                tiled?,
                fb_flops,
                0.0,
            )?;
        }
        let lopts = LinearAttentionOptions::default();
        let lsaved = zeros(&ctx, &linear::saved_shape(&q, HeadLayout::Bhtd)?);
        let d = linear::plan_forward(
            &ctx,
            &q,
            &k,
            &v,
            HeadLayout::Bhtd,
            &lopts,
            &zeros_as(&ctx, &shape, dt),
            &lsaved,
        )?;
        add(
            &format!("linear attention forward (scan){}", tag(dt)),
            format!("B1 H8 T{t} d64"),
            d,
            4.0 * 8.0 * (t * 64 * 64) as f64,
            0.0,
        )?;
        let copts = LinearAttentionOptions {
            causal: true,
            ..Default::default()
        };
        let cs = chunked::shapes(&ctx, &q, &k, &v, HeadLayout::Bhtd, &copts)?;
        let csaved = chunked::ChunkedSaved::new(&ctx, &cs)?;
        let d = chunked::plan_forward(
            &ctx,
            &q,
            &k,
            &v,
            HeadLayout::Bhtd,
            &copts,
            &csaved,
            &zeros_as(&ctx, &shape, dt),
        )?;
        add(
            &format!("causal linear attention (chunked){}", tag(dt)),
            format!("B1 H8 T{t} d64"),
            d,
            4.0 * 8.0 * (t * 64 * 64) as f64,
            0.0,
        )?;
    }

    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "adapter": caps.adapter_name, "backend": format!("{:?}", caps.backend),
            "fp32_gflops": peak_gflops, "copy_gbs": peak_gbs, "kernels": rows,
        }))?,
    )?;
    chart(&out.join("bench.png"), &rows)?;
    println!(
        "\nwrote {} and {}",
        out.join("bench.json").display(),
        out.join("bench.png").display()
    );

    // A whole training step.
    let (layers, hidden, heads, tt, batch) = if cpu {
        (2, 128, 4, 128, 4)
    } else {
        (12, 768, 12, 512, 8)
    };
    let config = RoFormerConfig::from_json(
        &format!(
            r#"{{"vocab_size": 32000, "hidden_size": {hidden}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
            "intermediate_size": {}, "max_position_embeddings": {tt}}}"#,
            4 * hidden
        ),
        "bench",
    )?;
    let t0 = Instant::now();
    let model = RoFormer::new(&ctx, config, Head::MaskedLm)?;
    model.init_random(&ctx, 0)?;
    let mut session = model.session(&ctx, batch, tt, Mode::Train(TrainOptions::default()))?;
    session.set_batch(
        &ctx,
        &Batch {
            input_ids: (0..batch * tt)
                .map(|i| ((i * 7919) % 32000) as u32)
                .collect(),
            labels: (0..batch * tt)
                .map(|i| {
                    if i % 7 == 0 {
                        ((i * 31) % 32000) as i32
                    } else {
                        -100
                    }
                })
                .collect(),
            ..Default::default()
        },
    )?;
    session.run(&ctx)?;
    let first = t0.elapsed().as_secs_f64();
    let mut gpu = Vec::new();
    for _ in 0..s(2, 10) {
        let m = session.run(&ctx)?;
        gpu.push(m.gpu.map_or(0.0, |g| g.as_secs_f64()));
    }
    gpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let g = gpu[gpu.len() / 2];
    println!(
        "training step, MLM {layers} layers, hidden {hidden}, T {tt}, batch {batch}: {:.1} ms GPU, {:.0} tokens/s; first step (model, plan, compile) {first:.2} s",
        g * 1e3,
        (batch * tt) as f64 / g
    );
    // The context has run the whole table by now: its setup costs are the table's and the
    // step's together (`bench step` reports a step's alone).
    let setup = ctx.setup_costs();
    println!(
        "this context: {} pipelines compiled in {:.2} s, {} kinds of matmul shape tuned in {:.2} s",
        setup.pipelines,
        setup.compiling.as_secs_f64(),
        setup.tunings,
        setup.tuning.as_secs_f64()
    );
    Ok(())
}

fn chart(path: &std::path::Path, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let text = crate::fonts::register_sans_serif();
    let root = BitMapBackend::new(path, (1000, 40 + 28 * rows.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (label_area, bars) = root.split_horizontally(330);
    let top = 30;
    for (i, r) in rows.iter().enumerate() {
        let y = top + 28 * i as i32;
        if text {
            label_area.draw(&Text::new(r.kernel.clone(), (8, y + 4), ("sans-serif", 15)))?;
        }
        let w = (r.fraction.clamp(0.0, 1.0) * 600.0) as i32;
        let colour = if r.unit == "GB/s" { BLUE } else { RED };
        bars.draw(&Rectangle::new(
            [(0, y), (w.max(1), y + 20)],
            colour.filled(),
        ))?;
        if text {
            bars.draw(&Text::new(
                format!("{:.1}% ({:.1} {})", 100.0 * r.fraction, r.rate, r.unit),
                (w + 6, y + 4),
                ("sans-serif", 14),
            ))?;
        }
    }
    if text {
        root.draw(&Text::new(
            "fraction of the adapter's measured ceiling (red: FP32 rate, blue: copy bandwidth)",
            (8, 6),
            ("sans-serif", 16),
        ))?;
    }
    root.present()?;
    Ok(())
}
