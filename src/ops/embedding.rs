//! Embedding lookup (`out[r] = table[ids[r]]`) and its scatter-add backward.
//!
//! Token ids arrive as [`TokenIds`], checked against the vocabulary when they are uploaded,
//! so a bad id is an error on the host, never a wrong read on the GPU. The upload also groups
//! positions by token, which makes the backward a deterministic gather instead of float
//! atomics (WGSL has none, and their order would change results run to run).

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::ops::elementwise;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "embedding",
    source: include_str!("../../shaders/embedding.wgsl"),
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
    rows: u32,
    cols: u32,
    vocab: u32,
    accumulate: u32,
}

/// Token ids on the GPU, checked to be below `vocab`, with positions grouped by token.
#[derive(Clone, Debug)]
pub struct TokenIds {
    ids: Tensor,
    groups: Tensor,
    positions: Tensor,
    vocab: usize,
}

/// Positions a backward workgroup sums at most (the shader's `PIECE`).
const PIECE: usize = 64;
/// The shader's "no partial slot: add straight into the table".
const NONE: u32 = u32::MAX;

/// Most pieces `n` positions make: one per token, plus one per PIECE positions.
fn max_pieces(n: usize) -> usize {
    n + n / PIECE + 1
}

/// Most merges (tokens of more than one piece) and partial rows (their pieces) for `n`.
fn max_merges(n: usize) -> usize {
    n / PIECE + 1
}
fn max_slots(n: usize) -> usize {
    2 * (n / PIECE) + 2
}

/// The backward's work list (see shaders/embedding.wgsl): `[pieces, merges, (tok, start,
/// end, slot) × max_pieces, (tok, first, end) × max_merges]`, and the positions sorted by
/// token (stable, so each piece sums in position order).
fn group_by_token(ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let n = ids.len();
    let mut positions: Vec<u32> = (0..n as u32).collect();
    positions.sort_by_key(|&p| ids[p as usize]);
    let mut pieces: Vec<[u32; 4]> = Vec::new();
    let mut merges: Vec<[u32; 3]> = Vec::new();
    let mut slot = 0u32;
    let mut start = 0;
    while start < n {
        let tok = ids[positions[start] as usize];
        let mut end = start;
        while end < n && ids[positions[end] as usize] == tok {
            end += 1;
        }
        if end - start <= PIECE {
            pieces.push([tok, start as u32, end as u32, NONE]);
        } else {
            let first = slot;
            for s in (start..end).step_by(PIECE) {
                pieces.push([tok, s as u32, (s + PIECE).min(end) as u32, slot]);
                slot += 1;
            }
            merges.push([tok, first, slot]);
        }
        start = end;
    }
    let mut groups = vec![pieces.len() as u32, merges.len() as u32];
    groups.extend(pieces.iter().flatten());
    groups.resize(2 + 4 * max_pieces(n), 0);
    groups.extend(merges.iter().flatten());
    groups.resize(2 + 4 * max_pieces(n) + 3 * max_merges(n), 0);
    (groups, positions)
}

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().position(|&t| t as usize >= vocab) {
        Some(position) => Err(Error::TokenOutOfRange {
            id: ids[position],
            position,
            vocab,
        }),
        None => Ok(()),
    }
}

impl TokenIds {
    /// Uploads `ids` (row-major `shape`), failing on any id `>= vocab`.
    pub fn new(ctx: &Context, ids: &[u32], shape: &[usize], vocab: usize) -> Result<TokenIds> {
        check_ids(ids, vocab)?;
        let (groups, positions) = group_by_token(ids);
        Ok(TokenIds {
            ids: Tensor::from_slice(ctx, ids, shape)?,
            groups: Tensor::from_slice(ctx, &groups, &[groups.len()])?,
            positions: Tensor::from_slice(ctx, &positions, &[positions.len()])?,
            vocab,
        })
    }

