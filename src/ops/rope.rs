//! Rotary position embedding (RoFormer, Su et al. 2021), exactly as HuggingFace applies it:
//! features (2i, 2i+1) rotated by `pos · 10000^(-2i/d)`. Backward is the rotation by −angle.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::ops::attention::heads::{HeadLayout, Heads};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "rope",
    source: include_str!("../../shaders/rope.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    seq: u32,
    dim: u32,
    xb: u32,
    xh: u32,
    xt: u32,
    sign: f32,
    ob: u32,
    oh: u32,
    ot: u32,
    _pad: u32,
}

/// The sin/cos table `[positions, dim]` in HF's layout (`embed_positions.weight`):
/// `sin(θ_i)` in column i, `cos(θ_i)` in column `dim/2 + i`, `θ_i = pos · 10000^(-2i/dim)`,
/// computed in f64 and rounded once.
pub fn sinusoidal_table(positions: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut t = vec![0.0f32; positions * dim];
    for pos in 0..positions {
        for i in 0..half {
            let theta = pos as f64 / 10000f64.powf(2.0 * i as f64 / dim as f64);
            t[pos * dim + i] = theta.sin() as f32;
            t[pos * dim + half + i] = theta.cos() as f32;
        }
    }
    t
}

/// [`sinusoidal_table`] on the GPU.
pub fn table(ctx: &Context, positions: usize, dim: usize) -> Result<Tensor> {
    // Allocate first: the adapter's limits bound the host table built next.
    let t = Tensor::zeros(ctx, &[positions, dim], DType::F32)?;
    t.write(ctx, &sinusoidal_table(positions, dim))?;
    Ok(t)
}

/// The sin/cos table fits heads of this shape: f32, `[positions >= T, d]`, d even.
pub(crate) fn check_table(op: &'static str, table: &Tensor, heads: &Heads) -> Result<()> {
    table.expect_dtype(op, "table", DType::F32)?;
    let s = table.shape();
    if heads.dim % 2 != 0 {
        return Err(Error::invalid(format!(
            "{op}: rotary embedding needs an even head dimension, got {}",
            heads.dim
        )));
    }
    if s.len() != 2 || s[1] != heads.dim || s[0] < heads.seq {
        return Err(Error::shape(
            op,
            "table",
            format!("[positions >= {}, {}]", heads.seq, heads.dim),
            s,
        ));
    }
    Ok(())
}

/// What an attention kernel reads for `x` (q, k or v) in the forward pass: with `table` and
/// `on`, `x` rotated into `slot` (the dispatch appended to `dispatches`); otherwise `x` itself. An
/// error when rotation is asked for and `slot` is missing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotate_into(
    ctx: &Context,
    op: &'static str,
    table: Option<&Tensor>,
    on: bool,
    x: &Tensor,
    layout: HeadLayout,
    slot: &Option<Tensor>,
    dispatches: &mut Vec<Dispatch>,
) -> Result<Tensor> {
    match (table, slot, on) {
        (Some(table), Some(r), true) => {
            dispatches.push(plan(ctx, x, layout, table, r, layout, false)?);
            Ok(r.clone())
        }
        (Some(_), None, true) => Err(Error::invalid(format!(
            "{op}: RoPE needs the rotation buffers"
        ))),
        _ => Ok(x.clone()),
    }
}

/// What a backward pass uses for `plain` (an input or a gradient): the rotated copy in
/// `slot` when `rotating`, `plain` otherwise. An error when `slot` is missing then.
pub(crate) fn rotated_or(
    op: &'static str,
    rotating: bool,
    slot: &Option<Tensor>,
    plain: &Tensor,
) -> Result<Tensor> {
    match (slot, rotating) {
        (Some(t), true) => Ok(t.clone()),
        (None, true) => Err(Error::invalid(format!(
            "{op}: RoPE needs the rotation buffers"
        ))),
        _ => Ok(plain.clone()),
    }
}

