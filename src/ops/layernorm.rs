//! LayerNorm over the last dimension (torch.nn.LayerNorm, eps from the config), forward and
//! backward. The forward pass saves each row's mean and 1/std for the backward pass.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::Result;
use crate::family::{KernelFamily, ParamBlock};
use crate::ops::reduce;
use crate::ops::rows;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "layernorm",
    source: concat!(
        include_str!("../../shaders/layernorm.wgsl"),
        include_str!("../../shaders/lib/rows.wgsl"),
        include_str!("../../shaders/lib/columns.wgsl")
    ),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: rows::variants,
    params: param_blocks,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    eps: f32,
    accumulate: u32,
    rows_per_chunk: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

impl Params {
    fn new(rows: usize, n: usize, eps: f32, accumulate: bool) -> Params {
        Params {
            rows: rows as u32,
            n: n as u32,
            eps,
            accumulate: accumulate as u32,
            rows_per_chunk: rows as u32,
            _p0: 0,
            _p1: 0,
            _p2: 0,
        }
    }
}

/// Row count and width of x (`[..., n]`), checking gamma is `[n]`.
fn rows_n(op: &'static str, x: &Tensor, gamma: &Tensor) -> Result<(usize, usize)> {
    x.expect_float(op, "x")?;
    let n = x.row_len(op, "x")?;
    gamma.expect_shape(op, "gamma", &[n])?;
    gamma.expect_dtype(op, "gamma", x.dtype())?;
    Ok((x.numel() / n, n))
}

/// Shape of the saved statistics for x: `[rows, 2]` (mean, 1/std).
pub fn stats_shape(x: &Tensor) -> Result<[usize; 2]> {
    let n = x.row_len("layernorm", "x")?;
    Ok([x.numel() / n, 2])
}

/// `y = layernorm(x) · gamma + beta`; writes `stats` (`[rows, 2]`) for the backward pass.
pub fn plan_forward(
    ctx: &Context,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &Tensor,
    stats: &Tensor,
) -> Result<Dispatch> {
    plan_forward_any(ctx, x, None, gamma, beta, eps, y, stats)
}

/// Residual add and LayerNorm in one pass: `sum = x + residual`, `y = layernorm(sum) · gamma
/// + beta`; writes `sum` (the backward pass needs it) and `stats`.
#[allow(clippy::too_many_arguments)]
pub fn plan_forward_residual(
    ctx: &Context,
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    sum: &Tensor,
    y: &Tensor,
    stats: &Tensor,
) -> Result<Dispatch> {
    residual.expect_shape("layernorm", "residual", x.shape())?;
    sum.expect_shape("layernorm", "sum", x.shape())?;
    plan_forward_any(ctx, x, Some((residual, sum)), gamma, beta, eps, y, stats)
}

/// Both forward entry points: `residual_sum` is the residual to add and where the sum goes.
#[allow(clippy::too_many_arguments)]
fn plan_forward_any(
    ctx: &Context,
    x: &Tensor,
    residual_sum: Option<(&Tensor, &Tensor)>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &Tensor,
    stats: &Tensor,
) -> Result<Dispatch> {
    let (rows, n) = rows_n("layernorm", x, gamma)?;
    beta.expect_shape("layernorm", "beta", &[n])?;
    y.expect_shape("layernorm", "y", x.shape())?;
    stats.expect_shape("layernorm", "stats", &[rows, 2])?;
    let entry = if residual_sum.is_some() {
        "forward_residual"
    } else {
        "forward"
    };
    let builder = DispatchBuilder::family(ctx, &FAMILY, entry)
        .element_type("T", x.dtype())
        .variant(rows::variant(ctx, n))
        .params(&Params::new(rows, n, eps, false))
        .read("x", x)
        .read("gamma", gamma)
        .read("beta", beta)
        .write("y", y)
        .write("stats", stats);
    match residual_sum {
        // The kernel rereads only the sums it stored itself: written once.
        Some((residual, sum)) => builder.read("residual", residual).write_only("sum", sum),
        None => builder,
    }
    .build(ctx.grid_1d(rows as u64)?)
}

/// `dx` from the forward input, gamma and saved stats.
pub fn plan_backward(
    ctx: &Context,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let (rows, n) = rows_n("layernorm backward", x, gamma)?;
    stats.expect_shape("layernorm backward", "stats", &[rows, 2])?;
    dy.expect_shape("layernorm backward", "dy", x.shape())?;
    dx.expect_shape("layernorm backward", "dx", x.shape())?;
    DispatchBuilder::family(ctx, &FAMILY, "backward")
        .element_type("T", x.dtype())
        .variant(rows::variant(ctx, n))
        .params(&Params::new(rows, n, 0.0, false))
        .read("x", x)
        .read("gamma", gamma)
        .read("stats_saved", stats)
        .read("dy", dy)
        .write("dx", dx)
        .build(ctx.grid_1d(rows as u64)?)
}

