//! Generation over a key/value cache (`Encoder::generate`) against transformers' `generate`
//! (tests/fixtures/text/generate_long, made by tools/make_generation_fixtures.py: a causal
//! RoFormer with RoPE on values too, several prompts, each generated alone) and against the
//! encoder recomputing the whole sequence at every step.

mod common;

use common::{ctx, has_f16};
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::model::{Encoder, EncoderOptions, Request, Sequence, Want};
use roformer_wgpu::{Context, DType};
use serde_json::Value;

fn fixture() -> (std::path::PathBuf, Value) {
    let dir = common::manifest_dir().join("tests/fixtures/text/generate_long");
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn encoder(ctx: &Context, precision: DType) -> Encoder {
    let (dir, _) = fixture();
    let options = EncoderOptions {
        precision,
        ..EncoderOptions::default()
    };
    Encoder::from_pretrained(ctx, dir.join("config.json"), &dir, options).unwrap()
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding over the cache: `new` tokens for each prompt, and every step's logits.
fn greedy_cached(
    ctx: &Context,
    e: &Encoder,
    prompts: &[Vec<u32>],
    new: usize,
) -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
    let capacity = prompts.iter().map(Vec::len).max().unwrap() + new;
    let (mut generation, first) = e.generate(ctx, prompts, capacity).unwrap();
    let mut logits = first.wait(ctx).unwrap();
    let mut out = vec![Vec::new(); prompts.len()];
    let mut all = vec![logits.clone()];
    for step in 0..new {
        let next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        for (o, &t) in out.iter_mut().zip(&next) {
            o.push(t);
        }
        if step + 1 == new {
            break;
        }
        let tokens: Vec<Option<u32>> = next.into_iter().map(Some).collect();
        logits = generation.append(ctx, &tokens).unwrap().wait(ctx).unwrap();
        all.push(logits.clone());
    }
    (out, all)
}

/// Greedy decoding by running the whole sequence at every step (no cache).
fn greedy_recomputed(ctx: &Context, e: &Encoder, prompt: &[u32], new: usize) -> Vec<Vec<f32>> {
    let mut seq = prompt.to_vec();
    let mut all = Vec::new();
    for _ in 0..new {
        let request = Request::new(vec![Sequence::new(seq.clone())], Want::logits());
        let r = e.run_blocking(ctx, &request).unwrap();
        let logits = &r.logits(0).unwrap().data;
        let vocab = logits.len() / seq.len();
        let last = logits[(seq.len() - 1) * vocab..].to_vec();
        seq.push(argmax(&last));
        all.push(last);
    }
    all
}

#[test]
fn cached_greedy_generation_equals_transformers_alone_and_batched() {
    let ctx = &ctx();
    let (_, expected) = fixture();
    let prompts = ids(&expected["prompt_ids"]);
    let greedy = &expected["cases"][0];
    assert_eq!(greedy["name"], "greedy");
    let want = ids(&greedy["new_ids"]);
    let new = want[0].len();
    let e = encoder(ctx, DType::F32);
    // All prompts in one batch, each at its own length.
    let (batched, _) = greedy_cached(ctx, &e, &prompts, new);
    assert_eq!(batched.len(), want.len());
    for (i, (got, want)) in batched.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "prompt {i} batched");
    }
    // And each alone.
    for (i, p) in prompts.iter().enumerate() {
        let (alone, _) = greedy_cached(ctx, &e, std::slice::from_ref(p), new);
        assert_eq!(alone[0], want[i], "prompt {i} alone");
    }
}

#[test]
fn cached_logits_equal_the_whole_sequence_recomputed() {
    let ctx = &ctx();
    let (_, expected) = fixture();
    let prompts = ids(&expected["prompt_ids"]);
    let e = encoder(ctx, DType::F32);
    let new = 12;
    let (_, cached) = greedy_cached(ctx, &e, &prompts, new);
    for (i, p) in prompts.iter().enumerate() {
        let recomputed = greedy_recomputed(ctx, &e, p, new);
        for (step, want) in recomputed.iter().enumerate() {
            let err = rel_l2(&cached[step][i], want);
            assert!(err < 1e-5, "prompt {i} step {step}: relative error {err}");
        }
    }
}

