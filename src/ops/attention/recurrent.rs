//! Causal linear attention with RoPE (RoFormer eq. 19) as a recurrence, for generation with
//! a linear-attention model (`shaders/recurrent_linear_attention.wgsl`): each sequence and
//! head keeps `S = Σ R_n φ(k_n) v_nᵀ` and `z = Σ φ(k_n)` over its tokens so far
//! ([`LinearState`]), and each new token adds its terms and reads
//! `(R_m φ(q_m))ᵀ S / (φ(q_m)ᵀ z + eps)`. What [`super::chunked_linear`] computes over a
//! whole sequence, at a cost per token and in memory that do not grow with the position.
//!
//! Row b's new tokens start at position `starts[b]`, and only the first `counts[b]` of them
//! count (a ragged prompt block; a finished sequence's step): both `[B]` u32 tensors read
//! when the dispatch runs, so one planned step serves every position. Forward only; f32 or
//! f16 q, k, v, f32 state and arithmetic.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernel.
pub static SHADER: Shader = Shader {
    name: "recurrent_linear_attention",
    source: include_str!("../../../shaders/recurrent_linear_attention.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

/// The widest head the kernel takes (its workgroup arrays).
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    new_tokens: u32,
    heads: u32,
    dim: u32,
    dim_v: u32,
    eps: f32,
    _p0: u32,
    _p1: u32,
}

/// One layer's recurrent state, f32, zero before a sequence's first token: per sequence and
/// head `S = Σ R_n φ(k_n) v_nᵀ` (`[dim, dim_v]`, row-major) then the normaliser's
/// `z = Σ φ(k_n)` (`[dim]`), in one `[batch, heads, dim · dim_v + dim]` tensor (the kernel
/// binds eight storage buffers, the most any kernel here may).
#[derive(Clone, Debug)]
pub struct LinearState {
    /// `S` and `z`.
    pub state: Tensor,
    dim: usize,
    dim_v: usize,
}

impl LinearState {
    /// A zeroed state for `batch` sequences of `heads` heads, `dim` features of q and k and
    /// `dim_v` of v.
    pub fn new(
        ctx: &Context,
        batch: usize,
        heads: usize,
        dim: usize,
        dim_v: usize,
    ) -> Result<LinearState> {
        Ok(LinearState {
            state: Tensor::zeros(ctx, &[batch, heads, dim * dim_v + dim], DType::F32)?,
            dim,
            dim_v,
        })
    }

    /// Bytes held.
    pub fn byte_size(&self) -> u64 {
        self.state.byte_size()
    }
}

/// `out` (`[batch, new, heads, dim_v]`) for the new tokens' `q`, `k` (`[batch, new, heads,
/// dim]`, not rotated: the kernel rotates at each token's position) and `v`, each row's
/// first `counts[b]` tokens added to `state` in order; the others' outputs are zero and
/// leave the state as it is. `table` is RoPE's `[positions, dim]`, `eps` the normaliser's
/// (see [`super::linear::EPS`]).
#[allow(clippy::too_many_arguments)]
pub fn plan_step(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    table: &Tensor,
    starts: &Tensor,
    counts: &Tensor,
    state: &LinearState,
    eps: f32,
    out: &Tensor,
) -> Result<Dispatch> {
    let op = "recurrent linear attention";
    q.expect_float(op, "q")?;
    let qs = q.shape();
    if qs.len() != 4 {
        return Err(Error::shape(op, "q", "[batch, new tokens, heads, dim]", qs));
    }
    let (batch, new_tokens, heads, dim) = (qs[0], qs[1], qs[2], qs[3]);
    k.expect_shape(op, "k", qs)?;
    k.expect_dtype(op, "k", q.dtype())?;
    let vs = v.shape();
    if vs.len() != 4 || vs[..3] != qs[..3] {
        return Err(Error::shape(
            op,
            "v",
            format!("[{batch}, {new_tokens}, {heads}, dim_v]"),
            vs,
        ));
    }
    let dim_v = vs[3];
    v.expect_dtype(op, "v", q.dtype())?;
    out.expect_shape(op, "out", vs)?;
    out.expect_dtype(op, "out", q.dtype())?;
    if dim % 2 != 0 || dim > MAX_HEAD_DIM || dim_v > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "{op}: heads of {dim} (values {dim_v}) features; the kernel takes even widths up \
             to {MAX_HEAD_DIM}"
        )));
    }
    if (state.dim, state.dim_v) != (dim, dim_v) {
        return Err(Error::invalid(format!(
            "{op}: the state is for heads of {} (values {}), the tokens' are {dim} ({dim_v})",
            state.dim, state.dim_v
        )));
    }
    state
        .state
        .expect_shape(op, "state", &[batch, heads, dim * dim_v + dim])?;
    state.state.expect_dtype(op, "state", DType::F32)?;
    for (what, t) in [("starts", starts), ("counts", counts)] {
        t.expect_dtype(op, what, DType::U32)?;
        t.expect_shape(op, what, &[batch])?;
    }
    table.expect_dtype(op, "table", DType::F32)?;
    let ts = table.shape();
    if ts.len() != 2 || ts[1] != dim || ts[0] == 0 {
        return Err(Error::shape(op, "table", format!("[positions, {dim}]"), ts));
    }
    let p = Params {
        batch: batch as u32,
        new_tokens: new_tokens as u32,
        heads: heads as u32,
        dim: dim as u32,
        dim_v: dim_v as u32,
        eps,
        _p0: 0,
        _p1: 0,
    };
    let rows = (batch * heads) as u64;
    DispatchBuilder::family(ctx, &FAMILY, "step")
        .element_type("T", q.dtype())
        .params(&p)
        .read("q", q)
        .read("k", k)
        .read("v", v)
        .read("table", table)
        .read("starts", starts)
        .read("counts", counts)
        .write("state", &state.state)
        .write("out", out)
        .flops(4 * rows * new_tokens as u64 * (dim * dim_v) as u64)
        .serial_steps(new_tokens as u64 * dim as u64)
        .build(ctx.grid_1d(rows)?)
}

