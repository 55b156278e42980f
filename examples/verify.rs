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

use roformer_wgpu::apps::verify::verify;
use roformer_wgpu::io::{write_safetensors, HostData};
use roformer_wgpu::model::RoFormer;
use roformer_wgpu::Context;

fn usage() -> ExitCode {
    eprintln!(
        "usage: verify CONFIG.json WEIGHTS [--dump OUT.safetensors] [--save DIR] [--tolerance 1e-4]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let (mut dump, mut save, mut tolerance) = (None, None, 1e-4);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dump" => match it.next() {
                Some(p) => dump = Some(p.clone()),
                None => return usage(),
            },
            "--save" => match it.next() {
                Some(p) => save = Some(p.clone()),
                None => return usage(),
            },
            "--tolerance" => match it.next().and_then(|t| t.parse().ok()) {
                Some(t) => tolerance = t,
                None => return usage(),
            },
            "-h" | "--help" => return usage(),
            _ => positional.push(a.clone()),
        }
    }
    let [config, weights] = &positional[..] else {
        return usage();
    };
    match run(config, weights, dump.as_deref(), save.as_deref(), tolerance) {
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
