//! The backward pass of a product: `dA = dC · op(B)ᵀ`, `dB = op(A)ᵀ · dC` (summed over the
//! batch for a broadcast operand), `dbias = Σ_rows dC`, each written or added to a target.

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::Result;
use crate::ops::reduce;
use crate::tensor::{DType, Tensor};

use super::{dims, output_shape, plan, Dims, MatmulOptions};

/// A tensor a gradient goes to, overwritten or added to (gradient accumulation).
#[derive(Clone, Copy, Debug)]
pub struct GradTarget<'a> {
    /// The gradient tensor.
    pub tensor: &'a Tensor,
    /// Add to it instead of overwriting it.
    pub accumulate: bool,
}

impl<'a> GradTarget<'a> {
    /// Overwrite `tensor` with the gradient.
    pub fn write(tensor: &'a Tensor) -> Self {
        GradTarget {
            tensor,
            accumulate: false,
        }
    }

    /// Add the gradient to `tensor`.
    pub fn add(tensor: &'a Tensor) -> Self {
        GradTarget {
            tensor,
            accumulate: true,
        }
    }
}

/// Where [`plan_backward`] puts each gradient (each `None` is skipped).
#[derive(Clone, Copy, Debug, Default)]
pub struct GradTargets<'a> {
    /// Shaped like a.
    pub a: Option<GradTarget<'a>>,
    /// Shaped like b.
    pub b: Option<GradTarget<'a>>,
    /// Shaped `[N]`.
    pub bias: Option<GradTarget<'a>>,
}

/// Gradients of a product, as returned by [`backward`].
#[derive(Clone, Debug, Default)]
pub struct MatmulGrads {
    /// Gradient of a.
    pub a: Option<Tensor>,
    /// Gradient of b.
    pub b: Option<Tensor>,
    /// Gradient of the bias.
    pub bias: Option<Tensor>,
}

/// Plans `d op(A) = dC · op(B)ᵀ` and `d op(B) = op(A)ᵀ · dC` (stored the way A and B are
/// stored, summed over the batch for a broadcast operand), and `d bias = Σ_rows dC`.
pub fn plan_backward(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    opts: &MatmulOptions,
    targets: GradTargets<'_>,
) -> Result<Vec<Dispatch>> {
    let d = dims(a.shape(), b.shape(), opts)?;
    grad_c.expect_shape("matmul backward", "grad_c", &d.out_shape())?;
    let base = MatmulOptions {
        trans_a: false,
        trans_b: false,
        alpha: opts.alpha,
        accumulate: false,
    };
    let mut out = Vec::new();
    if let Some(GradTarget {
        tensor: ga,
        accumulate,
    }) = targets.a
    {
        let inner = MatmulOptions { accumulate, ..base };
        ga.expect_shape("matmul backward", "grad_a", a.shape())?;
        // dA = dC · op(B)ᵀ, or stored transposed: op(B) · dCᵀ.
        let (x, y, o) = if opts.trans_a {
            (
                b,
                grad_c,
                MatmulOptions {
                    trans_a: opts.trans_b,
                    trans_b: true,
                    ..inner
                },
            )
        } else {
            (
                grad_c,
                b,
                MatmulOptions {
                    trans_b: !opts.trans_b,
                    ..inner
                },
            )
        };
        out.extend(plan_batched_grad(ctx, x, y, ga, &o, &d, d.a_batched)?);
    }
    if let Some(GradTarget {
        tensor: gb,
        accumulate,
    }) = targets.b
    {
        let inner = MatmulOptions { accumulate, ..base };
        gb.expect_shape("matmul backward", "grad_b", b.shape())?;
        if !d.b_batched && d.count() > 1 && !opts.trans_a {
            // A shared weight: fold the batch into the rows, one product sums over it.
            let rows = d.count() * d.m;
            let a2 = a.reshape(&[rows, d.k])?;
            let g2 = grad_c.reshape(&[rows, d.n])?;
            let (x, y, o) = if opts.trans_b {
                (
                    &g2,
                    &a2,
                    MatmulOptions {
                        trans_a: true,
                        ..inner
                    },
                )
            } else {
                (
                    &a2,
                    &g2,
                    MatmulOptions {
                        trans_a: true,
                        ..inner
                    },
                )
            };
            out.extend(super::split_k::plan_split(ctx, x, y, gb, &o)?);
        } else {
            // dB = op(A)ᵀ · dC, or stored transposed: dCᵀ · op(A).
            let (x, y, o) = if opts.trans_b {
                (
                    grad_c,
                    a,
                    MatmulOptions {
                        trans_a: true,
                        trans_b: opts.trans_a,
                        ..inner
                    },
                )
            } else {
                (
                    a,
                    grad_c,
                    MatmulOptions {
                        trans_a: !opts.trans_a,
                        ..inner
                    },
                )
            };
            out.extend(plan_batched_grad(ctx, x, y, gb, &o, &d, d.b_batched)?);
        }
    }
    if let Some(GradTarget {
        tensor: gbias,
        accumulate,
    }) = targets.bias
    {
        gbias.expect_shape("matmul backward", "grad_bias", &[d.n])?;
        out.extend(reduce::plan_sum_rows(ctx, grad_c, gbias, accumulate)?);
    }
    Ok(out)
}

