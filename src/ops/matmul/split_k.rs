//! Products with a small output and a long inner dimension: a weight's gradient, where the
//! batch and the sequence are folded into K (at LRA's batch 32 × 2048, a 256 × 256 weight
//! sums 65536 tokens). Tiled over the output alone, such a product is 16 workgroups each
//! walking all of K, on a GPU of 132 multiprocessors. Split-K cuts K into chunks whose
//! products run in parallel as a batch into a scratch of partial products, then sums the
//! partials in a fixed order (`reduce::plan_sum_rows`): deterministic, like every sum here.

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::Result;
use crate::ops::reduce;
use crate::tensor::{DType, Tensor};

use super::{dims, plan, plan_strided, state, strided_spec, MatmulOptions};

/// Output tiles of 64 × 64 below which a product is split, and about how many the split
/// aims at (several per multiprocessor of a large GPU).
const FEW_TILES: usize = 128;
const TARGET_TILES: usize = 1024;
/// Each chunk keeps at least this much of K, and at most this many chunks.
const MIN_CHUNK: usize = 512;
const MAX_SPLITS: usize = 64;

/// How many chunks of K a product of `[m, k] · [k, n]` is cut into (1: not split). A
/// power of two dividing K into chunks that are multiples of 4 (so vec4 loads stay aligned).
pub fn splits_for(m: usize, n: usize, k: usize) -> usize {
    let tiles = m.div_ceil(64) * n.div_ceil(64);
    if tiles >= FEW_TILES {
        return 1;
    }
    let mut s = 1;
    while s * 2 <= MAX_SPLITS
        && tiles * s * 2 <= TARGET_TILES
        && k % (s * 8) == 0
        && k / (s * 2) >= MIN_CHUNK
    {
        s *= 2;
    }
    s
}

/// `c = alpha · op(a) · op(b) (+ c if accumulate)` for unbatched 2-D operands, split over K
/// where [`splits_for`] says so. The partial products go to a scratch the context keeps for
/// all split products (they run one after another), grown to the largest asked for.
pub fn plan_split(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    opts: &MatmulOptions,
) -> Result<Vec<Dispatch>> {
    let d = dims(a.shape(), b.shape(), opts)?;
    let splits = if d.count() == 1 && a.shape().len() == 2 && b.shape().len() == 2 {
        splits_for(d.m, d.n, d.k)
    } else {
        1
    };
    if splits == 1 {
        return Ok(vec![plan(ctx, a, b, None, c, opts)?]);
    }
    c.expect_shape("matmul", "c", &d.out_shape())?;
    let chunk = d.k / splits;
    let mut s = strided_spec(a.shape(), b.shape(), opts)?;
    s.k = chunk;
    s.batch = [splits, 1];
    // chunk z starts z · chunk along K: A's columns, B's rows
    s.a.batch_strides = [chunk * s.a.col_stride, 0];
    s.b.batch_strides = [chunk * s.b.row_stride, 0];
    s.beta = 0.0;
    let partials = scratch(ctx, splits * d.m * d.n)?;
    let mut plan = vec![plan_strided(ctx, &s, a, b, None, &partials)?];
    plan.extend(reduce::plan_sum_rows(
        ctx,
        &partials,
        &c.reshape(&[d.m * d.n])?,
        opts.accumulate,
    )?);
    Ok(plan)
}

/// The first `numel` floats of the context's split-K scratch, as `[numel]`.
fn scratch(ctx: &Context, numel: usize) -> Result<Tensor> {
    let state = state(ctx);
    let mut held = state.split_scratch.lock().unwrap();
    if held.as_ref().is_none_or(|t| t.numel() < numel) {
        *held = Some(Tensor::zeros(ctx, &[numel], DType::F32)?);
    }
    held.as_ref().unwrap().view(ctx, 0, &[numel])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::reference;
    use crate::testing::*;

    #[test]
    fn only_few_tiles_over_a_long_k_are_split() {
        assert_eq!(splits_for(256, 256, 65536), 64); // LRA's weight gradient
        assert_eq!(splits_for(768, 768, 4096), 1); // BERT-base's: 144 tiles already
        assert_eq!(splits_for(64, 64, 1000), 1); // chunks would be short
        assert_eq!(splits_for(64, 64, 1024), 2);
        assert_eq!(splits_for(7, 33, 4099), 1); // K not divisible
    }

    /// Split products, overwriting and accumulating, against the f64 reference, on
    /// operands stored either way round, with the output poisoned.
    #[test]
    fn split_products_match_reference() {
        let ctx = &ctx();
        let mut rng = rng(21);
        for &(m, n, k) in &[(7, 33, 2048), (64, 1, 4096), (129, 65, 1024)] {
            assert!(splits_for(m, n, k) > 1, "{m}x{n}x{k} should split");
            for (trans_a, trans_b) in [(false, false), (true, false), (true, true)] {
                for accumulate in [false, true] {
                    let a = randn(&mut rng, m * k);
                    let b = randn(&mut rng, k * n);
                    let c0 = randn(&mut rng, m * n);
                    let ta = upload(ctx, &a, &if trans_a { [k, m] } else { [m, k] });
                    let tb = upload(ctx, &b, &if trans_b { [n, k] } else { [k, n] });
                    let c = if accumulate {
                        upload(ctx, &c0, &[m, n])
                    } else {
                        poisoned(ctx, &[m, n])
                    };
                    let o = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: 0.5,
                        accumulate,
                    };
                    let plan = plan_split(ctx, &ta, &tb, &c, &o).unwrap();
                    assert!(plan.len() >= 2, "split into a product and a sum");
                    ctx.run(&plan).unwrap();
                    let mut want =
                        reference::matmul(&to_f64(&a), &to_f64(&b), (m, n, k), trans_a, trans_b);
                    for (w, c) in want.iter_mut().zip(&c0) {
                        *w *= 0.5;
                        if accumulate {
                            *w += *c as f64;
                        }
                    }
                    let what =
                        format!("split {m}x{n}x{k} ta={trans_a} tb={trans_b} acc={accumulate}");
                    assert_close(&what, &download(ctx, &c), &want, 1e-5);
                }
            }
        }
    }
}
