//! Causal linear attention in chunked form (flash-linear-attention's chunk algorithm),
//! forward and backward, plain or with RoFormer eq. (19) RoPE and a key mask: the same
//! function as the causal scan of [`crate::ops::attention::linear`], which it is tested
//! against. Only the pass over chunk states is sequential; everything per chunk runs in
//! parallel. Memory per head is O(T·d + d²): token features, one state per chunk.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{KernelFamily, ParamBlock, Variant};
use crate::ops::attention::heads::{HeadLayout, Heads};
use crate::ops::attention::linear::{self, FeatureMap, LinearAttentionOptions};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "chunked_linear_attention",
    source: include_str!("../../../shaders/chunked_linear_attention.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants,
    params: param_blocks,
};

/// Head-dimension variants: (largest head dimension = threads per workgroup, chunk length),
/// sized so a chunk's staged rows fit 32 KiB of workgroup memory. The widest is for
/// Performer's feature counts ([`crate::ops::attention::performer`]).
pub const VARIANTS: [(usize, usize); 4] = [(32, 32), (64, 16), (128, 8), (256, 4)];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    seq: u32,
    dim: u32,
    dim_v: u32,
    qb: u32,
    qh: u32,
    qt: u32,
    vb: u32,
    vh: u32,
    vt: u32,
    chunks: u32,
    has_mask: u32,
    has_rope: u32,
    eps: f32,
    mapped: u32,
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
pub struct ChunkShapes {
    qk: Heads,
    v: Heads,
    max_d: usize,
    chunk: usize,
    chunks: usize,
    /// q, k, v, the output and the gradients: f32 or f16.
    dtype: DType,
}

impl ChunkShapes {
    /// `[B, H, T, 6, d]`: per-token features.
    pub fn features(&self) -> [usize; 5] {
        [self.qk.batch, self.qk.heads, self.qk.seq, 6, self.qk.dim]
    }

    /// `[B, H, chunks, d·dv + d]`: one state per chunk.
    pub fn states(&self) -> [usize; 4] {
        [
            self.qk.batch,
            self.qk.heads,
            self.chunks,
            self.qk.dim * self.v.dim + self.qk.dim,
        ]
    }

    /// `[B, H, T, 2]`: denominators and their gradients.
    pub fn tokens(&self) -> [usize; 4] {
        [self.qk.batch, self.qk.heads, self.qk.seq, 2]
    }
}

/// Checks q, k, v and the options; picks the variant.
pub fn shapes(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &LinearAttentionOptions<'_>,
) -> Result<ChunkShapes> {
    let op = "chunked linear attention";
    if !q.dtype().is_float() {
        q.expect_dtype(op, "q", DType::F32)?;
    }
    for (what, t) in [("k", k), ("v", v)] {
        t.expect_dtype(op, what, q.dtype())?;
    }
    if !opts.causal {
        return Err(Error::invalid(format!(
            "{op} is the causal form; use linear_attention for non-causal"
        )));
    }
    let qk = Heads::of(op, "q", q, layout)?;
    k.expect_shape(op, "k", q.shape())?;
    let hv = Heads::of(op, "v", v, layout)?;
    qk.expect_same_bht(op, "v", &hv)?;
    let widest = qk.dim.max(hv.dim);
    let &(max_d, chunk) = VARIANTS.iter().find(|v| widest <= v.0).ok_or_else(|| {
        Error::invalid(format!(
            "{op}: head dimension {widest} is over the {} this kernel supports",
            VARIANTS[VARIANTS.len() - 1].0
        ))
    })?;
    let caps = ctx.capabilities();
    let shared = 4 * (5 * chunk * max_d + 2 * chunk * chunk + 2 * chunk);
    if shared > caps.max_workgroup_storage as usize
        || max_d > caps.max_invocations_per_workgroup as usize
    {
        return Err(Error::OverLimit {
            what: format!("{op} with head dimension {widest}"),
            needed: shared as u64,
            limit: caps.max_workgroup_storage as u64,
            limit_name: "max_compute_workgroup_storage_size",
        });
    }
    linear::check_options(op, opts, &qk)?;
    Ok(ChunkShapes {
        qk,
        v: hv,
        max_d,
        chunk,
        chunks: qk.seq.div_ceil(chunk),
        dtype: q.dtype(),
    })
}

/// What the forward pass writes and the backward pass reads.
#[derive(Clone, Debug)]
pub struct ChunkedSaved {
    /// `[B, H, T, 6, d]`: each token's features (see the shader).
    pub features: Tensor,
    /// `[B, H, chunks, d·dv + d]`: the state before each chunk.
    pub states: Tensor,
    /// `[B, H, T, 2]`: each token's denominator (and, in the backward pass, its gradient).
    pub tokens: Tensor,
}

