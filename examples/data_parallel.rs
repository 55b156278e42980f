//! What data-parallel training's all-reduce costs on this machine: under `mpirun -np N`,
//! each rank times a training step of one session four ways, interleaved (each round
//! starts with the ranks together): alone (`Session::step`, one submission); split at the
//! gradients with nothing reduced (`Session::step_reduced`: the read-back and write-back
//! alone); data-parallel (`Session::step_reduced` averaging each bucket with
//! `Distributed::all_reduce_mean`, as `Distributed::step` does; the time spent in it
//! counted too, waiting for the slower rank included); and the all-reduce of as many floats
//! by itself, the ranks started together. Rank 0 prints the medians, and the medians of each
//! round's ratios to the step alone (rounds in a row share the machine's load).
//!
//!     cargo build --release --features mpi --example data_parallel
//!     mpirun -np 2 --bind-to none target/release/examples/data_parallel [--layers 2]
//!         [--hidden 128] [--heads 4] [--vocab 1000] [--batch 8] [--seq 64] [--rounds 20]
//!         [--bucket-mb 25]

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use roformer_lab::args;
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::train::distributed::DEFAULT_TIMEOUT;
use roformer_wgpu::train::Distributed;
use roformer_wgpu::Context;

/// The all-reduce's cost, timed on every rank.
#[derive(Parser)]
#[command(name = "data_parallel")]
struct Cli {
    /// Encoder layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Vocabulary (the masked-LM head's width).
    #[arg(long, default_value_t = 1000)]
    vocab: usize,
    /// Sequences per rank.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Timed rounds (each times the four ways once).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Gradient bucket size, MB (DDP's bucket_cap_mb; a fraction is allowed).
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
}

fn main() -> ExitCode {
    let cli: Cli = args::parse_args();
    let mut d = match Distributed::from_launcher(DEFAULT_TIMEOUT) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return args::exit_code(Err(
                "start it with an MPI launcher: mpirun -np 2 data_parallel".into(),
            ))
        }
        Err(e) => return args::exit_code(Err(e.into())),
    };
    d.set_bucket_bytes((cli.bucket_mb * (1 << 20) as f64) as usize);
    match measure(&cli, &d) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "rank {}: error: {e}", d.rank());
            d.abort(1)
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(cli: &Cli, d: &Distributed) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::with_options(d.context_options())?;
    let config = RoFormerConfig::from_json(
        &format!(
            r#"{{"vocab_size": {}, "hidden_size": {}, "num_hidden_layers": {},
                "num_attention_heads": {}, "intermediate_size": {},
                "max_position_embeddings": {}, "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0}}"#,
            cli.vocab,
            cli.hidden,
            cli.layers,
            cli.heads,
            4 * cli.hidden,
            cli.seq.max(64)
        ),
        "data_parallel",
    )?;
    let model = RoFormer::new(&ctx, config, Head::MaskedLm)?;
    model.init_random(&ctx, 0)?;
    let mut session = model.session(
        &ctx,
        cli.batch,
        cli.seq,
        Mode::Train(TrainOptions::default()),
    )?;
    // Each rank its own tokens.
    let n = cli.batch * cli.seq;
    let r = d.rank();
    let batch = Batch {
        input_ids: (0..n)
            .map(|i| ((i * 7919 + r * 104_729) % cli.vocab) as u32)
            .collect(),
        labels: (0..n)
            .map(|i| match i % 7 {
                0 => ((i * 31 + r) % cli.vocab) as i32,
                _ => -100,
            })
            .collect(),
        ..Default::default()
    };
    session.set_batch(&ctx, &batch)?;
    let floats = model.params().count();
    let buckets = session.gradient_buckets(d.bucket_bytes());
    let mut buffer = vec![1.0f32; floats];
    let bucket = d.bucket_bytes();
    let mut times: [Vec<f64>; 5] = Default::default();
    // Two rounds of warm-up (pipelines, tilings), then the timed ones.
    for round in 0..cli.rounds + 2 {
        let mut timed = [0.0; 5];
        d.barrier("the start of a round")?;
        let t = Instant::now();
        session.run(&ctx)?;
        timed[0] = t.elapsed().as_secs_f64();
        d.barrier("the split step")?;
        let t = Instant::now();
        session.step_reduced(&ctx, bucket, &mut |_| Ok(()))?;
        timed[1] = t.elapsed().as_secs_f64();
        d.barrier("the data-parallel step")?;
        let t = Instant::now();
        let mut reducing = 0.0;
        session.step_reduced(&ctx, bucket, &mut |grads| {
            let t = Instant::now();
            let r = d.all_reduce_mean("the gradients' all-reduce", grads);
            reducing += t.elapsed().as_secs_f64();
            r
        })?;
        timed[2] = t.elapsed().as_secs_f64();
        timed[4] = reducing;
        d.barrier("the all-reduce alone")?;
        let t = Instant::now();
        d.all_reduce_mean("the all-reduce alone", &mut buffer)?;
        timed[3] = t.elapsed().as_secs_f64();
        if round >= 2 {
            for (all, t) in times.iter_mut().zip(timed) {
                all.push(t * 1e3);
            }
        }
    }
    if d.is_main() {
        let ratio = |k: usize| {
            median(
                times[k]
                    .iter()
                    .zip(&times[0])
                    .map(|(t, a)| t / a - 1.0)
                    .collect(),
            )
        };
        let (split_ratio, parallel_ratio) = (ratio(1), ratio(2));
        let [alone, split, parallel, reduce, inside] = times.map(median);
        println!(
            "adapter   {} on each of {} ranks",
            ctx.capabilities().adapter_name,
            d.size()
        );
        println!(
            "model     {} layers, hidden {}, batch {} x {} per rank: {floats} parameters, \
             {:.2} MB of gradients in {} bucket(s)",
            cli.layers,
            cli.hidden,
            cli.batch,
            cli.seq,
            4.0 * floats as f64 / 1e6,
            buckets.len()
        );
        println!("step      alone (one submission)          {alone:8.2} ms");
        println!(
            "          split, nothing reduced          {split:8.2} ms  ({:+.1}%: read-back and write-back)",
            100.0 * split_ratio
        );
        println!(
            "          data-parallel (all-reduce)      {parallel:8.2} ms  ({:+.1}% over alone), \
             {inside:.2} ms of it in MPI_Allreduce",
            100.0 * parallel_ratio
        );
        println!(
            "all-reduce of the gradients by itself  {reduce:8.2} ms (medians of {} rounds)",
            cli.rounds
        );
    }
    Ok(())
}
