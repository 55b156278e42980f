//! The performer-attention RoFormer (FAVOR+ random features with RoPE) has no transformers
//! fixture: its GPU loss is checked against the f64 CPU reference model
//! (`model::reference`, which computes the features without the kernels' stabilisers) and
//! its gradients against central finite differences of that reference, on sampled
//! coordinates of every parameter (relative L2 < 1e-3). And the random projections are
//! what the docs say: stored with the weights, never trained, drawn again only when asked,
//! refused in half precision.

mod common;

use common::reference_model::*;
use common::*;
use rand::SeedableRng;
use roformer_wgpu::model::{
    performer_projection_name, Batch, Encoder, EncoderOptions, Head, Mode, RoFormer, RoFormerConfig,
};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::{DType, Error};

fn config(causal: bool, seed: u64) -> RoFormerConfig {
    tiny_config(&format!(
        r#""attention_kind": "performer", "performer_features": 12,
            "performer_seed": {seed}, "causal": {causal}"#
    ))
}

fn loss(ctx: &roformer_wgpu::Context, model: &RoFormer, batch: &Batch) -> f32 {
    let mut session = model.session(ctx, 2, 7, Mode::Gradients).unwrap();
    session.set_batch(ctx, batch).unwrap();
    session.run(ctx).unwrap().loss
}

fn check(head: Head, causal: bool, seed: u64) {
    let ctx = &ctx();
    let model = RoFormer::new(ctx, config(causal, seed), head).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    model
        .load_tensors(ctx, &random_weights(&model, &mut rng))
        .unwrap();
    let what = format!("performer {head:?} causal={causal}");
    check_against_reference(ctx, &model, head, &mut rng, (1e-5, 1e-3), &what);
}

#[test]
fn masked_lm_matches_the_reference_model() {
    check(Head::MaskedLm, false, 31);
}

#[test]
fn causal_classifier_matches_the_reference_model() {
    check(Head::Classification, true, 32);
}

