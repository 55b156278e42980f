//! The planner reuses memory: a training step's pooled buffers take far less than one
//! buffer per intermediate tensor, and no two tensors that are live at the same call share
//! a buffer.

mod common;

use common::*;
use roformer_wgpu::model::{Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::optim::TrainOptions;

#[test]
fn a_training_step_reuses_buffers_without_overlap() {
    let ctx = &ctx();
    for kind in ["softmax", "linear"] {
        let config = RoFormerConfig::from_json(
            &format!(
                r#"{{"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "intermediate_size": 64, "max_position_embeddings": 64, "attention_kind": "{kind}"}}"#
            ),
            "test",
        )
        .unwrap();
        let model = RoFormer::new(ctx, config, Head::MaskedLm).unwrap();
        let session = model
            .session(ctx, 2, 33, Mode::Train(TrainOptions::default()))
            .unwrap();
        let m = session.memory().clone();
        let (fwd, bwd) = session.call_counts();
        eprintln!(
            "{kind}: {fwd} forward + {bwd} backward calls, {} dispatches; pooled {} KiB in {} buffers, \
             {} KiB without reuse; peak {} KiB",
            session.dispatch_count(),
            m.pooled >> 10,
            m.buffers,
            m.unpooled >> 10,
            m.peak() >> 10
        );
        assert!(
            m.pooled * 4 < m.unpooled * 3,
            "{kind}: pooled {} vs unpooled {}",
            m.pooled,
            m.unpooled
        );
        let a = session.plan().assignments();
        assert!(a.len() > 50, "{kind}: only {} pooled tensors", a.len());
        for (i, x) in a.iter().enumerate() {
            assert!(x.first <= x.last);
            for y in &a[i + 1..] {
                let overlap = x.first <= y.last && y.first <= x.last;
                assert!(
                    !(overlap && x.buffer == y.buffer),
                    "{kind}: {x:?} and {y:?} share a buffer while both live"
                );
            }
        }
    }
}
