//! Attention, in each of its forms:
//!
//! - here, softmax attention as HuggingFace RoFormer computes it, composed from the kernels:
//!   RoPE on q and k (and v with `rotary_value`), `scores = q kᵀ` per head (strided matmul),
//!   `probs = softmax(scale · scores + mask)` (causal optional), `out = probs · v`. It
//!   materialises the `[B, H, T, T]` probabilities and has no shader of its own;
//! - [`flash`]: the same function without the `[B, H, T, T]` matrix (FlashAttention-2);
//! - [`local`]: softmax attention over a sliding window with global tokens (Longformer's
//!   pattern), in time and memory linear in the length;
//! - [`linear`]: linear attention with RoPE (RoFormer eq. 19), the scan form;
//! - [`chunked_linear`]: causal linear attention in chunks (flash-linear-attention's);
//! - [`performer`]: Performer's FAVOR+ random features (with RoPE) over the linear
//!   attention kernels: softmax attention estimated in time and memory linear in the length;
//! - [`cached`]: over a key/value cache, for generation (a token at a time);
//! - [`recurrent`]: causal linear attention as a recurrence, for generation with a
//!   linear-attention model (a state that does not grow);
//! - [`heads`]: how their 4-D tensors are laid out.

pub mod cached;
pub mod chunked_linear;
pub mod flash;
pub mod heads;
pub mod linear;
pub mod local;
pub mod performer;
pub mod recurrent;

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::Result;
use crate::ops::attention::heads::{HeadLayout, Heads};
use crate::ops::matmul::{self, MatrixView, StridedMatmul};
use crate::ops::{rope, softmax};
use crate::tensor::{DType, Tensor};

/// What a softmax attention computes besides `softmax(q kᵀ / √d) v`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionOptions<'a> {
    /// Position t attends to positions up to t only.
    pub causal: bool,
    /// Additive mask `[B, T]` (HF: 0 for tokens, a large negative value for padding).
    pub mask: Option<&'a Tensor>,
    /// RoPE sin/cos table `[positions >= T, d]`, applied to q and k.
    pub rope: Option<&'a Tensor>,
    /// Also rotate v (HF `rotary_value`).
    pub rotary_value: bool,
    /// Score scale; `None` is `1/√d`.
    pub scale: Option<f32>,
}

/// Which intermediate tensors a call needs, with their shapes: what the forward pass writes
/// and the backward pass reads (`q_rot`, `k_rot`, `v_rot`, `probs`), forward scratch
/// (`scores`) and backward scratch (`dprobs`, `dscores`, `dq_rot`, `dk_rot`, `dv_rot`).
/// The rotation tensors exist only with RoPE (`v_rot`, `dv_rot` only with `rotary_value`).
#[derive(Clone, Debug)]
pub struct BufferShapes {
    /// Shape of q and k.
    pub qk: Vec<usize>,
    /// Shape of v.
    pub v: Vec<usize>,
    /// `[B, H, T, T]`.
    pub square: Vec<usize>,
    /// RoPE rotates q and k.
    pub rotate_qk: bool,
    /// RoPE rotates v too.
    pub rotate_v: bool,
}

impl BufferShapes {
    /// The buffer shapes for q and v of these shapes in `layout`; errors unless both have
    /// four non-zero dimensions and the same batch, heads and length.
    pub fn new(
        q: &[usize],
        v: &[usize],
        layout: HeadLayout,
        opts: &AttentionOptions<'_>,
    ) -> Result<Self> {
        let probe = |what, shape: &[usize]| {
            let &[a, b, c, d] = shape else {
                return Err(crate::Error::shape(
                    "attention",
                    what,
                    "4 non-zero dimensions",
                    shape,
                ));
            };
            if shape.contains(&0) {
                return Err(crate::Error::shape(
                    "attention",
                    what,
                    "4 non-zero dimensions",
                    shape,
                ));
            }
            Ok(match layout {
                HeadLayout::Bhtd => Heads::new(a, b, c, d, layout),
                HeadLayout::Bthd => Heads::new(a, c, b, d, layout),
            })
        };
        let (hq, hv) = (probe("q", q)?, probe("v", v)?);
        hq.expect_same_bht("attention", "v", &hv)?;
        Ok(BufferShapes {
            qk: q.to_vec(),
            v: v.to_vec(),
            square: vec![hq.batch, hq.heads, hq.seq, hq.seq],
            rotate_qk: opts.rope.is_some(),
            rotate_v: opts.rope.is_some() && opts.rotary_value,
        })
    }
}

