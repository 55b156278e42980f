//! Bad input to the model gets a clear error, never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use roformer_wgpu::io::{read_safetensors, write_safetensors, HostData};
use roformer_wgpu::model::{
    Batch, Encoder, EncoderOptions, Mode, Request, RoFormer, Sequence, Want,
};
use roformer_wgpu::Error;

fn tiny() -> (PathBuf, PathBuf) {
    let d = fixtures_dir();
    (
        d.join("roformer_tiny_mlm.config.json"),
        d.join("roformer_tiny_mlm.safetensors"),
    )
}

/// A folder of one test's own under the temp dir, or a file in it, removed with the folder
/// when this is dropped (a failing test's too: its assertion message says what went wrong).
struct Scratch {
    dir: PathBuf,
    path: PathBuf,
}

impl Scratch {
    /// The same folder, pointing at its file `name`.
    fn with_file(mut self, name: &str) -> Scratch {
        self.path = self.dir.join(name);
        self
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("roformer-errors-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch {
        path: dir.clone(),
        dir,
    }
}

/// The tiny checkpoint's float tensors, edited by `f`, written to a new file.
fn edited(name: &str, f: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> Scratch {
    let mut t: Vec<_> = read_safetensors(tiny().1)
        .unwrap()
        .into_iter()
        .filter_map(|(n, t)| match t.data {
            HostData::F32(v) => Some((n, t.shape, v)),
            HostData::I64(_) => None,
        })
        .collect();
    f(&mut t);
    let path = scratch(name).with_file("w.safetensors");
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

    // A cross-entropy session given float labels as well: an error, not ignored.
    let mut b = good.clone();
    b.float_labels = vec![0.5; 32];
    let e = session.set_batch(ctx, &b).unwrap_err();
    assert!(e.to_string().contains("float_labels"), "{e}");
}

/// Multi-label and regression classifiers learn from float labels: class labels instead,
/// the wrong count, or a value their loss cannot take are errors naming what is wrong.
#[test]
fn float_labels_of_the_wrong_kind_length_or_value_are_errors() {
    let ctx = &ctx();
    let d = fixtures_dir();
    for (name, out_of_range) in [
        ("roformer_multi_label", Some(1.5)), // BCE targets are probabilities
        ("roformer_regression", None),
    ] {
        let model = RoFormer::from_pretrained(
            ctx,
            d.join(format!("{name}.config.json")),
            d.join(format!("{name}.safetensors")),
        )
        .unwrap();
        let labels = model.classes();
        let session = model.session(ctx, 2, 4, Mode::Gradients).unwrap();
        let good = Batch {
            input_ids: vec![1; 8],
            float_labels: vec![1.0; 2 * labels],
            ..Default::default()
        };
        session.set_batch(ctx, &good).unwrap();

        let class_labels = Batch {
            labels: vec![0, 1],
            float_labels: Vec::new(),
            ..good.clone()
        };
        let e = session.set_batch(ctx, &class_labels).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("float_labels"),
            "{name}: {e}"
        );

        let mut b = good.clone();
        b.float_labels.push(0.0);
        let e = session.set_batch(ctx, &b).unwrap_err();
        assert!(
            matches!(
                e,
                Error::DataLength {
                    what: "float_labels",
                    ..
                }
            ),
            "{name}: {e}"
        );

        let mut b = good.clone();
        b.float_labels[1] = f32::NAN;
        let e = session.set_batch(ctx, &b).unwrap_err();
        assert!(
            e.to_string().contains("float label 1 is NaN"),
            "{name}: {e}"
        );
        if let Some(v) = out_of_range {
            b.float_labels[1] = v;
            let e = session.set_batch(ctx, &b).unwrap_err();
            assert!(e.to_string().contains("[0, 1]"), "{name}: {e}");
        }
    }
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

#[test]
fn weights_that_are_not_finite_are_an_error_naming_the_tensor() {
    let (config, _) = tiny();
    let nan = edited("nan", |t| {
        let w = t
            .iter_mut()
            .find(|(n, _, _)| n == "roformer.encoder.layer.1.attention.self.key.weight")
            .unwrap();
        w.2[17] = f32::NAN;
    });
    let e = load_err(&config, &nan);
    assert!(
        e.contains("attention.self.key.weight") && e.contains("NaN"),
        "{e}"
    );
    let inf = edited("inf", |t| {
        t.iter_mut()
            .find(|(n, _, _)| n == "cls.predictions.bias")
            .unwrap()
            .2[0] = f32::INFINITY;
    });
    let e = load_err(&config, &inf);
    assert!(
        e.contains("cls.predictions.bias") && e.contains("inf"),
        "{e}"
    );
}

/// A config with `key: value` replaced or added.
fn config_with(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Scratch {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().0).unwrap()).unwrap();
    edit(&mut json);
    let path = scratch(name).with_file("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn config_keys_that_change_the_function_are_honoured_or_refused() {
    let (_, weights) = tiny();
    let unknown = config_with("arch", |j| {
        j["architectures"] = serde_json::json!(["RoFormerForPony"])
    });
    let e = load_err(&unknown, &weights);
    assert!(
        e.contains("RoFormerForPony") && e.contains("RoFormerForMaskedLM"),
        "{e}"
    );
    let cross = config_with("cross", |j| {
        j["add_cross_attention"] = serde_json::json!(true)
    });
    assert!(load_err(&cross, &weights).contains("add_cross_attention"));
    let problem = config_with("problem", |j| {
        j["problem_type"] = serde_json::json!("ranking")
    });
    assert!(load_err(&problem, &weights).contains("ranking"));

    // is_decoder makes attention causal, whatever the head: changing a later token leaves
    // the earlier positions' logits alone, as it does not without it.
    let ctx = &ctx();
    let decoder = config_with("decoder", |j| j["is_decoder"] = serde_json::json!(true));
    let run = |config: &Path, last: u32| {
        let e = Encoder::from_pretrained(ctx, config, &weights, EncoderOptions::default()).unwrap();
        let r = e
            .run_blocking(
                ctx,
                &Request::new(
                    vec![Sequence::new(vec![4, 8, 15, 16, last])],
                    Want::logits(),
                ),
            )
            .unwrap();
        r.logits(0).unwrap().data[..4 * 99].to_vec()
    };
    assert_eq!(run(&decoder, 23), run(&decoder, 42));
    assert_ne!(run(&tiny().0, 23), run(&tiny().0, 42));
}

#[test]
fn training_a_head_this_library_does_not_train_is_an_error() {
    let ctx = &ctx();
    let d = fixtures_dir();
    // Question answering, multiple choice and the bare encoder have no training loss here;
    // sequence classifiers of every problem type do.
    for (name, class) in [
        ("roformer_qa", "RoFormerForQuestionAnswering"),
        ("roformer_multiple_choice", "RoFormerForMultipleChoice"),
        ("roformer_base_model", "RoFormerModel"),
    ] {
        let model = RoFormer::from_pretrained(
            ctx,
            d.join(format!("{name}.config.json")),
            d.join(format!("{name}.safetensors")),
        )
        .unwrap();
        let e = model
            .session(ctx, 1, 4, Mode::Gradients)
            .err()
            .unwrap_or_else(|| panic!("{name}: no loss to train"));
        assert!(
            matches!(e, Error::InvalidArgument(_))
                && e.to_string().contains(class)
                && e.to_string().contains("Encoder"),
            "{e}"
        );
    }
    for name in ["roformer_multi_label", "roformer_regression"] {
        let model = RoFormer::from_pretrained(
            ctx,
            d.join(format!("{name}.config.json")),
            d.join(format!("{name}.safetensors")),
        )
        .unwrap();
        model.session(ctx, 1, 4, Mode::Gradients).unwrap();
    }
    // An output a session did not keep is an error, not whatever its buffer holds now.
    let (config, weights) = tiny();
    let model = RoFormer::from_pretrained(ctx, &config, &weights).unwrap();
    let train = model
        .session(ctx, 1, 4, Mode::Train(Default::default()))
        .unwrap();
    assert!(train
        .logits(ctx)
        .unwrap_err()
        .to_string()
        .contains("not kept"));
    assert!(train.hidden_state(ctx, 1).is_err());
    let inference = model.session(ctx, 1, 4, Mode::Inference).unwrap();
    assert!(inference.hidden_state(ctx, 0).is_err());
}

#[test]
fn sharded_checkpoints_load_as_one() {
    let (config, weights) = tiny();
    let all = read_safetensors(&weights).unwrap();
    let dir = scratch("sharded");
    let mut map = serde_json::Map::new();
    let mut shards: [Vec<roformer_wgpu::io::NamedTensor>; 2] = [Vec::new(), Vec::new()];
    for (i, (name, t)) in all.iter().enumerate() {
        if let HostData::F32(v) = &t.data {
            let shard = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
            map.insert(name.clone(), serde_json::json!(shard));
            shards[i % 2].push((name.clone(), t.shape.clone(), v.clone()));
        }
    }
    for (i, tensors) in shards.iter().enumerate() {
        let path = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        write_safetensors(path, tensors, &[]).unwrap();
    }
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        serde_json::json!({ "metadata": {}, "weight_map": map }).to_string(),
    )
    .unwrap();
    let request = Request::new(vec![Sequence::new(vec![3, 1, 4, 1, 5])], Want::logits());
    {
        let ctx = &ctx(); // released before load_err takes its own turn
        let whole =
            Encoder::from_pretrained(ctx, &config, &weights, EncoderOptions::default()).unwrap();
        let want = whole.run_blocking(ctx, &request).unwrap();
        for source in [index.clone(), dir.to_path_buf()] {
            let sharded =
                Encoder::from_pretrained(ctx, &config, &source, EncoderOptions::default()).unwrap();
            let got = sharded.run_blocking(ctx, &request).unwrap();
            assert_eq!(got.logits(0).unwrap(), want.logits(0).unwrap());
        }
    }
    // A shard the index names but that is not there.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&config, &index);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn a_bare_encoder_saves_as_roformer_model_does() {
    let ctx = &ctx();
    let d = fixtures_dir();
    let weights = d.join("roformer_base_model.safetensors");
    let model = RoFormer::from_pretrained(ctx, d.join("roformer_base_model.config.json"), &weights)
        .unwrap();
    assert_eq!(model.head(), roformer_wgpu::model::Head::Encoder);
    let dir = scratch("bare");
    model.save(ctx, &dir).unwrap();
    let saved = read_safetensors(dir.join("model.safetensors")).unwrap();
    let original = read_safetensors(&weights).unwrap();
    for (name, t) in &saved {
        assert!(!name.starts_with("roformer."), "{name}");
        assert_eq!(Some(t), original.get(name), "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["RoFormerModel"])
    );
}
