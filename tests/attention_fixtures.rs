//! The attention kernels against `tests/fixtures/attention_small.safetensors`
//! (torch float64): softmax attention composed from matmul + softmax + RoPE, linear
//! attention in all four variants, and RoPE alone. Outputs and grad_q/k/v, relative L2 < 1e-4.

mod common;

use common::*;
use roformer_wgpu::check::rel_l2;
use roformer_wgpu::ops::attention::chunked_linear::{self as chunked, ChunkedSaved};
use roformer_wgpu::ops::attention::flash::{self, FlashSaved, FlashScratch};
use roformer_wgpu::ops::attention::heads::HeadLayout;
use roformer_wgpu::ops::attention::linear::{self, LinearAttentionOptions};
use roformer_wgpu::ops::attention::{self, AttentionOptions, BackwardBuffers, BufferShapes, Saved};
use roformer_wgpu::ops::rope;
use roformer_wgpu::Tensor;

const TOL: f64 = 1e-4;

fn check(what: &str, ours: &[f32], reference: &[f32]) -> String {
    let err = rel_l2(ours, reference);
    assert!(
        err < TOL,
        "{what}: relative L2 error {err:.3e} (tolerance {TOL:.0e})"
    );
    format!("{what:40} {err:.2e}")
}

#[test]
fn attention_matches_torch_fixtures() {
    let ctx = &ctx();
    let fx = load_fixture("attention_small.safetensors");
    let get = |k: &str| fx.get(k).unwrap_or_else(|| panic!("fixture has no {k}"));
    let (shape, q) = get("input.q");
    let [_, _, t, d] = shape[..] else {
        panic!("q is not 4-D")
    };
    let layout = HeadLayout::Bhtd;
    let tq = upload(ctx, q, shape);
    let tk = upload(ctx, &get("input.k").1, shape);
    let tv = upload(ctx, &get("input.v").1, shape);
    let tg = upload(ctx, &get("input.grad_out").1, shape);
    let table = rope::table(ctx, t, d).unwrap();
    let mut report = Vec::new();
    // out, dq, dk, dv of one variant, poisoned.
    let outputs = || {
        (
            poisoned(ctx, shape),
            poisoned(ctx, shape),
            poisoned(ctx, shape),
            poisoned(ctx, shape),
        )
    };
    // Checks them against `{prefix}.out` and `.grad_q/k/v`, reported with `tag`.
    let compare = |report: &mut Vec<String>, prefix: &str, tag: &str, ours: [&Tensor; 4]| {
        for (suffix, tensor) in ["out", "grad_q", "grad_k", "grad_v"].into_iter().zip(ours) {
            let key = format!("{prefix}.{suffix}");
            report.push(check(
                &format!("{key}{tag}"),
                &download(ctx, tensor),
                &get(&key).1,
            ));
        }
    };

    let rotated = poisoned(ctx, shape);
    ctx.run(&[rope::plan(ctx, &tq, layout, &table, &rotated, layout, false).unwrap()])
        .unwrap();
    report.push(check(
        "rope.out",
        &download(ctx, &rotated),
        &get("rope.out").1,
    ));

    for causal in [false, true] {
        for use_rope in [false, true] {
            let name = format!(
                "{}.{}",
                if causal { "causal" } else { "full" },
                if use_rope { "rope" } else { "plain" }
            );
            let (out, dq, dk, dv) = outputs();

            let opts = AttentionOptions {
                causal,
                rope: use_rope.then_some(&table),
                ..Default::default()
            };
            let shapes = BufferShapes::new(shape, shape, layout, &opts).unwrap();
            let saved = Saved::new(ctx, &shapes).unwrap();
            let scores = poisoned(ctx, &shapes.square);
            let bwd = BackwardBuffers::new(ctx, &shapes).unwrap();
            ctx.run(
                &attention::plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &saved, &scores, &out)
                    .unwrap(),
            )
            .unwrap();
            ctx.run(
                &attention::plan_backward(
                    ctx, &tq, &tk, &tv, layout, &opts, &saved, &bwd, &tg, &dq, &dk, &dv,
                )
                .unwrap(),
            )
            .unwrap();
            compare(
                &mut report,
                &format!("softmax.{name}"),
                "",
                [&out, &dq, &dk, &dv],
            );

            // The fused (FlashAttention-2 style) kernels against the same references.
            let (out, dq, dk, dv) = outputs();
            let flash = FlashSaved::new(ctx, &tq, layout, &opts).unwrap();
            let scratch = FlashScratch::new(ctx, &tq, &opts).unwrap();
            ctx.run(&flash::plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &flash, &out).unwrap())
                .unwrap();
            ctx.run(
                &flash::plan_backward(
                    ctx, &tq, &tk, &tv, layout, &opts, &flash, &out, &tg, &scratch, &dq, &dk, &dv,
                )
                .unwrap(),
            )
            .unwrap();
            compare(
                &mut report,
                &format!("softmax.{name}"),
                " (fused)",
                [&out, &dq, &dk, &dv],
            );

            let (out, dq, dk, dv) = outputs();
            let saved = poisoned(ctx, &linear::saved_shape(&tq, layout).unwrap());
            let opts = LinearAttentionOptions {
                causal,
                rope: use_rope.then_some(&table),
                ..Default::default()
            };
            ctx.run(
                &linear::plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &out, &saved).unwrap(),
            )
            .unwrap();
            ctx.run(
                &linear::plan_backward(
                    ctx, &tq, &tk, &tv, layout, &opts, &out, &saved, &tg, &dq, &dk, &dv,
                )
                .unwrap(),
            )
            .unwrap();
            compare(
                &mut report,
                &format!("linear.{name}"),
                "",
                [&out, &dq, &dk, &dv],
            );
        }
    }
    // The chunked form of causal linear attention against the same references.
    for use_rope in [false, true] {
        let name = format!("causal.{}", if use_rope { "rope" } else { "plain" });
        let opts = LinearAttentionOptions {
            causal: true,
            rope: use_rope.then_some(&table),
            ..Default::default()
        };
        let s = chunked::shapes(ctx, &tq, &tk, &tv, layout, &opts).unwrap();
        let saved = ChunkedSaved::new(ctx, &s).unwrap();
        let reverse = poisoned(ctx, &s.states());
        let (out, dq, dk, dv) = outputs();
        ctx.run(&chunked::plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &saved, &out).unwrap())
            .unwrap();
        ctx.run(
            &chunked::plan_backward(
                ctx, &tq, &tk, &tv, layout, &opts, &saved, &out, &tg, &reverse, &dq, &dk, &dv,
            )
            .unwrap(),
        )
        .unwrap();
        compare(
            &mut report,
            &format!("linear.{name}"),
            " (chunked)",
            [&out, &dq, &dk, &dv],
        );
    }
    eprintln!(
        "relative L2 errors against the torch float64 fixtures:\n{}",
        report.join("\n")
    );
}