/// The host's mirror of the shader's parameter block, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            batch,
            new_tokens,
            heads,
            dim,
            dim_v,
            eps,
            _p0,
            _p1
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::heads::{HeadLayout, Heads};
    use crate::ops::attention::linear::{reference, EPS};
    use crate::ops::rope;
    use crate::testing::*;

    /// Sequences fed as a ragged prompt block (the block's tokens past a row's prompt must
    /// not count), then a token at a time (some rows sitting a step out), give each token
    /// the output of causal linear attention with RoPE over its whole sequence: the f64
    /// reference of eq. 19, which knows nothing of recurrences.
    fn check_against_whole_sequence(dtype: DType, tol: f64) {
        let ctx = &ctx();
        if dtype == DType::F16 && !has_f16(ctx, "recurrent linear attention f16") {
            return;
        }
        let mut rng = rng(67);
        for &(batch, heads, dim, dim_v, total) in &[
            (3usize, 2usize, 16usize, 16usize, 33usize),
            (1, 1, 256, 8, 7),
            (2, 3, 6, 10, 129),
            (1, 2, 2, 1, 1),
            // Two of the state's columns and two rows of z per thread.
            (2, 1, 256, 256, 9),
        ] {
            let prompts: Vec<usize> = (0..batch).map(|b| 1 + (b * 5 + 3) % total).collect();
            let n = batch * total * heads * dim;
            let nv = batch * total * heads * dim_v;
            let round = |v: Vec<f32>| {
                if dtype == DType::F16 {
                    round_f16(&v)
                } else {
                    v
                }
            };
            let (q, k, v) = (
                round(randn(&mut rng, n)),
                round(randn(&mut rng, n)),
                round(randn(&mut rng, nv)),
            );
            let tokens = Heads::new(batch, heads, total, dim, HeadLayout::Bthd);
            let bhtd = |x: &[f32], h: Heads| h.relayout(&to_f64(x), HeadLayout::Bhtd);
            let (q64, k64) = (bhtd(&q, tokens), bhtd(&k, tokens));
            let v64 = bhtd(&v, tokens.with_dim(dim_v));
            let zeros = vec![0.0; nv];
            let problem = reference::Problem {
                q: &q64,
                k: &k64,
                v: &v64,
                dims: (batch, heads, total, dim, dim_v),
                causal: true,
                rope: true,
                mask: None,
                eps: EPS as f64,
            };
            let (want, ..) = reference::forward_backward(&problem, &zeros);
            let want = Heads::new(batch, heads, total, dim_v, HeadLayout::Bhtd)
                .relayout(&want, HeadLayout::Bthd);

            let table = rope::table(ctx, total, dim).unwrap();
            let state = LinearState::new(ctx, batch, heads, dim, dim_v).unwrap();
            let mut got = vec![f32::NAN; nv];
            let (row, row_v) = (heads * dim, heads * dim_v);
            let run = |new: usize,
                       starts: &[usize],
                       counts: &[usize],
                       pick: &dyn Fn(usize, usize) -> usize| {
                let take = |x: &[f32], width: usize| -> Vec<f32> {
                    let mut out = Vec::with_capacity(batch * new * width);
                    for b in 0..batch {
                        for t in 0..new {
                            let p = pick(b, t).min(total - 1);
                            out.extend_from_slice(&x[(b * total + p) * width..][..width]);
                        }
                    }
                    out
                };
                let u32s = |x: &[usize]| x.iter().map(|&s| s as u32).collect::<Vec<u32>>();
                let st = Tensor::from_slice(ctx, &u32s(starts), &[batch]).unwrap();
                let ct = Tensor::from_slice(ctx, &u32s(counts), &[batch]).unwrap();
                let shape = [batch, new, heads, dim];
                let shape_v = [batch, new, heads, dim_v];
                let (tq, tk, tv) = (
                    upload_as(ctx, &take(&q, row), &shape, dtype),
                    upload_as(ctx, &take(&k, row), &shape, dtype),
                    upload_as(ctx, &take(&v, row_v), &shape_v, dtype),
                );
                let out = poisoned_as(ctx, &shape_v, dtype);
                ctx.run(&[
                    plan_step(ctx, &tq, &tk, &tv, &table, &st, &ct, &state, EPS, &out).unwrap(),
                ])
                .unwrap();
                download_f32(ctx, &out)
            };
            // The prompt block: as many tokens as the longest prompt; past a row's prompt
            // other tokens, which must not count (and read zeros).
            let block = *prompts.iter().max().unwrap();
            let out = run(block, &vec![0; batch], &prompts, &|b, t| {
                if t < prompts[b] {
                    t
                } else {
                    (t * 7 + 3) % total
                }
            });
            for b in 0..batch {
                for t in 0..block {
                    let o = &out[(b * block + t) * row_v..][..row_v];
                    if t < prompts[b] {
                        got[(b * total + t) * row_v..][..row_v].copy_from_slice(o);
                    } else {
                        assert!(
                            o.iter().all(|&x| x == 0.0),
                            "row {b} token {t} past its prompt"
                        );
                    }
                }
            }
            // Then a token at a time; every third step the first row sits out (count 0).
            let mut lengths = prompts.clone();
            let mut step = 0;
            while lengths.iter().any(|&l| l < total) {
                let starts: Vec<usize> = lengths.iter().map(|&l| l.min(total - 1)).collect();
                let counts: Vec<usize> = (0..batch)
                    .map(|b| usize::from(lengths[b] < total && !(b == 0 && step % 3 == 2)))
                    .collect();
                let out = run(1, &starts, &counts, &|b, _| starts[b]);
                for b in 0..batch {
                    let o = &out[b * row_v..][..row_v];
                    if counts[b] == 1 {
                        got[(b * total + lengths[b]) * row_v..][..row_v].copy_from_slice(o);
                        lengths[b] += 1;
                    } else {
                        assert!(
                            o.iter().all(|&x| x == 0.0),
                            "row {b} sitting out step {step}"
                        );
                    }
                }
                step += 1;
            }
            assert_close(
                &format!(
                    "recurrent linear attention {dtype:?} B{batch} H{heads} d{dim} dv{dim_v} \
                     T{total}"
                ),
                &got,
                &want,
                tol,
            );
        }
    }

    #[test]
    fn the_recurrence_equals_causal_linear_attention_over_the_whole_sequence() {
        check_against_whole_sequence(DType::F32, 1e-5);
    }

    #[test]
    fn the_recurrence_in_f16() {
        check_against_whole_sequence(DType::F16, 3e-3);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ctx = &ctx();
        let table = rope::table(ctx, 8, 4).unwrap();
        let state = LinearState::new(ctx, 2, 1, 4, 4).unwrap();
        let u = |v: &[u32]| Tensor::from_slice(ctx, v, &[v.len()]).unwrap();
        let (starts, counts) = (u(&[0, 0]), u(&[1, 1]));
        let x = Tensor::zeros(ctx, &[2, 3, 1, 4], DType::F32).unwrap();
        let out = Tensor::zeros(ctx, &[2, 3, 1, 4], DType::F32).unwrap();
        let step =
            |q: &Tensor, v: &Tensor, st: &LinearState, s: &Tensor, t: &Tensor, o: &Tensor| {
                plan_step(ctx, q, q, v, t, s, &counts, st, EPS, o)
            };
        step(&x, &x, &state, &starts, &table, &out).unwrap();
        let wrong_batch = Tensor::zeros(ctx, &[3, 3, 1, 4], DType::F32).unwrap();
        assert!(step(
            &wrong_batch,
            &wrong_batch,
            &state,
            &starts,
            &table,
            &wrong_batch
        )
        .is_err());
        let odd = Tensor::zeros(ctx, &[2, 3, 1, 3], DType::F32).unwrap();
        let odd_state = LinearState::new(ctx, 2, 1, 3, 3).unwrap();
        let odd_table = rope::table(ctx, 8, 3);
        if let Ok(t) = odd_table {
            assert!(step(&odd, &odd, &odd_state, &starts, &t, &odd).is_err());
        }
        let other_state = LinearState::new(ctx, 2, 1, 4, 5).unwrap();
        assert!(step(&x, &x, &other_state, &starts, &table, &out).is_err());
        let f_starts = Tensor::zeros(ctx, &[2], DType::F32).unwrap();
        assert!(step(&x, &x, &state, &f_starts, &table, &out).is_err());
        let short_counts = u(&[1]);
        assert!(plan_step(
            ctx,
            &x,
            &x,
            &x,
            &table,
            &starts,
            &short_counts,
            &state,
            EPS,
            &out
        )
        .is_err());
    }
}
