//! `bench generate` and `bench embed`: inference that scales with its work.
//!
//! generate: new tokens per second at several positions, over the key/value cache against
//! the whole sequence run again at every step with every position's logits read back (what
//! generation did before the cache), interleaved; and the caches' memory against
//! `2 × layers × sequences × slots × hidden × bytes` (slots: the capacity; with `--window`,
//! the globals, the window and the 4-token prompt, when fewer).
//!
//! embed: sentence embeddings of texts of mixed lengths through the pipeline, batched in
//! the inputs' order against sorted by length, interleaved.

use std::time::Instant;

use clap::Args;
use rand::{Rng, SeedableRng};
use roformer_wgpu::model::{
    Encoder, EncoderOptions, Head, Request, RoFormer, RoFormerConfig, Sequence, Want,
};
use roformer_wgpu::pipelines::embed::{self, Pooling};
use roformer_wgpu::pipelines::{TextModel, TextOptions};
use roformer_wgpu::Context;

/// The causal model of `bench generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 8000)]
    vocab: usize,
    /// Positions to measure at (the prompt's length there).
    #[arg(long, value_delimiter = ',', default_value = "16,128,512")]
    positions: Vec<usize>,
    /// Tokens timed at each position, over the cache.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Tokens timed at each position recomputing (slow at long positions).
    #[arg(long, default_value_t = 3)]
    recomputed_tokens: usize,
    /// Alternating rounds of the two.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Local attention with this window (each step then reads the window and the global
    /// tokens of the cache) instead of softmax attention.
    #[arg(long)]
    window: Option<usize>,
    /// Local attention's global tokens (with --window).
    #[arg(long, default_value_t = 1, requires = "window")]
    globals: usize,
    /// Linear attention (RoFormer eq. 19; each step then updates a recurrent state) instead
    /// of softmax attention.
    #[arg(long, conflicts_with = "window")]
    linear: bool,
}

/// The texts of `bench embed`.
#[derive(Args)]
pub struct EmbedArgs {
    /// Texts, of 1 to `--longest` words.
    #[arg(long, default_value_t = 1000)]
    texts: usize,
    #[arg(long, default_value_t = 120)]
    longest: usize,
    /// Texts per GPU request.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Alternating rounds of the two orders.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The tokenizer to use (its folder); the model is random, 2 layers × 128.
    #[arg(long, default_value = "tests/fixtures/text/wordpiece")]
    tokenizer: std::path::PathBuf,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn generate(args: &GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    let longest = args.positions.iter().max().copied().unwrap_or(16);
    let capacity = longest + args.tokens.max(args.recomputed_tokens) + 1;
    let mut json = serde_json::json!({
        "vocab_size": args.vocab, "hidden_size": args.hidden,
        "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
        "intermediate_size": 4 * args.hidden,
        "max_position_embeddings": capacity.next_power_of_two(),
        "is_decoder": true, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    });
    if let Some(w) = args.window {
        json["attention_kind"] = "local".into();
        json["attention_window"] = w.into();
        json["global_tokens"] = args.globals.into();
    }
    if args.linear {
        json["attention_kind"] = "linear".into();
    }
    let config = RoFormerConfig::from_json(&json.to_string(), "bench generate")?;
    let encoder = Encoder::new(
        &ctx,
        config.clone(),
        Head::CausalLm,
        EncoderOptions::default(),
    )?;
    encoder.init_random(&ctx, 0)?;
    println!("adapter   {}", ctx.capabilities().adapter_name);
    let attention = match (args.window, args.linear) {
        (Some(w), _) => format!("local attention (window {w}, {} global)", args.globals),
        (None, true) => "linear attention (a recurrent state)".to_string(),
        (None, false) => "softmax attention".to_string(),
    };
    println!(
        "model     causal RoFormer {} layers × {}, {} heads, vocabulary {}, {attention}; greedy, \
         one sequence",
        args.layers, args.hidden, args.heads, args.vocab
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let argmax =
        |row: &[f32]| (0..row.len()).fold(0, |b, k| if row[k] > row[b] { k } else { b }) as u32;
    let mut rows = Vec::new();
    for &position in &args.positions {
        let prompt: Vec<u32> = (0..position)
            .map(|_| rng.random_range(5..args.vocab as u32))
            .collect();
        let (mut cached, mut recomputed) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            // Over the cache: the prompt once (not timed), then a token at a time.
            let (mut g, first) = encoder.generate(&ctx, std::slice::from_ref(&prompt), capacity)?;
            let mut next = argmax(&first.wait(&ctx)?[0]);
            let start = Instant::now();
            for _ in 0..args.tokens {
                let logits = g.append(&ctx, &[Some(next)])?.wait(&ctx)?;
                next = argmax(&logits[0]);
            }
            cached.push(args.tokens as f64 / start.elapsed().as_secs_f64());
            drop(g);
            // The whole sequence each step, every position's logits read back.
            let mut seq = prompt.clone();
            let start = Instant::now();
            for _ in 0..args.recomputed_tokens {
                let request = Request::new(vec![Sequence::new(seq.clone())], Want::logits());
                let r = encoder.run_blocking(&ctx, &request)?;
                let logits = &r.logits(0)?.data;
                seq.push(argmax(&logits[logits.len() - args.vocab..]));
            }
            recomputed.push(args.recomputed_tokens as f64 / start.elapsed().as_secs_f64());
        }
        let (c, r) = (median(cached.clone()), median(recomputed.clone()));
        rows.push((position, c, r, cached, recomputed));
    }
    println!("\n| position | over the cache (tokens/s) | recomputed (tokens/s) | ratio |");
    println!("|---|---|---|---|");
    for (position, c, r, cs, rs) in &rows {
        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {position} | {c:.1} ({}) | {r:.2} ({}) | {:.1}× |",
            show(cs),
            show(rs),
            c / r
        );
    }
    // The caches' memory against the formula, for one sequence at this capacity.
    let before = encoder.memory().generation;
    let prompt = vec![5u32; 4];
    let (g, first) = encoder.generate(&ctx, std::slice::from_ref(&prompt), capacity)?;
    first.wait(&ctx)?;
    if args.linear {
        let d = args.hidden / args.heads;
        let formula = args.layers * args.heads * (d * d + d) * 4;
        println!(
            "\nstate     {} bytes at any position (formula {} layers × 1 sequence × {} heads × \
             ({d}² + {d}) × 4 bytes = {formula}); the encoder reports {} bytes for the \
             generation (states and step activations)",
            g.cache_bytes(),
            args.layers,
            args.heads,
            encoder.memory().generation - before
        );
        return Ok(());
    }
    // A local model keeps its globals and a ring for the window and the prompt.
    let slots = args
        .window
        .map_or(capacity, |w| capacity.min(args.globals + w + prompt.len()));
    let formula = 2 * args.layers * slots * args.hidden * 4;
    println!(
        "\ncache     {} bytes for {capacity} positions in {slots} slots (formula 2 × {} layers × \
         1 sequence × {slots} × {} × 4 bytes = {formula}); the encoder reports {} bytes for \
         the generation (caches and step activations)",
        g.cache_bytes(),
        args.layers,
        args.hidden,
        encoder.memory().generation - before
    );
    Ok(())
}