/// A saved performer model holds its projections and reproduces its outputs after
/// training steps (which leave them alone); without them a checkpoint does not load and the
/// model is left as it was; a redraw changes the outputs, including those of a session
/// planned before it, and drawing from the config's seed again restores them.
#[test]
fn projections_are_saved_never_trained_and_drawn_only_when_asked() {
    let ctx = &ctx();
    let head = Head::Classification;
    let model = RoFormer::new(ctx, config(false, 5), head).unwrap();
    // Weights large enough that attention is far from uniform, so the projections matter.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    model
        .load_tensors(ctx, &random_weights(&model, &mut rng))
        .unwrap();
    let drawn = model.performer_projections();
    assert_eq!(drawn.len(), 2);
    assert_eq!(drawn[0].len(), 12 * 8);
    assert_ne!(drawn[0], drawn[1], "each layer draws its own");
    let batch = random_batch(head, &mut rng, 2, 7);
    let mut train = model
        .session(ctx, 2, 7, Mode::Train(TrainOptions::default()))
        .unwrap();
    train.set_batch(ctx, &batch).unwrap();
    for _ in 0..2 {
        train.run(ctx).unwrap();
    }
    drop(train);
    assert_eq!(model.performer_projections(), drawn, "training drew again");
    let before = loss(ctx, &model, &batch);

    let dir = std::env::temp_dir().join(format!("roformer-performer-{}", std::process::id()));
    model.save(ctx, &dir).unwrap();
    let saved = roformer_wgpu::io::read_checkpoint(dir.join("model.safetensors")).unwrap();
    let stored = &saved[&performer_projection_name(1)];
    assert_eq!(
        (stored.shape.clone(), stored.to_f32()),
        (vec![12, 8], drawn[1].clone())
    );
    // Another seed in the config: the checkpoint's projections win over a new draw.
    let config_text = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"performer_seed\": 5", "\"performer_seed\": 6");
    assert!(config_text.contains("\"performer_seed\": 6"));
    std::fs::write(dir.join("config.json"), config_text).unwrap();
    let loaded =
        RoFormer::from_pretrained(ctx, dir.join("config.json"), dir.join("model.safetensors"))
            .unwrap();
    assert_eq!(loaded.performer_projections(), drawn);
    assert_eq!(
        loss(ctx, &loaded, &batch),
        before,
        "the loaded model differs"
    );
    // ... which a fresh draw from that seed would not have reproduced.
    let fresh = RoFormer::new(ctx, loaded.config().clone(), head).unwrap();
    fresh.load_tensors(ctx, &saved).unwrap(); // the same checkpoint: its projections
    assert_eq!(loss(ctx, &fresh, &batch), before);
    fresh.redraw_performer_projections(ctx, 6).unwrap();
    let other = loss(ctx, &fresh, &batch);
    assert_ne!(other, before, "the projections do not reach the outputs");
    // An encoder copied from the model runs the same projections: same logits.
    let encoder = loaded.to_encoder(ctx, EncoderOptions::default()).unwrap();
    let from_file = Encoder::from_pretrained(
        ctx,
        dir.join("config.json"),
        &dir,
        EncoderOptions::default(),
    )
    .unwrap();
    let request = roformer_wgpu::model::Request::new(
        vec![roformer_wgpu::model::Sequence::new(vec![1, 5, 7, 3])],
        roformer_wgpu::model::Want {
            logits: true,
            ..Default::default()
        },
    );
    let a = encoder.run(ctx, &request).unwrap().wait(ctx).unwrap();
    let b = from_file.run(ctx, &request).unwrap().wait(ctx).unwrap();
    assert_eq!(a.logits(0).unwrap().data, b.logits(0).unwrap().data);

    // Without its projections a performer checkpoint is refused, and nothing changes.
    let mut missing = saved.clone();
    missing.remove(&performer_projection_name(1));
    missing.get_mut("classifier.out_proj.bias").unwrap().data =
        roformer_wgpu::io::HostData::F32(vec![5.0; 3]);
    let e = loaded.load_tensors(ctx, &missing).unwrap_err().to_string();
    assert!(
        e.contains("performer_projection") && e.contains("missing"),
        "{e}"
    );
    assert_eq!(
        loss(ctx, &loaded, &batch),
        before,
        "a refused load changed the model"
    );

    // A redraw reaches a session planned before it; the config's seed draws the same again.
    let mut session = loaded.session(ctx, 2, 7, Mode::Gradients).unwrap();
    session.set_batch(ctx, &batch).unwrap();
    assert_eq!(session.run(ctx).unwrap().loss, before);
    loaded.redraw_performer_projections(ctx, 77).unwrap();
    assert_ne!(session.run(ctx).unwrap().loss, before);
    loaded.redraw_performer_projections(ctx, 5).unwrap();
    assert_eq!(loaded.performer_projections(), drawn);
    assert_eq!(session.run(ctx).unwrap().loss, before);
    drop(session);
    std::fs::remove_dir_all(&dir).ok();

    // Other kinds have none to draw.
    let softmax = RoFormer::new(
        ctx,
        RoFormerConfig::from_json(
            r#"{"vocab_size": 23, "hidden_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 24}"#,
            "t",
        )
        .unwrap(),
        head,
    )
    .unwrap();
    assert!(softmax.performer_projections().is_empty());
    assert!(softmax.redraw_performer_projections(ctx, 1).is_err());
}

/// Half precision is refused with the reason, where training or an encoder would ask for it.
#[test]
fn half_precision_is_refused() {
    let ctx = &ctx();
    let mut model = RoFormer::new(ctx, config(false, 0), Head::MaskedLm).unwrap();
    let e = model
        .use_mixed_precision(ctx, Default::default())
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("f32 only"),
        "{e}"
    );
    let e = Encoder::new(
        ctx,
        config(false, 0),
        Head::MaskedLm,
        EncoderOptions {
            precision: DType::F16,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("f32 only"), "{e}");
}