impl ChunkedSaved {
    /// Zeroed tensors for these shapes.
    pub fn new(ctx: &Context, s: &ChunkShapes) -> Result<Self> {
        Ok(ChunkedSaved {
            features: Tensor::zeros(ctx, &s.features(), DType::F32)?,
            states: Tensor::zeros(ctx, &s.states(), DType::F32)?,
            tokens: Tensor::zeros(ctx, &s.tokens(), DType::F32)?,
        })
    }
}

/// The variant sized for heads up to `max_d` wide and chunks of `chunk` tokens.
fn variant(max_d: usize, chunk: usize) -> Variant {
    Variant::default()
        .size("MAX_D", max_d as u32)
        .size("C", chunk as u32)
}

/// Every variant: each head-dimension size with its chunk length.
fn variants() -> Vec<Variant> {
    VARIANTS.iter().map(|&(d, c)| variant(d, c)).collect()
}

fn builder<'a>(
    ctx: &'a Context,
    s: &ChunkShapes,
    opts: &LinearAttentionOptions<'_>,
    entry: &'static str,
) -> DispatchBuilder<'a> {
    let [qb, qh, qt] = s.qk.strides();
    let [vb, vh, vt] = s.v.strides();
    let u = |x: usize| x as u32;
    DispatchBuilder::family(ctx, &FAMILY, entry)
        .variant(variant(s.max_d, s.chunk))
        .element_type("T", s.dtype)
        .params(&Params {
            batch: u(s.qk.batch),
            heads: u(s.qk.heads),
            seq: u(s.qk.seq),
            dim: u(s.qk.dim),
            dim_v: u(s.v.dim),
            qb: u(qb),
            qh: u(qh),
            qt: u(qt),
            vb: u(vb),
            vh: u(vh),
            vt: u(vt),
            chunks: u(s.chunks),
            has_mask: opts.key_mask.is_some() as u32,
            has_rope: opts.rope.is_some() as u32,
            eps: opts.eps,
            mapped: (opts.feature_map == FeatureMap::Given) as u32,
        })
}

fn check_saved(s: &ChunkShapes, saved: &ChunkedSaved) -> Result<()> {
    let op = "chunked linear attention";
    saved.features.expect_shape(op, "features", &s.features())?;
    saved.states.expect_shape(op, "states", &s.states())?;
    saved.tokens.expect_shape(op, "tokens", &s.tokens())
}

/// `out` (shaped like v) from q, k, v; fills `saved`.
#[allow(clippy::too_many_arguments)]
pub fn plan_forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &LinearAttentionOptions<'_>,
    saved: &ChunkedSaved,
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    let s = shapes(ctx, q, k, v, layout, opts)?;
    check_saved(&s, saved)?;
    out.expect_shape("chunked linear attention", "out", v.shape())?;
    let (b, h, t, d) = (s.qk.batch, s.qk.heads, s.qk.seq, s.qk.dim);
    Ok(vec![
        builder(ctx, &s, opts, "features")
            .read("q", q)
            .read("k", k)
            .read_opt("table", opts.rope)
            .read_opt("mask", opts.key_mask)
            .write("feat", &saved.features)
            .build(ctx.grid_1d(((b * h * t * d) as u64).div_ceil(256))?)?,
        builder(ctx, &s, opts, "states")
            .read("v", v)
            .write("feat", &saved.features)
            .write("state", &saved.states)
            // a scan over the chunks, one workgroup per (sequence, head)
            .serial_steps(s.chunks as u64)
            .build(ctx.grid_1d((b * h) as u64)?)?,
        builder(ctx, &s, opts, "output")
            .read("v", v)
            .write("feat", &saved.features)
            .write("state", &saved.states)
            .write("tok", &saved.tokens)
            .write("out", out)
            .build(ctx.grid_1d((b * h * s.chunks) as u64)?)?,
    ])
}