/// `dgamma = Σ_rows dy ⊙ x̂`, `dbeta = Σ_rows dy` (added to the targets with `accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn plan_backward_params(
    ctx: &Context,
    x: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    dgamma: &Tensor,
    dbeta: &Tensor,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    x.expect_float("layernorm backward", "x")?;
    let n = x.row_len("layernorm backward", "x")?;
    let rows = x.numel() / n;
    stats.expect_shape("layernorm backward", "stats", &[rows, 2])?;
    dy.expect_shape("layernorm backward", "dy", x.shape())?;
    dgamma.expect_shape("layernorm backward", "dgamma", &[n])?;
    dbeta.expect_shape("layernorm backward", "dbeta", &[n])?;
    dbeta.expect_dtype("layernorm backward", "dbeta", dgamma.dtype())?;
    // Many rows over few columns: chunks of rows summed in parallel into partial sums,
    // then added up by reduce's column sum (deterministic, as reduce's).
    let chunks = reduce::chunks_for(rows, n);
    let per_chunk = rows.div_ceil(chunks).max(1);
    let partial = |t: &Tensor| -> Result<Tensor> {
        if chunks == 1 {
            Ok(t.clone())
        } else {
            Tensor::zeros(ctx, &[chunks, n], DType::F32)
        }
    };
    let (pg, pb) = (partial(dgamma)?, partial(dbeta)?);
    let [gx, gy, _] = ctx.grid_1d((n as u64).div_ceil(64))?;
    let adds = accumulate && chunks == 1;
    let builder = DispatchBuilder::family(ctx, &FAMILY, "backward_params")
        .element_type("T", x.dtype())
        .element_type("Out", pg.dtype())
        .params(&Params {
            rows_per_chunk: per_chunk as u32,
            ..Params::new(rows, n, 0.0, adds)
        })
        .read("x", x)
        .read("stats_saved", stats)
        .read("dy", dy);
    // Loaded only to add to them.
    let builder = if adds {
        builder.write("dgamma", &pg).write("dbeta", &pb)
    } else {
        builder.write_only("dgamma", &pg).write_only("dbeta", &pb)
    };
    let mut plan = vec![builder
        // the threads of a column walk their chunk's rows
        .serial_steps(per_chunk.div_ceil(4) as u64)
        .build([gx, gy, chunks as u32])?];
    if chunks > 1 {
        plan.extend(reduce::plan_sum_rows(ctx, &pg, dgamma, accumulate)?);
        plan.extend(reduce::plan_sum_rows(ctx, &pb, dbeta, accumulate)?);
    }
    Ok(plan)
}

/// Forward pass in new tensors: `(y, stats)`.
pub fn forward(
    ctx: &Context,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let y = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    let stats = Tensor::zeros(ctx, &stats_shape(x)?, DType::F32)?;
    ctx.submit(&[plan_forward(ctx, x, gamma, beta, eps, &y, &stats)?])?;
    Ok((y, stats))
}

/// Backward pass in new tensors: `(dx, dgamma, dbeta)`.
pub fn backward(
    ctx: &Context,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dx = Tensor::zeros(ctx, x.shape(), x.dtype())?;
    let dgamma = Tensor::zeros(ctx, gamma.shape(), x.dtype())?;
    let dbeta = Tensor::zeros(ctx, gamma.shape(), x.dtype())?;
    let mut plan = vec![plan_backward(ctx, x, gamma, stats, dy, &dx)?];
    plan.extend(plan_backward_params(
        ctx, x, stats, dy, &dgamma, &dbeta, false,
    )?);
    ctx.submit(&plan)?;
    Ok((dx, dgamma, dbeta))
}