#[test]
fn a_generation_runs_to_the_models_last_position() {
    let ctx = &ctx();
    let (_, expected) = fixture();
    let prompts = ids(&expected["prompt_ids"]);
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "to_the_end")
        .unwrap();
    let prompt = &prompts[case["prompt"].as_u64().unwrap() as usize];
    let want = &ids(&case["new_ids"])[0];
    let e = encoder(ctx, DType::F32);
    let (got, _) = greedy_cached(ctx, &e, std::slice::from_ref(prompt), want.len());
    assert_eq!(
        prompt.len() + want.len(),
        128,
        "the fixture fills the model"
    );
    assert_eq!(&got[0], want);
    // One more token does not fit.
    let (mut g, _) = e.generate(ctx, std::slice::from_ref(prompt), 128).unwrap();
    for _ in 0..want.len() {
        g.append(ctx, &[Some(1)]).unwrap().wait(ctx).unwrap();
    }
    let full = g.append(ctx, &[Some(1)]).err().unwrap().to_string();
    assert!(full.contains("capacity of 128"), "{full}");
}

/// f16 weights, activations and caches: each step's logits, fed the f32 run's tokens, within
/// f16's accuracy of the f32 run's.
#[test]
fn cached_generation_in_f16() {
    let ctx = &ctx();
    if !has_f16(ctx, "cached generation in f16") {
        return;
    }
    let (_, expected) = fixture();
    let prompts = ids(&expected["prompt_ids"]);
    let new = 16;
    let (tokens, want) = greedy_cached(ctx, &encoder(ctx, DType::F32), &prompts, new);
    let e = encoder(ctx, DType::F16);
    let capacity = prompts.iter().map(Vec::len).max().unwrap() + new;
    let (mut g, first) = e.generate(ctx, &prompts, capacity).unwrap();
    let mut logits = first.wait(ctx).unwrap();
    let mut worst: f64 = 0.0;
    for step in 0..new {
        for (i, row) in logits.iter().enumerate() {
            worst = worst.max(rel_l2(row, &want[step][i]));
        }
        if step + 1 < new {
            let next: Vec<Option<u32>> = tokens.iter().map(|t| Some(t[step])).collect();
            logits = g.append(ctx, &next).unwrap().wait(ctx).unwrap();
        }
    }
    eprintln!("f16 cached generation: worst relative error of a step's logits {worst:.2e}");
    assert!(worst < 1e-2, "{worst}");
}

