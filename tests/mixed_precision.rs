//! Mixed-precision training (f32 master weights and AdamW state, f16 passes, dynamic loss
//! scaling) against transformers' float64 fixtures, and the overflow path: a skipped step
//! halves the scale and leaves no trace in the weights, the moments or the step count.

mod common;

use common::*;
use roformer_lab::verify::{batch_from, verify_mixed};
use roformer_wgpu::io::{read_checkpoint, HostTensors};
use roformer_wgpu::model::{AttentionKind, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::optim::{LossScaling, TrainOptions};
use roformer_wgpu::params::ParamStore;
use roformer_wgpu::Dispatch;

/// The heads this library trains, with losses, gradients and `train.adamw_losses` stored.
const TRAINED: [&str; 10] = [
    "roformer_tiny_mlm",
    "roformer_tiny_cls",
    "roformer_8heads_cls",
    "roformer_causal_lm",
    "roformer_token_cls",
    "roformer_proj_rotv_mlm",
    "roformer_single_mlm",
    "roformer_multi_label",
    "roformer_regression",
    "roformer_regression_multi",
];

/// Tensors (training forward pass, loss, every gradient): relative L2.
const TENSOR_TOL: f64 = 1e-2;
/// Each of the ten AdamW steps' loss: relative error.
const LOSS_TOL: f64 = 1e-3;

fn fixture(name: &str) -> (RoFormerConfig, HostTensors) {
    let d = fixtures_dir();
    let tensors = read_checkpoint(d.join(format!("{name}.safetensors"))).unwrap();
    let cfg = RoFormerConfig::from_file(d.join(format!("{name}.config.json"))).unwrap();
    (cfg, tensors)
}

#[test]
fn every_trained_fixture_matches_transformers_in_mixed_precision() {
    let ctx = &ctx();
    if !has_f16(ctx, "mixed precision fixtures") {
        return;
    }
    let mut worst_tensor = (0.0f64, String::new());
    let mut worst_loss = (0.0f64, String::new());
    for name in TRAINED {
        let (cfg, tensors) = fixture(name);
        let report = ctx
            .block_on(verify_mixed(ctx, cfg, &tensors, LossScaling::default()))
            .unwrap();
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        for must in [
            "output.loss",
            "training.output.logits",
            "training.output.hidden_states.0",
            "train.adamw_losses",
        ] {
            assert!(names.contains(&must), "{name}: {must} was not compared");
        }
        let grads = names.iter().filter(|n| n.starts_with("grad.")).count();
        assert!(grads >= 20, "{name}: only {grads} gradients compared");
        for c in &report.checks {
            // "output.*" other than the loss come from f32 inference: not this test's business.
            if c.name.starts_with("output.") && c.name != "output.loss" {
                continue;
            }
            let (tol, worst) = if c.name == "train.adamw_losses" {
                (LOSS_TOL, &mut worst_loss)
            } else {
                (TENSOR_TOL, &mut worst_tensor)
            };
            assert!(
                c.error < tol,
                "{name} {}: {:.2e} over {tol:.0e} in mixed precision",
                c.name,
                c.error
            );
            if c.error > worst.0 {
                *worst = (c.error, format!("{name} {}", c.name));
            }
        }
    }
    eprintln!(
        "mixed precision: worst tensor {:.2e} ({}), worst AdamW loss {:.2e} ({})",
        worst_tensor.0, worst_tensor.1, worst_loss.0, worst_loss.1
    );
}

/// Fused softmax attention (f16 q, k, v and gradients in its kernels) in mixed precision,
/// against the same fixtures.
#[test]
fn fused_attention_trains_like_transformers_in_mixed_precision() {
    let ctx = &ctx();
    if !has_f16(ctx, "fused attention in mixed precision") {
        return;
    }
    for name in [
        "roformer_tiny_mlm",
        "roformer_8heads_cls",
        "roformer_proj_rotv_mlm",
    ] {
        let (mut cfg, tensors) = fixture(name);
        cfg.attention = AttentionKind::FusedSoftmax;
        let mut model = RoFormer::new(ctx, cfg.clone(), head_of(&cfg, &tensors)).unwrap();
        model.load_tensors(ctx, &tensors).unwrap();
        model
            .use_mixed_precision(ctx, LossScaling::default())
            .unwrap();
        let report = ctx
            .block_on(roformer_lab::verify::verify_model(ctx, &model, &tensors))
            .unwrap();
        let grads = report
            .checks
            .iter()
            .filter(|c| c.name.starts_with("grad."))
            .count();
        assert!(grads >= 20, "{name}: {grads} gradients compared");
        let worst = report
            .checks
            .iter()
            .filter(|c| c.name != "train.adamw_losses")
            .map(|c| c.error)
            .fold(0.0, f64::max);
        let losses = report
            .checks
            .iter()
            .find(|c| c.name == "train.adamw_losses")
            .unwrap();
        eprintln!(
            "{name} fused, mixed: worst tensor {worst:.2e}, AdamW losses {:.2e}",
            losses.error
        );
        assert!(worst < TENSOR_TOL, "{name}: {worst:.2e}");
        assert!(losses.error < LOSS_TOL, "{name}: {:.2e}", losses.error);
    }
}

/// A loss scale so large that the f16 gradients overflow: two steps are skipped (the scale
/// halved each time) and leave weights, moments and the AdamW step count exactly as they
/// were; a workable scale then trains exactly as a model that never overflowed.
/// The dispatches a session lists (what `bench step --model` predicts and `--profile`
/// times) are its step: run one by one, they leave the weights, moments and loss scale as
/// `Session::run` does, bit for bit. A list without the refresh of the f16 weights (the
/// copy starts as zeros) or the loss scale's update would not.
#[test]
fn a_step_runs_exactly_the_dispatches_its_session_lists() {
    let ctx = &ctx();
    if !has_f16(ctx, "the listed dispatches of a mixed step") {
        return;
    }
    let (cfg, tensors) = fixture("roformer_tiny_mlm");
    let (b, t, batch, _) = batch_from(&tensors).unwrap();
    let load = || {
        let mut model = RoFormer::new(ctx, cfg.clone(), head_of(&cfg, &tensors)).unwrap();
        model.load_tensors(ctx, &tensors).unwrap();
        model
            .use_mixed_precision(ctx, LossScaling::default())
            .unwrap();
        model
    };
    let options = TrainOptions::default();
    let (stepped, listed) = (load(), load());
    let mut session = stepped.session(ctx, b, t, Mode::Train(options)).unwrap();
    session.set_batch(ctx, &batch).unwrap();
    assert!(!session.run(ctx).unwrap().skipped);

    let mut replay = listed.session(ctx, b, t, Mode::Train(options)).unwrap();
    replay.set_batch(ctx, &batch).unwrap();
    replay.optimizer().unwrap().prepare(ctx).unwrap();
    let dispatches: Vec<Dispatch> = replay.dispatches().cloned().collect();
    roformer_wgpu::timing::time_each(ctx, &dispatches).unwrap();
    let (p, q) = (stepped.params(), listed.params());
    assert_eq!(q.download(ctx).unwrap(), p.download(ctx).unwrap());
    assert_eq!(
        q.download_moments(ctx).unwrap(),
        p.download_moments(ctx).unwrap()
    );
    let scale = |s: &ParamStore| s.read_loss_scale(ctx).unwrap().wait(ctx).unwrap();
    assert_eq!(scale(q), scale(p));
    assert_eq!(scale(q), (65536.0, 1), "one good step counted");

    // One refresh per parameter chunk, the graph, the optimizer; each one predicted.
    let chunks = q.chunk_views(ctx).unwrap().len();
    let graph = replay.plan().dispatches().len();
    let optimizer = replay.optimizer().unwrap().dispatches().count();
    assert_eq!(dispatches.len(), chunks + graph + optimizer);
    assert_eq!(replay.dispatch_count(), dispatches.len());
    let h200 = roformer_lab::cost_model::gpu("h200").unwrap();
    let predicted = roformer_lab::cost_model::StepPrediction::of(h200, replay.dispatches());
    assert_eq!(predicted.dispatches.len(), dispatches.len());
}

#[test]
fn an_overflow_skips_the_step_and_halves_the_scale() {
    let ctx = &ctx();
    if !has_f16(ctx, "forced overflow") {
        return;
    }
    let (cfg, tensors) = fixture("roformer_tiny_cls");
    let (b, t, batch, _) = batch_from(&tensors).unwrap();
    let huge = LossScaling {
        init_scale: 2f32.powi(100),
        ..Default::default()
    };
    let load = |scaling| {
        let mut model = RoFormer::new(ctx, cfg.clone(), head_of(&cfg, &tensors)).unwrap();
        model.load_tensors(ctx, &tensors).unwrap();
        model.use_mixed_precision(ctx, scaling).unwrap();
        model
    };
    let model = load(huge);
    let options = TrainOptions::default();
    let mut session = model.session(ctx, b, t, Mode::Train(options)).unwrap();
    session.set_batch(ctx, &batch).unwrap();
    let weights = model.params().download(ctx).unwrap();
    let moments = model.params().download_moments(ctx).unwrap();
    for (i, scale) in [2f32.powi(100), 2f32.powi(99)].into_iter().enumerate() {
        let m = session.run(ctx).unwrap();
        assert!(
            m.skipped,
            "step {i} at scale {scale} should overflow: {m:?}"
        );
        assert!(
            m.loss.is_finite(),
            "the forward pass does not overflow: {m:?}"
        );
        assert_eq!(m.loss_scale, Some(scale), "step {i}");
        assert_eq!(model.params().download(ctx).unwrap(), weights, "step {i}");
        assert_eq!(model.params().download_moments(ctx).unwrap(), moments);
    }
    let (scale, good) = model
        .params()
        .read_loss_scale(ctx)
        .unwrap()
        .wait(ctx)
        .unwrap();
    assert_eq!((scale, good), (2f32.powi(98), 0), "halved twice");

    // Now a scale that fits: the step is taken, as step 1.
    model.params().set_loss_scale(ctx, 1024.0, 0).unwrap();
    let m = session.run(ctx).unwrap();
    assert!(!m.skipped && m.grad_norm.unwrap().is_finite(), "{m:?}");
    assert_eq!(m.loss_scale, Some(1024.0));
    assert_eq!(
        session.optimizer().unwrap().step(),
        1,
        "skipped steps do not count"
    );
    let after = model.params().download(ctx).unwrap();
    assert_ne!(after, weights, "the step must change the weights");
    drop(session);

    // The same step on a model that never overflowed: the same weights, bit for bit.
    let clean = load(LossScaling {
        init_scale: 1024.0,
        ..Default::default()
    });
    let mut session = clean.session(ctx, b, t, Mode::Train(options)).unwrap();
    session.set_batch(ctx, &batch).unwrap();
    let m = session.run(ctx).unwrap();
    assert!(!m.skipped);
    assert_eq!(clean.params().download(ctx).unwrap(), after);
    assert_eq!(
        clean.params().download_moments(ctx).unwrap(),
        model.params().download_moments(ctx).unwrap()
    );
    let (scale, good) = clean
        .params()
        .read_loss_scale(ctx)
        .unwrap()
        .wait(ctx)
        .unwrap();
    assert_eq!((scale, good), (1024.0, 1), "one good step counted");
}

fn head_of(cfg: &RoFormerConfig, tensors: &HostTensors) -> roformer_wgpu::model::Head {
    roformer_wgpu::model::detect_head(cfg, tensors).unwrap()
}

#[test]
fn bad_settings_and_weights_only_stores_are_refused_and_change_nothing() {
    let ctx = &ctx();
    if !has_f16(ctx, "mixed precision errors") {
        return;
    }
    let (cfg, tensors) = fixture("roformer_tiny_cls");
    let mut model = RoFormer::new(ctx, cfg.clone(), head_of(&cfg, &tensors)).unwrap();
    let bad = LossScaling {
        backoff_factor: 2.0,
        ..Default::default()
    };
    let e = model.use_mixed_precision(ctx, bad).unwrap_err().to_string();
    assert!(e.contains("backoff_factor"), "{e}");
    assert!(
        !model.params().is_mixed(),
        "a refused setting changes nothing"
    );

    let mut weights = ParamStore::weights_only(ctx, &[("w".into(), vec![3, 5])]).unwrap();
    let e = weights
        .use_mixed_precision(ctx, LossScaling::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("weights only"), "{e}");
    assert!(!weights.is_mixed());
}

/// Local attention (f16 q, k, v and gradients in its kernels) in mixed precision, against
/// its transformers fixtures (tools/make_local_attention_fixtures.py).
#[test]
fn local_attention_trains_like_transformers_in_mixed_precision() {
    let ctx = &ctx();
    if !has_f16(ctx, "local attention in mixed precision") {
        return;
    }
    for name in ["roformer_local_cls", "roformer_local_mlm"] {
        let (cfg, tensors) = fixture(name);
        let mut model = RoFormer::new(ctx, cfg.clone(), head_of(&cfg, &tensors)).unwrap();
        model.load_tensors(ctx, &tensors).unwrap();
        model
            .use_mixed_precision(ctx, LossScaling::default())
            .unwrap();
        let report = ctx
            .block_on(roformer_lab::verify::verify_model(ctx, &model, &tensors))
            .unwrap();
        let worst = report
            .checks
            .iter()
            .filter(|c| c.name != "train.adamw_losses")
            .map(|c| c.error)
            .fold(0.0, f64::max);
        let losses = report
            .checks
            .iter()
            .find(|c| c.name == "train.adamw_losses")
            .unwrap();
        eprintln!(
            "{name} local, mixed: worst tensor {worst:.2e}, AdamW losses {:.2e}",
            losses.error
        );
        assert!(
            report.checks.len() > 20,
            "{name}: {} checks",
            report.checks.len()
        );
        assert!(worst < TENSOR_TOL, "{name}: {worst:.2e}");
        assert!(losses.error < LOSS_TOL, "{name}: {:.2e}", losses.error);
    }
}
