//! The whole RoFormer against HuggingFace transformers (float64 fixtures): loss, logits,
//! every hidden state and every gradient to relative L2 < 1e-4, and ten AdamW steps.

mod common;

use common::*;
use roformer_wgpu::verify::verify;

const TOL: f64 = 1e-4;

fn check_fixture(name: &str) {
    let ctx = &ctx();
    let dir = fixtures_dir();
    let report = verify(ctx, dir.join(format!("{name}.config.json")), dir.join(format!("{name}.safetensors"))).unwrap();
    let mut lines = Vec::new();
    for c in &report.checks {
        lines.push(format!("{:<70} {:.2e}", c.name, c.error));
    }
    eprintln!("{name}:\n{}", lines.join("\n"));
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    for must in ["output.loss", "output.logits", "output.hidden_states.0", "output.hidden_states.2", "train.adamw_losses"] {
        assert!(names.contains(&must), "{name}: {must} was not compared");
    }
    let grads = names.iter().filter(|n| n.starts_with("grad.")).count();
    assert!(grads >= 30, "{name}: only {grads} gradients compared");
    let failures = report.failures(TOL);
    assert!(failures.is_empty(), "{name}: over tolerance: {failures:#?}");
}

#[test]
fn masked_lm_matches_transformers() {
    check_fixture("roformer_tiny_mlm");
}

#[test]
fn sequence_classification_matches_transformers() {
    check_fixture("roformer_tiny_cls");
}
