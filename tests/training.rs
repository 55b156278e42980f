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
            warmup_steps: 4,
            total_steps: 10,
            decay: Decay::Cosine,
        },
        clip_norm: Some(max_norm as f32),
    };
    let mut train = model.session(ctx, b, t, Mode::Train(options)).unwrap();
    train.set_batch(ctx, &batch).unwrap();
    let m = train.run(ctx).unwrap();
    // Step 1 of a 4-step linear warm-up: a quarter of the peak rate.
    let lr = 1e-2 / 4.0;
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
