//! Batched matrix products `C = alpha · op(A) · op(B) (+ C) (+ bias)`, forward and backward.
//!
//! Two levels of API:
//! - [`plan`] / [`matmul`] take tensors shaped `[batch..., rows, cols]`, with either operand
//!   transposed and either one broadcast over the batch (a weight matrix, say);
//! - [`plan_strided`] takes explicit [`MatrixView`]s, for products over views that are not
//!   contiguous matrices (per-head slices of `[B, T, H, d]` in attention).

use bytemuck::{Pod, Zeroable};

use crate::context::{Context, Shader};
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::ops::reduce;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = Shader {
    name: "matmul",
    source: include_str!("../../shaders/matmul.wgsl"),
};

const TILE: usize = 64;

/// Where the elements of a (batched) matrix sit in a tensor: element `(z0, z1, row, col)`
/// is at `offset + z0 * batch_strides[0] + z1 * batch_strides[1] + row * row_stride +
/// col * col_stride`. A stride of 0 broadcasts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatrixView {
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch_strides: [usize; 2],
}

impl MatrixView {
    /// Contiguous row-major `[rows, cols]` matrices, one after another.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        MatrixView {
            offset: 0,
            row_stride: cols,
            col_stride: 1,
            batch_strides: [rows * cols, 0],
        }
    }

    /// The same elements read as the transposed matrix.
    pub fn transposed(self) -> Self {
        MatrixView {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn last_index(&self, rows: usize, cols: usize, batch: [usize; 2]) -> u64 {
        self.offset as u64
            + (batch[0] as u64 - 1) * self.batch_strides[0] as u64
            + (batch[1] as u64 - 1) * self.batch_strides[1] as u64
            + (rows as u64 - 1) * self.row_stride as u64
            + (cols as u64 - 1) * self.col_stride as u64
    }
}

/// A product on views: for every batch index `(z0 < batch[0], z1 < batch[1])`,
/// `C[m×n] = alpha · A[m×k] · B[k×n] + beta · C + bias[bias_offset..][n]`.
#[derive(Clone, Copy, Debug)]
pub struct StridedMatmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: [usize; 2],
    pub a: MatrixView,
    pub b: MatrixView,
    pub c: MatrixView,
    pub alpha: f32,
    pub beta: f32,
    pub bias_offset: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_inner: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    a_so: u32,
    a_si: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    b_so: u32,
    b_si: u32,
    c_off: u32,
    c_rs: u32,
    c_cs: u32,
    c_so: u32,
    c_si: u32,
    bias_off: u32,
    alpha: f32,
    beta: f32,
    has_bias: u32,
    _pad: u32,
}

fn check_view(
    what: &'static str,
    t: &Tensor,
    v: &MatrixView,
    rows: usize,
    cols: usize,
    batch: [usize; 2],
) -> Result<()> {
    t.expect_dtype("matmul", what, DType::F32)?;
    let last = v.last_index(rows, cols, batch);
    if last >= t.numel() as u64 {
        return Err(Error::shape(
            "matmul",
            what,
            format!(
                "at least {} elements for a {rows}x{cols} view {v:?}",
                last + 1
            ),
            t.shape(),
        ));
    }
    Ok(())
}

