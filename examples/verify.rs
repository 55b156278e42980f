//! Checks a RoFormer checkpoint, of any of transformers' RoFormer classes, against
//! reference outputs stored in its safetensors file (`input.*`, `output.*`, `grad.*`,
//! `train.adamw_losses`; see tests/fixtures/README.md).
//!
//!     cargo run --release --example verify -- CONFIG.json WEIGHTS [--dump OUT.safetensors] [--save DIR] [--tolerance 1e-4] [--precision f32|f16|mixed]
//!
//! WEIGHTS is a `.safetensors` file, a sharded checkpoint's `model.safetensors.index.json`,
//! or a folder holding either. Prints a table of relative errors and exits with status 1
//! when any is over tolerance. `--dump` writes what was computed under transformers' output
//! names (`output.last_hidden_state`, `output.hidden_states.N`, `output.logits`,
//! `output.start_logits`, `output.end_logits`, `output.loss`) and the gradients' (`grad.*`).
//! `--save DIR` writes the checkpoint as loaded here back out with `RoFormer::save`, for
//! `tools/check_saved_in_transformers.py` to load in transformers' own classes.
//! `--precision f16` runs the stored inputs through an inference encoder holding weights
//! and activations in f16 and compares its outputs (no gradients) within 1e-2 by default.
//! `--precision mixed` checks training in mixed precision (f16 passes, f32 master weights,
//! loss scaling): the training forward pass, loss, every gradient and the AdamW steps,
//! within 1e-2 by default (the outputs still come from f32 inference).

use std::process::ExitCode;

use clap::Parser;

use roformer_lab::args;

use roformer_lab::verify::{verify, verify_mixed, verify_outputs};
use roformer_wgpu::io::{write_safetensors, HostData};
use roformer_wgpu::model::RoFormer;
use roformer_wgpu::optim::LossScaling;
use roformer_wgpu::{Context, DType};

/// Check a RoFormer checkpoint against the reference outputs stored in its safetensors file.
/// Exits 1 when any error is over the tolerance, 2 on bad input.
#[derive(Parser)]
#[command(name = "verify")]
struct Cli {
    /// The model's config.json.
    config: String,
    /// A .safetensors file, a sharded model.safetensors.index.json, or a folder holding either.
    weights: String,
    /// Write what was computed under transformers' output names.
    #[arg(long, value_name = "OUT.safetensors")]
    dump: Option<String>,
    /// Save the checkpoint as loaded here (RoFormer::save), for
    /// tools/check_saved_in_transformers.py.
    #[arg(long, value_name = "DIR")]
    save: Option<String>,
    /// Largest relative L2 error that passes [default: 1e-4 in f32, 1e-2 in f16 and mixed].
    #[arg(long)]
    tolerance: Option<f64>,
    /// What weights and activations are stored as: f32 checks outputs, gradients and
    /// training; f16 the outputs of an f16 inference encoder; mixed the gradients and
    /// training steps in mixed precision (f16 and mixed need SHADER_F16).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Precision {
    F32,
    F16,
    Mixed,
}

fn main() -> ExitCode {
    let cli: Cli = args::parse_args();
    match run(
        &cli.config,
        &cli.weights,
        cli.dump.as_deref(),
        cli.save.as_deref(),
        cli.precision,
        cli.tolerance,
    ) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(
    config: &str,
    weights: &str,
    dump: Option<&str>,
    save: Option<&str>,
    precision: Precision,
    tolerance: Option<f64>,
) -> roformer_wgpu::Result<bool> {
    let ctx = Context::new()?;
    let caps = ctx.capabilities();
    println!("adapter: {} ({:?})", caps.adapter_name, caps.backend);
    let (report, tolerance) = match precision {
        Precision::F32 => (verify(&ctx, config, weights)?, tolerance.unwrap_or(1e-4)),
        Precision::F16 => {
            let tensors = roformer_wgpu::io::read_checkpoint(weights)?;
            let cfg = roformer_wgpu::model::RoFormerConfig::from_file(config)?;
            let outputs = verify_outputs(&ctx, cfg, &tensors, DType::F16);
            println!("precision: f16 weights and activations (outputs only)");
            (ctx.block_on(outputs)?, tolerance.unwrap_or(1e-2))
        }
        Precision::Mixed => {
            let tensors = roformer_wgpu::io::read_checkpoint(weights)?;
            let cfg = roformer_wgpu::model::RoFormerConfig::from_file(config)?;
            let report = verify_mixed(&ctx, cfg, &tensors, LossScaling::default());
            println!("precision: mixed (f16 passes, f32 master weights, dynamic loss scaling)");
            (ctx.block_on(report)?, tolerance.unwrap_or(1e-2))
        }
    };
    if report.checks.is_empty() {
        println!("no output.*, grad.* or train.* tensors to compare with");
    }
    println!("{:<66} {:>14} {:>10}  ", "tensor", "shape", "rel. error");
    for c in &report.checks {
        let mark = if c.error < tolerance { "ok" } else { "FAIL" };
        println!(
            "{:<66} {:>14} {:>10.2e}  {mark}",
            c.name,
            format!("{:?}", c.shape),
            c.error
        );
    }
    let failures = report.failures(tolerance);
    println!(
        "{} of {} tensors within tolerance {tolerance:.0e}",
        report.checks.len() - failures.len(),
        report.checks.len()
    );
    if let Some(path) = dump {
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = report
            .computed
            .iter()
            .filter_map(|(name, t)| match &t.data {
                HostData::F32(v) => Some((name.clone(), t.shape.clone(), v.clone())),
                HostData::I64(_) => None,
            })
            .collect();
        write_safetensors(path, &tensors, &[("source", "roformer-wgpu verify")])?;
        println!("wrote {} tensors to {path}", tensors.len());
    }
    if let Some(dir) = save {
        RoFormer::from_pretrained(&ctx, config, weights)?.save(&ctx, dir)?;
        println!("saved the checkpoint as loaded to {dir}");
    }
    Ok(failures.is_empty())
}