/// Tensors the forward pass writes and the backward pass reads.
#[derive(Clone, Debug)]
pub struct Saved {
    /// Rotated q, k (and v), in the input layout, when RoPE is on.
    pub q_rot: Option<Tensor>,
    /// Rotated k.
    pub k_rot: Option<Tensor>,
    /// Rotated v (with `rotary_value`).
    pub v_rot: Option<Tensor>,
    /// `[B, H, T, T]` softmax output.
    pub probs: Tensor,
}

/// Scratch of the backward pass.
#[derive(Clone, Debug)]
pub struct BackwardBuffers {
    /// `[B, H, T, T]` gradient of the probabilities.
    pub dprobs: Tensor,
    /// `[B, H, T, T]` gradient of the scores.
    pub dscores: Tensor,
    /// Gradients of the rotated q, k, v before they are rotated back.
    pub dq_rot: Option<Tensor>,
    /// Gradient of the rotated k.
    pub dk_rot: Option<Tensor>,
    /// Gradient of the rotated v.
    pub dv_rot: Option<Tensor>,
}

fn zeros_if(ctx: &Context, on: bool, shape: &[usize]) -> Result<Option<Tensor>> {
    on.then(|| Tensor::zeros(ctx, shape, DType::F32))
        .transpose()
}

impl Saved {
    /// Zeroed tensors of these shapes.
    pub fn new(ctx: &Context, s: &BufferShapes) -> Result<Self> {
        Ok(Saved {
            q_rot: zeros_if(ctx, s.rotate_qk, &s.qk)?,
            k_rot: zeros_if(ctx, s.rotate_qk, &s.qk)?,
            v_rot: zeros_if(ctx, s.rotate_v, &s.v)?,
            probs: Tensor::zeros(ctx, &s.square, DType::F32)?,
        })
    }
}

impl BackwardBuffers {
    /// Zeroed tensors of these shapes.
    pub fn new(ctx: &Context, s: &BufferShapes) -> Result<Self> {
        Ok(BackwardBuffers {
            dprobs: Tensor::zeros(ctx, &s.square, DType::F32)?,
            dscores: Tensor::zeros(ctx, &s.square, DType::F32)?,
            dq_rot: zeros_if(ctx, s.rotate_qk, &s.qk)?,
            dk_rot: zeros_if(ctx, s.rotate_qk, &s.qk)?,
            dv_rot: zeros_if(ctx, s.rotate_v, &s.v)?,
        })
    }
}

/// Checks q, k, v, out and the buffers against each other; returns (heads of q, of v).
fn check(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
    saved: &Saved,
) -> Result<(Heads, Heads)> {
    let h = Heads::of(op, "q", q, layout)?;
    let hv = Heads::of(op, "v", v, layout)?;
    h.expect_same_bht(op, "v", &hv)?;
    k.expect_shape(op, "k", q.shape())?;
    let s = BufferShapes::new(q.shape(), v.shape(), layout, opts)?;
    saved.probs.expect_shape(op, "probs", &s.square)?;
    for (what, t, on, shape) in [
        ("q_rot", &saved.q_rot, s.rotate_qk, &s.qk),
        ("k_rot", &saved.k_rot, s.rotate_qk, &s.qk),
        ("v_rot", &saved.v_rot, s.rotate_v, &s.v),
    ] {
        match t {
            Some(t) => t.expect_shape(op, what, shape)?,
            None if on => {
                return Err(crate::Error::invalid(format!(
                    "{op}: {what} is needed with RoPE"
                )))
            }
            None => {}
        }
    }
    Ok((h, hv))
}

/// Per-head `[T, d]` matrices of a heads tensor.
pub(crate) fn head_view(h: &Heads) -> MatrixView {
    let [sb, sh, st] = h.strides();
    MatrixView {
        offset: 0,
        row_stride: st,
        col_stride: 1,
        batch_strides: [sb, sh],
    }
}

/// Per-head `[T, T]` matrices of a `[B, H, T, T]` tensor.
pub(crate) fn square_view(h: &Heads) -> MatrixView {
    let t = h.seq;
    MatrixView {
        offset: 0,
        row_stride: t,
        col_stride: 1,
        batch_strides: [h.heads * t * t, t * t],
    }
}