/// Builds the dispatch for a product on views, checking every view stays inside its tensor.
/// The caller makes sure distinct `(z, row, col)` of C map to distinct elements.
pub fn plan_strided(
    ctx: &Context,
    s: &StridedMatmul,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Dispatch> {
    if s.m == 0 || s.n == 0 || s.k == 0 || s.batch[0] == 0 || s.batch[1] == 0 {
        return Err(Error::invalid(format!(
            "matmul: empty product (m {}, n {}, k {}, batch {:?})",
            s.m, s.n, s.k, s.batch
        )));
    }
    check_view("a", a, &s.a, s.m, s.k, s.batch)?;
    check_view("b", b, &s.b, s.k, s.n, s.batch)?;
    check_view("c", c, &s.c, s.m, s.n, s.batch)?;
    if let Some(bias) = bias {
        bias.expect_dtype("matmul", "bias", DType::F32)?;
        if s.bias_offset + s.n > bias.numel() {
            return Err(Error::shape(
                "matmul",
                "bias",
                format!("at least {} elements", s.bias_offset + s.n),
                bias.shape(),
            ));
        }
    }
    let batch = s.batch[0] * s.batch[1];
    let u = |x: usize| x as u32;
    let params = Params {
        m: u(s.m),
        n: u(s.n),
        k: u(s.k),
        batch_inner: u(s.batch[1]),
        a_off: u(s.a.offset),
        a_rs: u(s.a.row_stride),
        a_cs: u(s.a.col_stride),
        a_so: u(s.a.batch_strides[0]),
        a_si: u(s.a.batch_strides[1]),
        b_off: u(s.b.offset),
        b_rs: u(s.b.row_stride),
        b_cs: u(s.b.col_stride),
        b_so: u(s.b.batch_strides[0]),
        b_si: u(s.b.batch_strides[1]),
        c_off: u(s.c.offset),
        c_rs: u(s.c.row_stride),
        c_cs: u(s.c.col_stride),
        c_so: u(s.c.batch_strides[0]),
        c_si: u(s.c.batch_strides[1]),
        bias_off: u(s.bias_offset),
        alpha: s.alpha,
        beta: s.beta,
        has_bias: bias.is_some() as u32,
        _pad: 0,
    };
    DispatchBuilder::new(ctx, &SHADER, "matmul")
        .params(&params)
        .read(a)
        .read(b)
        .read_opt(bias)
        .write(c)
        .build([
            s.n.div_ceil(TILE) as u32,
            s.m.div_ceil(TILE) as u32,
            batch as u32,
        ])
}

/// Options of a tensor-level product.
#[derive(Clone, Copy, Debug)]
pub struct MatmulOptions {
    /// A is stored `[..., K, M]` and used transposed.
    pub trans_a: bool,
    /// B is stored `[..., N, K]` and used transposed (a PyTorch `Linear` weight).
    pub trans_b: bool,
    pub alpha: f32,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
}

impl Default for MatmulOptions {
    fn default() -> Self {
        MatmulOptions {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            accumulate: false,
        }
    }
}

/// Sizes of a tensor-level product.
#[derive(Clone, Debug)]
struct Dims {
    batch: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
    a_batched: bool,
    b_batched: bool,
}

impl Dims {
    fn count(&self) -> usize {
        self.batch.iter().product()
    }

    fn out_shape(&self) -> Vec<usize> {
        let mut s = self.batch.clone();
        s.extend([self.m, self.n]);
        s
    }
}

fn dims(a: &[usize], b: &[usize], o: &MatmulOptions) -> Result<Dims> {
    if a.len() < 2 {
        return Err(Error::shape("matmul", "a", "at least 2 dimensions", a));
    }
    if b.len() < 2 {
        return Err(Error::shape("matmul", "b", "at least 2 dimensions", b));
    }
    let (ab, a2) = a.split_at(a.len() - 2);
    let (bb, b2) = b.split_at(b.len() - 2);
    let (m, ka) = if o.trans_a {
        (a2[1], a2[0])
    } else {
        (a2[0], a2[1])
    };
    let (kb, n) = if o.trans_b {
        (b2[1], b2[0])
    } else {
        (b2[0], b2[1])
    };
    if ka != kb {
        return Err(Error::shape(
            "matmul",
            "b",
            format!("inner dimension {ka} to match a {a:?}"),
            b,
        ));
    }
    let batch = match (ab.is_empty(), bb.is_empty()) {
        (_, true) => ab.to_vec(),
        (true, false) => bb.to_vec(),
        (false, false) if ab == bb => ab.to_vec(),
        _ => {
            return Err(Error::shape(
                "matmul",
                "b",
                format!("batch dimensions {ab:?} (or none) to match a {a:?}"),
                b,
            ))
        }
    };
    Ok(Dims {
        batch,
        m,
        n,
        k: ka,
        a_batched: !ab.is_empty(),
        b_batched: !bb.is_empty(),
    })
}

/// Shape of `op(A) · op(B)`.
pub fn output_shape(a: &[usize], b: &[usize], opts: &MatmulOptions) -> Result<Vec<usize>> {
    dims(a, b, opts).map(|d| d.out_shape())
}

fn operand_view(rows: usize, cols: usize, trans: bool, batched: bool) -> MatrixView {
    // Stored [rows, cols], or [cols, rows] when used transposed.
    let mut v = if trans {
        MatrixView::row_major(cols, rows).transposed()
    } else {
        MatrixView::row_major(rows, cols)
    };
    if !batched {
        v.batch_strides = [0, 0];
    }
    v
}

/// `c = alpha · op(a) · op(b) (+ c if accumulate) (+ bias)`; c must have the output shape.
pub fn plan(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    opts: &MatmulOptions,
) -> Result<Dispatch> {
    let d = dims(a.shape(), b.shape(), opts)?;
    c.expect_shape("matmul", "c", &d.out_shape())?;
    if let Some(bias) = bias {
        bias.expect_shape("matmul", "bias", &[d.n])?;
    }
    let spec = StridedMatmul {
        m: d.m,
        n: d.n,
        k: d.k,
        batch: [d.count(), 1],
        a: operand_view(d.m, d.k, opts.trans_a, d.a_batched),
        b: operand_view(d.k, d.n, opts.trans_b, d.b_batched),
        c: MatrixView::row_major(d.m, d.n),
        alpha: opts.alpha,
        beta: if opts.accumulate { 1.0 } else { 0.0 },
        bias_offset: 0,
    };
    plan_strided(ctx, &spec, a, b, bias, c)
}

/// `alpha · op(a) · op(b) (+ bias)` in a new tensor.
pub fn matmul(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    opts: &MatmulOptions,
) -> Result<Tensor> {
    let c = Tensor::zeros(ctx, &output_shape(a.shape(), b.shape(), opts)?, DType::F32)?;
    let opts = MatmulOptions {
        accumulate: false,
        ..*opts
    };
    ctx.submit(&[plan(ctx, a, b, bias, &c, &opts)?])?;
    Ok(c)
}

/// A tensor a gradient goes to, overwritten or added to (gradient accumulation).
#[derive(Clone, Copy, Debug)]
pub struct GradTarget<'a> {
    pub tensor: &'a Tensor,
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
    pub a: Option<Tensor>,
    pub b: Option<Tensor>,
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
            out.push(plan(ctx, x, y, None, gb, &o)?);
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
        out.push(reduce::plan_sum_rows(ctx, grad_c, gbias, accumulate)?);
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
    if target_batched || d.count() == 1 {
        return Ok(vec![plan(ctx, x, y, None, &target.reshape(&shape)?, o)?]);
    }
    let scratch = Tensor::zeros(ctx, &shape, DType::F32)?;
    let per_batch = MatmulOptions {
        accumulate: false,
        ..*o
    };
    Ok(vec![
        plan(ctx, x, y, None, &scratch, &per_batch)?,
        reduce::plan_sum_rows(
            ctx,
            &scratch,
            &target.reshape(&[target.numel()])?,
            o.accumulate,
        )?,
    ])
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
    let ga = Tensor::zeros(ctx, a.shape(), DType::F32)?;
    let gb = Tensor::zeros(ctx, b.shape(), DType::F32)?;
    let n = *grad_c.shape().last().unwrap_or(&1);
    let gbias = if with_bias {
        Some(Tensor::zeros(ctx, &[n], DType::F32)?)
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

/// CPU reference, in f64, for one batch element.
pub mod reference {
    /// Element `(r, c)` of a matrix stored row-major, read transposed when `trans`.
    fn at(x: &[f64], rows: usize, cols: usize, trans: bool, r: usize, c: usize) -> f64 {
        if trans {
            x[c * rows + r]
        } else {
            x[r * cols + c]
        }
    }

    /// `op(a) · op(b)`, `[m, n]`.
    pub fn matmul(
        a: &[f64],
        b: &[f64],
        (m, n, k): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| at(a, m, k, trans_a, i, l) * at(b, k, n, trans_b, l, j))
                    .sum();
            }
        }
        c
    }

    /// Gradients of `sum(op(a) · op(b) ⊙ dc)` with respect to a and b, stored like a and b.
    pub fn backward(
        a: &[f64],
        b: &[f64],
        dc: &[f64],
        (m, n, k): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut da = vec![0.0; m * k];
        let mut db = vec![0.0; k * n];
        for i in 0..m {
            for j in 0..n {
                let g = dc[i * n + j];
                for l in 0..k {
                    let ia = if trans_a { l * m + i } else { i * k + l };
                    let ib = if trans_b { j * k + l } else { l * n + j };
                    da[ia] += g * b[ib];
                    db[ib] += g * a[ia];
                }
            }
        }
        (da, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    /// Batched CPU reference: a is `[batch?, ...]`, b likewise; returns `[batch, m, n]`.
    fn cpu_forward(
        a: &[f64],
        b: &[f64],
        batch: usize,
        (m, n, k): (usize, usize, usize),
        o: &MatmulOptions,
        a_batched: bool,
        b_batched: bool,
    ) -> Vec<f64> {
        (0..batch)
            .flat_map(|z| {
                let az = if a_batched {
                    &a[z * m * k..(z + 1) * m * k]
                } else {
                    a
                };
                let bz = if b_batched {
                    &b[z * k * n..(z + 1) * k * n]
                } else {
                    b
                };
                reference::matmul(az, bz, (m, n, k), o.trans_a, o.trans_b)
            })
            .map(|v| v * o.alpha as f64)
            .collect()
    }

    fn shape_of(batch: usize, batched: bool, rows: usize, cols: usize, trans: bool) -> Vec<usize> {
        let mut s = if batched { vec![batch] } else { vec![] };
        if trans {
            s.extend([cols, rows]);
        } else {
            s.extend([rows, cols]);
        }
        s
    }

    #[test]
    fn forward_matches_reference_for_every_transpose_and_broadcast() {
        let ctx = &ctx();
        let mut rng = rng(3);
        let shapes = [
            (1, 1, 1),
            (7, 33, 129),
            (129, 7, 33),
            (33, 129, 7),
            (65, 63, 64),
        ];
        for &(m, n, k) in &shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for (batch, a_batched, b_batched) in [
                    (1, false, false),
                    (3, true, true),
                    (2, true, false),
                    (2, false, true),
                ] {
                    let o = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: 0.75,
                        accumulate: false,
                    };
                    let a = randn(&mut rng, if a_batched { batch } else { 1 } * m * k);
                    let b = randn(&mut rng, if b_batched { batch } else { 1 } * k * n);
                    let bias = randn(&mut rng, n);
                    let ta = upload(ctx, &a, &shape_of(batch, a_batched, m, k, trans_a));
                    let tb = upload(ctx, &b, &shape_of(batch, b_batched, k, n, trans_b));
                    let tbias = upload(ctx, &bias, &[n]);
                    let out_shape = output_shape(ta.shape(), tb.shape(), &o).unwrap();
                    let c = poisoned(ctx, &out_shape);
                    ctx.run(&[plan(ctx, &ta, &tb, Some(&tbias), &c, &o).unwrap()])
                        .unwrap();
                    let mut want = cpu_forward(
                        &to_f64(&a),
                        &to_f64(&b),
                        batch,
                        (m, n, k),
                        &o,
                        a_batched,
                        b_batched,
                    );
                    for (i, w) in want.iter_mut().enumerate() {
                        *w += bias[i % n] as f64;
                    }
                    let what = format!("matmul {m}x{n}x{k} ta={trans_a} tb={trans_b} batch={batch} ({a_batched},{b_batched})");
                    assert_close(&what, &download(ctx, &c), &want, 1e-5);
                }
            }
        }
    }

    #[test]
    fn accumulate_adds_to_c() {
        let ctx = &ctx();
        let mut rng = rng(4);
        let (m, n, k) = (33, 7, 17);
        let a = randn(&mut rng, m * k);
        let b = randn(&mut rng, k * n);
        let c0 = randn(&mut rng, m * n);
        let c = upload(ctx, &c0, &[m, n]);
        let o = MatmulOptions {
            accumulate: true,
            ..Default::default()
        };
        ctx.run(&[plan(
            ctx,
            &upload(ctx, &a, &[m, k]),
            &upload(ctx, &b, &[k, n]),
            None,
            &c,
            &o,
        )
        .unwrap()])
            .unwrap();
        let prod = reference::matmul(&to_f64(&a), &to_f64(&b), (m, n, k), false, false);
        let want: Vec<f64> = prod.iter().zip(&c0).map(|(p, c)| p + *c as f64).collect();
        assert_close("accumulate", &download(ctx, &c), &want, 1e-5);
    }

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

    #[test]
    fn strided_views_compute_per_head_products() {
        // Q Kᵀ per head straight from [B, T, H, d] tensors: batch (B, H), rows strided by H·d.
        let ctx = &ctx();
        let mut rng = rng(6);
        let (bsz, t, h, d) = (2, 7, 3, 5);
        let q = randn(&mut rng, bsz * t * h * d);
        let k = randn(&mut rng, bsz * t * h * d);
        let view = MatrixView {
            offset: 0,
            row_stride: h * d,
            col_stride: 1,
            batch_strides: [t * h * d, d],
        };
        let spec = StridedMatmul {
            m: t,
            n: t,
            k: d,
            batch: [bsz, h],
            a: view,
            b: view.transposed(),
            c: MatrixView {
                offset: 0,
                row_stride: t,
                col_stride: 1,
                batch_strides: [h * t * t, t * t],
            },
            alpha: 1.0,
            beta: 0.0,
            bias_offset: 0,
        };
        let tq = upload(ctx, &q, &[bsz, t, h, d]);
        let tk = upload(ctx, &k, &[bsz, t, h, d]);
        let s = poisoned(ctx, &[bsz, h, t, t]);
        ctx.run(&[plan_strided(ctx, &spec, &tq, &tk, None, &s).unwrap()])
            .unwrap();
        let mut want = vec![0.0; bsz * h * t * t];
        for b in 0..bsz {
            for hh in 0..h {
                for i in 0..t {
                    for j in 0..t {
                        want[((b * h + hh) * t + i) * t + j] = (0..d)
                            .map(|l| {
                                q[((b * t + i) * h + hh) * d + l] as f64
                                    * k[((b * t + j) * h + hh) * d + l] as f64
                            })
                            .sum();
                    }
                }
            }
        }
        assert_close("per-head QKᵀ", &download(ctx, &s), &want, 1e-5);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ctx = &ctx();
        let a = upload(ctx, &[0.0; 6], &[2, 3]);
        let b = upload(ctx, &[0.0; 8], &[4, 2]);
        assert!(matches!(
            matmul(ctx, &a, &b, None, &MatmulOptions::default()),
            Err(Error::Shape { .. })
        ));
        let view = MatrixView::row_major(3, 3);
        let spec = StridedMatmul {
            m: 3,
            n: 3,
            k: 3,
            batch: [1, 1],
            a: view,
            b: view,
            c: view,
            alpha: 1.0,
            beta: 0.0,
            bias_offset: 0,
        };
        assert!(
            plan_strided(ctx, &spec, &a, &a, None, &a).is_err(),
            "views past the end"
        );
    }
}