/// CPU reference, in f64.
pub mod reference {
    /// LayerNorm of each row of `x` (rows of `gamma.len()`).
    pub fn forward(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
        let n = gamma.len();
        x.chunks(n)
            .flat_map(|r| {
                let mean = r.iter().sum::<f64>() / n as f64;
                let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
                let rstd = 1.0 / (var + eps).sqrt();
                r.iter()
                    .zip(gamma.iter().zip(beta))
                    .map(move |(v, (g, b))| (v - mean) * rstd * g + b)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `(dx, dgamma, dbeta)`.
    pub fn backward(
        x: &[f64],
        gamma: &[f64],
        dy: &[f64],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = gamma.len();
        let mut dx = vec![0.0; x.len()];
        let mut dgamma = vec![0.0; n];
        let mut dbeta = vec![0.0; n];
        for ((r, g), out) in x.chunks(n).zip(dy.chunks(n)).zip(dx.chunks_mut(n)) {
            let mean = r.iter().sum::<f64>() / n as f64;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let xhat: Vec<f64> = r.iter().map(|v| (v - mean) * rstd).collect();
            let gg: Vec<f64> = g.iter().zip(gamma).map(|(a, b)| a * b).collect();
            let mg = gg.iter().sum::<f64>() / n as f64;
            let mgx = gg.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n as f64;
            for j in 0..n {
                out[j] = rstd * (gg[j] - mg - xhat[j] * mgx);
                dgamma[j] += g[j] * xhat[j];
                dbeta[j] += g[j];
            }
        }
        (dx, dgamma, dbeta)
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            rows,
            n,
            eps,
            accumulate,
            rows_per_chunk,
            _p0,
            _p1,
            _p2
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn residual_forward_matches_add_then_layernorm() {
        let ctx = &ctx();
        let mut rng = rng(12);
        for_each_row_layout(ctx, |layout| {
            for &(rows, n) in &[(1, 1), (7, 33), (129, 300)] {
                let (x, r) = (randn(&mut rng, rows * n), randn(&mut rng, rows * n));
                let (gamma, beta) = (randn(&mut rng, n), randn(&mut rng, n));
                let (tx, tr) = (upload(ctx, &x, &[rows, n]), upload(ctx, &r, &[rows, n]));
                let (sum, y, stats) = (
                    poisoned(ctx, &[rows, n]),
                    poisoned(ctx, &[rows, n]),
                    poisoned(ctx, &[rows, 2]),
                );
                let (tg, tb) = (upload(ctx, &gamma, &[n]), upload(ctx, &beta, &[n]));
                ctx.run(&[
                    plan_forward_residual(ctx, &tx, &tr, &tg, &tb, 1e-5, &sum, &y, &stats).unwrap(),
                ])
                .unwrap();
                let s64: Vec<f64> = x.iter().zip(&r).map(|(a, b)| (a + b) as f64).collect();
                let want = reference::forward(&s64, &to_f64(&gamma), &to_f64(&beta), 1e-5);
                assert_close(
                    &format!("add+layernorm {rows}x{n} sum, {layout}"),
                    &download(ctx, &sum),
                    &s64,
                    1e-6,
                );
                assert_close(
                    &format!("add+layernorm {rows}x{n}, {layout}"),
                    &download(ctx, &y),
                    &want,
                    1e-5,
                );
            }
        });
    }

    /// A mean far from zero must not cost the variance its precision (as a one-pass
    /// sum of squares would: y off by 1e-4 to 1e-3 per row here, in an f32 simulation).
    #[test]
    fn a_large_mean_keeps_the_variance_precise() {
        let ctx = &ctx();
        let (rows, n) = (5, 300);
        let x: Vec<f32> = randn(&mut rng(12), rows * n)
            .iter()
            .map(|v| v + 100.0)
            .collect();
        let (gamma, beta) = (vec![1.0; n], vec![0.0; n]);
        let y = poisoned(ctx, &[rows, n]);
        let stats = poisoned(ctx, &[rows, 2]);
        let (tg, tb) = (upload(ctx, &gamma, &[n]), upload(ctx, &beta, &[n]));
        let tx = upload(ctx, &x, &[rows, n]);
        ctx.run(&[plan_forward(ctx, &tx, &tg, &tb, 1e-12, &y, &stats).unwrap()])
            .unwrap();
        let want = reference::forward(&to_f64(&x), &to_f64(&gamma), &to_f64(&beta), 1e-12);
        assert_close("layernorm, mean 100", &download(ctx, &y), &want, 1e-4);
    }

    #[test]
    fn forward_and_backward_match_reference() {
        let ctx = &ctx();
        let mut rng = rng(11);
        for_each_row_layout(ctx, |layout| {
            for &(rows, n) in &[
                (1, 1),
                (7, 33),
                (33, 7),
                (3, 129),
                (129, 300),
                (2, 1000),
                (2, 1500),
                (2000, 7),
            ] {
                for eps in [1e-12f32, 1e-5] {
                    let x: Vec<f32> = randn(&mut rng, rows * n)
                        .iter()
                        .map(|v| v * 3.0 + 1.5)
                        .collect();
                    let gamma = randn(&mut rng, n);
                    let beta = randn(&mut rng, n);
                    let dy = randn(&mut rng, rows * n);
                    let tx = upload(ctx, &x, &[rows, n]);
                    let tg = upload(ctx, &gamma, &[n]);
                    let y = poisoned(ctx, &[rows, n]);
                    let stats = poisoned(ctx, &[rows, 2]);
                    ctx.run(&[plan_forward(
                        ctx,
                        &tx,
                        &tg,
                        &upload(ctx, &beta, &[n]),
                        eps,
                        &y,
                        &stats,
                    )
                    .unwrap()])
                        .unwrap();
                    let (x64, g64) = (to_f64(&x), to_f64(&gamma));
                    let want = reference::forward(&x64, &g64, &to_f64(&beta), eps as f64);
                    let what = format!("layernorm {rows}x{n} eps={eps}, {layout}");
                    assert_close(&what, &download(ctx, &y), &want, 1e-5);

                    let tdy = upload(ctx, &dy, &[rows, n]);
                    let (dx, dg, db) = (
                        poisoned(ctx, &[rows, n]),
                        poisoned(ctx, &[n]),
                        poisoned(ctx, &[n]),
                    );
                    let mut plan = vec![plan_backward(ctx, &tx, &tg, &stats, &tdy, &dx).unwrap()];
                    plan.extend(
                        plan_backward_params(ctx, &tx, &stats, &tdy, &dg, &db, false).unwrap(),
                    );
                    ctx.run(&plan).unwrap();
                    let (wdx, wdg, wdb) = reference::backward(&x64, &g64, &to_f64(&dy), eps as f64);
                    // n = 1 makes dx exactly zero (x̂ is constant): compare absolutely there.
                    assert_close(&format!("{what} dx"), &download(ctx, &dx), &wdx, 1e-4);
                    assert_close(&format!("{what} dgamma"), &download(ctx, &dg), &wdg, 1e-4);
                    assert_close(&format!("{what} dbeta"), &download(ctx, &db), &wdb, 1e-5);
                }
            }
        });
    }

    #[test]
    fn f16_tensors_match_reference_with_f32_statistics() {
        let ctx = &ctx();
        if !has_f16(ctx, "layernorm f16") {
            return;
        }
        let mut rng = rng(12);
        let h = DType::F16;
        for_each_row_layout(ctx, |layout| {
            // (2000, 7) sums dgamma in chunks: f32 partials, then the f16 or f32 result.
            for &(rows, n, grads) in &[
                (1, 1, DType::F32),
                (7, 33, DType::F16),
                (33, 7, DType::F32),
                (3, 129, DType::F16),
                (129, 300, DType::F32),
                (2000, 7, DType::F16),
            ] {
                let x = round_f16(
                    &randn(&mut rng, rows * n)
                        .iter()
                        .map(|v| v * 3.0 + 1.5)
                        .collect::<Vec<_>>(),
                );
                let gamma = round_f16(&randn(&mut rng, n));
                let beta = round_f16(&randn(&mut rng, n));
                let dy = round_f16(&randn(&mut rng, rows * n));
                let tx = upload_as(ctx, &x, &[rows, n], h);
                let tg = upload_as(ctx, &gamma, &[n], h);
                let y = poisoned_as(ctx, &[rows, n], h);
                let stats = poisoned(ctx, &[rows, 2]);
                let tb = upload_as(ctx, &beta, &[n], h);
                ctx.run(&[plan_forward(ctx, &tx, &tg, &tb, 1e-5, &y, &stats).unwrap()])
                    .unwrap();
                let (x64, g64) = (to_f64(&x), to_f64(&gamma));
                let want = reference::forward(&x64, &g64, &to_f64(&beta), 1e-5);
                let what = format!("f16 layernorm {rows}x{n}, {layout}");
                assert_close(&what, &download_f32(ctx, &y), &want, 2e-3);

                let tdy = upload_as(ctx, &dy, &[rows, n], h);
                let dx = poisoned_as(ctx, &[rows, n], h);
                let (dg, db) = (poisoned_as(ctx, &[n], grads), poisoned_as(ctx, &[n], grads));
                let mut plan = vec![plan_backward(ctx, &tx, &tg, &stats, &tdy, &dx).unwrap()];
                plan.extend(plan_backward_params(ctx, &tx, &stats, &tdy, &dg, &db, false).unwrap());
                ctx.run(&plan).unwrap();
                let (wdx, wdg, wdb) = reference::backward(&x64, &g64, &to_f64(&dy), 1e-5);
                // f32 gradients only see f32 rounding of sums of f16 products.
                let tol = if grads == DType::F16 { 2e-3 } else { 1e-4 };
                assert_close(&format!("{what} dx"), &download_f32(ctx, &dx), &wdx, 3e-3);
                assert_close(
                    &format!("{what} dgamma {grads:?}"),
                    &download_f32(ctx, &dg),
                    &wdg,
                    tol,
                );
                assert_close(
                    &format!("{what} dbeta {grads:?}"),
                    &download_f32(ctx, &db),
                    &wdb,
                    tol,
                );
            }
        });
        // Mixed types are refused, not misread.
        let x = upload_as(ctx, &[1.0; 4], &[1, 4], h);
        let g = upload(ctx, &[1.0; 4], &[4]);
        assert!(matches!(
            forward(ctx, &x, &g, &g, 1e-5),
            Err(crate::Error::DType { .. })
        ));
    }
}
