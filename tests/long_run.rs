//! Long runs keep memory flat: after warm-up, the device's live resources (buffers, bind
//! groups, pipelines, GPU buffer memory) do not change from step to step, and the process's
//! resident memory (which holds llvmpipe's "GPU" memory too) stays within a small margin.
//! `ROFORMER_LONG_STEPS=5000 cargo test --release --test long_run -- --nocapture` for the
//! figures in NOTES.md.

mod common;

use common::*;
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::optim::TrainOptions;

fn resident_bytes() -> u64 {
    // /proc/self/statm: size resident shared ... in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

#[test]
fn memory_stays_flat_over_many_steps() {
    let ctx = &ctx();
    let steps: u64 = std::env::var("ROFORMER_LONG_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let config = RoFormerConfig::from_json(
        r#"{"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 16, "num_labels": 4}"#,
        "test",
    )
    .unwrap();
    let model = RoFormer::new(ctx, config, Head::Classification).unwrap();
    model.init_random(ctx, 3).unwrap();
    let mut session = model
        .session(
            ctx,
            4,
            12,
            Mode::Train(TrainOptions {
                clip_norm: Some(1.0),
                ..Default::default()
            }),
        )
        .unwrap();
    let batch = |i: u64| Batch {
        input_ids: (0..48).map(|j| ((i * 7 + j) % 40) as u32).collect(),
        labels: (0..4).map(|j| ((i + j) % 4) as i32).collect(),
        ..Default::default()
    };
    let warmup = 100;
    let (mut counters, mut rss) = (None, 0);
    for i in 0..warmup + steps {
        session.set_batch(ctx, &batch(i)).unwrap();
        let m = session.run(ctx).unwrap();
        assert!(m.loss.is_finite());
        if i == warmup {
            counters = Some(ctx.device().get_internal_counters().hal);
            rss = resident_bytes();
        }
    }
    let (before, after) = (counters.unwrap(), ctx.device().get_internal_counters().hal);
    let rss_after = resident_bytes();
    eprintln!(
        "{steps} steps after {warmup} warm-up: buffers {} -> {}, bind groups {} -> {}, buffer memory {} -> {} bytes, resident {:.1} -> {:.1} MiB",
        before.buffers.read(),
        after.buffers.read(),
        before.bind_groups.read(),
        after.bind_groups.read(),
        before.buffer_memory.read(),
        after.buffer_memory.read(),
        rss as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    assert_eq!(before.buffers.read(), after.buffers.read(), "live buffers");
    assert_eq!(
        before.bind_groups.read(),
        after.bind_groups.read(),
        "live bind groups"
    );
    assert_eq!(
        before.compute_pipelines.read(),
        after.compute_pipelines.read(),
        "pipelines"
    );
    assert_eq!(
        before.buffer_memory.read(),
        after.buffer_memory.read(),
        "GPU buffer memory"
    );
    assert!(
        rss_after < rss + 8 * 1048576,
        "resident memory grew from {rss} to {rss_after}"
    );
}