    /// Replaces the ids (same count) in place, so dispatches built on them stay valid.
    pub fn write(&self, ctx: &Context, ids: &[u32]) -> Result<()> {
        check_ids(ids, self.vocab)?;
        let (groups, positions) = group_by_token(ids);
        self.ids.write(ctx, ids)?;
        self.groups.write(ctx, &groups)?;
        self.positions.write(ctx, &positions)
    }

    /// The ids as a `U32` tensor.
    pub fn tensor(&self) -> &Tensor {
        &self.ids
    }

    /// Shape of the ids.
    pub fn shape(&self) -> &[usize] {
        self.ids.shape()
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.numel()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vocabulary they index.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

fn check_table(
    op: &'static str,
    what: &'static str,
    table: &Tensor,
    ids: &TokenIds,
) -> Result<usize> {
    table.expect_float(op, what)?;
    let s = table.shape();
    if s.len() != 2 || s[0] != ids.vocab {
        return Err(Error::shape(
            op,
            what,
            format!("[{}, dim] (the ids' vocabulary)", ids.vocab),
            s,
        ));
    }
    Ok(s[1])
}

/// `out[r] = (accumulate ? out[r] : 0) + table[ids[r]]`; out is `[ids.shape..., dim]`.
pub fn plan_forward(
    ctx: &Context,
    table: &Tensor,
    ids: &TokenIds,
    out: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    let dim = check_table("embedding", "table", table, ids)?;
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    out.expect_shape("embedding", "out", &shape)?;
    out.expect_dtype("embedding", "out", table.dtype())?;
    let n = (ids.len() * dim) as u64;
    let builder = DispatchBuilder::family(ctx, &FAMILY, "forward")
        .element_type("T", table.dtype())
        .params(&Params {
            rows: ids.len() as u32,
            cols: dim as u32,
            vocab: ids.vocab as u32,
            accumulate: accumulate as u32,
        })
        .read("ids", &ids.ids)
        // the rows of the batch's tokens, however few
        .read_sparse("table", table);
    // Without accumulate, out is never loaded: written only.
    let builder = if accumulate {
        builder.write("out", out)
    } else {
        builder.write_only("out", out)
    };
    builder.build(ctx.grid_1d(n.div_ceil(256))?)
}

/// `dtable[tok] += Σ_{r: ids[r] = tok} dout[r]`; without `accumulate`, dtable is zeroed first.
pub fn plan_backward(
    ctx: &Context,
    dout: &Tensor,
    ids: &TokenIds,
    dtable: &Tensor,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let dim = check_table("embedding backward", "dtable", dtable, ids)?;
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    dout.expect_shape("embedding backward", "dout", &shape)?;
    dout.expect_float("embedding backward", "dout")?;
    let mut out = Vec::new();
    if !accumulate {
        out.push(elementwise::plan_fill(ctx, dtable, 0.0)?);
    }
    let n = ids.len();
    let params = Params {
        rows: n as u32,
        cols: dim as u32,
        vocab: ids.vocab as u32,
        accumulate: 1,
    };
    // Partial sums of the pieces of long runs; bounded by the batch, not the vocabulary.
    let partial = Tensor::zeros(ctx, &[max_slots(n), dim], DType::F32)?;
    let grid = |count: usize| -> Result<[u32; 3]> {
        let [x, y, _] = ctx.grid_1d(count as u64)?;
        Ok([x, y, dim.div_ceil(64) as u32])
    };
    let pass = |entry: &'static str| {
        DispatchBuilder::family(ctx, &FAMILY, entry)
            .element_type("T", dout.dtype())
            .element_type("Out", dtable.dtype())
            .params(&params)
            .read("groups", &ids.groups)
            // the rows of the batch's tokens, and partial sums of the long runs only
            .write_sparse("dtable", dtable)
            .write_sparse("partial", &partial)
    };
    out.push(
        pass("backward")
            .read("positions", &ids.positions)
            .read("dout", dout)
            .serial_steps(PIECE as u64)
            .build(grid(max_pieces(n).min(n.min(ids.vocab) + n / PIECE + 1))?)?,
    );
    out.push(
        pass("backward_merge")
            // a token's pieces, one after another
            .serial_steps(n.div_ceil(PIECE) as u64)
            .build(grid(max_merges(n).min(ids.vocab))?)?,
    );
    Ok(out)
}

/// `table[ids]` in a new tensor.
pub fn forward(ctx: &Context, table: &Tensor, ids: &TokenIds) -> Result<Tensor> {
    let mut shape = ids.shape().to_vec();
    shape.push(*table.shape().last().unwrap_or(&1));
    let out = Tensor::zeros(ctx, &shape, table.dtype())?;
    ctx.submit(&[plan_forward(ctx, table, ids, &out, false)?])?;
    Ok(out)
}

/// The table's gradient in a new tensor of dout's type.
pub fn backward(ctx: &Context, dout: &Tensor, ids: &TokenIds, dim: usize) -> Result<Tensor> {
    let dtable = Tensor::zeros(ctx, &[ids.vocab, dim], dout.dtype())?;
    ctx.submit(&plan_backward(ctx, dout, ids, &dtable, false)?)?;
    Ok(dtable)
}

/// CPU reference, in f64.
pub mod reference {
    /// `table[ids]`.
    pub fn forward(table: &[f64], dim: usize, ids: &[u32]) -> Vec<f64> {
        ids.iter()
            .flat_map(|&t| table[t as usize * dim..(t as usize + 1) * dim].to_vec())
            .collect()
    }

