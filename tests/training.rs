//! The optimizer on a real model: one training step with gradient clipping and a warm-up
//! schedule equals torch's recipe (clip_grad_norm_ then AdamW) applied on the CPU to the
//! gradients of the same batch.

mod common;

use common::*;
use roformer_lab::verify::batch_from;
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::model::{Mode, RoFormer};
use roformer_wgpu::ops::adamw::{self, AdamWConfig};
use roformer_wgpu::ops::clip;
use roformer_wgpu::optim::{Decay, Schedule, TrainOptions};

#[test]
fn clipped_adamw_step_matches_the_cpu_recipe() {
    let ctx = &ctx();
    let d = fixtures_dir();
    let weights = d.join("roformer_tiny_mlm.safetensors");
    let model =
        RoFormer::from_pretrained(ctx, d.join("roformer_tiny_mlm.config.json"), &weights).unwrap();
    let (b, t, batch, _) =
        batch_from(&roformer_wgpu::io::read_safetensors(&weights).unwrap()).unwrap();

    // The gradients of this batch, and the parameters before the step.
    let mut grads_session = model.session(ctx, b, t, Mode::Gradients).unwrap();
    grads_session.set_batch(ctx, &batch).unwrap();
    grads_session.run(ctx).unwrap();
    let grads = model.params().download_grads(ctx).unwrap();
    let before = model.params().download(ctx).unwrap();
    drop(grads_session);
    let all: Vec<f64> = grads
        .iter()
        .flat_map(|(_, _, g)| g.iter().map(|&v| v as f64))
        .collect();
    let max_norm = 0.25 * all.iter().map(|g| g * g).sum::<f64>().sqrt();
    let (scale, norm) = clip::reference::clip(&all, Some(max_norm));
    assert!(scale < 0.3, "the test wants clipping to bite");

    let options = TrainOptions {
        // A large eps makes the update depend on the gradient scale (AdamW alone is almost
        // scale-invariant), so a clipping factor that is not applied shows.
        adamw: AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            eps: 1e-3,
            ..Default::default()
        },
        schedule: Schedule {
            warmup_steps: 0,
            total_steps: 10,
            decay: Decay::Cosine,
        },
        clip_norm: Some(max_norm as f32),
        decay_skips_biases_and_norms: false,
    };
    let mut train = model.session(ctx, b, t, Mode::Train(options)).unwrap();
    train.set_batch(ctx, &batch).unwrap();
    let m = train.run(ctx).unwrap();
    // Update 1 of a cosine decay runs at the peak rate (transformers' multiplier after no
    // scheduler step).
    let lr = 1e-2;
    assert!(
        m.lr.is_some_and(|r| (r - lr).abs() < 1e-15),
        "learning rate {:?}, want {lr}",
        m.lr
    );
    assert!(
        (m.grad_norm.unwrap() as f64 - norm).abs() < 1e-5 * norm,
        "norm {:?} vs {norm}",
        m.grad_norm
    );

    let after = model.params().download(ctx).unwrap();
    let step = AdamWConfig {
        lr,
        ..options.adamw
    };
    let (mut ours, mut want) = (Vec::new(), Vec::new());
    for (((name, _, p0), (_, _, g)), (_, _, p1)) in before.iter().zip(&grads).zip(&after) {
        let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
        let g: Vec<f64> = g.iter().map(|&v| v as f64 * scale).collect();
        let (mut mm, mut vv) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        adamw::reference::step(&step, 1, &mut p, &g, &mut mm, &mut vv);
        // Compare the update itself, not the (much larger) parameters.
        ours.extend(p1.iter().zip(p0).map(|(a, b)| (*a - *b) as f64));
        want.extend(p.iter().zip(p0).map(|(a, b)| a - *b as f64));
        assert_eq!(p1.len(), p0.len(), "{name}");
    }
    let err = rel_l2(&ours, &want);
    assert!(
        err < 1e-4,
        "parameter updates differ from the CPU recipe: relative L2 {err:.2e}"
    );
}

/// transformers' Trainer leaves biases and LayerNorm weights out of weight decay: one step
/// with decay against one without moves exactly the decayed parameters by −lr·wd·p more
/// (decoupled decay), and leaves the others' updates equal.
#[test]
fn weight_decay_skips_biases_and_layer_norms_as_the_trainer_groups_them() {
    let ctx = &ctx();
    let d = fixtures_dir();
    let weights = d.join("roformer_tiny_mlm.safetensors");
    let tensors = roformer_wgpu::io::read_safetensors(&weights).unwrap();
    let (b, t, batch, _) = batch_from(&tensors).unwrap();
    let (lr, wd) = (0.1, 0.5);
    let step = |weight_decay: f64| {
        let model =
            RoFormer::from_pretrained(ctx, d.join("roformer_tiny_mlm.config.json"), &weights)
                .unwrap();
        let options = TrainOptions {
            adamw: AdamWConfig {
                lr,
                weight_decay,
                ..Default::default()
            },
            decay_skips_biases_and_norms: true,
            ..Default::default()
        };
        let mut s = model.session(ctx, b, t, Mode::Train(options)).unwrap();
        s.set_batch(ctx, &batch).unwrap();
        s.run(ctx).unwrap();
        model.params().download(ctx).unwrap()
    };
    let (without, with) = (step(0.0), step(wd));
    let before = RoFormer::from_pretrained(ctx, d.join("roformer_tiny_mlm.config.json"), &weights)
        .unwrap()
        .params()
        .download(ctx)
        .unwrap();
    let (mut decayed, mut kept) = (0, 0);
    for ((name, _, p0), ((_, _, a), (_, _, b))) in before.iter().zip(without.iter().zip(&with)) {
        let decays = !(name.contains("bias") || name.contains("LayerNorm"));
        let got: Vec<f64> = a.iter().zip(b).map(|(x, y)| (*y - *x) as f64).collect();
        let want: Vec<f64> = p0
            .iter()
            .map(|&p| if decays { -lr * wd * p as f64 } else { 0.0 })
            .collect();
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "{name}: decayed {decays}, off by {err}");
        if decays {
            decayed += 1;
        } else {
            kept += 1;
        }
    }
    assert!(decayed > 5 && kept > 5, "{decayed} decayed, {kept} not");
}
