//! Prints the adapter this library picks and what it offers, then checks one matmul against
//! the CPU. `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF` choose the adapter.
//!
//!     cargo run --release --example info

use roformer_lab::args;

use clap::Parser;
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::ops::matmul::{self, coop, MatmulOptions};
use roformer_wgpu::{Context, Tensor};

/// Print the adapter this library picks and what it offers, then check one matmul against
/// the CPU. WGPU_BACKEND, WGPU_ADAPTER_NAME and WGPU_POWER_PREF choose the adapter.
#[derive(Parser)]
#[command(name = "info")]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _: Cli = args::parse_args();
    args::exit_code(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    let caps = ctx.capabilities();
    println!("{caps}");
    let heuristic = |m, n| matmul::heuristic_tiling(caps, m, n, 1);
    println!(
        "matmul tiling      {} at 4096², {} at 512x64 (timed per shape on a GPU; see `bench`)",
        heuristic(4096, 4096),
        heuristic(512, 64)
    );
    match coop::fragment_for(caps) {
        Some(f) => println!(
            "tensor-core matmul {f:?} fragments, with MatmulPrecision::Fast (relative error ~{:.0e})",
            f.tolerance()
        ),
        None => println!(
            "tensor-core matmul not available here (f32 kernel only; the kernel needs NVIDIA on Vulkan)"
        ),
    }
    let (m, n, k) = (33, 65, 129);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
        .collect();
    let ta = Tensor::from_slice(&ctx, &a, &[m, k])?;
    let tb = Tensor::from_slice(&ctx, &b, &[k, n])?;
    let c = matmul::matmul(&ctx, &ta, &tb, None, &MatmulOptions::default())?.to_vec::<f32>(&ctx)?;
    let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
    let want = matmul::reference::matmul(&a64, &b64, (m, n, k), false, false);
    println!(
        "self-check         {m}x{n}x{k} matmul, relative L2 error {:.1e}",
        rel_l2(&c, &want)
    );
    Ok(())
}
