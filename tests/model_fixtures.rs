//! The whole RoFormer against HuggingFace transformers (float64 fixtures): loss, logits,
//! every hidden state and every gradient to relative L2 < 1e-4, and ten AdamW steps.
//! Every model fixture in `tests/fixtures/` (made by `tools/make_fixtures.py`): the HF test
//! suite's tiny shape, and embedding projection, rotary_value, more heads, odd lengths, padding.

mod common;

use common::*;
use roformer_wgpu::apps::verify::verify;

const TOL: f64 = 1e-4;

fn check_fixture(dir: &std::path::Path, name: &str) {
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
    for must in [
        "output.loss",
        "output.logits",
        "output.hidden_states.0",
        "output.last_hidden_state",
        "train.adamw_losses",
    ] {
        assert!(names.contains(&must), "{name}: {must} was not compared");
    }
    let grads = names.iter().filter(|n| n.starts_with("grad.")).count();
    assert!(grads >= 20, "{name}: only {grads} gradients compared");
    let failures = report.failures(TOL);
    assert!(failures.is_empty(), "{name}: over tolerance: {failures:#?}");
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
        let report = roformer_wgpu::apps::verify::verify_model(ctx, &model, &tensors).unwrap();
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
