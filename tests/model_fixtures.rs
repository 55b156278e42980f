//! The whole RoFormer against HuggingFace transformers (float64 fixtures): outputs (through
//! the inference encoder), and for the heads this library trains (multi-label and regression
//! classifiers included) the loss, every gradient and ten AdamW steps, to relative L2 < 1e-4.
//! Every model fixture in `tests/fixtures/` (made by `tools/make_fixtures.py`): the HF test
//! suite's tiny shape, embedding projection, rotary_value, more heads, odd lengths, padding;
//! and every other RoFormer class transformers has, a bare encoder saved without the
//! `roformer.` prefix, a causal LM, an f16 checkpoint.

mod common;

use common::*;
use roformer_lab::verify::verify;

const TOL: f64 = 1e-4;

/// A trained head: outputs, the training graph's forward pass, loss, gradients, AdamW.
fn check_fixture(dir: &std::path::Path, name: &str) {
    check(
        dir,
        name,
        &[
            "output.loss",
            "output.logits",
            "training.output.logits",
            "output.hidden_states.0",
            "training.output.hidden_states.0",
            "output.last_hidden_state",
            "train.adamw_losses",
        ],
        20,
    );
}

/// Compares everything the fixture stores; `must` are compared, and at least `grads`
/// gradients.
fn check(dir: &std::path::Path, name: &str, must: &[&str], grads: usize) {
    let ctx = &ctx();
    let report = verify(
        ctx,
        dir.join(format!("{name}.config.json")),
        dir.join(format!("{name}.safetensors")),
    )
    .unwrap();
    let mut lines = Vec::new();
    for c in &report.checks {
        lines.push(format!("{:<70} {:.2e}", c.name, c.error));
    }
    eprintln!("{name}:\n{}", lines.join("\n"));
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    for must in must {
        assert!(names.contains(must), "{name}: {must} was not compared");
    }
    let compared = names.iter().filter(|n| n.starts_with("grad.")).count();
    assert!(
        compared >= grads,
        "{name}: only {compared} gradients compared"
    );
    let failures = report.failures(TOL);
    assert!(failures.is_empty(), "{name}: over tolerance: {failures:#?}");
}

/// An inference-only head: its outputs and every hidden state.
fn check_outputs(name: &str, outputs: &[&str]) {
    let mut must = vec!["output.hidden_states.0", "output.last_hidden_state"];
    must.extend(outputs);
    check(&fixtures_dir(), name, &must, 0);
}

#[test]
fn bare_encoder_saved_without_the_prefix_matches_transformers() {
    check_outputs("roformer_base_model", &[]);
}

#[test]
fn causal_lm_trains_like_transformers() {
    check_fixture(&fixtures_dir(), "roformer_causal_lm");
}

#[test]
fn token_classification_trains_like_transformers() {
    check_fixture(&fixtures_dir(), "roformer_token_cls");
}

#[test]
fn question_answering_matches_transformers() {
    check_outputs("roformer_qa", &["output.start_logits", "output.end_logits"]);
}

#[test]
fn multiple_choice_matches_transformers() {
    check_outputs("roformer_multiple_choice", &["output.logits"]);
}

/// BCE-with-logits on float 0/1 labels `[3, 3]`; MSE with one label (transformers squeezes
/// logits and labels to `[B]`, and infers regression from `num_labels` 1: the config's
/// `problem_type` is null) and with three.
#[test]
fn multi_label_and_regression_classifiers_train_like_transformers() {
    check_fixture(&fixtures_dir(), "roformer_multi_label");
    check_fixture(&fixtures_dir(), "roformer_regression");
    check_fixture(&fixtures_dir(), "roformer_regression_multi");
}

/// With float labels a step counts sequences: `counted` is the batch, `correct` the
/// sequences whose every label transformers' logits get right (sigmoid above one half
/// exactly where the label is 1) for the multi-label classifier, 0 for regression.
#[test]
fn float_label_metrics_count_sequences() {
    use roformer_lab::verify::batch_from;
    use roformer_wgpu::model::{Mode, RoFormer};
    let ctx = &ctx();
    let d = fixtures_dir();
    for name in ["roformer_multi_label", "roformer_regression_multi"] {
        let weights = d.join(format!("{name}.safetensors"));
        let tensors = roformer_wgpu::io::read_safetensors(&weights).unwrap();
        let model = RoFormer::from_pretrained(ctx, d.join(format!("{name}.config.json")), &weights)
            .unwrap();
        let (b, t, mut batch, _) = batch_from(&tensors).unwrap();
        let labels = model.classes();
        let logits = tensors["output.logits"].to_f32();
        if name.contains("multi_label") {
            // The first sequence's labels made transformers' predictions, so one is right.
            for (y, &x) in batch.float_labels.iter_mut().zip(&logits).take(labels) {
                *y = if x > 0.0 { 1.0 } else { 0.0 };
            }
        }
        let mut session = model.session(ctx, b, t, Mode::Inference).unwrap();
        session.set_batch(ctx, &batch).unwrap();
        let m = session.run(ctx).unwrap();
        assert_eq!(m.counted as usize, b, "{name}");
        let right = logits
            .chunks(labels)
            .zip(batch.float_labels.chunks(labels))
            .filter(|(x, y)| x.iter().zip(*y).all(|(&x, &y)| (x > 0.0) == (y > 0.5)))
            .count();
        let want = if name.contains("multi_label") {
            assert!(right > 0, "the test wants a sequence that is right");
            right
        } else {
            0
        };
        assert_eq!(m.correct as usize, want, "{name}");
        eprintln!("{name}: {} of {b} sequences right", m.correct);
    }
}

