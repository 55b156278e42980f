//! A step that produces infinities or NaN stops training with an error naming the step and
//! the first non-finite tensor; the optimizer skips that step, so the weights in memory and
//! the last checkpoint on disk stay as they were. In mixed precision, overflowing f16
//! gradients are skipped steps, not errors, until halving the loss scale cannot help.

mod common;

use common::*;
use roformer_lab::listops::{ListOps, ListOpsConfig};
use roformer_lab::train::{self, ModelSize, TrainConfig, TrainPrecision, Trainer};
use roformer_wgpu::io::HostTensor;
use roformer_wgpu::model::{AttentionKind, Head, RoFormer};
use roformer_wgpu::optim::{Decay, LossScaling};
use roformer_wgpu::Error;

fn config() -> TrainConfig {
    TrainConfig {
        seed: 5,
        listops: ListOpsConfig {
            max_depth: 3,
            max_args: 4,
            min_length: 4,
            max_length: 20,
            train: 100,
            valid: 16,
            test: 16,
        },
        model: ModelSize {
            layers: 1,
            hidden: 16,
            heads: 2,
            intermediate: 24,
            attention: AttentionKind::Softmax,
        },
        batch: 8,
        steps: 4,
        lr: 1e-3,
        warmup: 0,
        decay: Decay::Constant,
        weight_decay: 0.0,
        clip_norm: None,
        bucket: 8,
        eval_every: 0,
        checkpoint_every: 2,
        precision: Default::default(),
    }
}

#[test]
fn training_stops_at_the_first_non_finite_tensor_and_keeps_the_checkpoint() {
    let ctx = &ctx();
    let c = config();
    let out = std::env::temp_dir().join(format!("roformer-nonfinite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let model = RoFormer::new(ctx, c.model_config().unwrap(), Head::Classification).unwrap();
    model.init_random(ctx, 1).unwrap();
    let data = ListOps::generate(c.listops, c.seed).unwrap();
    let mut trainer = Trainer::new(
        ctx,
        &model,
        data,
        TrainConfig {
            steps: 100,
            ..c.clone()
        },
        &out,
    )
    .unwrap();
    for _ in 0..4 {
        ctx.block_on(trainer.step()).unwrap();
    }
    let checkpoint = trainer.checkpoint().unwrap();

    // One huge weight: the intermediate projection overflows to infinity.
    let name = "roformer.encoder.layer.0.intermediate.dense.weight";
    let mut tensors: roformer_wgpu::io::HostTensors = model
        .params()
        .download(ctx)
        .unwrap()
        .into_iter()
        .map(|(n, s, v)| (n, HostTensor::f32(&s, v)))
        .collect();
    let w = tensors.get_mut(name).unwrap();
    w.data = roformer_wgpu::io::HostData::F32(vec![3e38; w.numel()]);
    model.load_tensors(ctx, &tensors).unwrap();
    let before = model.params().download(ctx).unwrap();

    let err = ctx.block_on(trainer.step()).unwrap_err();
    match &err {
        Error::NonFinite { step, tensor, .. } => {
            assert_eq!(*step, 5);
            assert_eq!(
                tensor, "roformer.encoder.layer.0.intermediate.dense",
                "{err}"
            );
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert_eq!(trainer.state().step, 4, "the failed step does not count");
    assert_eq!(
        model.params().download(ctx).unwrap(),
        before,
        "the update must be skipped"
    );

    // The last checkpoint is intact and loads.
    let latest = train::latest_checkpoint(&out).unwrap().unwrap();
    assert_eq!(latest, checkpoint);
    let reloaded = RoFormer::from_pretrained(
        ctx,
        latest.join("config.json"),
        latest.join("model.safetensors"),
    )
    .unwrap();
    assert_eq!(train::read_state(&latest).unwrap().step, 4);
    let saved = reloaded.params().download(ctx).unwrap();
    assert!(saved.iter().flat_map(|(_, _, v)| v).all(|x| x.is_finite()));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn mixed_precision_skips_overflowing_steps_then_gives_up_when_halving_cannot_help() {
    let ctx = &ctx();
    if !has_f16(ctx, "mixed-precision overflow in training") {
        return;
    }
    let c = TrainConfig {
        precision: TrainPrecision::Mixed,
        steps: 40,
        checkpoint_every: 4,
        ..config()
    };
    let out = std::env::temp_dir().join(format!("roformer-overflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut model = RoFormer::new(ctx, c.model_config().unwrap(), Head::Classification).unwrap();
    model.init_random(ctx, 1).unwrap();
    // A scale no f16 gradient survives, even halved twenty times.
    let scaling = LossScaling {
        init_scale: 2f32.powi(120),
        ..Default::default()
    };
    model.use_mixed_precision(ctx, scaling).unwrap();
    let initial = model.params().download(ctx).unwrap();
    let data = ListOps::generate(c.listops, c.seed).unwrap();
    let mut trainer = Trainer::new(ctx, &model, data, c, &out).unwrap();
    let err = trainer.run(|_| {}).unwrap_err();
    match &err {
        Error::NonFinite { step, tensor, .. } => {
            assert_eq!(*step, 20, "{err}");
            assert!(tensor.contains("f16 gradients"), "{err}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    // Nineteen skipped steps, each at half the scale of the one before, each recorded.
    let state = trainer.state();
    assert_eq!((state.step, state.skipped()), (19, 19));
    for (i, r) in state.steps.iter().enumerate() {
        assert!(
            r.skipped && r.grad_norm.is_none() && r.loss.is_finite(),
            "{r:?}"
        );
        assert_eq!(
            r.loss_scale,
            Some(2f32.powi(120 - i as i32)),
            "step {}",
            r.step
        );
    }
    assert_eq!(
        model.params().download(ctx).unwrap(),
        initial,
        "no update applied"
    );
    // The checkpoints written meanwhile hold the initial weights and the halved scale.
    let latest = train::latest_checkpoint(&out).unwrap().unwrap();
    let saved_state = train::read_state(&latest).unwrap();
    assert_eq!(saved_state.step, 16);
    assert_eq!(saved_state.loss_scale, Some((2f32.powi(104), 0)));
    let reloaded = RoFormer::from_pretrained(
        ctx,
        latest.join("config.json"),
        latest.join("model.safetensors"),
    )
    .unwrap();
    assert_eq!(reloaded.params().download(ctx).unwrap(), initial);
    std::fs::remove_dir_all(&out).unwrap();
}
