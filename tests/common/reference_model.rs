//! A tiny RoFormer checked whole against the f64 CPU reference model (`model::reference`):
//! for the attention kinds transformers has no counterpart of (linear, performer), the GPU
//! loss against the reference's, and the GPU gradients against central finite differences
//! of the reference loss on sampled coordinates of every parameter.

use rand::Rng;
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::io::{HostTensor, HostTensors};
use roformer_wgpu::model::reference::{self, Weights};
use roformer_wgpu::model::{
    performer_projection_name, Batch, Head, Mode, RoFormer, RoFormerConfig,
};
use roformer_wgpu::Context;

/// Vocabulary of [`tiny_config`] (and of [`random_batch`]'s ids).
pub const VOCAB: usize = 23;

/// 2 layers of 16 (embeddings 12, 2 heads, FFN 24), 16 positions, 3 labels, with the
/// attention keys in `attention` (a JSON fragment such as `"attention_kind": "linear"`).
pub fn tiny_config(attention: &str) -> RoFormerConfig {
    let json = format!(
        r#"{{"vocab_size": {VOCAB}, "embedding_size": 12, "hidden_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24,
            "max_position_embeddings": 16, "num_labels": 3, {attention}}}"#
    );
    RoFormerConfig::from_json(&json, "test").unwrap()
}

/// Random weights, LayerNorm and biases included, so every path carries signal; a
/// performer model's projections as they are.
pub fn random_weights(model: &RoFormer, rng: &mut impl Rng) -> HostTensors {
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
    let dim = model.config().hidden_size / model.config().num_attention_heads;
    for (l, values) in model.performer_projections().into_iter().enumerate() {
        let shape = [values.len() / dim, dim];
        tensors.insert(
            performer_projection_name(l),
            HostTensor::f32(&shape, values),
        );
    }
    tensors
}

/// `b` sequences of `t` random ids, the first `t + 5` tokens unmasked (so the second
/// sequence is padded), labels for `head`: every third unmasked token for the masked LM,
/// classes 2 and 0 otherwise.
pub fn random_batch(head: Head, rng: &mut impl Rng, b: usize, t: usize) -> Batch {
    Batch {
        input_ids: (0..b * t)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect(),
        attention_mask: (0..b * t).map(|i| u32::from(i < t + 5)).collect(),
        token_type_ids: (0..b * t).map(|_| rng.random_range(0..2)).collect(),
        labels: match head {
            Head::MaskedLm => (0..b * t)
                .map(|i| {
                    if i % 3 == 0 && i < t + 5 {
                        rng.random_range(0..VOCAB as i32)
                    } else {
                        -100
                    }
                })
                .collect(),
            _ => vec![2, 0],
        },
        ..Default::default()
    }
}

/// The model's parameters (and performer projections), in f64 by name, as the reference
/// model takes them.
pub fn reference_weights(ctx: &Context, model: &RoFormer) -> Weights {
    let mut w: Weights = model
        .params()
        .download(ctx)
        .unwrap()
        .into_iter()
        .map(|(n, _, v)| (n, v.iter().map(|&x| x as f64).collect()))
        .collect();
    for (l, p) in model.performer_projections().into_iter().enumerate() {
        w.insert(
            performer_projection_name(l),
            p.iter().map(|&x| x as f64).collect(),
        );
    }
    w
}

/// One gradient step of `model` (weights loaded) on a random `[2, 7]` batch: its loss
/// within `loss_tol` (relative) of the reference's, and 4 sampled coordinates of every
/// parameter's gradient within `grad_tol` (relative L2) of central finite differences.
pub fn check_against_reference(
    ctx: &Context,
    model: &RoFormer,
    head: Head,
    rng: &mut impl Rng,
    (loss_tol, grad_tol): (f64, f64),
    what: &str,
) {
    let c = model.config().clone();
    let (b, t) = (2, 7);
    let batch = random_batch(head, rng, b, t);
    let mut session = model.session(ctx, b, t, Mode::Gradients).unwrap();
    session.set_batch(ctx, &batch).unwrap();
    let gpu_loss = session.run(ctx).unwrap().loss;
    let grads = model.params().download_grads(ctx).unwrap();

    let weights = reference_weights(ctx, model);
    let cpu_loss = reference::loss(&c, head, &weights, &batch, b, t).unwrap();
    assert!(
        ((gpu_loss as f64 - cpu_loss) / cpu_loss).abs() < loss_tol,
        "{what}: loss: GPU {gpu_loss} vs CPU {cpu_loss}"
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
    eprintln!(
        "{what}: loss {gpu_loss:.6} (CPU {cpu_loss:.6}), {} sampled gradients, relative L2 \
         {err:.2e}",
        ours.len()
    );
    assert!(
        err < grad_tol,
        "{what}: gradients vs finite differences: relative L2 {err:.3e}"
    );
}
