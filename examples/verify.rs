//! Checks a RoFormer checkpoint, of any of transformers' RoFormer classes, against
//! reference outputs stored in its safetensors file (`input.*`, `output.*`, `grad.*`,
//! `train.adamw_losses`; see tests/fixtures/README.md).
//!
//!     cargo run --release --example verify -- CONFIG.json WEIGHTS [--dump OUT.safetensors] [--save DIR] [--tolerance 1e-4]
//!
//! WEIGHTS is a `.safetensors` file, a sharded checkpoint's `model.safetensors.index.json`,
//! or a folder holding either. Prints a table of relative errors and exits with status 1
//! when any is over tolerance. `--dump` writes what was computed under transformers' output
//! names (`output.last_hidden_state`, `output.hidden_states.N`, `output.logits`,
//! `output.start_logits`, `output.end_logits`, `output.loss`) and the gradients' (`grad.*`).
//! `--save DIR` writes the checkpoint as loaded here back out with `RoFormer::save`, for
//! `tools/check_saved_in_transformers.py` to load in transformers' own classes.

use std::process::ExitCode;

use clap::Parser;

#[path = "common/args.rs"]
mod args;

use roformer_wgpu::apps::verify::verify;
use roformer_wgpu::io::{write_safetensors, HostData};
use roformer_wgpu::model::RoFormer;
use roformer_wgpu::Context;

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
    /// Largest relative L2 error that passes.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
}

fn main() -> ExitCode {
    let cli: Cli = args::parse_args();
    match run(
        &cli.config,
        &cli.weights,
        cli.dump.as_deref(),
        cli.save.as_deref(),
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
    tolerance: f64,
) -> roformer_wgpu::Result<bool> {
    let ctx = Context::new()?;
    let caps = ctx.capabilities();
    println!("adapter: {} ({:?})", caps.adapter_name, caps.backend);
    let report = verify(&ctx, config, weights)?;
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