pub(crate) fn product(
    h: &Heads,
    m: usize,
    n: usize,
    k: usize,
    a: MatrixView,
    b: MatrixView,
    c: MatrixView,
) -> StridedMatmul {
    StridedMatmul {
        m,
        n,
        k,
        batch: [h.batch, h.heads],
        a,
        b,
        c,
        alpha: 1.0,
        beta: 0.0,
        bias_offset: 0,
    }
}

fn scale(h: &Heads, opts: &AttentionOptions<'_>) -> f32 {
    opts.scale.unwrap_or(1.0 / (h.dim as f32).sqrt())
}

/// `out` (shaped like v) from q, k, v in `layout`; `scores` (`[B, H, T, T]`) is scratch.
#[allow(clippy::too_many_arguments)]
pub fn plan_forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
    saved: &Saved,
    scores: &Tensor,
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    let (h, hv) = check("attention", q, k, v, layout, opts, saved)?;
    scores.expect_shape("attention", "scores", saved.probs.shape())?;
    out.expect_shape("attention", "out", v.shape())?;
    let mut plan = Vec::new();
    let mut rotated = |x: &Tensor, slot: &Option<Tensor>| -> Result<Tensor> {
        match (opts.rope, slot) {
            (Some(table), Some(r)) => {
                plan.push(rope::plan(ctx, x, layout, table, r, layout, false)?);
                Ok(r.clone())
            }
            _ => Ok(x.clone()),
        }
    };
    let (qr, kr, vr) = (
        rotated(q, &saved.q_rot)?,
        rotated(k, &saved.k_rot)?,
        rotated(v, &saved.v_rot)?,
    );
    let (t, d) = (h.seq, h.dim);
    plan.push(matmul::plan_strided(
        ctx,
        &product(
            &h,
            t,
            t,
            d,
            head_view(&h),
            head_view(&h).transposed(),
            square_view(&h),
        ),
        &qr,
        &kr,
        None,
        scores,
    )?);
    let sm = softmax::SoftmaxOptions {
        scale: scale(&h, opts),
        mask: opts.mask,
        causal: opts.causal,
    };
    plan.push(softmax::plan_forward(ctx, scores, &sm, &saved.probs)?);
    plan.push(matmul::plan_strided(
        ctx,
        &product(
            &h,
            t,
            hv.dim,
            t,
            square_view(&h),
            head_view(&hv),
            head_view(&hv),
        ),
        &saved.probs,
        &vr,
        None,
        out,
    )?);
    Ok(plan)
}

/// Gradients of q, k and v from `grad_out`, using the buffers of the forward pass.
#[allow(clippy::too_many_arguments)]
pub fn plan_backward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
    saved: &Saved,
    bwd: &BackwardBuffers,
    grad_out: &Tensor,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) -> Result<Vec<Dispatch>> {
    let (h, hv) = check("attention backward", q, k, v, layout, opts, saved)?;
    bwd.dprobs
        .expect_shape("attention backward", "dprobs", saved.probs.shape())?;
    bwd.dscores
        .expect_shape("attention backward", "dscores", saved.probs.shape())?;
    grad_out.expect_shape("attention backward", "grad_out", v.shape())?;
    dq.expect_shape("attention backward", "dq", q.shape())?;
    dk.expect_shape("attention backward", "dk", k.shape())?;
    dv.expect_shape("attention backward", "dv", v.shape())?;
    let (t, d) = (h.seq, h.dim);
    let qr = saved.q_rot.as_ref().unwrap_or(q);
    let kr = saved.k_rot.as_ref().unwrap_or(k);
    let vr = saved.v_rot.as_ref().unwrap_or(v);
    // Gradients of rotated tensors go to their own buffers, then are rotated back.
    let dqr = bwd.dq_rot.as_ref().unwrap_or(dq);
    let dkr = bwd.dk_rot.as_ref().unwrap_or(dk);
    let dvr = bwd.dv_rot.as_ref().unwrap_or(dv);
    let dprobs = &bwd.dprobs;
    let mut plan = vec![
        // d probs = dO · v'ᵀ
        matmul::plan_strided(
            ctx,
            &product(
                &h,
                t,
                t,
                hv.dim,
                head_view(&hv),
                head_view(&hv).transposed(),
                square_view(&h),
            ),
            grad_out,
            vr,
            None,
            dprobs,
        )?,
        // d v' = probsᵀ · dO
        matmul::plan_strided(
            ctx,
            &product(
                &h,
                t,
                hv.dim,
                t,
                square_view(&h).transposed(),
                head_view(&hv),
                head_view(&hv),
            ),
            &saved.probs,
            grad_out,
            None,
            dvr,
        )?,
        softmax::plan_backward(ctx, &saved.probs, dprobs, scale(&h, opts), &bwd.dscores)?,
        // d q' = d scores · k'
        matmul::plan_strided(
            ctx,
            &product(&h, t, d, t, square_view(&h), head_view(&h), head_view(&h)),
            &bwd.dscores,
            kr,
            None,
            dqr,
        )?,
        // d k' = d scoresᵀ · q'
        matmul::plan_strided(
            ctx,
            &product(
                &h,
                t,
                d,
                t,
                square_view(&h).transposed(),
                head_view(&h),
                head_view(&h),
            ),
            &bwd.dscores,
            qr,
            None,
            dkr,
        )?,
    ];
    if let Some(table) = opts.rope {
        plan.push(rope::plan(ctx, dqr, layout, table, dq, layout, true)?);
        plan.push(rope::plan(ctx, dkr, layout, table, dk, layout, true)?);
        if bwd.dv_rot.is_some() {
            plan.push(rope::plan(ctx, dvr, layout, table, dv, layout, true)?);
        }
    }
    Ok(plan)
}

