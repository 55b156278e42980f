//! A step that produces infinities or NaN stops training with an error naming the step and
//! the first non-finite tensor; the optimizer skips that step, so the weights in memory and
//! the last checkpoint on disk stay as they were. In mixed precision, overflowing f16
//! gradients are skipped steps, not errors, until halving the loss scale cannot help.

mod common;

use common::*;
use roformer_lab::listops::ListOpsConfig;
use roformer_lab::lra::{self, ModelSize, TaskData};
use roformer_wgpu::io::HostTensor;
use roformer_wgpu::model::{AttentionKind, RoFormer};
use roformer_wgpu::optim::LossScaling;
use roformer_wgpu::train::{
    self, model_for, Precision, SchedulerType, Task, Trainer, TrainingArguments,
};
use roformer_wgpu::{Context, Error};

fn data() -> TaskData {
    let config = ListOpsConfig {
        max_depth: 3,
        max_args: 4,
        min_length: 4,
        max_length: 20,
        train: 100,
        valid: 16,
        test: 16,
    };
    lra::listops(config, 5).unwrap()
}

fn arguments() -> TrainingArguments {
    TrainingArguments {
        seed: 1,
        per_device_train_batch_size: 8,
        max_steps: Some(100),
        learning_rate: 1e-3,
        lr_scheduler_type: SchedulerType::Constant,
        max_grad_norm: 0.0,
        save_steps: 2,
        logging_steps: 1,
        ..TrainingArguments::default()
    }
}

fn model(ctx: &Context, data: &TaskData, args: &TrainingArguments) -> RoFormer {
    let size = ModelSize {
        layers: 1,
        hidden: 16,
        heads: 2,
        intermediate: 24,
        attention: AttentionKind::Softmax,
        window: 0,
        global_tokens: 0,
    };
    let config = lra::model_config(data, &size, 8).unwrap();
    model_for(
        ctx,
        config,
        Task::TextClassification,
        &data.labels,
        args,
        None,
    )
    .unwrap()
    .0
}

fn trainer<'m>(
    ctx: &'m Context,
    model: &'m RoFormer,
    data: &TaskData,
    args: TrainingArguments,
    out: &std::path::Path,
) -> Trainer<'m> {
    let task = Task::TextClassification;
    let train = data.train.clone();
    Trainer::new(
        ctx,
        model,
        task,
        args,
        train,
        None,
        &data.labels,
        out,
        vec![],
    )
    .unwrap()
}

#[test]
fn training_stops_at_the_first_non_finite_tensor_and_keeps_the_checkpoint() {
    let ctx = &ctx();
    let out = std::env::temp_dir().join(format!("roformer-nonfinite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (data, args) = (data(), arguments());
    let model = model(ctx, &data, &args);
    let mut trainer = trainer(ctx, &model, &data, args, &out);
    for _ in 0..4 {
        ctx.block_on(trainer.step()).unwrap();
    }
    let checkpoint = trainer.save_checkpoint().unwrap();

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
    assert_eq!(
        trainer.state().global_step,
        4,
        "the failed step does not count"
    );
    assert_eq!(
        model.params().download(ctx).unwrap(),
        before,
        "the update must be skipped"
    );

    // The last checkpoint is intact and loads.
    let latest = train::checkpoints(&out).unwrap().pop().unwrap().1;
    assert_eq!(latest, checkpoint);
    let reloaded = RoFormer::from_pretrained(
        ctx,
        latest.join("config.json"),
        latest.join("model.safetensors"),
    )
    .unwrap();
    assert_eq!(train::read_state(&latest).unwrap().global_step, 4);
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
    let args = TrainingArguments {
        precision: Precision::Mixed,
        max_steps: Some(40),
        save_steps: 4,
        ..arguments()
    };
    let out = std::env::temp_dir().join(format!("roformer-overflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let data = data();
    let mut model = model(
        ctx,
        &data,
        &TrainingArguments {
            precision: Precision::F32,
            ..args.clone()
        },
    );
    // A scale no f16 gradient survives, even halved twenty times.
    let scaling = LossScaling {
        init_scale: 2f32.powi(120),
        ..Default::default()
    };
    model.use_mixed_precision(ctx, scaling).unwrap();
    let initial = model.params().download(ctx).unwrap();
    let mut trainer = trainer(ctx, &model, &data, args, &out);
    let err = trainer.train(|_| {}).unwrap_err();
    match &err {
        Error::NonFinite { step, tensor, .. } => {
            assert_eq!(*step, 20, "{err}");
            assert!(tensor.contains("f16 gradients"), "{err}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    // Nineteen skipped updates, each logged with its (finite) loss and no gradient norm.
    let state = trainer.state();
    assert_eq!((state.global_step, state.skipped_updates), (19, 19));
    let logs: Vec<_> = state.log_history.iter().filter(|e| !e.is_eval()).collect();
    assert_eq!(logs.len(), 19);
    for e in logs {
        assert!(
            e.get("loss").is_some_and(f64::is_finite) && e.get("grad_norm").is_none(),
            "{e:?}"
        );
    }
    assert_eq!(
        model.params().download(ctx).unwrap(),
        initial,
        "no update applied"
    );
    // The checkpoints written meanwhile hold the initial weights and the halved scale.
    let latest = train::checkpoints(&out).unwrap().pop().unwrap().1;
    let saved_state = train::read_state(&latest).unwrap();
    assert_eq!(saved_state.global_step, 16);
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