/// Rotates `x` (a 4-D tensor in `x_layout`) into `out` (same sizes, `out_layout`).
/// `inverse` rotates by −θ: the backward pass, since the rotation is orthogonal.
pub fn plan(
    ctx: &Context,
    x: &Tensor,
    x_layout: HeadLayout,
    table: &Tensor,
    out: &Tensor,
    out_layout: HeadLayout,
    inverse: bool,
) -> Result<Dispatch> {
    x.expect_float("rope", "x")?;
    out.expect_dtype("rope", "out", x.dtype())?;
    let hx = Heads::of("rope", "x", x, x_layout)?;
    let ho = Heads::of("rope", "out", out, out_layout)?;
    let want = Heads {
        layout: out_layout,
        ..hx
    };
    if ho != want {
        return Err(Error::shape(
            "rope",
            "out",
            format!("{:?}", want.shape()),
            out.shape(),
        ));
    }
    check_table("rope", table, &hx)?;
    let [xb, xh, xt] = hx.strides();
    let [ob, oh, ot] = ho.strides();
    let u = |v: usize| v as u32;
    let pairs = (hx.batch * hx.heads * hx.seq * hx.dim / 2) as u64;
    DispatchBuilder::family(ctx, &FAMILY, "rotate")
        .element_type("T", x.dtype())
        .params(&Params {
            batch: u(hx.batch),
            heads: u(hx.heads),
            seq: u(hx.seq),
            dim: u(hx.dim),
            xb: u(xb),
            xh: u(xh),
            xt: u(xt),
            sign: if inverse { -1.0 } else { 1.0 },
            ob: u(ob),
            oh: u(oh),
            ot: u(ot),
            _pad: 0,
        })
        .read("x", x)
        .read("table", table)
        .write("out", out)
        .build(ctx.grid_1d(pairs.div_ceil(256))?)
}

/// Rotated copy of `x` (same layout).
pub fn forward(ctx: &Context, x: &Tensor, layout: HeadLayout, table: &Tensor) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    ctx.submit(&[plan(ctx, x, layout, table, &out, layout, false)?])?;
    Ok(out)
}

/// Gradient with respect to the input, given the gradient of the rotated output.
pub fn backward(
    ctx: &Context,
    grad_out: &Tensor,
    layout: HeadLayout,
    table: &Tensor,
) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, grad_out.shape(), grad_out.dtype())?;
    ctx.submit(&[plan(ctx, grad_out, layout, table, &out, layout, true)?])?;
    Ok(out)
}

/// CPU reference, in f64.
pub mod reference {
    /// Rotates every `dim`-vector of `x`, whose position is `pos_of(vector index)`.
    /// `sign` −1 gives the inverse rotation. Angles in f64, as HF builds its table.
    pub fn rotate(x: &[f64], dim: usize, pos_of: impl Fn(usize) -> usize, sign: f64) -> Vec<f64> {
        let half = dim / 2;
        let mut y = x.to_vec();
        for (v, (xv, yv)) in x.chunks(dim).zip(y.chunks_mut(dim)).enumerate() {
            let pos = pos_of(v) as f64;
            for i in 0..half {
                let theta = pos / 10000f64.powf(2.0 * i as f64 / dim as f64);
                let (s, c) = ((sign * theta).sin(), theta.cos());
                yv[2 * i] = xv[2 * i] * c - xv[2 * i + 1] * s;
                yv[2 * i + 1] = xv[2 * i + 1] * c + xv[2 * i] * s;
            }
        }
        y
    }
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
            xb,
            xh,
            xt,
            sign,
            ob,
            oh,
            ot,
            _pad
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn forward_and_inverse_match_reference_in_both_layouts() {
        let ctx = &ctx();
        let mut rng = rng(8);
        for &(b, h, t, d) in &[(1, 1, 1, 2), (2, 3, 7, 8), (1, 2, 33, 6), (2, 1, 129, 64)] {
            let table = table(ctx, t + 3, d).unwrap();
            for layout in [HeadLayout::Bhtd, HeadLayout::Bthd] {
                let heads = Heads::new(b, h, t, d, layout);
                let x = randn(&mut rng, b * h * t * d);
                let tx = upload(ctx, &x, &heads.shape());
                // Position of the v-th d-vector in this layout.
                let pos_of = |v: usize| match layout {
                    HeadLayout::Bhtd => v % t,
                    HeadLayout::Bthd => (v / h) % t,
                };
                for inverse in [false, true] {
                    let out = poisoned(ctx, &heads.shape());
                    ctx.run(&[plan(ctx, &tx, layout, &table, &out, layout, inverse).unwrap()])
                        .unwrap();
                    let sign = if inverse { -1.0 } else { 1.0 };
                    let want = reference::rotate(&to_f64(&x), d, pos_of, sign);
                    assert_close(
                        &format!("rope [{b},{h},{t},{d}] {layout:?} inverse={inverse}"),
                        &download(ctx, &out),
                        &want,
                        1e-5,
                    );
                }
            }
        }
    }