#[test]
fn an_f16_checkpoint_matches_transformers() {
    // Weights stored in float16 (the reference ran on the same values, upcast).
    check_outputs("roformer_f16_mlm", &["output.logits"]);
}

#[test]
fn masked_lm_matches_transformers() {
    check_fixture(&fixtures_dir(), "roformer_tiny_mlm");
}

#[test]
fn sequence_classification_matches_transformers() {
    check_fixture(&fixtures_dir(), "roformer_tiny_cls");
}

#[test]
fn embedding_projection_rotary_value_six_heads_odd_length() {
    check_fixture(&fixtures_dir(), "roformer_proj_rotv_mlm");
}

#[test]
fn eight_heads_three_layers_five_labels_heavy_padding() {
    check_fixture(&fixtures_dir(), "roformer_8heads_cls");
}

#[test]
fn single_layer_single_sequence() {
    check_fixture(&fixtures_dir(), "roformer_single_mlm");
}

/// `attention_kind` "local" (sliding window, global tokens) against transformers' RoFormer
/// given the equivalent 4-D additive mask (tools/make_local_attention_fixtures.py):
/// bidirectional with a global first token, causal with a window, causal with global
/// tokens, length 33 with three global tokens and `rotary_value`, padding in each. Outputs,
/// the training graph's forward pass, loss, every gradient and ten AdamW steps.
#[test]
fn local_attention_models_match_transformers() {
    for name in [
        "roformer_local_cls",
        "roformer_local_causal_lm",
        "roformer_local_causal_global",
        "roformer_local_mlm",
    ] {
        check_fixture(&fixtures_dir(), name);
    }
}

/// Local attention whose window covers the whole sequence is softmax attention: the
/// softmax fixtures (padding, a causal LM, `rotary_value`) through it, to the same tolerance.
#[test]
fn local_attention_with_a_window_past_the_length_is_softmax_attention() {
    use roformer_wgpu::model::{AttentionKind, RoFormer, RoFormerConfig};
    let ctx = &ctx();
    let dir = fixtures_dir();
    for name in [
        "roformer_tiny_mlm",
        "roformer_causal_lm",
        "roformer_proj_rotv_mlm",
    ] {
        let tensors =
            roformer_wgpu::io::read_safetensors(dir.join(format!("{name}.safetensors"))).unwrap();
        let mut config =
            RoFormerConfig::from_file(dir.join(format!("{name}.config.json"))).unwrap();
        config.attention = AttentionKind::Local;
        config.attention_window = Some(config.max_position_embeddings);
        config.validate().unwrap();
        let head = roformer_wgpu::model::detect_head(&config, &tensors).unwrap();
        let model = RoFormer::new(ctx, config, head).unwrap();
        model.load_tensors(ctx, &tensors).unwrap();
        let report = ctx
            .block_on(roformer_lab::verify::verify_model(ctx, &model, &tensors))
            .unwrap();
        let worst = report.checks.iter().map(|c| c.error).fold(0.0, f64::max);
        eprintln!(
            "{name} (local, window past the length): {} tensors, largest error {worst:.2e}",
            report.checks.len()
        );
        assert!(report.checks.len() > 20);
        let failures = report.failures(TOL);
        assert!(failures.is_empty(), "{name} local: {failures:#?}");
    }
}

/// The fused softmax attention inside the whole model, against the same transformers fixtures.
#[test]
fn fused_attention_model_matches_transformers() {
    use roformer_wgpu::model::{AttentionKind, RoFormer, RoFormerConfig};
    let ctx = &ctx();
    for (dir, name) in [
        (fixtures_dir(), "roformer_tiny_mlm"),
        (fixtures_dir(), "roformer_tiny_cls"),
        (fixtures_dir(), "roformer_proj_rotv_mlm"),
    ] {
        let tensors =
            roformer_wgpu::io::read_safetensors(dir.join(format!("{name}.safetensors"))).unwrap();
        let mut config =
            RoFormerConfig::from_file(dir.join(format!("{name}.config.json"))).unwrap();
        config.attention = AttentionKind::FusedSoftmax;
        let head = if name.contains("cls") {
            roformer_wgpu::model::Head::Classification
        } else {
            roformer_wgpu::model::Head::MaskedLm
        };
        let model = RoFormer::new(ctx, config, head).unwrap();
        model.load_tensors(ctx, &tensors).unwrap();
        let report = ctx
            .block_on(roformer_lab::verify::verify_model(ctx, &model, &tensors))
            .unwrap();
        let worst = report.checks.iter().map(|c| c.error).fold(0.0, f64::max);
        eprintln!(
            "{name} (fused attention): {} tensors, largest error {worst:.2e}",
            report.checks.len()
        );
        assert!(report.checks.len() > 20);
        let failures = report.failures(TOL);
        assert!(failures.is_empty(), "{name} fused: {failures:#?}");
    }
}

