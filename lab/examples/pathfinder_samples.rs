//! Draws the README's picture of Pathfinder and Path-X samples and measures how fast they
//! are made.
//!
//!     cargo run --release -p roformer-lab --example pathfinder_samples [-- OUT.png [SEED]]
//!
//! `OUT.png` defaults to `docs/pathfinder.png`, `SEED` to 0.

use roformer_lab::pathfinder::{render_samples, Pathfinder, PathfinderConfig, Split};
use std::time::Instant;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "docs/pathfinder.png".into());
    let seed = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("seed {s:?}: {e}"))?,
        None => 0,
    };
    render_samples(std::path::Path::new(&out), seed)?;
    println!("wrote {out}");

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, base, n) in [
        ("Pathfinder 32x32", PathfinderConfig::pathfinder(), 4000u64),
        ("Path-X 128x128", PathfinderConfig::path_x(), 400),
    ] {
        let t = Instant::now();
        for i in 0..n {
            base.example(seed, Split::Train, i)?;
        }
        let one = n as f64 / t.elapsed().as_secs_f64();
        let config = PathfinderConfig {
            train: n as usize,
            valid: 0,
            test: 0,
            ..base
        };
        let t = Instant::now();
        Pathfinder::generate(config, seed)?;
        let all = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "{name}: {one:.0} examples/s on one thread, {all:.0} examples/s on {threads} \
             threads ({n} examples)"
        );
    }
    Ok(())
}
