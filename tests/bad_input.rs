//! Every kind of bad input gets a clear error, never a panic: hostile safetensors files,
//! broken configs, tensors over the adapter's limits. (Checkpoints that disagree with their
//! config, out-of-range ids and over-long sequences: tests/model_errors.rs.)

mod common;

use std::path::Path;

use common::*;
use roformer_wgpu::io::parse_safetensors;
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::{DType, Error, Tensor};

/// A safetensors file: 8-byte little-endian header length, the header, the data.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(data);
    v
}

fn format_error(bytes: &[u8]) -> String {
    match parse_safetensors(Path::new("hostile.safetensors"), bytes) {
        Err(e @ Error::Format { .. }) => {
            assert!(e.to_string().contains("hostile.safetensors"), "{e}");
            e.to_string()
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn hostile_safetensors_are_format_errors() {
    let data = [0u8; 16];
    let ok = st(
        r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        &data,
    );
    assert!(
        parse_safetensors(Path::new("ok"), &ok).is_ok(),
        "the baseline file is valid"
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "offsets past the end",
            st(
                r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,1000]}}"#,
                &data,
            ),
        ),
        (
            "offsets reversed",
            st(
                r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#,
                &data,
            ),
        ),
        (
            "shape and bytes disagree",
            st(
                r#"{"t":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        (
            "shape overflows",
            st(
                r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        (
            "unknown dtype",
            st(
                r#"{"t":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        (
            "dtype we cannot convert",
            st(
                r#"{"t":{"dtype":"F8_E4M3","shape":[16],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        (
            "overlapping tensors",
            st(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                &data,
            ),
        ),
        ("header is not JSON", st("{not json", &data)),
        ("header is not UTF-8", {
            let mut v = 4u64.to_le_bytes().to_vec();
            v.extend([0xff, 0xfe, 0xfd, 0xfc]);
            v
        }),
        ("header longer than the file", {
            let mut v = 1000u64.to_le_bytes().to_vec();
            v.extend(b"{}");
            v
        }),
        ("huge header length", {
            let mut v = (u64::MAX / 2).to_le_bytes().to_vec();
            v.extend(b"{}");
            v
        }),
        ("shorter than the length field", vec![1, 2, 3]),
        ("empty", vec![]),
    ];
    for (what, bytes) in cases {
        let e = format_error(&bytes);
        eprintln!("{what:32} -> {e}");
    }
}

#[test]
fn broken_configs_name_the_problem() {
    let cases = [
        ("wrong type", r#"{"hidden_size": "big"}"#, "hidden_size"),
        (
            "negative size",
            r#"{"num_hidden_layers": -2}"#,
            "num_hidden_layers",
        ),
        (
            "fraction for a count",
            r#"{"num_attention_heads": 2.5}"#,
            "num_attention_heads",
        ),
        (
            "zero size",
            r#"{"intermediate_size": 0}"#,
            "intermediate_size must be at least 1",
        ),
        (
            "heads do not divide",
            r#"{"hidden_size": 30, "num_attention_heads": 4}"#,
            "not a multiple",
        ),
        (
            "odd head dimension",
            r#"{"hidden_size": 36, "num_attention_heads": 4}"#,
            "even",
        ),
        (
            "unsupported activation",
            r#"{"hidden_act": "swish"}"#,
            "hidden_act",
        ),
        (
            "unknown attention kind",
            r#"{"attention_kind": "sparse"}"#,
            "attention_kind",
        ),
        (
            "rotary_value with linear attention",
            r#"{"attention_kind": "linear", "rotary_value": true}"#,
            "rotary_value",
        ),
        (
            "layer_norm_eps not positive",
            r#"{"layer_norm_eps": 0}"#,
            "layer_norm_eps",
        ),
        (
            "pad token outside the vocabulary",
            r#"{"vocab_size": 10, "pad_token_id": 10}"#,
            "pad_token_id",
        ),
        ("no labels", r#"{"num_labels": 0}"#, "num_labels"),
        ("not an object", "[1, 2, 3]", "config.json"),
        ("syntax error", r#"{"hidden_size": 32,"#, "config.json"),
        ("empty", "", "config.json"),
    ];
    for (what, json, expect) in cases {
        let e = RoFormerConfig::from_json(json, "config.json")
            .expect_err(what)
            .to_string();
        assert!(e.contains(expect), "{what}: {e}");
        eprintln!("{what:36} -> {e}");
    }
    // A missing field takes transformers' default, as in HF; a checkpoint that then
    // disagrees is caught when the weights load (tests/model_errors.rs).
    assert_eq!(
        RoFormerConfig::from_json("{}", "c").unwrap().hidden_size,
        768
    );
}

#[test]
fn tensors_over_the_adapter_limits_are_errors_not_panics() {
    let ctx = &ctx();
    let caps = ctx.capabilities().clone();
    assert!(matches!(
        Tensor::zeros(ctx, &[usize::MAX, 2], DType::F32),
        Err(Error::OverLimit { .. })
    ));
    assert!(matches!(
        Tensor::full(ctx, &[1 << 40, 1 << 30], 1.0),
        Err(Error::OverLimit { .. })
    ));
    assert!(
        Tensor::zeros(ctx, &[0, 4], DType::F32).is_err(),
        "empty tensors are refused"
    );

    // A model whose logits do not fit one storage binding: refused when the step is planned.
    let vocab = 4096;
    let seq = 64;
    let batch = (caps.max_storage_binding / (4 * (seq * vocab) as u64)) as usize + 1;
    let config = RoFormerConfig::from_json(
        &format!(r#"{{"vocab_size": {vocab}, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": {seq}}}"#),
        "c",
    )
    .unwrap();
    let model = RoFormer::new(ctx, config, Head::MaskedLm).unwrap();
    let e = model
        .session(ctx, batch, seq, Mode::Inference)
        .err()
        .expect("over the binding limit");
    assert!(matches!(e, Error::OverLimit { .. }), "{e}");
    assert!(
        e.to_string().contains("logits") || e.to_string().contains("decoder"),
        "{e}"
    );

    // Training with materialised attention scores too large for a binding: the error names
    // the score tensors, not the small tensors that share their pooled buffers.
    let heads = 4;
    let seq = ((caps.max_storage_binding / (4 * heads as u64)) as f64).sqrt() as usize + 1;
    let config = RoFormerConfig::from_json(
        &format!(r#"{{"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": {heads}, "intermediate_size": 8, "max_position_embeddings": {seq}}}"#),
        "c",
    )
    .unwrap();
    let model = RoFormer::new(ctx, config, Head::MaskedLm).unwrap();
    let e = model
        .session(ctx, 1, seq, Mode::Train(Default::default()))
        .err()
        .expect("scores over the binding limit");
    let message = e.to_string();
    assert!(matches!(e, Error::OverLimit { .. }), "{e}");
    assert!(message.contains("attention.self.scores"), "{e}");
    assert!(
        !message.contains("LayerNorm") && !message.contains("dense"),
        "{e}"
    );

    // A configuration whose parameters alone exceed the limits: refused before allocating.
    let huge = RoFormerConfig::from_json(
        r#"{"vocab_size": 4000000000, "hidden_size": 4096, "num_attention_heads": 32}"#,
        "c",
    )
    .unwrap();
    assert!(matches!(
        RoFormer::new(ctx, huge, Head::MaskedLm),
        Err(Error::OverLimit { .. })
    ));

    // An empty batch.
    let small = RoFormer::new(ctx, RoFormerConfig::from_json(r#"{"vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 8}"#, "c").unwrap(), Head::MaskedLm).unwrap();
    let s = small.session(ctx, 1, 4, Mode::Inference).unwrap();
    assert!(matches!(
        s.set_batch(ctx, &Batch::default()),
        Err(Error::DataLength { .. })
    ));
}