/// `target = x · y` where the product is batched; when the target operand was broadcast
/// over a batch of more than one, the per-batch products go to a scratch tensor that is
/// then summed over the batch.
fn plan_batched_grad(
    ctx: &Context,
    x: &Tensor,
    y: &Tensor,
    target: &Tensor,
    o: &MatmulOptions,
    d: &Dims,
    target_batched: bool,
) -> Result<Vec<Dispatch>> {
    let shape = output_shape(x.shape(), y.shape(), o)?;
    if target_batched {
        return Ok(vec![plan(ctx, x, y, None, &target.reshape(&shape)?, o)?]);
    }
    if d.count() == 1 {
        // one product: a weight's gradient over many rows is split over K
        return super::split_k::plan_split(ctx, x, y, &target.reshape(&shape)?, o);
    }
    let scratch = Tensor::zeros(ctx, &shape, DType::F32)?;
    let per_batch = MatmulOptions {
        accumulate: false,
        ..*o
    };
    let mut plan_ = vec![plan(ctx, x, y, None, &scratch, &per_batch)?];
    plan_.extend(reduce::plan_sum_rows(
        ctx,
        &scratch,
        &target.reshape(&[target.numel()])?,
        o.accumulate,
    )?);
    Ok(plan_)
}

/// Gradients with respect to a, b and the bias, in new tensors.
pub fn backward(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    opts: &MatmulOptions,
    with_bias: bool,
) -> Result<MatmulGrads> {
    let ga = Tensor::zeros(ctx, a.shape(), a.dtype())?;
    let gb = Tensor::zeros(ctx, b.shape(), b.dtype())?;
    let n = *grad_c.shape().last().unwrap_or(&1);
    let gbias = if with_bias {
        Some(Tensor::zeros(ctx, &[n], grad_c.dtype())?)
    } else {
        None
    };
    let targets = GradTargets {
        a: Some(GradTarget::write(&ga)),
        b: Some(GradTarget::write(&gb)),
        bias: gbias.as_ref().map(GradTarget::write),
    };
    ctx.submit(&plan_backward(ctx, a, b, grad_c, opts, targets)?)?;
    Ok(MatmulGrads {
        a: Some(ga),
        b: Some(gb),
        bias: gbias,
    })
}

#[cfg(test)]
mod tests {
    use super::super::reference;
    use super::super::tests::shape_of;
    use super::*;
    use crate::testing::*;

    #[test]
    fn backward_matches_reference_including_broadcast_sums() {
        let ctx = &ctx();
        let mut rng = rng(5);
        for &(m, n, k) in &[(1, 1, 1), (7, 33, 13), (33, 7, 65)] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for (batch, a_batched, b_batched) in [
                    (1, false, false),
                    (3, true, true),
                    (3, true, false),
                    (2, false, true),
                ] {
                    let o = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: 1.5,
                        accumulate: false,
                    };
                    let na = if a_batched { batch } else { 1 };
                    let nb = if b_batched { batch } else { 1 };
                    let a = randn(&mut rng, na * m * k);
                    let b = randn(&mut rng, nb * k * n);
                    let g = randn(&mut rng, batch * m * n);
                    let ta = upload(ctx, &a, &shape_of(batch, a_batched, m, k, trans_a));
                    let tb = upload(ctx, &b, &shape_of(batch, b_batched, k, n, trans_b));
                    let out_shape = output_shape(ta.shape(), tb.shape(), &o).unwrap();
                    let tg = upload(ctx, &g, &out_shape);
                    // grad a and bias are written (poisoned first); grad b is added to
                    // existing values, as for a weight used twice.
                    let gb0 = randn(&mut rng, b.len());
                    let (ga, gb, gbias) = (
                        poisoned(ctx, ta.shape()),
                        upload(ctx, &gb0, tb.shape()),
                        poisoned(ctx, &[n]),
                    );
                    let targets = GradTargets {
                        a: Some(GradTarget::write(&ga)),
                        b: Some(GradTarget::add(&gb)),
                        bias: Some(GradTarget::write(&gbias)),
                    };
                    ctx.run(&plan_backward(ctx, &ta, &tb, &tg, &o, targets).unwrap())
                        .unwrap();

                    let (a64, b64, g64) = (to_f64(&a), to_f64(&b), to_f64(&g));
                    let mut want_a = vec![0.0; a.len()];
                    let mut want_b = to_f64(&gb0);
                    for z in 0..batch {
                        let za = if a_batched { z } else { 0 };
                        let zb = if b_batched { z } else { 0 };
                        let (da, db) = reference::backward(
                            &a64[za * m * k..(za + 1) * m * k],
                            &b64[zb * k * n..(zb + 1) * k * n],
                            &g64[z * m * n..(z + 1) * m * n],
                            (m, n, k),
                            trans_a,
                            trans_b,
                        );
                        for (w, v) in want_a[za * m * k..].iter_mut().zip(&da) {
                            *w += 1.5 * v;
                        }
                        for (w, v) in want_b[zb * k * n..].iter_mut().zip(&db) {
                            *w += 1.5 * v;
                        }
                    }
                    let what = format!("{m}x{n}x{k} ta={trans_a} tb={trans_b} batch={batch} ({a_batched},{b_batched})");
                    assert_close(
                        &format!("grad a {what}"),
                        &download(ctx, &ga),
                        &want_a,
                        1e-5,
                    );
                    assert_close(
                        &format!("grad b {what}"),
                        &download(ctx, &gb),
                        &want_b,
                        1e-5,
                    );
                    let want_bias = reduce::reference::sum_rows(&g64, n);
                    assert_close(
                        &format!("grad bias {what}"),
                        &download(ctx, &gbias),
                        &want_bias,
                        1e-5,
                    );
                }
            }
        }
    }
}
