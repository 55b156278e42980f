//! Resuming from a checkpoint continues the run exactly: the same batches, the same
//! optimizer state, the same losses bit for bit (ListOps through the library's trainer,
//! as the main job runs it; `tests/train_cli.rs` checks the same for `roformer train`).

mod common;

use common::*;
use roformer_lab::listops::ListOpsConfig;
use roformer_lab::lra::{self, ModelSize, TaskData};
use roformer_wgpu::model::{AttentionKind, RoFormer};
use roformer_wgpu::train::{
    self, Precision, SchedulerType, Task, Trainer, TrainerState, TrainingArguments,
};
use roformer_wgpu::Context;

fn data() -> TaskData {
    let config = ListOpsConfig {
        max_depth: 3,
        max_args: 4,
        min_length: 4,
        max_length: 20,
        train: 200,
        valid: 40,
        test: 40,
    };
    lra::listops(config, 3).unwrap()
}

fn arguments(precision: Precision) -> TrainingArguments {
    TrainingArguments {
        seed: 3,
        per_device_train_batch_size: 8,
        per_device_eval_batch_size: 8,
        max_steps: Some(12),
        learning_rate: 3e-3,
        warmup_steps: 3,
        lr_scheduler_type: SchedulerType::Cosine,
        weight_decay: 0.01,
        max_grad_norm: 0.5,
        group_by_length: true,
        eval_steps: Some(6),
        save_steps: 6,
        logging_steps: 1,
        precision,
        ..TrainingArguments::default()
    }
}

fn model(
    ctx: &Context,
    data: &TaskData,
    args: &TrainingArguments,
    attention: AttentionKind,
    checkpoint: Option<&std::path::Path>,
) -> RoFormer {
    let size = ModelSize {
        layers: 1,
        hidden: 16,
        heads: 2,
        intermediate: 24,
        attention,
        window: 0,
        global_tokens: 0,
    };
    lra::model(ctx, data, &size, args, checkpoint).unwrap()
}

/// A run of `m` on `data`'s training split, evaluated on its validation split, into `out`.
fn trainer<'m>(
    ctx: &'m Context,
    m: &'m RoFormer,
    data: &TaskData,
    args: TrainingArguments,
    out: &std::path::Path,
) -> Trainer<'m> {
    let (train, valid) = (data.train.clone(), Some(data.valid.clone()));
    let task = Task::TextClassification;
    Trainer::new(ctx, m, task, args, train, valid, &data.labels, out, vec![]).unwrap()
}

/// The run's evaluations: `(step, eval_accuracy)`.
fn accuracies(s: &TrainerState) -> Vec<(u64, f64)> {
    s.log_history
        .iter()
        .filter_map(|e| Some((e.step, e.get("eval_accuracy")?)))
        .collect()
}

