//! The linear-attention RoFormer (RoFormer eq. 19) has no transformers fixture, so its GPU
//! gradients are checked against central finite differences of the f64 CPU reference model
//! (`model::reference`), on sampled coordinates of every parameter: relative L2 < 1e-3
//! (< 1e-2 in mixed precision, where the passes run in f16).

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::io::{HostTensor, HostTensors};
use roformer_wgpu::model::reference::{self, Weights};
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};

fn config(causal: bool) -> RoFormerConfig {
    let json = format!(
        r#"{{"vocab_size": 23, "embedding_size": 12, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 24, "max_position_embeddings": 16,
            "num_labels": 3, "attention_kind": "linear", "causal": {causal}}}"#
    );
    RoFormerConfig::from_json(&json, "test").unwrap()
}

fn check(head: Head, causal: bool, seed: u64, mixed: bool) {
    let ctx = &ctx();
    if mixed && !has_f16(ctx, "linear attention in mixed precision") {
        return;
    }
    let c = config(causal);
    let mut model = RoFormer::new(ctx, c.clone(), head).unwrap();
    // Random weights, LayerNorm and biases included, so every path carries signal.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors = HostTensors::new();
    for s in model.params().specs() {
        let base = if s.name.contains("LayerNorm.weight") {
            1.0
        } else {
            0.0
        };
        let data = (0..s.numel())
            .map(|_| base + rng.random_range(-0.4f32..0.4))
            .collect();
        tensors.insert(s.name.clone(), HostTensor::f32(&s.shape, data));
    }
    model.load_tensors(ctx, &tensors).unwrap();
    if mixed {
        model.use_mixed_precision(ctx, Default::default()).unwrap();
    }
    let (loss_tol, grad_tol) = if mixed { (1e-3, 1e-2) } else { (1e-5, 1e-3) };

    let (b, t) = (2, 7);
    let batch = Batch {
        input_ids: (0..b * t).map(|_| rng.random_range(0..23)).collect(),
        attention_mask: (0..b * t).map(|i| u32::from(i < t + 5)).collect(),
        token_type_ids: (0..b * t).map(|_| rng.random_range(0..2)).collect(),
        labels: match head {
            Head::MaskedLm => (0..b * t)
                .map(|i| {
                    if i % 3 == 0 && i < t + 5 {
                        rng.random_range(0..23)
                    } else {
                        -100
                    }
                })
                .collect(),
            _ => vec![2, 0], // Head::Classification, the other head tested
        },
        ..Default::default()
    };
    let mut session = model.session(ctx, b, t, Mode::Gradients).unwrap();
    session.set_batch(ctx, &batch).unwrap();
    let gpu_loss = session.run(ctx).unwrap().loss;
    let grads = model.params().download_grads(ctx).unwrap();

    let weights: Weights = model
        .params()
        .download(ctx)
        .unwrap()
        .into_iter()
        .map(|(n, _, v)| (n, v.iter().map(|&x| x as f64).collect()))
        .collect();
    let cpu_loss = reference::loss(&c, head, &weights, &batch, b, t).unwrap();
    assert!(
        ((gpu_loss as f64 - cpu_loss) / cpu_loss).abs() < loss_tol,
        "loss: GPU {gpu_loss} vs CPU {cpu_loss}"
    );

    let (mut ours, mut fd) = (Vec::new(), Vec::new());
    let h = 1e-5;
    for (name, _, g) in &grads {
        for _ in 0..4 {
            let i = rng.random_range(0..g.len());
            let mut w = weights.clone();
            w.get_mut(name).unwrap()[i] += h;
            let plus = reference::loss(&c, head, &w, &batch, b, t).unwrap();
            w.get_mut(name).unwrap()[i] -= 2.0 * h;
            let minus = reference::loss(&c, head, &w, &batch, b, t).unwrap();
            ours.push(g[i] as f64);
            fd.push((plus - minus) / (2.0 * h));
        }
    }
    let err = rel_l2(&ours, &fd);
    eprintln!("{head:?} causal={causal} mixed={mixed}: loss {gpu_loss:.6} (CPU {cpu_loss:.6}), {} sampled gradients, relative L2 {err:.2e}", ours.len());
    assert!(
        err < grad_tol,
        "{head:?} causal={causal} mixed={mixed}: gradients vs finite differences: relative L2 {err:.3e}"
    );
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
