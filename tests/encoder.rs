//! The inference encoder: a sequence's results do not depend on what it is batched with
//! (ragged batches across bucket boundaries against the same sequences one by one), several
//! requests in flight at once each get their own results, memory is the weights (no
//! gradients, no moments) plus one pool sized for the largest bucket, and asking for what
//! a request did not ask for is an error.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::model::{Encoder, EncoderOptions, Head, Request, RoFormer, Sequence, Want};
use roformer_wgpu::{Context, Error};

fn tiny_mlm(ctx: &Context, options: EncoderOptions) -> Encoder {
    let d = fixtures_dir();
    Encoder::from_pretrained(
        ctx,
        d.join("roformer_tiny_mlm.config.json"),
        d.join("roformer_tiny_mlm.safetensors"),
        options,
    )
    .unwrap()
}

fn sequences(lengths: &[usize], seed: u64) -> Vec<Sequence> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    lengths
        .iter()
        .map(|&n| Sequence {
            input_ids: (0..n).map(|_| rng.random_range(1..99)).collect(),
            token_type_ids: (0..n).map(|_| rng.random_range(0..2)).collect(),
            attention_mask: Vec::new(),
        })
        .collect()
}

const BOTH: Want = Want {
    last_hidden_state: true,
    hidden_states: false,
    first_token: true,
    logits: true,
};

