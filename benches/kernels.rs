//! Criterion benchmarks, one group per kernel family, at small shapes (they run on llvmpipe
//! too; `cargo run --release --example bench` has the large-shape table). Each measurement is
//! GPU time from timestamp queries when the adapter has them (`timing::time_dispatches`).
//!
//!     cargo bench --bench kernels [-- FILTER]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roformer_wgpu::model::{Batch, Head, Mode, RoFormer, RoFormerConfig};
use roformer_wgpu::ops::attention::heads::HeadLayout;
use roformer_wgpu::ops::attention::linear::{self, LinearAttentionOptions};
use roformer_wgpu::ops::attention::{self, AttentionOptions, BufferShapes, Saved};
use roformer_wgpu::ops::attention::{chunked_linear as chunked, flash};
use roformer_wgpu::ops::cross_entropy::{self, Labels, LossState};
use roformer_wgpu::ops::embedding::{self, TokenIds};
use roformer_wgpu::ops::matmul::{self, MatmulOptions};
use roformer_wgpu::ops::{adamw, elementwise, gelu, layernorm, reduce, rope, softmax};
use roformer_wgpu::optim::TrainOptions;
use roformer_wgpu::timing::time_dispatches;
use roformer_wgpu::{Context, Dispatch};

use roformer_lab::inputs::{filled, zeros};