/// Forward pass in new tensors: `(out, buffers for the backward pass)`.
pub fn forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
) -> Result<(Tensor, Saved)> {
    let shapes = BufferShapes::new(q.shape(), v.shape(), layout, opts)?;
    let saved = Saved::new(ctx, &shapes)?;
    let scores = Tensor::zeros(ctx, &shapes.square, DType::F32)?;
    let out = Tensor::zeros(ctx, v.shape(), DType::F32)?;
    ctx.submit(&plan_forward(
        ctx, q, k, v, layout, opts, &saved, &scores, &out,
    )?)?;
    Ok((out, saved))
}

/// Backward pass in new tensors: `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
    saved: &Saved,
    grad_out: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let shapes = BufferShapes::new(q.shape(), v.shape(), layout, opts)?;
    let bwd = BackwardBuffers::new(ctx, &shapes)?;
    let dq = Tensor::zeros(ctx, q.shape(), DType::F32)?;
    let dk = Tensor::zeros(ctx, k.shape(), DType::F32)?;
    let dv = Tensor::zeros(ctx, v.shape(), DType::F32)?;
    ctx.submit(&plan_backward(
        ctx, q, k, v, layout, opts, saved, &bwd, grad_out, &dq, &dk, &dv,
    )?)?;
    Ok((dq, dk, dv))
}

/// CPU reference in f64 on `[B, H, T, d]` arrays: `(out, dq, dk, dv)`.
pub mod reference {
    use crate::ops::{rope, softmax};

