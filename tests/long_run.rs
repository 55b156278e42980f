//! Long runs keep memory flat: after warm-up, the device's live resources (buffers, bind
//! groups, pipelines, GPU buffer memory where the backend counts it: not on GL) do not change
//! from step to step, and the process's resident memory (which holds llvmpipe's "GPU"
//! memory too) stays within a small margin.
//! `ROFORMER_LONG_STEPS=5000 cargo test --release --test long_run -- --nocapture` for the
//! figures in NOTES.md.

mod common;

use common::*;
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::Context;

/// Resident memory from `/proc/self/statm` (size, resident, ... in pages), where there is one.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Trains a small classifier for 100 warm-up steps and then `ROFORMER_LONG_STEPS` (300)
/// more, calling `measure` after the warm-up and after the last step (before the model is
/// dropped).
fn train(ctx: &Context, mut measure: impl FnMut()) -> u64 {
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
    for i in 0..warmup + steps {
        session.set_batch(ctx, &batch(i)).unwrap();
        let m = session.run(ctx).unwrap();
        assert!(m.loss.is_finite());
        if i == warmup {
            measure();
        }
    }
    measure();
    steps
}

#[test]
fn live_gpu_resources_stay_flat_over_many_steps() {
    let ctx = &ctx();
    let mut counters = Vec::new();
    let steps = train(ctx, || {
        counters.push(ctx.device().get_internal_counters().hal)
    });
    let (before, after) = (&counters[0], &counters[1]);
    eprintln!(
        "{steps} steps after warm-up: buffers {} -> {}, bind groups {} -> {}, buffer memory {} -> {} bytes",
        before.buffers.read(),
        after.buffers.read(),
        before.bind_groups.read(),
        after.bind_groups.read(),
        before.buffer_memory.read(),
        after.buffer_memory.read(),
    );
    // A backend that does not count would pass the comparisons below without measuring.
    assert!(
        before.buffers.read() > 0,
        "this backend reports no live-resource counters"
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
    // wgpu's GL backend counts buffers but not their bytes; there, the bytes are left to
    // the resident-memory test below (llvmpipe's buffers live in the process), which must
    // then be able to measure.
    if before.buffer_memory.read() > 0 {
        assert_eq!(
            before.buffer_memory.read(),
            after.buffer_memory.read(),
            "GPU buffer memory"
        );
    } else {
        assert!(
            resident_bytes().is_some(),
            "neither the backend's buffer-memory counter nor resident memory can be measured"
        );
    }
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "resident memory is read from /proc/self/statm, which only Linux has"
)]
fn resident_memory_stays_flat_over_many_steps() {
    let ctx = &ctx();
    let mut resident = Vec::new();
    let steps = train(ctx, || {
        resident.push(resident_bytes().expect("/proc/self/statm is readable"))
    });
    let (before, after) = (resident[0], resident[1]);
    eprintln!(
        "{steps} steps after warm-up: resident {:.1} -> {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert!(
        after < before + 8 * 1048576,
        "resident memory grew from {before} to {after}"
    );
}