/// Benches `dispatches` as one unit, `bytes` or `flops` of work each.
fn bench(
    c: &mut Criterion,
    ctx: &Context,
    group: &str,
    name: &str,
    work: Throughput,
    dispatches: Vec<Dispatch>,
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    g.throughput(work);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            time_dispatches(ctx, &dispatches, iters as u32).unwrap() * iters as u32
        })
    });
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let ctx = Context::new().expect("a GPU adapter");
    let ctx = &ctx;
    let n = 128;
    let (a, b, out) = (
        filled(ctx, &[n, n]),
        filled(ctx, &[n, n]),
        zeros(ctx, &[n, n]),
    );
    for (name, ta, tb) in [
        ("nn", false, false),
        ("nt", false, true),
        ("tn", true, false),
    ] {
        let o = MatmulOptions {
            trans_a: ta,
            trans_b: tb,
            ..Default::default()
        };
        bench(
            c,
            ctx,
            "matmul",
            name,
            Throughput::Elements(2 * (n * n * n) as u64),
            vec![matmul::plan(ctx, &a, &b, None, &out, &o).unwrap()],
        );
    }
    bench(
        c,
        ctx,
        "reduce",
        "sum_rows",
        Throughput::Bytes(4 * (n * n) as u64),
        reduce::plan_sum_rows(ctx, &a, &zeros(ctx, &[n]), false).unwrap(),
    );
    let m = 1 << 16;
    let x = filled(ctx, &[m]);
    bench(
        c,
        ctx,
        "elementwise",
        "axpby",
        Throughput::Bytes(12 * m as u64),
        vec![elementwise::plan_axpby(ctx, 1.0, &x, 1.0, Some(&x), &zeros(ctx, &[m])).unwrap()],
    );
    bench(
        c,
        ctx,
        "gelu",
        "forward",
        Throughput::Bytes(8 * m as u64),
        vec![gelu::plan_forward(ctx, &x, &zeros(ctx, &[m])).unwrap()],
    );
    bench(
        c,
        ctx,
        "gelu",
        "backward",
        Throughput::Bytes(12 * m as u64),
        vec![gelu::plan_backward(ctx, &x, &x, &zeros(ctx, &[m])).unwrap()],
    );
    let (r, w) = (256, 256);
    let s = filled(ctx, &[r, w]);
    bench(
        c,
        ctx,
        "softmax",
        "forward",
        Throughput::Bytes(8 * (r * w) as u64),
        vec![softmax::plan_forward(
            ctx,
            &s,
            &softmax::SoftmaxOptions::default(),
            &zeros(ctx, &[r, w]),
        )
        .unwrap()],
    );
    bench(
        c,
        ctx,
        "softmax",
        "backward",
        Throughput::Bytes(12 * (r * w) as u64),
        vec![softmax::plan_backward(ctx, &s, &s, 1.0, &zeros(ctx, &[r, w])).unwrap()],
    );
    let (g, bt, stats) = (filled(ctx, &[w]), filled(ctx, &[w]), zeros(ctx, &[r, 2]));
    bench(
        c,
        ctx,
        "layernorm",
        "forward",
        Throughput::Bytes(8 * (r * w) as u64),
        vec![
            layernorm::plan_forward(ctx, &s, &g, &bt, 1e-12, &zeros(ctx, &[r, w]), &stats).unwrap(),
        ],
    );
    bench(
        c,
        ctx,
        "layernorm",
        "backward",
        Throughput::Bytes(12 * (r * w) as u64),
        [
            vec![layernorm::plan_backward(ctx, &s, &g, &stats, &s, &zeros(ctx, &[r, w])).unwrap()],
            layernorm::plan_backward_params(
                ctx,
                &s,
                &stats,
                &s,
                &zeros(ctx, &[w]),
                &zeros(ctx, &[w]),
                false,
            )
            .unwrap(),
        ]
        .concat(),
    );
    let shape = [1, 64, 4, 32];
    let x = filled(ctx, &shape);
    let table = rope::table(ctx, 64, 32).unwrap();
    bench(
        c,
        ctx,
        "rope",
        "rotate",
        Throughput::Bytes(8 * 8192),
        vec![rope::plan(
            ctx,
            &x,
            HeadLayout::Bthd,
            &table,
            &zeros(ctx, &shape),
            HeadLayout::Bthd,
            false,
        )
        .unwrap()],
    );
    let ids: Vec<u32> = (0..512).map(|i| (i * 7) % 500).collect();
    let ids = TokenIds::new(ctx, &ids, &[512], 500).unwrap();
    let tab = filled(ctx, &[500, 64]);
    bench(
        c,
        ctx,
        "embedding",
        "forward",
        Throughput::Bytes(8 * 512 * 64),
        vec![embedding::plan_forward(ctx, &tab, &ids, &zeros(ctx, &[512, 64]), false).unwrap()],
    );
    bench(
        c,
        ctx,
        "embedding",
        "backward",
        Throughput::Bytes(8 * 512 * 64),
        embedding::plan_backward(
            ctx,
            &zeros(ctx, &[512, 64]),
            &ids,
            &zeros(ctx, &[500, 64]),
            false,
        )
        .unwrap(),
    );
    let labels = Labels::new(
        ctx,
        &(0..256).map(|i| i % 500).collect::<Vec<i32>>(),
        &[256],
        500,
        cross_entropy::IGNORE_INDEX,
    )
    .unwrap();
    let logits = filled(ctx, &[256, 500]);
    let state = LossState::new(ctx, 256).unwrap();
    bench(
        c,
        ctx,
        "cross_entropy",
        "forward",
        Throughput::Bytes(4 * 256 * 500),
        cross_entropy::plan_forward(ctx, &logits, &labels, &state).unwrap(),
    );
    let (p, grad) = (filled(ctx, &[m]), filled(ctx, &[m]));
    let st = adamw::AdamWState::zeros(ctx, &[m]).unwrap();
    bench(
        c,
        ctx,
        "adamw",
        "step",
        Throughput::Bytes(28 * m as u64),
        vec![
            adamw::plan_step(ctx, &adamw::AdamWConfig::default(), &p, &grad, &st, None)
                .unwrap()
                .dispatch,
        ],
    );

    let shape = [1, 4, 128, 32];
    let (q, k, v) = (
        filled(ctx, &shape),
        filled(ctx, &shape),
        filled(ctx, &shape),
    );
    let flops = Throughput::Elements(4 * 4 * 128 * 128 * 32);
    let opts = AttentionOptions::default();
    let shapes = BufferShapes::new(&shape, &shape, HeadLayout::Bhtd, &opts).unwrap();
    let saved = Saved::new(ctx, &shapes).unwrap();
    let d = attention::plan_forward(
        ctx,
        &q,
        &k,
        &v,
        HeadLayout::Bhtd,
        &opts,
        &saved,
        &zeros(ctx, &shapes.square),
        &zeros(ctx, &shape),
    )
    .unwrap();
    bench(
        c,
        ctx,
        "attention",
        "materialised forward",
        flops.clone(),
        d,
    );
    let fs = flash::FlashSaved::new(ctx, &q, HeadLayout::Bhtd, &opts).unwrap();
    bench(
        c,
        ctx,
        "attention",
        "fused forward",
        flops,
        flash::plan_forward(
            ctx,
            &q,
            &k,
            &v,
            HeadLayout::Bhtd,
            &opts,
            &fs,
            &zeros(ctx, &shape),
        )
        .unwrap(),
    );
    let lo = LinearAttentionOptions::default();
    let ls = zeros(ctx, &linear::saved_shape(&q, HeadLayout::Bhtd).unwrap());
    bench(
        c,
        ctx,
        "attention",
        "linear forward",
        Throughput::Elements(4 * 4 * 128 * 32 * 32),
        linear::plan_forward(
            ctx,
            &q,
            &k,
            &v,
            HeadLayout::Bhtd,
            &lo,
            &zeros(ctx, &shape),
            &ls,
        )
        .unwrap(),
    );
    let co = LinearAttentionOptions {
        causal: true,
        ..Default::default()
    };
    let cs = chunked::shapes(ctx, &q, &k, &v, HeadLayout::Bhtd, &co).unwrap();
    let csv = chunked::ChunkedSaved::new(ctx, &cs).unwrap();
    bench(
        c,
        ctx,
        "attention",
        "causal linear chunked forward",
        Throughput::Elements(4 * 4 * 128 * 32 * 32),
        chunked::plan_forward(
            ctx,
            &q,
            &k,
            &v,
            HeadLayout::Bhtd,
            &co,
            &csv,
            &zeros(ctx, &shape),
        )
        .unwrap(),
    );
}

/// A whole training step (forward, backward, clipping, AdamW), throughput in tokens.
fn training_step(c: &mut Criterion) {
    let ctx = Context::new().expect("a GPU adapter");
    let config = RoFormerConfig::from_json(
        r#"{"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 64}"#,
        "bench",
    )
    .unwrap();
    let model = RoFormer::new(&ctx, config, Head::MaskedLm).unwrap();
    model.init_random(&ctx, 0).unwrap();
    let (batch, seq) = (4, 64);
    let mut session = model
        .session(&ctx, batch, seq, Mode::Train(TrainOptions::default()))
        .unwrap();
    session
        .set_batch(
            &ctx,
            &Batch {
                input_ids: (0..batch * seq).map(|i| (i % 1000) as u32).collect(),
                labels: vec![5; batch * seq],
                ..Default::default()
            },
        )
        .unwrap();
    let mut g = c.benchmark_group("training_step");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements((batch * seq) as u64));
    g.bench_function("mlm 2x64 T64 B4", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let m = session.run(&ctx).unwrap();
                    m.gpu.unwrap_or(m.encode)
                })
                .sum()
        })
    });
    g.finish();
}

criterion_group!(benches, kernels, training_step);
criterion_main!(benches);