/// A local-attention model (the fixture's weights, a window of 3 and one global token, far
/// shorter than the sequences) generates over its cache: each step reads only its window
/// and the global token, and its logits are those of the encoder run on the whole sequence
/// with local attention at every step.
#[test]
fn a_local_attention_model_generates_over_its_cache() {
    let ctx = &ctx();
    let (dir, expected) = fixture();
    let prompts = ids(&expected["prompt_ids"]);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["attention_kind"] = "local".into();
    config["attention_window"] = 3.into();
    config["global_tokens"] = 1.into();
    let path = std::env::temp_dir().join(format!("roformer-local-gen-{}.json", std::process::id()));
    std::fs::write(&path, config.to_string()).unwrap();
    let e = Encoder::from_pretrained(ctx, &path, &dir, EncoderOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let new = 12;
    let (_, cached) = greedy_cached(ctx, &e, &prompts, new);
    let softmax = encoder(ctx, DType::F32);
    let (_, full) = greedy_cached(ctx, &softmax, &prompts, new);
    for (i, p) in prompts.iter().enumerate() {
        assert!(p.len() + new > 5, "prompt {i}: the window must be shorter");
        let recomputed = greedy_recomputed(ctx, &e, p, new);
        for (step, want) in recomputed.iter().enumerate() {
            let err = rel_l2(&cached[step][i], want);
            assert!(err < 1e-5, "prompt {i} step {step}: relative error {err}");
        }
        // Not softmax over every key by mistake: past the window the logits differ.
        let last = new - 1;
        assert!(
            rel_l2(&cached[last][i], &full[last][i]) > 1e-3,
            "prompt {i}"
        );
    }
}

/// A step is the same planned pass at every position: its dispatches do not grow with the
/// sequence, and the encoder's memory report counts the caches while the generation lives.
#[test]
fn a_step_does_not_grow_with_the_position_and_its_cache_is_reported() {
    let ctx = &ctx();
    let e = encoder(ctx, DType::F32);
    let c = e.config().clone();
    let before = e.memory().generation;
    let (mut g, first) = e.generate(ctx, &[vec![2, 40, 41], vec![2]], 100).unwrap();
    first.wait(ctx).unwrap();
    let dispatches = g.step_dispatches();
    // 2 caches × layers × 2 sequences × 100 positions × hidden, f32.
    let cache = (2 * c.num_hidden_layers * 2 * 100 * c.hidden_size * 4) as u64;
    assert_eq!(g.cache_bytes(), cache);
    assert!(e.memory().generation >= before + cache);
    for _ in 0..90 {
        g.append(ctx, &[Some(5), None]).unwrap().wait(ctx).unwrap();
        assert_eq!(g.step_dispatches(), dispatches);
    }
    assert_eq!(g.lengths(), [93, 1]);
    drop(g);
    assert_eq!(e.memory().generation, before);
}

#[test]
fn generation_refuses_what_it_cannot_do() {
    let ctx = &ctx();
    let e = encoder(ctx, DType::F32);
    let err = |r: roformer_wgpu::Result<_>| r.err().unwrap().to_string();
    assert!(err(e.generate(ctx, &[], 8).map(drop)).contains("at least one prompt"));
    assert!(err(e.generate(ctx, &[vec![]], 8).map(drop)).contains("prompt 0 is empty"));
    assert!(err(e.generate(ctx, &[vec![1; 9]], 8).map(drop)).contains("capacity of 8"));
    assert!(err(e.generate(ctx, &[vec![1]], 129).map(drop)).contains("max_position_embeddings"));
    assert!(err(e.generate(ctx, &[vec![100_000]], 8).map(drop)).contains("100000"));
    let (mut g, _) = e.generate(ctx, &[vec![1], vec![2]], 8).unwrap();
    assert!(err(g.append(ctx, &[Some(1)]).map(drop)).contains("one token per sequence"));
}

/// The text-generation pipeline with transformers' settings, over the cache, all prompts in
/// one batch: the new ids of every case of the fixture (greedy, repetition_penalty,
/// no_repeat_ngram_size, both, an eos token that stops sequences early, max_length).
#[cfg(feature = "text")]
#[test]
fn the_pipeline_follows_transformers_generation_settings() {
    use roformer_wgpu::pipelines::generate::{self, GenerateOptions};
    use roformer_wgpu::pipelines::{TextModel, TextOptions};
    let ctx = &ctx();
    let (dir, expected) = fixture();
    let model = TextModel::load(ctx, &dir, TextOptions::default()).unwrap();
    let prompts: Vec<&str> = expected["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let prompt_ids = ids(&expected["prompt_ids"]);
    for case in expected["cases"].as_array().unwrap() {
        if case.get("prompt").is_some() {
            continue; // one prompt to the end: a_generation_runs_to_the_models_last_position
        }
        let s = &case["settings"];
        let number = |k: &str| s.get(k).and_then(Value::as_f64);
        let options = GenerateOptions {
            // transformers' max_length alone: as many new tokens as it allows.
            max_new_tokens: number("max_new_tokens").or(number("max_length")).unwrap() as usize,
            max_length: number("max_length").map(|n| n as usize),
            repetition_penalty: number("repetition_penalty").map_or(1.0, |p| p as f32),
            no_repeat_ngram_size: number("no_repeat_ngram_size").map_or(0, |n| n as usize),
            eos_token_ids: Some(
                number("eos_token_id")
                    .map(|e| e as u32)
                    .into_iter()
                    .collect(),
            ),
            ..GenerateOptions::default()
        };
        let mut stream = generate::stream(ctx, &model, &prompts, options).unwrap();
        let mut steps = 0;
        while ctx.block_on(stream.next()).unwrap().is_some() {
            steps += 1;
        }
        let want = ids(&case["new_ids"]);
        assert_eq!(
            steps,
            want.iter().map(Vec::len).max().unwrap(),
            "{}",
            case["name"]
        );
        for (i, want) in want.iter().enumerate() {
            assert_eq!(
                stream.new_tokens(i),
                &want[..],
                "{} prompt {i}",
                case["name"]
            );
            let text = stream.generated(i).unwrap().generated_text;
            assert!(text.starts_with(prompts[i]));
            assert_eq!(prompt_ids[i].len() + want.len(), {
                let n = model.count_tokens(prompts[i], None).unwrap();
                n + stream.new_tokens(i).len()
            });
        }
    }
    // The folder's generation_config.json: eos_token_id and max_length.
    let from_folder = GenerateOptions::for_model(&model);
    assert_eq!(
        from_folder.eos_token_ids,
        Some(vec![expected["eos_token_id"].as_u64().unwrap() as u32])
    );
    assert_eq!(from_folder.max_length, Some(48));
}

/// A linear-attention model generates over a recurrent state per layer instead of a
/// key/value cache (RoFormer eq. 19 as a recurrence): its logits, all prompts in one batch at
/// their own lengths, are those of the encoder run on the whole sequence (the chunked causal
/// kernels) at every step, and the pipeline's tokens are the greedy ones of that. The state
/// does not grow: `layers × sequences × heads × (d² + d)` f32 whatever the capacity.
#[cfg(feature = "text")]
#[test]
fn a_linear_attention_model_generates_over_a_recurrent_state() {
    use roformer_wgpu::pipelines::generate::{self, GenerateOptions};
    use roformer_wgpu::pipelines::{TextModel, TextOptions};
    let ctx = &ctx();
    let (dir, _) = fixture();
    // The same weights as linear attention, in a folder of its own.
    let linear = std::env::temp_dir().join(format!("roformer-linear-gen-{}", std::process::id()));
    std::fs::create_dir_all(&linear).unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, linear.join(f.file_name().unwrap())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["attention_kind"] = "linear".into();
    config["rotary_value"] = false.into();
    std::fs::write(linear.join("config.json"), config.to_string()).unwrap();
    let model = TextModel::load(ctx, &linear, TextOptions::default()).unwrap();
    let e = model.encoder();
    let (_, expected) = fixture();
    let prompts = ids(&expected["prompt_ids"]);
    let new = 12;
    let (_, cached) = greedy_cached(ctx, e, &prompts, new);
    for (i, p) in prompts.iter().enumerate() {
        let recomputed = greedy_recomputed(ctx, e, p, new);
        for (step, want) in recomputed.iter().enumerate() {
            let err = rel_l2(&cached[step][i], want);
            assert!(err < 1e-5, "prompt {i} step {step}: relative error {err}");
        }
    }
    // A sequence that sits a step out (None) keeps its state: resumed, its logits are those
    // of its whole sequence.
    let (mut g, first) = e.generate(ctx, &prompts[..2], 32).unwrap();
    let first = first.wait(ctx).unwrap();
    let (t0, t1) = (argmax(&first[0]), argmax(&first[1]));
    g.append(ctx, &[Some(t0), None]).unwrap().wait(ctx).unwrap();
    let resumed = g.append(ctx, &[None, Some(t1)]).unwrap().wait(ctx).unwrap();
    let mut seq = prompts[1].clone();
    seq.push(t1);
    let want = &greedy_recomputed(ctx, e, &seq, 1)[0];
    let err = rel_l2(&resumed[1], want);
    assert!(err < 1e-5, "the resumed sequence: relative error {err}");
    assert_eq!(g.lengths(), [prompts[0].len() + 1, prompts[1].len() + 1]);
    drop(g);
    let c = e.config().clone();
    let d = c.hidden_size / c.num_attention_heads;
    for capacity in [16, 64] {
        let (g, _) = e.generate(ctx, &[vec![2, 3], vec![4]], capacity).unwrap();
        let state = c.num_hidden_layers * 2 * c.num_attention_heads * (d * d + d) * 4;
        assert_eq!(g.cache_bytes(), state as u64, "capacity {capacity}");
    }
    let options = GenerateOptions {
        max_new_tokens: 6,
        eos_token_ids: Some(Vec::new()),
        ..GenerateOptions::default()
    };
    let got = generate::run_blocking(ctx, &model, &["the quick brown", "a"], options).unwrap();
    for (i, prompt) in ["the quick brown", "a"].iter().enumerate() {
        let ids = model.tokenizer().encode(prompt).unwrap().input_ids;
        let logits = greedy_recomputed(ctx, model.encoder(), &ids, 6);
        let tokens: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
        let text = model.tokenizer().decode(&tokens, true).unwrap();
        assert_eq!(got[i].generated_text, format!("{prompt}{text}"));
    }
    std::fs::remove_dir_all(&linear).unwrap();
}

/// Without the cache (transformers' use_cache false) the pipeline recomputes each step, and
/// gives transformers' tokens too.
#[cfg(feature = "text")]
#[test]
fn the_pipeline_without_the_cache_gives_the_same_tokens() {
    use roformer_wgpu::pipelines::generate::{self, GenerateOptions};
    use roformer_wgpu::pipelines::{TextModel, TextOptions};
    let ctx = &ctx();
    let (dir, expected) = fixture();
    let model = TextModel::load(ctx, &dir, TextOptions::default()).unwrap();
    let prompts: Vec<&str> = expected["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let want = ids(&expected["cases"][0]["new_ids"]);
    let options = GenerateOptions {
        max_new_tokens: 12,
        eos_token_ids: Some(Vec::new()),
        use_cache: false,
        ..GenerateOptions::default()
    };
    let mut stream = generate::stream(ctx, &model, &prompts, options).unwrap();
    while ctx.block_on(stream.next()).unwrap().is_some() {}
    for (i, want) in want.iter().enumerate() {
        assert_eq!(stream.new_tokens(i), &want[..12], "prompt {i}");
    }
}
