//! Bad input to the model gets a clear error, never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use roformer_wgpu::io::{read_safetensors, write_safetensors, HostData};
use roformer_wgpu::model::{Batch, Mode, RoFormer};
use roformer_wgpu::Error;

fn tiny() -> (PathBuf, PathBuf) {
    let d = fixtures_dir();
    (
        d.join("roformer_tiny_mlm.config.json"),
        d.join("roformer_tiny_mlm.safetensors"),
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roformer-errors-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny checkpoint's float tensors, edited by `f`, written to a new file.
fn edited(name: &str, f: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> PathBuf {
    let mut t: Vec<_> = read_safetensors(tiny().1)
        .unwrap()
        .into_iter()
        .filter_map(|(n, t)| match t.data {
            HostData::F32(v) => Some((n, t.shape, v)),
            HostData::I64(_) => None,
        })
        .collect();
    f(&mut t);
    let path = scratch(name).join("w.safetensors");
    write_safetensors(&path, &t, &[]).unwrap();
    path
}

fn load_err(config: &Path, weights: &Path) -> String {
    match RoFormer::from_pretrained(&ctx(), config, weights) {
        Ok(_) => panic!("{} loaded", weights.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn checkpoint_problems_name_the_tensor() {
    let (config, _) = tiny();
    let missing = edited("missing", |t| {
        t.retain(|(n, _, _)| !n.contains("layer.1.output.dense.weight"))
    });
    let e = load_err(&config, &missing);
    assert!(
        e.contains("missing tensor") && e.contains("layer.1.output.dense.weight"),
        "{e}"
    );

    let reshaped = edited("reshaped", |t| {
        let w = t
            .iter_mut()
            .find(|(n, _, _)| n == "roformer.encoder.layer.0.intermediate.dense.weight")
            .unwrap();
        w.1 = vec![32, 37];
    });
    let e = load_err(&config, &reshaped);
    assert!(
        e.contains("intermediate.dense.weight") && e.contains("[32, 37]") && e.contains("[37, 32]"),
        "{e}"
    );

    // A config that disagrees with the weights: a bigger hidden size.
    let dir = scratch("config");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"hidden_size\": 32", "\"hidden_size\": 64");
    std::fs::write(dir.join("config.json"), text).unwrap();
    let e = load_err(&dir.join("config.json"), &tiny().1);
    assert!(e.contains("has shape") && e.contains("expects"), "{e}");
}

#[test]
fn corrupt_or_truncated_files_are_errors() {
    let (config, weights) = tiny();
    let bytes = std::fs::read(&weights).unwrap();
    let dir = scratch("corrupt");
    for (name, data) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("garbage", vec![0x5a; 4096]),
        ("empty", vec![]),
    ] {
        let p = dir.join(format!("{name}.safetensors"));
        std::fs::write(&p, data).unwrap();
        let e = load_err(&config, &p);
        assert!(e.contains(&p.display().to_string()), "{name}: {e}");
    }
    assert!(load_err(&config, &dir.join("absent.safetensors")).contains("absent.safetensors"));
}

#[test]
fn bad_batches_are_errors() {
    let ctx = &ctx();
    let (config, weights) = tiny();
    let model = RoFormer::from_pretrained(ctx, &config, &weights).unwrap();
    let session = model.session(ctx, 2, 16, Mode::Inference).unwrap();
    let good = Batch {
        input_ids: vec![1; 32],
        labels: vec![-100; 32],
        ..Default::default()
    };
    session.set_batch(ctx, &good).unwrap();

    let mut b = good.clone();
    b.input_ids[5] = 99;
    let e = session.set_batch(ctx, &b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                id: 99,
                position: 5,
                vocab: 99
            }
        ),
        "{e}"
    );

    let mut b = good.clone();
    b.labels[3] = 120;
    assert!(matches!(
        session.set_batch(ctx, &b),
        Err(Error::LabelOutOfRange { label: 120, .. })
    ));

    let mut b = good.clone();
    b.input_ids.pop();
    assert!(matches!(
        session.set_batch(ctx, &b),
        Err(Error::DataLength { .. })
    ));

    let mut b = good.clone();
    b.token_type_ids = vec![2; 32];
    assert!(matches!(
        session.set_batch(ctx, &b),
        Err(Error::TokenOutOfRange {
            id: 2,
            vocab: 2,
            ..
        })
    ));

    let e = model
        .session(ctx, 1, 65, Mode::Inference)
        .err()
        .expect("65 > max_position_embeddings");
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
    assert!(model.session(ctx, 0, 4, Mode::Inference).is_err());
}

#[test]
fn save_and_load_round_trip() {
    let ctx = &ctx();
    let (config, weights) = tiny();
    let model = RoFormer::from_pretrained(ctx, &config, &weights).unwrap();
    let dir = scratch("roundtrip");
    model.save(ctx, &dir).unwrap();
    let again =
        RoFormer::from_pretrained(ctx, dir.join("config.json"), dir.join("model.safetensors"))
            .unwrap();
    assert_eq!(again.config().hidden_size, 32);
    assert_eq!(
        model.params().download(ctx).unwrap(),
        again.params().download(ctx).unwrap()
    );
    let saved = read_safetensors(dir.join("model.safetensors")).unwrap();
    let original = read_safetensors(&weights).unwrap();
    for (name, t) in &saved {
        assert_eq!(
            Some(t),
            original.get(name),
            "{name} differs from the checkpoint it was loaded from"
        );
    }
}