    #[test]
    fn layout_change_is_a_transpose() {
        let ctx = &ctx();
        let mut rng = rng(9);
        let (b, h, t, d) = (2, 3, 5, 4);
        let x = randn(&mut rng, b * h * t * d);
        let src = Heads::new(b, h, t, d, HeadLayout::Bthd);
        let dst = Heads::new(b, h, t, d, HeadLayout::Bhtd);
        let table = table(ctx, t, d).unwrap();
        let out = poisoned(ctx, &dst.shape());
        ctx.run(&[plan(
            ctx,
            &upload(ctx, &x, &src.shape()),
            HeadLayout::Bthd,
            &table,
            &out,
            HeadLayout::Bhtd,
            false,
        )
        .unwrap()])
            .unwrap();
        let rotated = reference::rotate(&to_f64(&x), d, |v| (v / h) % t, 1.0);
        let mut want = vec![0.0; x.len()];
        for (bb, hh, tt, i) in itertools(b, h, t, d) {
            want[dst.index(bb, hh, tt, i)] = rotated[src.index(bb, hh, tt, i)];
        }
        assert_close("rope Bthd -> Bhtd", &download(ctx, &out), &want, 1e-5);
    }

    fn itertools(
        b: usize,
        h: usize,
        t: usize,
        d: usize,
    ) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..b).flat_map(move |bb| {
            (0..h)
                .flat_map(move |hh| (0..t).flat_map(move |tt| (0..d).map(move |i| (bb, hh, tt, i))))
        })
    }

    #[test]
    fn short_table_and_odd_dim_are_errors() {
        let ctx = &ctx();
        let x = upload(ctx, &[0.0; 2 * 4], &[1, 1, 2, 4]);
        let short = table(ctx, 1, 4).unwrap();
        assert!(matches!(
            forward(ctx, &x, HeadLayout::Bhtd, &short),
            Err(Error::Shape { .. })
        ));
        let odd = upload(ctx, &[0.0; 3], &[1, 1, 1, 3]);
        assert!(forward(ctx, &odd, HeadLayout::Bhtd, &table(ctx, 4, 3).unwrap()).is_err());
    }

    #[test]
    fn f16_tensors_match_reference_with_an_f32_table() {
        let ctx = &ctx();
        if !has_f16(ctx, "rope f16") {
            return;
        }
        let mut rng = rng(28);
        for &(b, h, t, d) in &[(1, 1, 1, 2), (2, 3, 7, 8), (1, 2, 33, 6), (2, 1, 129, 64)] {
            let table = table(ctx, t, d).unwrap();
            let heads = Heads::new(b, h, t, d, HeadLayout::Bthd);
            let x = round_f16(&randn(&mut rng, b * h * t * d));
            let tx = upload_as(ctx, &x, &heads.shape(), DType::F16);
            for inverse in [false, true] {
                let out = poisoned_as(ctx, &heads.shape(), DType::F16);
                // Into the other layout, as attention does.
                let dst = Heads::new(b, h, t, d, HeadLayout::Bhtd);
                let out = out.reshape(&dst.shape()).unwrap();
                ctx.run(&[plan(
                    ctx,
                    &tx,
                    HeadLayout::Bthd,
                    &table,
                    &out,
                    HeadLayout::Bhtd,
                    inverse,
                )
                .unwrap()])
                    .unwrap();
                let sign = if inverse { -1.0 } else { 1.0 };
                let rotated = reference::rotate(&to_f64(&x), d, |v| (v / h) % t, sign);
                // rotated is [B, T, H, d]; out is [B, H, T, d].
                let got = download_f32(ctx, &out);
                let mut want = vec![0.0; rotated.len()];
                for (v, chunk) in rotated.chunks(d).enumerate() {
                    let (bi, ti, hi) = (v / (t * h), (v / h) % t, v % h);
                    let at = ((bi * h + hi) * t + ti) * d;
                    want[at..at + d].copy_from_slice(chunk);
                }
                assert_close(
                    &format!("f16 rope [{b},{h},{t},{d}] inverse={inverse}"),
                    &got,
                    &want,
                    1e-3,
                );
            }
        }
    }
}