#[test]
fn results_do_not_depend_on_the_batch_or_its_buckets() {
    let ctx = &ctx();
    let encoder = tiny_mlm(ctx, EncoderOptions::default());
    // Lengths on both sides of the length buckets (8, 16, 32, 64).
    let lengths = [1, 7, 8, 9, 16, 17, 33, 64];
    let seqs = sequences(&lengths, 1);
    let together = encoder
        .run_blocking(ctx, &Request::new(seqs.clone(), BOTH))
        .unwrap();
    assert_eq!(together.len(), lengths.len());
    for (i, s) in seqs.into_iter().enumerate() {
        let alone = encoder
            .run_blocking(ctx, &Request::new(vec![s], BOTH))
            .unwrap();
        let n = lengths[i];
        let a = together.last_hidden_state(i).unwrap();
        let b = alone.last_hidden_state(0).unwrap();
        assert_eq!(a.shape, [n, 32]);
        assert_eq!(b.shape, [n, 32]);
        let err = rel_l2(
            &a.data,
            &b.data.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        assert!(err < 1e-5, "length {n}: hidden states differ by {err:.2e}");
        let (la, lb) = (together.logits(i).unwrap(), alone.logits(0).unwrap());
        assert_eq!(la.shape, [n, 99]);
        let err = rel_l2(
            &la.data,
            &lb.data.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        assert!(err < 1e-5, "length {n}: logits differ by {err:.2e}");
        assert_eq!(together.first_token(i).unwrap().data, a.data[..32]);
    }
    // Eight sequences of up to 64 tokens, then one of each length bucket.
    assert_eq!(encoder.cached_plans(), 5);
}

#[test]
fn requests_in_flight_at_once_each_get_their_own_results() {
    let ctx = &ctx();
    let encoder = tiny_mlm(ctx, EncoderOptions::default());
    let (a, b, c) = (
        sequences(&[5, 12], 2),
        sequences(&[30], 3),
        sequences(&[6, 11], 4), // the same bucket as a, other tokens
    );
    let want = Want::logits();
    let expected: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|s| {
            encoder
                .run_blocking(ctx, &Request::new((*s).clone(), want))
                .unwrap()
        })
        .collect();
    // All three submitted before any is read; c overwrites a's bucket inputs meanwhile.
    let mut pa = encoder.run(ctx, &Request::new(a, want)).unwrap();
    let pb = encoder.run(ctx, &Request::new(b, want)).unwrap();
    let pc = encoder.run(ctx, &Request::new(c, want)).unwrap();
    let rc = pollster::block_on(pc).unwrap(); // as a future
    let rb = pb.wait(ctx).unwrap(); // blocking
    let ra = loop {
        // as an event loop would
        if let Some(r) = pa.try_take() {
            break r.unwrap();
        }
    };
    for (got, want) in [&ra, &rb, &rc].into_iter().zip(&expected) {
        for i in 0..got.len() {
            assert_eq!(got.logits(i).unwrap(), want.logits(i).unwrap());
        }
    }
    assert!(pa.try_take().is_none(), "a result is taken once");
}

#[test]
fn inference_memory_is_the_weights_and_the_largest_bucket() {
    let ctx = &ctx();
    let d = fixtures_dir();
    let training = RoFormer::from_pretrained(
        ctx,
        d.join("roformer_tiny_mlm.config.json"),
        d.join("roformer_tiny_mlm.safetensors"),
    )
    .unwrap();
    let both = tiny_mlm(ctx, EncoderOptions::default());
    let large_only = tiny_mlm(ctx, EncoderOptions::default());
    let large = Request::new(sequences(&[40; 8], 5), Want::logits());
    for r in [
        Request::new(sequences(&[3], 6), Want::logits()),
        large.clone(),
        Request::new(sequences(&[9, 2], 7), Want::logits()),
    ] {
        both.run_blocking(ctx, &r).unwrap();
    }
    large_only.run_blocking(ctx, &large).unwrap();
    let (m, l) = (both.memory(), large_only.memory());
    eprintln!("three buckets: {m:?}\nthe largest alone: {l:?}");
    // Weights only: a quarter of the training store (values, gradients, two moments).
    assert_eq!(4 * m.params, training.params().memory());
    assert!(l.pooled > 0);
    assert!(
        m.pooled as f64 <= 1.1 * l.pooled as f64,
        "the pool grew past the largest bucket's activations: {} > 1.1 x {}",
        m.pooled,
        l.pooled
    );
}

#[test]
fn the_plan_cache_is_bounded() {
    let ctx = &ctx();
    let encoder = tiny_mlm(
        ctx,
        EncoderOptions {
            max_batch: 4,
            max_plans: 2,
            ..EncoderOptions::default()
        },
    );
    // Largest first, so the pool never grows (growing it drops the plans bound to it).
    for n in [40, 20, 12, 3] {
        encoder
            .run_blocking(ctx, &Request::new(sequences(&[n], 8), Want::logits()))
            .unwrap();
    }
    assert_eq!(encoder.cached_plans(), 2);
    let too_many = Request::new(sequences(&[3; 5], 9), Want::logits());
    assert!(matches!(
        encoder.run(ctx, &too_many),
        Err(Error::InvalidArgument(m)) if m.contains("max_batch")
    ));
}

#[test]
fn asking_for_what_was_not_requested_is_an_error() {
    let ctx = &ctx();
    let encoder = tiny_mlm(ctx, EncoderOptions::default());
    let r = encoder
        .run_blocking(ctx, &Request::new(sequences(&[4], 10), Want::logits()))
        .unwrap();
    assert!(r.logits(0).is_ok());
    for err in [
        r.last_hidden_state(0).err(),
        r.hidden_states(0).err(),
        r.first_token(0).err(),
        r.logits(1).err(),
        r.start_logits(0).err(),
        r.choice_logits(0).err(),
    ] {
        assert!(matches!(err, Some(Error::InvalidArgument(_))), "{err:?}");
    }
    let bad = |r: Request| encoder.run(ctx, &r).err();
    assert!(bad(Request::new(Vec::new(), Want::logits())).is_some());
    assert!(bad(Request::new(sequences(&[4], 1), Want::default())).is_some());
    assert!(bad(Request::new(
        vec![Sequence::new(Vec::new())],
        Want::logits()
    ))
    .is_some());
    assert!(bad(Request::new(sequences(&[65], 1), Want::logits())).is_some());
    let mut out_of_vocab = sequences(&[4], 1);
    out_of_vocab[0].input_ids[2] = 99;
    assert!(matches!(
        bad(Request::new(out_of_vocab, Want::logits())),
        Some(Error::TokenOutOfRange { id: 99, .. })
    ));
    let mut choices = Request::new(sequences(&[4, 4], 1), Want::logits());
    choices.choices = 2;
    assert!(bad(choices).is_some(), "choices on a masked LM");
    assert_eq!(encoder.head(), Head::MaskedLm);
}

/// A BERT-base-sized encoder (12 layers, hidden 768, 12 heads, vocabulary 30522) in f16
/// holds about half of f32's memory: the weights exactly half (to alignment), the
/// activation pool about half (LayerNorm's statistics stay f32), and the two give the same
/// hidden states to f16's accuracy.
#[test]
fn a_bert_base_encoder_in_f16_takes_half_the_memory() {
    use roformer_wgpu::model::RoFormerConfig;
    use roformer_wgpu::DType;
    let ctx = &ctx();
    if !has_f16(ctx, "f16 memory") {
        return;
    }
    let config = RoFormerConfig::from_json(
        r#"{"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512}"#,
        "bert-base",
    )
    .unwrap();
    let request = Request::new(sequences(&[16, 11], 5), Want::last_hidden_state());
    let mut reports = Vec::new();
    let mut hidden = Vec::new();
    for precision in [DType::F32, DType::F16] {
        let options = EncoderOptions {
            max_batch: 2,
            precision,
            ..EncoderOptions::default()
        };
        let encoder = Encoder::new(ctx, config.clone(), Head::Encoder, options).unwrap();
        encoder.init_random(ctx, 3).unwrap();
        let results = encoder.run_blocking(ctx, &request).unwrap();
        hidden.push(results.last_hidden_state(0).unwrap().data.clone());
        let m = encoder.memory();
        eprintln!(
            "{precision:?}: weights {} MB, activations {} MB, inputs {} KB, peak {} MB",
            m.params >> 20,
            m.pooled >> 20,
            m.inputs >> 10,
            m.peak() >> 20
        );
        reports.push(m);
    }
    let ratio = |a: u64, b: u64| b as f64 / a as f64;
    let weights = ratio(reports[0].params, reports[1].params);
    let pooled = ratio(reports[0].pooled, reports[1].pooled);
    let peak = ratio(reports[0].peak(), reports[1].peak());
    eprintln!("f16 / f32: weights {weights:.3}, activations {pooled:.3}, peak {peak:.3}");
    assert!((0.49..0.51).contains(&weights), "weights {weights}");
    assert!((0.45..0.56).contains(&pooled), "activations {pooled}");
    assert!((0.45..0.55).contains(&peak), "peak {peak}");
    let err = rel_l2(
        &hidden[1],
        &hidden[0].iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    eprintln!("last hidden state, f16 against f32: relative L2 {err:.2e}");
    assert!(err < 1e-2, "f16 hidden state off by {err:.2e}");
}

/// Only the rows a request asks for are read back: a sequence's real tokens (never the
/// bucket's padding), and with `logit_positions` the rows of those positions alone (what
/// fill-mask asks for), bit for bit the rows of the whole request.
#[test]
fn only_the_rows_asked_for_come_back() {
    let ctx = &ctx();
    let encoder = tiny_mlm(ctx, EncoderOptions::default());
    let vocab = encoder.config().vocab_size;
    let seqs = sequences(&[7, 33, 1], 5);
    let whole = encoder
        .run(ctx, &Request::new(seqs.clone(), Want::logits()))
        .unwrap();
    // 41 tokens' rows, not the bucket's 4 × 64.
    assert_eq!(whole.bytes(), (41 * vocab * 4) as u64);
    let whole = whole.wait(ctx).unwrap();
    let positions = vec![vec![3, 0, 6], vec![32], vec![]];
    let request = Request {
        logit_positions: Some(positions.clone()),
        ..Request::new(seqs, Want::logits())
    };
    let some = encoder.run(ctx, &request).unwrap();
    assert_eq!(some.bytes(), (4 * vocab * 4) as u64);
    let some = some.wait(ctx).unwrap();
    for (i, list) in positions.iter().enumerate() {
        let got = some.logits(i).unwrap();
        assert_eq!(got.shape, [list.len(), vocab]);
        for (row, &p) in list.iter().enumerate() {
            let all = &whole.logits(i).unwrap().data;
            assert_eq!(
                got.data[row * vocab..(row + 1) * vocab],
                all[p * vocab..(p + 1) * vocab]
            );
        }
    }
    let bad = |positions: Vec<Vec<usize>>| {
        let r = Request {
            logit_positions: Some(positions),
            ..Request::new(sequences(&[4, 2], 1), Want::logits())
        };
        encoder.run(ctx, &r).err().unwrap().to_string()
    };
    assert!(bad(vec![vec![4], vec![]]).contains("position 4 of sequence 0"));
    assert!(bad(vec![vec![0]]).contains("1 lists for 2 sequences"));
}

/// f16 values come back in pieces of 2 bytes that copies (4-byte aligned) cannot cut on
/// their own: a multiple-choice score per sequence, one f16 each, at odd and even places.
#[test]
fn single_f16_values_come_back_whole() {
    let ctx = &ctx();
    if !has_f16(ctx, "f16 read-back of single values") {
        return;
    }
    let d = fixtures_dir();
    let open = |precision| {
        Encoder::from_pretrained(
            ctx,
            d.join("roformer_multiple_choice.config.json"),
            d.join("roformer_multiple_choice.safetensors"),
            EncoderOptions {
                precision,
                ..EncoderOptions::default()
            },
        )
        .unwrap()
    };
    let mut seqs = sequences(&[5, 5, 5, 7, 7, 7], 9);
    for s in &mut seqs {
        s.input_ids.iter_mut().for_each(|id| *id %= 60); // the fixture's vocabulary
    }
    let mut request = Request::new(seqs, Want::logits());
    request.choices = 3;
    let f32s = open(roformer_wgpu::DType::F32)
        .run_blocking(ctx, &request)
        .unwrap();
    let f16s = open(roformer_wgpu::DType::F16)
        .run_blocking(ctx, &request)
        .unwrap();
    for e in 0..2 {
        let (a, b) = (
            f16s.choice_logits(e).unwrap(),
            f32s.choice_logits(e).unwrap(),
        );
        assert!(rel_l2(&a, &b) < 1e-2, "example {e}: {a:?} against {b:?}");
    }
}
