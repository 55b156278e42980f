//! The planner: a training step's pooled buffers take far less than one buffer per
//! intermediate tensor, and sharing them changes nothing. A step planned with reuse and the
//! same step with a buffer for every tensor, each with every pooled buffer filled with NaN
//! first, give bit-identical losses, logits, hidden states and gradients: a tensor whose
//! buffer another live tensor overwrote, or one read before it was written, would show.

mod common;

use common::*;
use roformer_wgpu::graph::PlanOptions;
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig, Session};
use roformer_wgpu::Context;

/// Loss, logits, hidden states and every parameter gradient of one step.
fn step(ctx: &Context, session: &mut Session<'_>, batch: &Batch, layers: usize) -> Vec<Vec<f32>> {
    session.plan().fill_pool(ctx, f32::NAN).unwrap();
    session.set_batch(ctx, batch).unwrap();
    let m = session.run(ctx).unwrap();
    let mut out = vec![vec![m.loss], session.logits(ctx).unwrap()];
    for i in 0..=layers {
        out.push(session.hidden_state(ctx, i).unwrap());
    }
    for (_, _, g) in session.model().params().download_grads(ctx).unwrap() {
        out.push(g);
    }
    out
}

#[test]
fn a_planned_step_equals_one_with_a_buffer_per_tensor() {
    let ctx = &ctx();
    let (b, t, layers) = (2, 33, 3);
    for (kind, causal, head) in [
        ("softmax", false, Head::MaskedLm),
        ("fused_softmax", false, Head::Classification),
        ("linear", false, Head::MaskedLm),
        ("linear", true, Head::MaskedLm),
    ] {
        let config = RoFormerConfig::from_json(
            &format!(
                r#"{{"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": {layers},
                    "num_attention_heads": 4, "intermediate_size": 64,
                    "max_position_embeddings": 64, "num_labels": 3,
                    "attention_kind": "{kind}", "causal": {causal}}}"#
            ),
            "test",
        )
        .unwrap();
        let model = RoFormer::new(ctx, config, head).unwrap();
        model.init_random(ctx, 7).unwrap();
        let labels: Vec<i32> = match head {
            Head::MaskedLm => (0..b * t)
                .map(|i| if i % 3 == 0 { (i % 50) as i32 } else { -100 })
                .collect(),
            _ => vec![1, 2], // Head::Classification, the other head tested
        };
        let batch = Batch {
            input_ids: (0..b * t).map(|i| ((i * 7 + 3) % 50) as u32).collect(),
            // The second sequence ends in padding.
            attention_mask: (0..b * t).map(|i| u32::from(i < b * t - 9)).collect(),
            labels,
            ..Default::default()
        };
        let mut shared = model.session(ctx, b, t, Mode::Gradients).unwrap();
        let mut own = model
            .session_with(
                ctx,
                b,
                t,
                Mode::Gradients,
                PlanOptions {
                    reuse_buffers: false,
                },
            )
            .unwrap();
        let (m, o) = (shared.memory().clone(), own.memory().clone());
        let (fwd, bwd) = shared.call_counts();
        eprintln!(
            "{kind} (causal {causal}): {fwd} forward + {bwd} backward calls; pooled {} KiB in {} buffers, \
             {} KiB in {} buffers without reuse",
            m.pooled >> 10,
            m.buffers,
            o.pooled >> 10,
            o.buffers
        );
        assert_eq!(
            o.pooled, m.unpooled,
            "{kind}: without reuse, one buffer per tensor"
        );
        assert!(
            m.pooled * 4 < m.unpooled * 3,
            "{kind}: {} vs {}",
            m.pooled,
            m.unpooled
        );
        let with_reuse = step(ctx, &mut shared, &batch, layers);
        let without = step(ctx, &mut own, &batch, layers);
        assert!(
            with_reuse[0][0].is_finite(),
            "{kind}: loss {}",
            with_reuse[0][0]
        );
        for (i, (a, b)) in with_reuse.iter().zip(&without).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{kind} (causal {causal}): output {i} differs between the planned step and the unshared one"
            );
            assert!(
                a.iter().all(|x| x.is_finite()),
                "{kind}: output {i} holds NaN"
            );
        }
    }
}