    /// The table's gradient: each row of `dout` added to its id's row.
    pub fn backward(dout: &[f64], dim: usize, ids: &[u32], vocab: usize) -> Vec<f64> {
        let mut d = vec![0.0; vocab * dim];
        for (r, &t) in ids.iter().enumerate() {
            for c in 0..dim {
                d[t as usize * dim + c] += dout[r * dim + c];
            }
        }
        d
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            rows,
            cols,
            vocab,
            accumulate
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use rand::Rng;

    #[test]
    fn lookup_and_scatter_add_match_reference() {
        let ctx = &ctx();
        let mut rng = rng(12);
        for &(vocab, dim, b, t) in &[
            (1, 1, 1, 1),
            (5, 7, 2, 33),
            (99, 32, 3, 7),
            (1000, 129, 1, 40),
            // tokens of more than one piece (64 positions): summed in pieces, then merged
            (1, 7, 1, 64),
            (1, 7, 1, 65),
            (1, 70, 1, 129),
            (2, 33, 4, 100),
            (3, 65, 33, 129),
        ] {
            let ids: Vec<u32> = (0..b * t)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let table = randn(&mut rng, vocab * dim);
            let tids = TokenIds::new(ctx, &ids, &[b, t], vocab).unwrap();
            let ttable = upload(ctx, &table, &[vocab, dim]);
            let out = poisoned(ctx, &[b, t, dim]);
            ctx.run(&[plan_forward(ctx, &ttable, &tids, &out, false).unwrap()])
                .unwrap();
            let want = reference::forward(&to_f64(&table), dim, &ids);
            assert_close(
                &format!("embedding {vocab}x{dim} [{b},{t}]"),
                &download(ctx, &out),
                &want,
                1e-7,
            );

            let dout = randn(&mut rng, b * t * dim);
            let dtable = poisoned(ctx, &[vocab, dim]);
            ctx.run(
                &plan_backward(
                    ctx,
                    &upload(ctx, &dout, &[b, t, dim]),
                    &tids,
                    &dtable,
                    false,
                )
                .unwrap(),
            )
            .unwrap();
            let want = reference::backward(&to_f64(&dout), dim, &ids, vocab);
            assert_close(
                &format!("embedding backward {vocab}x{dim} [{b},{t}]"),
                &download(ctx, &dtable),
                &want,
                1e-6,
            );
        }
    }

    #[test]
    fn f16_lookup_and_scatter_add_into_f16_or_f32_match_reference() {
        let ctx = &ctx();
        if !has_f16(ctx, "embedding f16") {
            return;
        }
        let mut rng = rng(13);
        let h = DType::F16;
        for &(vocab, dim, b, t) in &[
            (1, 1, 1, 1),
            (5, 7, 2, 33),
            (1, 70, 1, 129),
            (3, 65, 33, 129),
        ] {
            let ids: Vec<u32> = (0..b * t)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let table = round_f16(&randn(&mut rng, vocab * dim));
            let tids = TokenIds::new(ctx, &ids, &[b, t], vocab).unwrap();
            let out = poisoned_as(ctx, &[b, t, dim], h);
            ctx.run(&[plan_forward(
                ctx,
                &upload_as(ctx, &table, &[vocab, dim], h),
                &tids,
                &out,
                false,
            )
            .unwrap()])
                .unwrap();
            // A lookup copies: exact.
            let want = reference::forward(&to_f64(&table), dim, &ids);
            assert_eq!(
                to_f64(&download_f32(ctx, &out)),
                want,
                "f16 embedding {vocab}x{dim} [{b},{t}]"
            );

            let dout = round_f16(&randn(&mut rng, b * t * dim));
            let tdout = upload_as(ctx, &dout, &[b, t, dim], h);
            let want = reference::backward(&to_f64(&dout), dim, &ids, vocab);
            // f32 gradient rows (the sums never round to f16), then f16 ones.
            for (grads, tol) in [(DType::F32, 1e-6), (h, 1e-3)] {
                let dtable = poisoned_as(ctx, &[vocab, dim], grads);
                ctx.run(&plan_backward(ctx, &tdout, &tids, &dtable, false).unwrap())
                    .unwrap();
                assert_close(
                    &format!("f16 embedding backward into {grads:?} {vocab}x{dim} [{b},{t}]"),
                    &download_f32(ctx, &dtable),
                    &want,
                    tol,
                );
            }
        }
    }

    #[test]
    fn accumulate_adds_a_second_table_and_rewritten_ids_are_used() {
        let ctx = &ctx();
        let words = upload(ctx, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]);
        let types = upload(ctx, &[10.0, 20.0, 30.0, 40.0], &[2, 2]);
        let w = TokenIds::new(ctx, &[2, 0], &[1, 2], 3).unwrap();
        let ty = TokenIds::new(ctx, &[1, 1], &[1, 2], 2).unwrap();
        let out = poisoned(ctx, &[1, 2, 2]);
        ctx.run(&[
            plan_forward(ctx, &words, &w, &out, false).unwrap(),
            plan_forward(ctx, &types, &ty, &out, true).unwrap(),
        ])
        .unwrap();
        assert_eq!(download(ctx, &out), vec![35.0, 46.0, 31.0, 42.0]);

        let grad = upload(ctx, &[1.0, 1.0, 2.0, 2.0], &[1, 2, 2]);
        let dtable = upload(ctx, &[100.0; 6], &[3, 2]);
        let backward = plan_backward(ctx, &grad, &w, &dtable, true).unwrap();
        w.write(ctx, &[1, 1]).unwrap();
        ctx.run(&backward).unwrap();
        assert_eq!(
            download(ctx, &dtable),
            vec![100.0, 100.0, 103.0, 103.0, 100.0, 100.0]
        );
    }

    #[test]
    fn out_of_range_ids_are_errors() {
        let ctx = &ctx();
        let err = TokenIds::new(ctx, &[0, 5, 99], &[3], 99).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TokenOutOfRange {
                    id: 99,
                    position: 2,
                    vocab: 99
                }
            ),
            "{err}"
        );
        let ids = TokenIds::new(ctx, &[0, 1], &[2], 2).unwrap();
        assert!(ids.write(ctx, &[2, 0]).is_err());
        let table = upload(ctx, &[0.0; 6], &[3, 2]);
        assert!(
            matches!(forward(ctx, &table, &ids), Err(Error::Shape { .. })),
            "table rows must equal vocab"
        );
    }
}