    /// Attention and its gradients for `grad_out`, `[B, H, T, d]` each: `(out, dq, dk, dv)`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        grad_out: &[f64],
        (bsz, heads, t, d): (usize, usize, usize, usize),
        causal: bool,
        use_rope: bool,
        mask: Option<&[f64]>,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let scale = 1.0 / (d as f64).sqrt();
        let rot = |x: &[f64], sign: f64| {
            if use_rope {
                rope::reference::rotate(x, d, |i| i % t, sign)
            } else {
                x.to_vec()
            }
        };
        let (qr, kr) = (rot(q, 1.0), rot(k, 1.0));
        let mut out = vec![0.0; v.len()];
        let (mut dqr, mut dkr, mut dv) =
            (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for bh in 0..bsz * heads {
            let o = bh * t * d;
            let mut s = vec![0.0; t * t];
            for i in 0..t {
                for j in 0..t {
                    s[i * t + j] = (0..d).map(|l| qr[o + i * d + l] * kr[o + j * d + l]).sum();
                }
            }
            let m = mask.map(|m| (&m[(bh / heads) * t..(bh / heads + 1) * t], t));
            let p = softmax::reference::forward(&s, t, scale, m, causal.then_some(t));
            let g = &grad_out[o..o + t * d];
            let mut dp = vec![0.0; t * t];
            for i in 0..t {
                for j in 0..t {
                    for l in 0..d {
                        out[o + i * d + l] += p[i * t + j] * v[o + j * d + l];
                        dv[o + j * d + l] += p[i * t + j] * g[i * d + l];
                        dp[i * t + j] += g[i * d + l] * v[o + j * d + l];
                    }
                }
            }
            let ds = softmax::reference::backward(&p, &dp, t, scale);
            for i in 0..t {
                for j in 0..t {
                    for l in 0..d {
                        dqr[o + i * d + l] += ds[i * t + j] * kr[o + j * d + l];
                        dkr[o + j * d + l] += ds[i * t + j] * qr[o + i * d + l];
                    }
                }
            }
        }
        (out, rot(&dqr, -1.0), rot(&dkr, -1.0), dv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn matches_reference_with_rope_mask_and_causal_in_both_layouts() {
        let ctx = &ctx();
        let mut rng = rng(17);
        for &(b, h, t, d) in &[(1, 1, 1, 2), (2, 3, 7, 8), (1, 2, 33, 16), (2, 1, 70, 6)] {
            let n = b * h * t * d;
            let (q, k, v, g) = (
                randn(&mut rng, n),
                randn(&mut rng, n),
                randn(&mut rng, n),
                randn(&mut rng, n),
            );
            let mask: Vec<f32> = (0..b * t)
                .map(|i| {
                    if i / t == 1 && i % t >= t - 2 {
                        -f32::MAX
                    } else {
                        0.0
                    }
                })
                .collect();
            let table = rope::table(ctx, t, d).unwrap();
            let tmask = upload(ctx, &mask, &[b, t]);
            for layout in [HeadLayout::Bhtd, HeadLayout::Bthd] {
                let hd = Heads::new(b, h, t, d, layout);
                let perm = |x: &[f32]| Heads::new(b, h, t, d, HeadLayout::Bhtd).relayout(x, layout);
                let unperm = |y: &[f32]| hd.relayout(y, HeadLayout::Bhtd);
                let shape = hd.shape();
                let (tq, tk, tv, tg) = (
                    upload(ctx, &perm(&q), &shape),
                    upload(ctx, &perm(&k), &shape),
                    upload(ctx, &perm(&v), &shape),
                    upload(ctx, &perm(&g), &shape),
                );
                for (causal, use_rope, masked) in [
                    (false, false, false),
                    (true, true, false),
                    (false, true, true),
                    (true, false, true),
                ] {
                    let opts = AttentionOptions {
                        causal,
                        mask: masked.then_some(&tmask),
                        rope: use_rope.then_some(&table),
                        ..Default::default()
                    };
                    let shapes = BufferShapes::new(tq.shape(), tv.shape(), layout, &opts).unwrap();
                    let saved = Saved::new(ctx, &shapes).unwrap();
                    let scores = poisoned(ctx, &shapes.square);
                    let bwd = BackwardBuffers::new(ctx, &shapes).unwrap();
                    let (out, dq, dk, dv) = (
                        poisoned(ctx, &shape),
                        poisoned(ctx, &shape),
                        poisoned(ctx, &shape),
                        poisoned(ctx, &shape),
                    );
                    ctx.run(
                        &plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &saved, &scores, &out)
                            .unwrap(),
                    )
                    .unwrap();
                    ctx.run(
                        &plan_backward(
                            ctx, &tq, &tk, &tv, layout, &opts, &saved, &bwd, &tg, &dq, &dk, &dv,
                        )
                        .unwrap(),
                    )
                    .unwrap();
                    let m64 = to_f64(&mask);
                    let (wo, wq, wk, wv) = reference::forward_backward(
                        &to_f64(&q),
                        &to_f64(&k),
                        &to_f64(&v),
                        &to_f64(&g),
                        (b, h, t, d),
                        causal,
                        use_rope,
                        masked.then_some(&m64[..]),
                    );
                    let what = format!("attention [{b},{h},{t},{d}] {layout:?} causal={causal} rope={use_rope} mask={masked}");
                    assert_close(
                        &format!("{what} out"),
                        &unperm(&download(ctx, &out)),
                        &wo,
                        1e-5,
                    );
                    if t > 1 {
                        // One token: out = v exactly, and dq, dk are 0.
                        assert_close(
                            &format!("{what} dq"),
                            &unperm(&download(ctx, &dq)),
                            &wq,
                            1e-4,
                        );
                        assert_close(
                            &format!("{what} dk"),
                            &unperm(&download(ctx, &dk)),
                            &wk,
                            1e-4,
                        );
                    }
                    assert_close(
                        &format!("{what} dv"),
                        &unperm(&download(ctx, &dv)),
                        &wv,
                        1e-4,
                    );
                }
            }
        }
    }
}