pub fn embed(args: &EmbedArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new()?;
    // A random bare encoder saved beside the tokenizer: a model folder the pipeline loads.
    let dir = std::env::temp_dir().join(format!("roformer-bench-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for f in std::fs::read_dir(&args.tokenizer)? {
        let f = f?.path();
        std::fs::copy(&f, dir.join(f.file_name().ok_or("a file without a name")?))?;
    }
    // The fixture tokenizer says 64 tokens at most; the bench's texts go to 512.
    let config_path = dir.join("tokenizer_config.json");
    let mut tc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
    tc["model_max_length"] = 512.into();
    std::fs::write(&config_path, tc.to_string())?;
    let tokenizer = roformer_wgpu::text::Tokenizer::from_dir(&dir)?;
    let config = RoFormerConfig::from_json(
        &serde_json::json!({
            "vocab_size": tokenizer.id_bound(), "hidden_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 512,
            "max_position_embeddings": 512,
        })
        .to_string(),
        "bench embed",
    )?;
    let model = RoFormer::new(&ctx, config, Head::Encoder)?;
    model.init_random(&ctx, 0)?;
    model.save(&ctx, &dir)?;
    let words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "attention",
        "is",
        "all",
        "you",
        "need",
        "memory",
        "gpu",
        "kernels",
        "run",
        "on",
        "vulkan",
        "metal",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let texts: Vec<String> = (0..args.texts)
        .map(|_| {
            // Mostly short, some long: a long text in a batch of short ones pads them all.
            let n = if rng.random_bool(0.1) {
                rng.random_range(args.longest / 2..=args.longest)
            } else {
                rng.random_range(1..=args.longest / 8)
            };
            (0..n)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let open = |sort_by_length| {
        let options = TextOptions {
            max_batch: args.max_batch,
            sort_by_length,
            ..TextOptions::default()
        };
        TextModel::load(&ctx, &dir, options)
    };
    let (sorted, unsorted) = (open(true)?, open(false)?);
    // Each once first: plans and pipelines.
    embed::sentences_blocking(&ctx, &sorted, &texts, Pooling::Mean, false)?;
    embed::sentences_blocking(&ctx, &unsorted, &texts, Pooling::Mean, false)?;
    let (mut s, mut u) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        for (model, times) in [(&unsorted, &mut u), (&sorted, &mut s)] {
            let start = Instant::now();
            embed::sentences_blocking(&ctx, model, &texts, Pooling::Mean, false)?;
            times.push(texts.len() as f64 / start.elapsed().as_secs_f64());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("adapter   {}", ctx.capabilities().adapter_name);
    println!(
        "embed     {} texts of 1 to {} words (a tenth long), batches of {}, a random 2 × 128 \
         encoder: lines per second",
        args.texts, args.longest, args.max_batch
    );
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  in the inputs' order  {:.1} ({})",
        median(u.clone()),
        show(&u)
    );
    println!(
        "  sorted by length      {:.1} ({})",
        median(s.clone()),
        show(&s)
    );
    println!("  ratio                 {:.2}×", median(s) / median(u));
    Ok(())
}
