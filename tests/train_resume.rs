//! Resuming from a checkpoint continues the run exactly: the same batches, the same
//! optimizer state, the same losses bit for bit.

mod common;

use common::*;
use roformer_lab::listops::{ListOps, ListOpsConfig};
use roformer_lab::train::{self, ModelSize, TrainConfig, TrainPrecision, Trainer};
use roformer_wgpu::model::AttentionKind;
use roformer_wgpu::optim::Decay;

fn config(attention: AttentionKind, precision: TrainPrecision) -> TrainConfig {
    TrainConfig {
        seed: 3,
        listops: ListOpsConfig {
            max_depth: 3,
            max_args: 4,
            min_length: 4,
            max_length: 20,
            train: 200,
            valid: 40,
            test: 40,
        },
        model: ModelSize {
            layers: 1,
            hidden: 16,
            heads: 2,
            intermediate: 24,
            attention,
        },
        batch: 8,
        steps: 12,
        lr: 3e-3,
        warmup: 3,
        decay: Decay::Cosine,
        weight_decay: 0.01,
        clip_norm: Some(0.5),
        bucket: 8,
        eval_every: 6,
        checkpoint_every: 6,
        precision,
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let ctx = &ctx();
    let mut runs = vec![
        (AttentionKind::Softmax, TrainPrecision::F32),
        (AttentionKind::Linear, TrainPrecision::F32),
    ];
    if has_f16(ctx, "resuming a mixed-precision run") {
        runs.push((AttentionKind::Softmax, TrainPrecision::Mixed));
    }
    for (attention, precision) in runs {
        let c = config(attention, precision);
        let out = std::env::temp_dir().join(format!(
            "roformer-resume-{}-{attention:?}-{precision:?}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);

        let model = c.new_model(ctx).unwrap();
        let data = ListOps::generate(c.listops, c.seed).unwrap();
        let mut full = Trainer::new(ctx, &model, data.clone(), c.clone(), &out).unwrap();
        full.run(|_| {}).unwrap();
        let reference = full.state().clone();
        assert_eq!(reference.step, 12);

        // Start again from the checkpoint of step 6, in a fresh model.
        let mid = out.join("checkpoints/step-00000006");
        let saved = train::read_state(&mid).unwrap();
        assert_eq!(saved.step, 6);
        assert_eq!(
            saved.loss_scale.is_some(),
            precision == TrainPrecision::Mixed,
            "the loss scale is saved with a mixed-precision run"
        );
        let resumed_model = c.load_model(ctx, &mid).unwrap();
        let mut resumed =
            Trainer::resume(ctx, &resumed_model, data, &mid, out.join("resumed")).unwrap();
        resumed.run(|_| {}).unwrap();
        let again = resumed.state();
        let losses =
            |s: &train::TrainState| s.steps.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            losses(again),
            losses(&reference),
            "{attention:?} {precision:?}: resumed losses differ"
        );
        assert_eq!(
            again.evals.last(),
            reference.evals.last(),
            "{attention:?} {precision:?}: final evaluation differs"
        );
        assert_eq!(
            model.params().download(ctx).unwrap(),
            resumed_model.params().download(ctx).unwrap(),
            "{attention:?} {precision:?}: final weights differ"
        );
        let latest = train::latest_checkpoint(&out).unwrap().unwrap();
        assert!(latest.ends_with("step-00000012"), "{}", latest.display());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