/// Gradients of q, k and v. `reverse` (shaped like `saved.states`) is scratch for the
/// states of the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn plan_backward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &LinearAttentionOptions<'_>,
    saved: &ChunkedSaved,
    out: &Tensor,
    grad_out: &Tensor,
    reverse: &Tensor,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "chunked linear attention backward";
    let s = shapes(ctx, q, k, v, layout, opts)?;
    check_saved(&s, saved)?;
    reverse.expect_shape(op, "reverse", &s.states())?;
    for (what, t, want) in [
        ("out", out, v),
        ("grad_out", grad_out, v),
        ("dq", dq, q),
        ("dk", dk, k),
        ("dv", dv, v),
    ] {
        t.expect_shape(op, what, want.shape())?;
    }
    let (b, h, t) = (s.qk.batch, s.qk.heads, s.qk.seq);
    let chunks = ctx.grid_1d((b * h * s.chunks) as u64)?;
    // Each pass writes one gradient; the q and k passes also read v and rotate their
    // gradient back with the table.
    let grad = |entry: &'static str, states: &Tensor, grad: &'static str, target: &Tensor| {
        let b = builder(ctx, &s, opts, entry)
            .read("grad_out", grad_out)
            .write("feat", &saved.features)
            .write("state", states)
            .write("tok", &saved.tokens)
            .write(grad, target);
        if grad == "grad_v" {
            b
        } else {
            b.read("v", v).read_opt("table", opts.rope)
        }
        .build(chunks)
    };
    Ok(vec![
        builder(ctx, &s, opts, "prep")
            .read("grad_out", grad_out)
            .write("tok", &saved.tokens)
            .read("out_saved", out)
            .build(ctx.grid_1d(((b * h * t) as u64).div_ceil(256))?)?,
        builder(ctx, &s, opts, "reverse_states")
            .read("grad_out", grad_out)
            .write("feat", &saved.features)
            .write("state", reverse)
            .write("tok", &saved.tokens)
            .serial_steps(s.chunks as u64)
            .build(ctx.grid_1d((b * h) as u64)?)?,
        grad("backward_q", &saved.states, "grad_q", dq)?,
        grad("backward_k", reverse, "grad_k", dk)?,
        grad("backward_v", reverse, "grad_v", dv)?,
    ])
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            batch,
            heads,
            seq,
            dim,
            dim_v,
            qb,
            qh,
            qt,
            vb,
            vh,
            vt,
            chunks,
            has_mask,
            has_rope,
            eps,
            mapped
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::linear;
    use crate::ops::rope;
    use crate::testing::*;

    /// The chunked form against the causal scan, on lengths that are not chunk multiples.
    #[test]
    fn matches_the_causal_scan() {
        let ctx = &ctx();
        let mut rng = rng(41);
        let cases = [
            (1, 1, 1, 2, 2, HeadLayout::Bhtd),
            (2, 3, 7, 8, 8, HeadLayout::Bthd),
            (1, 2, 33, 6, 10, HeadLayout::Bhtd),
            (2, 1, 70, 40, 40, HeadLayout::Bthd),
            (1, 1, 19, 100, 70, HeadLayout::Bhtd),
            // the widest variant (Performer's feature counts), values narrower
            (1, 1, 10, 200, 24, HeadLayout::Bthd),
        ];
        for &(b, h, t, d, dv, layout) in &cases {
            let qs = Heads::new(b, h, t, d, layout).shape();
            let vs = Heads::new(b, h, t, dv, layout).shape();
            let (q, k) = (
                randn(&mut rng, b * h * t * d),
                randn(&mut rng, b * h * t * d),
            );
            let (v, g) = (
                randn(&mut rng, b * h * t * dv),
                randn(&mut rng, b * h * t * dv),
            );
            let (tq, tk, tv, tg) = (
                upload(ctx, &q, &qs),
                upload(ctx, &k, &qs),
                upload(ctx, &v, &vs),
                upload(ctx, &g, &vs),
            );
            let mask: Vec<f32> = (0..b * t)
                .map(|i| {
                    if i / t == 1 && i % t >= t.saturating_sub(3) {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let tmask = upload(ctx, &mask, &[b, t]);
            let table = rope::table(ctx, t, d).unwrap();
            for (use_rope, masked) in [(false, false), (true, false), (true, true), (false, true)] {
                let opts = LinearAttentionOptions {
                    causal: true,
                    rope: use_rope.then_some(&table),
                    key_mask: masked.then_some(&tmask),
                    eps: linear::EPS,
                    feature_map: FeatureMap::EluPlusOne,
                };
                // Reference: the scan.
                let (ro, rsaved) = linear::forward(ctx, &tq, &tk, &tv, layout, &opts).unwrap();
                let (rq, rk, rv) =
                    linear::backward(ctx, &tq, &tk, &tv, layout, &opts, &ro, &rsaved, &tg).unwrap();
                // Chunked.
                let s = shapes(ctx, &tq, &tk, &tv, layout, &opts).unwrap();
                let saved = ChunkedSaved::new(ctx, &s).unwrap();
                let reverse = poisoned(ctx, &s.states());
                for t in [&saved.features, &saved.states, &saved.tokens] {
                    crate::ops::elementwise::fill(ctx, t, f32::NAN).unwrap();
                }
                let (o, dq, dk, dvt) = (
                    poisoned(ctx, &vs),
                    poisoned(ctx, &qs),
                    poisoned(ctx, &qs),
                    poisoned(ctx, &vs),
                );
                ctx.run(&plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &saved, &o).unwrap())
                    .unwrap();
                ctx.run(
                    &plan_backward(
                        ctx, &tq, &tk, &tv, layout, &opts, &saved, &o, &tg, &reverse, &dq, &dk,
                        &dvt,
                    )
                    .unwrap(),
                )
                .unwrap();
                let what = format!(
                    "chunked [{b},{h},{t},{d}/{dv}] {layout:?} rope={use_rope} mask={masked}"
                );
                for (name, ours, reference, tol) in [
                    ("out", &o, &ro, 1e-5),
                    ("dq", &dq, &rq, 1e-4),
                    ("dk", &dk, &rk, 1e-4),
                    ("dv", &dvt, &rv, 1e-4),
                ] {
                    if t == 1 && (name == "dq" || name == "dk") {
                        continue; // O(eps), see linear_attention's tests
                    }
                    let want = to_f64(&download(ctx, reference));
                    assert_close(&format!("{what} {name}"), &download(ctx, ours), &want, tol);
                }
            }
        }
    }

    /// f16 q, k, v, outputs and gradients against the f64 reference (the causal function
    /// linear_attention's reference computes), from the same f16-rounded inputs.
    #[test]
    fn f16_tensors_match_the_f64_reference() {
        let ctx = &ctx();
        if !has_f16(ctx, "f16 chunked linear attention") {
            return;
        }
        let mut rng = rng(47);
        let dims = [
            (1, 1, 1, 4, 4),
            (2, 3, 7, 8, 8),
            (1, 2, 33, 16, 12),
            (1, 1, 129, 32, 32),
        ];
        for dims in dims {
            let case = linear::F16Case::new(ctx, &mut rng, dims);
            let (b, h, t, d, dv) = dims;
            let (qs, vs) = ([b, h, t, d], [b, h, t, dv]);
            for (use_rope, masked) in [(false, false), (true, true)] {
                let opts = case.options(true, use_rope, masked);
                let [tq, tk, tv, tg] = &case.inputs;
                let layout = HeadLayout::Bhtd;
                let s = shapes(ctx, tq, tk, tv, layout, &opts).unwrap();
                let saved = ChunkedSaved::new(ctx, &s).unwrap();
                let reverse = poisoned(ctx, &s.states());
                let h16 = DType::F16;
                let (o, dq, dk, dvt) = (
                    poisoned_as(ctx, &vs, h16),
                    poisoned_as(ctx, &qs, h16),
                    poisoned_as(ctx, &qs, h16),
                    poisoned_as(ctx, &vs, h16),
                );
                ctx.run(&plan_forward(ctx, tq, tk, tv, layout, &opts, &saved, &o).unwrap())
                    .unwrap();
                ctx.run(
                    &plan_backward(
                        ctx, tq, tk, tv, layout, &opts, &saved, &o, tg, &reverse, &dq, &dk, &dvt,
                    )
                    .unwrap(),
                )
                .unwrap();
                let (wo, wq, wk, wv) = case.reference(true, use_rope, masked);
                let what =
                    format!("f16 chunked [{b},{h},{t},{d}/{dv}] rope={use_rope} mask={masked}");
                for (name, ours, want, tol) in [
                    ("out", &o, &wo, 1e-3),
                    ("dq", &dq, &wq, 2e-3),
                    ("dk", &dk, &wk, 2e-3),
                    ("dv", &dvt, &wv, 1e-3),
                ] {
                    if t == 1 && (name == "dq" || name == "dk") {
                        continue; // O(eps), see linear_attention's tests
                    }
                    assert_close(
                        &format!("{what} {name}"),
                        &download_f32(ctx, ours),
                        want,
                        tol,
                    );
                }
            }
        }
    }

    #[test]
    fn non_causal_is_refused() {
        let ctx = &ctx();
        let q = upload(ctx, &[0.0; 8], &[1, 1, 2, 4]);
        assert!(shapes(
            ctx,
            &q,
            &q,
            &q,
            HeadLayout::Bhtd,
            &LinearAttentionOptions::default()
        )
        .is_err());
    }
}