fn losses(s: &TrainerState) -> Vec<(u64, u64)> {
    s.log_history
        .iter()
        .filter_map(|e| Some((e.step, e.get("loss")?.to_bits())))
        .collect()
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let ctx = &ctx();
    let mut runs = vec![
        (AttentionKind::Softmax, Precision::F32),
        (AttentionKind::Linear, Precision::F32),
    ];
    if has_f16(ctx, "resuming a mixed-precision run") {
        runs.push((AttentionKind::Softmax, Precision::Mixed));
    }
    let data = data();
    for (attention, precision) in runs {
        let args = arguments(precision);
        let out = std::env::temp_dir().join(format!(
            "roformer-resume-{}-{attention:?}-{precision:?}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);

        let full_model = model(ctx, &data, &args, attention, None);
        let mut full = trainer(ctx, &full_model, &data, args.clone(), &out);
        full.train(|_| {}).unwrap();
        let reference = full.state().clone();
        assert_eq!(reference.global_step, 12);
        assert_eq!(losses(&reference).len(), 12, "a loss logged per update");

        // Start again from the checkpoint of step 6, in a fresh model.
        let mid = out.join("checkpoint-6");
        let saved = train::read_state(&mid).unwrap();
        assert_eq!(saved.global_step, 6);
        assert_eq!(
            saved.loss_scale.is_some(),
            precision == Precision::Mixed,
            "the loss scale is saved with a mixed-precision run"
        );
        let resumed_model = model(ctx, &data, &args, attention, Some(&mid));
        let (train, valid) = (data.train.clone(), Some(data.valid.clone()));
        let mut resumed = Trainer::resume(
            ctx,
            &resumed_model,
            train,
            valid,
            &mid,
            out.join("resumed"),
            vec![],
        )
        .unwrap();
        resumed.train(|_| {}).unwrap();
        let again = resumed.state();
        assert_eq!(
            losses(again),
            losses(&reference),
            "{attention:?} {precision:?}: resumed losses differ"
        );
        let last_eval =
            |s: &TrainerState| s.log_history.iter().rev().find(|e| e.is_eval()).cloned();
        assert_eq!(
            last_eval(again),
            last_eval(&reference),
            "{attention:?} {precision:?}: final evaluation differs"
        );
        assert_eq!(
            full_model.params().download(ctx).unwrap(),
            resumed_model.params().download(ctx).unwrap(),
            "{attention:?} {precision:?}: final weights differ"
        );
        let newest = train::checkpoints(&out).unwrap().pop().unwrap();
        assert_eq!(newest.0, 12, "{}", newest.1.display());
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn empty_datasets_are_errors_not_panics() {
    let ctx = &ctx();
    let data = data();
    let args = arguments(Precision::F32);
    let m = model(ctx, &data, &args, AttentionKind::Softmax, None);
    let out = std::env::temp_dir().join(format!("roformer-empty-{}", std::process::id()));
    let empty = |d: &roformer_wgpu::train::Dataset| roformer_wgpu::train::Dataset {
        examples: Vec::new(),
        ..d.clone()
    };
    let new = |train, eval| {
        Trainer::new(
            ctx,
            &m,
            Task::TextClassification,
            args.clone(),
            train,
            eval,
            &data.labels,
            &out,
            vec![],
        )
    };
    let err = new(empty(&data.train), None).err().unwrap().to_string();
    assert!(
        err.contains("training data (ListOps train) has no examples"),
        "{err}"
    );
    let err = new(data.train.clone(), Some(empty(&data.valid)))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("evaluation data (ListOps valid) has no examples"),
        "{err}"
    );
    let mut t = new(data.train.clone(), None).unwrap();
    let err = ctx
        .block_on(t.evaluate_on(&empty(&data.test), "test"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ListOps test has no examples"), "{err}");
    assert!(!out.exists(), "nothing written");
}

/// `load_best_model_at_end`: the best evaluation's checkpoint is remembered (the first of
/// equals, higher is better for accuracy) and its weights are what the run ends with and
/// saves.
#[test]
fn the_best_checkpoint_is_loaded_at_the_end() {
    let ctx = &ctx();
    let data = data();
    let args = TrainingArguments {
        max_steps: Some(8),
        learning_rate: 3e-2,
        eval_steps: Some(2),
        save_steps: 2,
        load_best_model_at_end: true,
        metric_for_best_model: Some("accuracy".into()),
        ..arguments(Precision::F32)
    };
    let m = model(ctx, &data, &args, AttentionKind::Softmax, None);
    let out = std::env::temp_dir().join(format!("roformer-best-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut t = trainer(ctx, &m, &data, args, &out);
    t.train(|_| {}).unwrap();
    let state = t.state();
    let evals = accuracies(state);
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4, 6, 8]);
    let best = evals
        .iter()
        .fold(evals[0], |b, &e| if e.1 > b.1 { e } else { b });
    eprintln!("evaluations (step, accuracy): {evals:?}; the best: {best:?}");
    assert_eq!(state.best_metric, Some(best.1));
    let dir = state.best_model_checkpoint.clone().unwrap();
    assert!(
        dir.ends_with(format!("checkpoint-{}", best.0)),
        "{}",
        dir.display()
    );
    let read = |p: std::path::PathBuf| roformer_wgpu::io::read_checkpoint(p).unwrap();
    let best_weights = read(dir.join("model.safetensors"));
    assert_eq!(
        read(out.join("model.safetensors")),
        best_weights,
        "the saved model"
    );
    // (The checkpoint also holds the sinusoidal position table, which is not a parameter.)
    for (name, shape, values) in m.params().download(ctx).unwrap() {
        let saved = best_weights.get(&name).unwrap();
        assert_eq!(saved.shape, shape, "{name}");
        assert_eq!(saved.to_f32(), values, "{name}: the model in memory");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// `early_stopping_patience`: training stops at the evaluation that makes `patience`
/// evaluations in a row without beating the best; `save_total_limit` keeps the newest
/// checkpoints and the best.
#[test]
fn early_stopping_stops_after_patience_and_keeps_the_best_checkpoint() {
    let ctx = &ctx();
    let data = data();
    let args = TrainingArguments {
        max_steps: Some(40),
        learning_rate: 3e-2,
        eval_steps: Some(1),
        save_steps: 1,
        save_total_limit: Some(2),
        metric_for_best_model: Some("accuracy".into()),
        early_stopping_patience: Some(2),
        ..arguments(Precision::F32)
    };
    let m = model(ctx, &data, &args, AttentionKind::Softmax, None);
    let out = std::env::temp_dir().join(format!("roformer-early-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut t = trainer(ctx, &m, &data, args, &out);
    t.train(|_| {}).unwrap();
    let state = t.state();
    let evals = accuracies(state);
    eprintln!("evaluations (step, accuracy): {evals:?}");
    // Where the rule says to stop: the second evaluation in a row not above the best.
    let (mut best, mut worse, mut stop, mut best_step) = (f64::NEG_INFINITY, 0, 40, 0);
    for &(step, accuracy) in &evals {
        if accuracy > best {
            (best, worse, best_step) = (accuracy, 0, step);
        } else {
            worse += 1;
            if worse == 2 {
                stop = step;
                break;
            }
        }
    }
    assert!(stop < 40, "the run should stop early here: {evals:?}");
    assert_eq!(state.global_step, stop);
    assert_eq!(
        evals.last().unwrap().0,
        stop,
        "no evaluation after the stop"
    );
    assert_eq!(state.best_metric, Some(best));
    let kept: Vec<u64> = train::checkpoints(&out)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, [best_step, stop], "the best and the newest");
    std::fs::remove_dir_all(&out).unwrap();
}
