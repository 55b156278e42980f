//! The pipelines against transformers' pipelines (tests/fixtures/text/<task>/expected.json,
//! made by tools/make_text_fixtures.py on small random models saved with save_pretrained):
//! top-k ids and scores within 1e-4, the same labels, spans and offsets, embeddings within
//! 1e-4 relative L2, greedy generation token-identical.

#![cfg(feature = "text")]

mod common;

use std::path::PathBuf;

use common::{ctx, has_f16};
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::pipelines::answer::AnswerOptions;
use roformer_wgpu::pipelines::embed::Pooling;
use roformer_wgpu::pipelines::generate::{Decoding, GenerateOptions};
use roformer_wgpu::pipelines::{
    answer, classify, embed, fill_mask, generate, token_classify, TextModel, TextOptions,
};
use roformer_wgpu::Context;
use serde_json::Value;

fn dir(task: &str) -> PathBuf {
    common::manifest_dir()
        .join("tests/fixtures/text")
        .join(task)
}

fn expected(task: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(task).join("expected.json")).unwrap())
        .unwrap()
}

fn load(ctx: &Context, task: &str) -> TextModel {
    TextModel::load(ctx, dir(task), TextOptions::default()).unwrap()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn err<T: std::fmt::Debug>(r: Result<T, roformer_wgpu::Error>) -> String {
    r.unwrap_err().to_string()
}

thread_local! {
    /// This test's largest score difference from transformers (printed with --nocapture).
    static WORST: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

fn close(got: f64, want: &Value, what: &str) {
    let want = want.as_f64().unwrap();
    let d = (got - want).abs();
    assert!(d <= 1e-4, "{what}: {got} vs transformers' {want}");
    WORST.with(|w| w.set(w.get().max(d)));
}

fn report(what: &str) {
    let worst = WORST.with(|w| w.get());
    println!("{what}: largest score difference from transformers {worst:.1e}");
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check_fill_mask(task: &str) {
    let ctx = &ctx();
    let model = load(ctx, task);
    let want = expected(task);
    let texts = strs(&want["inputs"]);
    let got = fill_mask::run_blocking(ctx, &model, &texts, 5).unwrap();
    assert_eq!(got.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(got[i].len(), 1, "{text}: one mask");
        let w = want["outputs"][i].as_array().unwrap();
        assert_eq!(got[i][0].len(), w.len());
        for (g, w) in got[i][0].iter().zip(w) {
            let what = format!("{task} {text:?} token {}", g.token);
            assert_eq!(g.token as u64, w["token"].as_u64().unwrap(), "{what}");
            close(g.score, &w["score"], &what);
            assert_eq!(g.token_str, w["token_str"].as_str().unwrap(), "{what}");
            assert_eq!(g.sequence, w["sequence"].as_str().unwrap(), "{what}");
        }
    }
}

#[test]
fn fill_mask_matches_transformers() {
    check_fill_mask("fill_mask");
    report("fill-mask");
}

#[test]
fn fill_mask_with_the_jieba_tokenizer_matches_transformers() {
    check_fill_mask("fill_mask_jieba");
    report("fill-mask, jieba");
}

#[test]
fn text_classification_matches_transformers() {
    let ctx = &ctx();
    let model = load(ctx, "classify");
    let want = expected("classify");
    let texts = strs(&want["inputs"]);
    let got = classify::run_blocking(ctx, &model, &texts, None, None).unwrap();
    assert_eq!(got.len(), texts.len());
    for (i, labels) in got.iter().enumerate() {
        let top = &want["outputs"][i][0];
        assert_eq!(labels[0].label, top["label"].as_str().unwrap());
        close(labels[0].score, &top["score"], "top label");
        let all = want["outputs_all"][i].as_array().unwrap();
        assert_eq!(labels.len(), all.len());
        for (g, w) in labels.iter().zip(all) {
            assert_eq!(g.label, w["label"].as_str().unwrap());
            close(g.score, &w["score"], &g.label);
        }
    }
    report("text classification");
}

/// The same pipeline with weights and activations in f16 (`TextOptions::precision`): the
/// same top labels as transformers, every score within 1e-2 of its probability.
#[test]
fn text_classification_in_f16_matches_transformers_within_f16_accuracy() {
    let ctx = &ctx();
    if !has_f16(ctx, "classification in f16") {
        return;
    }
    let options = TextOptions {
        precision: roformer_wgpu::DType::F16,
        ..TextOptions::default()
    };
    let model = TextModel::load(ctx, dir("classify"), options).unwrap();
    let want = expected("classify");
    let texts = strs(&want["inputs"]);
    let got = classify::run_blocking(ctx, &model, &texts, None, None).unwrap();
    assert_eq!(got.len(), texts.len());
    for (i, labels) in got.iter().enumerate() {
        let all = want["outputs_all"][i].as_array().unwrap();
        assert_eq!(labels.len(), all.len());
        assert_eq!(
            labels[0].label,
            want["outputs"][i][0]["label"].as_str().unwrap()
        );
        for (g, w) in labels.iter().zip(all) {
            assert_eq!(g.label, w["label"].as_str().unwrap());
            let w = w["score"].as_f64().unwrap();
            assert!(
                (g.score - w).abs() < 1e-2,
                "{}: {} in f16, {w} in transformers",
                g.label,
                g.score
            );
        }
    }
}

#[test]
fn token_classification_matches_transformers() {
    let ctx = &ctx();
    let model = load(ctx, "token_classify");
    let want = expected("token_classify");
    let texts = strs(&want["inputs"]);
    let got = token_classify::run_blocking(ctx, &model, &texts).unwrap();
    assert_eq!(got.len(), texts.len());
    for (i, entities) in got.iter().enumerate() {
        let w = want["outputs"][i].as_array().unwrap();
        assert_eq!(entities.len(), w.len(), "{}: entities", texts[i]);
        for (g, w) in entities.iter().zip(w) {
            assert_eq!(g.entity_group, w["entity_group"].as_str().unwrap());
            assert_eq!(g.word, w["word"].as_str().unwrap());
            assert_eq!(
                (g.start as u64, g.end as u64),
                (w["start"].as_u64().unwrap(), w["end"].as_u64().unwrap())
            );
            close(g.score, &w["score"], &g.word);
        }
    }
    let tokens = token_classify::run_tokens_blocking(ctx, &model, &texts).unwrap();
    assert_eq!(tokens.len(), texts.len());
    for (i, tokens) in tokens.iter().enumerate() {
        let w = want["outputs_none"][i].as_array().unwrap();
        assert_eq!(tokens.len(), w.len());
        for (g, w) in tokens.iter().zip(w) {
            assert_eq!(g.entity, w["entity"].as_str().unwrap());
            assert_eq!(g.index as u64, w["index"].as_u64().unwrap());
            assert_eq!(g.word, w["word"].as_str().unwrap());
            close(g.score, &w["score"], &g.word);
        }
    }
    report("token classification");
}

#[test]
fn feature_extraction_and_sentence_embeddings_match_transformers() {
    let ctx = &ctx();
    let model = load(ctx, "embed");
    let want = expected("embed");
    let texts = strs(&want["inputs"]);
    let features = embed::features_blocking(ctx, &model, &texts).unwrap();
    assert_eq!(features.len(), texts.len());
    for (i, f) in features.iter().enumerate() {
        let w: Vec<f64> = want["features"][i]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(f64s)
            .collect();
        let g: Vec<f32> = f.concat();
        let e = rel_l2(&g, &w);
        assert!(e < 1e-4, "features {i}: {e}");
        println!("feature extraction {i}: relative L2 {e:.1e}");
    }
    for (key, pooling, normalize) in [
        ("mean", Pooling::Mean, false),
        ("cls", Pooling::Cls, false),
        ("mean_normalized", Pooling::Mean, true),
    ] {
        let got = embed::sentences_blocking(ctx, &model, &texts, pooling, normalize).unwrap();
        assert_eq!(got.len(), texts.len());
        for (i, g) in got.iter().enumerate() {
            let e = rel_l2(g, &f64s(&want[key][i]));
            assert!(e < 1e-4, "{key} {i}: {e}");
            println!("embedding {key} {i}: relative L2 {e:.1e}");
        }
    }
}

#[test]
fn question_answering_matches_transformers_4s_pipeline() {
    let ctx = &ctx();
    let model = load(ctx, "qa");
    let want = expected("qa");
    let cases = want["cases"].as_array().unwrap();
    let inputs: Vec<(&str, &str)> = cases
        .iter()
        .map(|c| {
            (
                c["question"].as_str().unwrap(),
                c["context"].as_str().unwrap(),
            )
        })
        .collect();
    for (top_k, key) in [(1, "answer"), (3, "top3")] {
        let got = answer::run_blocking(
            ctx,
            &model,
            &inputs,
            AnswerOptions {
                top_k,
                ..AnswerOptions::default()
            },
        )
        .unwrap();
        assert_eq!(got.len(), inputs.len());
        for (i, answers) in got.iter().enumerate() {
            let w: Vec<&Value> = match &cases[i][key] {
                Value::Array(a) => a.iter().collect(),
                one => vec![one],
            };
            assert_eq!(answers.len(), w.len());
            for (g, w) in answers.iter().zip(w) {
                assert_eq!(g.answer, w["answer"].as_str().unwrap(), "case {i}");
                assert_eq!(g.start as u64, w["start"].as_u64().unwrap());
                assert_eq!(g.end as u64, w["end"].as_u64().unwrap());
                close(g.score, &w["score"], &g.answer);
            }
        }
    }
    report("question answering");
}

#[test]
fn greedy_generation_matches_transformers() {
    let ctx = &ctx();
    let model = load(ctx, "generate");
    let want = expected("generate");
    let prompts = strs(&want["inputs"]);
    let options = GenerateOptions {
        max_new_tokens: want["max_new_tokens"].as_u64().unwrap() as usize,
        decoding: Decoding::Greedy,
        ..GenerateOptions::default()
    };
    let got = generate::run_blocking(ctx, &model, &prompts, options).unwrap();
    assert_eq!(got.len(), prompts.len());
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.generated_text,
            want["outputs"][i][0]["generated_text"].as_str().unwrap()
        );
    }
}

#[test]
fn sampling_is_seeded_and_keeps_to_top_k() {
    let ctx = &ctx();
    let model = load(ctx, "generate");
    let sample = |seed| GenerateOptions {
        max_new_tokens: 6,
        decoding: Decoding::Sample {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed,
        },
        ..GenerateOptions::default()
    };
    // top_k 1 is greedy, whatever the seed
    let greedy = generate::run_blocking(
        ctx,
        &model,
        &["the quick brown"],
        GenerateOptions {
            max_new_tokens: 6,
            decoding: Decoding::Greedy,
            ..GenerateOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        generate::run_blocking(ctx, &model, &["the quick brown"], sample(7)).unwrap(),
        greedy
    );
    let wide = |seed| GenerateOptions {
        max_new_tokens: 6,
        decoding: Decoding::Sample {
            temperature: 1.5,
            top_k: 50,
            top_p: 0.95,
            seed,
        },
        ..GenerateOptions::default()
    };
    let a = generate::run_blocking(ctx, &model, &["the quick brown"], wide(1)).unwrap();
    let b = generate::run_blocking(ctx, &model, &["the quick brown"], wide(1)).unwrap();
    assert_eq!(a, b, "same seed, same text");
    let others: Vec<_> = (2..6)
        .map(|s| generate::run_blocking(ctx, &model, &["the quick brown"], wide(s)).unwrap())
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds never differed"
    );
}

#[test]
fn pipelines_refuse_bad_input_clearly() {
    let ctx = &ctx();
    let mlm = load(ctx, "fill_mask");
    assert!(
        err(fill_mask::run_blocking(ctx, &mlm, &["no mask here"], 5)).contains("no mask token")
    );
    assert!(err(fill_mask::run_blocking(ctx, &mlm, &[""], 5)).contains("empty"));
    assert!(err(fill_mask::run_blocking(ctx, &mlm, &[], 5)).contains("no input"));
    let long = "hello ".repeat(100) + "[MASK]";
    let e = err(fill_mask::run_blocking(ctx, &mlm, &[&long], 5));
    assert!(e.contains("more than the model's maximum of 64"), "{e}");
    // the wrong head for the task
    let e = err(classify::run_blocking(ctx, &mlm, &["hi"], None, None));
    assert!(
        e.contains("RoFormerForSequenceClassification") && e.contains("RoFormerForMaskedLM"),
        "{e}"
    );
    // truncation on request
    let cut = TextModel::load(
        ctx,
        dir("fill_mask"),
        TextOptions {
            truncate: true,
            ..TextOptions::default()
        },
    )
    .unwrap();
    let long = "[MASK] ".to_string() + &"hello ".repeat(100);
    assert_eq!(
        fill_mask::run_blocking(ctx, &cut, &[&long], 2).unwrap()[0][0].len(),
        2
    );
}

/// Numbers from users are clamped, not trusted: fill-mask's top_k to the vocabulary (before:
/// `Vec::with_capacity(top_k)` aborted or panicked), answer's top_k near 2^63 to every
/// candidate (before: `2·top_k + 10` overflowed: a panic here, a handful of candidates in a
/// release build).
#[test]
fn huge_top_k_is_clamped() {
    let ctx = &ctx();
    let mlm = load(ctx, "fill_mask");
    let vocab = mlm.config().vocab_size;
    let all = fill_mask::run_blocking(ctx, &mlm, &["a [MASK]"], usize::MAX).unwrap();
    assert_eq!(all[0][0].len(), vocab);
    let qa = load(ctx, "qa");
    let input = [("who jumps?", "the quick brown fox jumps over the lazy dog")];
    let ask = |top_k| {
        answer::run_blocking(
            ctx,
            &qa,
            &input,
            AnswerOptions {
                top_k,
                ..AnswerOptions::default()
            },
        )
        .unwrap()
    };
    let many = ask(1000);
    assert!(many[0].len() > 10, "{many:?}");
    assert_eq!(ask(usize::MAX / 2 + 1), many);
}

/// With truncation, a long prompt loses its start, leaving room for max_new_tokens (before:
/// it lost its end, cut to the model's maximum, then was refused as the new tokens did not
/// fit): two prompts that differ only in their first words, cut away, continue alike.
/// max_new_tokens leaving no room is refused, naming both numbers.
#[test]
fn generation_truncates_prompts_from_the_left() {
    let ctx = &ctx();
    let cut = TextModel::load(
        ctx,
        dir("generate"),
        TextOptions {
            truncate: true,
            ..TextOptions::default()
        },
    )
    .unwrap();
    let options = GenerateOptions {
        max_new_tokens: 8,
        decoding: Decoding::Greedy,
        ..GenerateOptions::default()
    };
    assert_eq!(generate::prompt_room(&cut, 8).unwrap(), 56);
    let tail = "hello ".repeat(70) + "the quick brown";
    let prompts = [format!("fox fox fox {tail}"), format!("dog {tail}")];
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let got = generate::run_blocking(ctx, &cut, &prompts, options.clone()).unwrap();
    assert_eq!(got.len(), 2);
    let continuation = |i: usize| &got[i].generated_text[prompts[i].len()..];
    assert!(got[0].generated_text.starts_with(prompts[0]));
    assert!(!continuation(0).is_empty());
    assert_eq!(continuation(0), continuation(1));

    let e = err(generate::run_blocking(
        ctx,
        &cut,
        &["hi"],
        GenerateOptions {
            max_new_tokens: 64,
            ..options.clone()
        },
    ));
    assert!(e.contains("max_new_tokens 64 leaves no room") && e.contains("64 tokens at most"));
    let whole = load(ctx, "generate");
    let e = err(generate::run_blocking(ctx, &whole, &prompts, options));
    assert!(
        e.starts_with("input 0, \"fox fox") && e.contains("TextOptions::truncate cuts the prompt"),
        "{e}"
    );
}

/// An error about an input quotes its start, not all of it (before: the whole text).
#[test]
fn errors_quote_the_start_of_an_input() {
    let ctx = &ctx();
    let cut = TextModel::load(
        ctx,
        dir("fill_mask"),
        TextOptions {
            truncate: true,
            ..TextOptions::default()
        },
    )
    .unwrap();
    let text = "a ".repeat(100_000) + "[MASK]";
    let e = err(fill_mask::run_blocking(ctx, &cut, &["[MASK] x", &text], 2));
    assert!(e.len() < 300, "{} bytes", e.len());
    assert!(
        e.starts_with("input 1, \"a a a") && e.contains("… (200006 characters): no mask token"),
        "{e}"
    );
}

#[test]
fn model_folders_that_do_not_fit_are_errors() {
    let ctx = &ctx();
    let scratch = std::env::temp_dir().join(format!("roformer-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let src = dir("fill_mask");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), scratch.join(f)).unwrap();
    }
    let e = TextModel::load(ctx, &scratch, TextOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // a folder where the weights' file should be
    std::fs::create_dir(scratch.join("model.safetensors")).unwrap();
    let e = TextModel::load(ctx, &scratch, TextOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors: a folder"), "{e}");
    // the same folder given to the encoder, which takes folders of weights
    let e = roformer_wgpu::model::Encoder::from_pretrained(
        ctx,
        scratch.join("config.json"),
        scratch.join("model.safetensors"),
        roformer_wgpu::model::EncoderOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("a folder with neither model.safetensors nor model.safetensors.index.json"),
        "{e}"
    );
    std::fs::remove_dir(scratch.join("model.safetensors")).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        scratch.join("model.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(scratch.join("config.json")).unwrap();
    let e = TextModel::load(ctx, &scratch, TextOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    // a config whose vocabulary is smaller than the tokenizer's
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 100.into();
    std::fs::write(scratch.join("config.json"), config.to_string()).unwrap();
    let e = TextModel::load(ctx, &scratch, TextOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not belong together"), "{e}");
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Texts go to the GPU sorted by length, and the answers still come in the inputs' order:
/// the same as with sorting off, and as transformers gives for each text alone.
#[test]
fn length_sorted_batches_answer_in_the_inputs_order() {
    let ctx = &ctx();
    let want = expected("classify");
    let base = strs(&want["inputs"]);
    // Long, short and in between, interleaved, so sorting reorders them across batches.
    let texts: Vec<String> = (0..9)
        .map(|i| base[i % base.len()].repeat(1 + (i * 5) % 4))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let open = |sort_by_length| {
        let options = TextOptions {
            max_batch: 2,
            sort_by_length,
            truncate: true,
            ..TextOptions::default()
        };
        TextModel::load(ctx, dir("classify"), options).unwrap()
    };
    let sorted = classify::run_blocking(ctx, &open(true), &texts, None, None).unwrap();
    let unsorted = classify::run_blocking(ctx, &open(false), &texts, None, None).unwrap();
    assert_eq!(sorted.len(), texts.len());
    for (i, (a, b)) in sorted.iter().zip(&unsorted).enumerate() {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.label, y.label, "text {i}");
            assert!((x.score - y.score).abs() < 1e-5, "text {i}");
        }
    }
    // The texts of the fixture itself, among the others, get transformers' labels.
    for (i, text) in texts.iter().enumerate() {
        if let Some(k) = base.iter().position(|b| b == text) {
            assert_eq!(
                sorted[i][0].label,
                want["outputs"][k][0]["label"].as_str().unwrap()
            );
        }
    }
}