/// A checkpoint given as bytes (a browser's only way in): the model built from them matches
/// transformers, the inference encoder loads from them too, and corrupt bytes or a broken
/// config are an error that says which file is wrong, for both.
#[test]
fn checkpoints_load_from_bytes() {
    use roformer_wgpu::model::{Encoder, EncoderOptions, RoFormer};
    let ctx = &ctx();
    let name = "roformer_tiny_cls";
    let config =
        std::fs::read_to_string(fixtures_dir().join(format!("{name}.config.json"))).unwrap();
    let weights = std::fs::read(fixtures_dir().join(format!("{name}.safetensors"))).unwrap();
    let tensors = roformer_wgpu::io::parse_safetensors("model".as_ref(), &weights).unwrap();
    let model = RoFormer::from_bytes(ctx, &config, &weights).unwrap();
    let report = ctx
        .block_on(roformer_lab::verify::verify_model(ctx, &model, &tensors))
        .unwrap();
    assert!(report.checks.len() > 40, "{} checks", report.checks.len());
    let failures = report.failures(TOL);
    assert!(failures.is_empty(), "{name} from bytes: {failures:#?}");

    let options = || EncoderOptions {
        max_batch: 3,
        ..EncoderOptions::default()
    };
    Encoder::from_bytes(ctx, &config, &weights, options()).unwrap();
    let corrupt = &weights[..100];
    let model_error = RoFormer::from_bytes(ctx, &config, corrupt)
        .err()
        .unwrap()
        .to_string();
    let encoder_error = Encoder::from_bytes(ctx, &config, corrupt, options())
        .err()
        .unwrap()
        .to_string();
    for e in [&model_error, &encoder_error] {
        assert!(
            e.contains("model.safetensors") && e.contains("header"),
            "{e}"
        );
    }
    let bad_config = RoFormer::from_bytes(ctx, "{ not json", &weights)
        .err()
        .unwrap()
        .to_string();
    assert!(bad_config.contains("config.json"), "{bad_config}");
}

/// Every fixture's outputs (each hidden state, the head's output) through the inference
/// encoder in f16 (weights and activations; f32 sums), against transformers' float64
/// outputs: relative L2 below F16_TOL. Needs SHADER_F16 (llvmpipe's Vulkan has it).
#[test]
fn every_fixture_matches_transformers_in_f16_inference() {
    use roformer_lab::verify::verify_outputs;
    use roformer_wgpu::model::{AttentionKind, RoFormerConfig};
    const F16_TOL: f64 = 1e-2;
    let ctx = &ctx();
    if !has_f16(ctx, "f16 inference") {
        return;
    }
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_suffix(".config.json").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures: {names:?}");
    // A fixture's outputs through an f16 encoder, with its attention kind or another.
    let f16_report = |name: &str, attention: Option<AttentionKind>| {
        let dir = fixtures_dir();
        let mut cfg = RoFormerConfig::from_file(dir.join(format!("{name}.config.json"))).unwrap();
        cfg.attention = attention.unwrap_or(cfg.attention);
        let tensors =
            roformer_wgpu::io::read_safetensors(dir.join(format!("{name}.safetensors"))).unwrap();
        ctx.block_on(verify_outputs(
            ctx,
            cfg,
            &tensors,
            roformer_wgpu::DType::F16,
        ))
        .unwrap()
    };
    let mut worst = (0.0f64, String::new());
    for name in &names {
        let report = f16_report(name, None);
        let compared: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert!(
            compared.contains(&"output.last_hidden_state"),
            "{name}: {compared:?}"
        );
        for c in &report.checks {
            eprintln!("{name:<40} {:<40} {:.2e}", c.name, c.error);
            if c.error > worst.0 {
                worst = (c.error, format!("{name} {}", c.name));
            }
        }
        let failures = report.failures(F16_TOL);
        assert!(failures.is_empty(), "{name} in f16: {failures:#?}");
    }
    eprintln!(
        "f16 inference, worst relative L2 over {} fixtures: {:.2e} ({})",
        names.len(),
        worst.0,
        worst.1
    );
    // The fused attention kernels in f16, on the same references.
    for name in [
        "roformer_tiny_mlm",
        "roformer_proj_rotv_mlm",
        "roformer_8heads_cls",
    ] {
        let report = f16_report(name, Some(AttentionKind::FusedSoftmax));
        let worst = report.checks.iter().map(|c| c.error).fold(0.0, f64::max);
        eprintln!("{name} with fused attention in f16: worst {worst:.2e}");
        assert!(
            report.checks.len() >= 3,
            "{name}: {} checks",
            report.checks.len()
        );
        let failures = report.failures(F16_TOL);
        assert!(failures.is_empty(), "{name} fused in f16: {failures:#?}");
    }
}
