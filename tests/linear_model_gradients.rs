//! The linear-attention RoFormer (RoFormer eq. 19) has no transformers fixture, so its GPU
//! gradients are checked against central finite differences of the f64 CPU reference model
//! (`model::reference`), on sampled coordinates of every parameter: relative L2 < 1e-3
//! (< 1e-2 in mixed precision, where the passes run in f16).

mod common;

use common::reference_model::*;
use common::*;
use rand::SeedableRng;
use roformer_wgpu::model::{Head, RoFormer};

fn check(head: Head, causal: bool, seed: u64, mixed: bool) {
    let ctx = &ctx();
    if mixed && !has_f16(ctx, "linear attention in mixed precision") {
        return;
    }
    let c = tiny_config(&format!(
        r#""attention_kind": "linear", "causal": {causal}"#
    ));
    let mut model = RoFormer::new(ctx, c, head).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    model
        .load_tensors(ctx, &random_weights(&model, &mut rng))
        .unwrap();
    if mixed {
        model.use_mixed_precision(ctx, Default::default()).unwrap();
    }
    let tolerances = if mixed { (1e-3, 1e-2) } else { (1e-5, 1e-3) };
    let what = format!("{head:?} causal={causal} mixed={mixed}");
    check_against_reference(ctx, &model, head, &mut rng, tolerances, &what);
}

#[test]
fn masked_lm_gradients_match_finite_differences() {
    check(Head::MaskedLm, false, 21, false);
}

#[test]
fn causal_classifier_gradients_match_finite_differences() {
    check(Head::Classification, true, 22, false);
}

#[test]
fn mixed_precision_gradients_match_finite_differences() {
    check(Head::MaskedLm, false, 21, true);
    check(Head::Classification, true, 22, true);
}
