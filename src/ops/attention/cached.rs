//! Attention over a key/value cache, for generation with a causal model
//! (`shaders/cached_attention.wgsl`): a prompt's tokens, then one new token at a time, are
//! appended to each layer's cache of keys and values, rotated once by RoPE at their true
//! positions, and attend to every cached position up to their own (local attention: to the
//! last `window` + 1 and the global tokens only). Each step's cost grows with the tokens it
//! adds, not with the tokens before them (those cost one dot product and one weighted add
//! per key, read from the cache; with local attention, per key of the window, so a step's
//! cost stays flat).
//!
//! Rows of a batch may be at different lengths: row b's new tokens start at `starts[b]`, a
//! `[B]` u32 tensor read when the dispatch runs, so one planned step serves every position.
//! Forward only (generation trains nothing); f32 or f16 tensors, f32 arithmetic.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::ops::attention::local::LocalWindow;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "cached_attention",
    source: include_str!("../../../shaders/cached_attention.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

/// The widest head the kernel takes (two output features per thread of 64).
pub const MAX_HEAD_DIM: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    new_tokens: u32,
    heads: u32,
    dim: u32,
    capacity: u32,
    rotate: u32,
    scale: f32,
    window: u32,
    globals: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

/// One layer's cache: keys and values `[batch, capacity, heads, dim]`, RoPE applied.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Each position's rotated key.
    pub keys: Tensor,
    /// Each position's value (rotated with `rotary_value`).
    pub values: Tensor,
}

impl KvCache {
    /// A zeroed cache for `batch` sequences of up to `capacity` tokens, `heads` heads of
    /// `dim` features, stored as `dtype` (f32 or f16).
    pub fn new(
        ctx: &Context,
        batch: usize,
        capacity: usize,
        heads: usize,
        dim: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        let shape = [batch, capacity, heads, dim];
        Ok(KvCache {
            keys: Tensor::zeros(ctx, &shape, dtype)?,
            values: Tensor::zeros(ctx, &shape, dtype)?,
        })
    }

    /// `[batch, capacity, heads, dim]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.keys.shape();
        [s[0], s[1], s[2], s[3]]
    }

    /// Bytes held (keys and values).
    pub fn byte_size(&self) -> u64 {
        self.keys.byte_size() + self.values.byte_size()
    }
}

/// The sizes of new tokens `x` (`[batch, new, heads, dim]`) against a cache, checked.
fn check(
    op: &'static str,
    x: &Tensor,
    table: &Tensor,
    starts: &Tensor,
    cache: &Tensor,
) -> Result<Params> {
    x.expect_float(op, "x")?;
    cache.expect_dtype(op, "cache", x.dtype())?;
    let xs = x.shape();
    let cs = cache.shape();
    if xs.len() != 4 || cs.len() != 4 {
        return Err(Error::shape(op, "x", "[batch, new tokens, heads, dim]", xs));
    }
    let (batch, new_tokens, heads, dim) = (xs[0], xs[1], xs[2], xs[3]);
    if cs[0] != batch || cs[2] != heads || cs[3] != dim {
        return Err(Error::shape(
            op,
            "cache",
            format!("[{batch}, capacity, {heads}, {dim}]"),
            cs,
        ));
    }
    if dim % 2 != 0 || dim > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "{op}: heads of {dim} features; the kernel takes even widths up to {MAX_HEAD_DIM}"
        )));
    }
    let capacity = cs[1];
    if new_tokens > capacity {
        return Err(Error::shape(
            op,
            "x",
            format!("at most the cache's {capacity} new tokens"),
            xs,
        ));
    }
    starts.expect_dtype(op, "starts", DType::U32)?;
    starts.expect_shape(op, "starts", &[batch])?;
    table.expect_dtype(op, "table", DType::F32)?;
    let ts = table.shape();
    if ts.len() != 2 || ts[1] != dim || ts[0] < capacity {
        return Err(Error::shape(
            op,
            "table",
            format!("[positions >= {capacity}, {dim}]"),
            ts,
        ));
    }
    Ok(Params {
        batch: batch as u32,
        new_tokens: new_tokens as u32,
        heads: heads as u32,
        dim: dim as u32,
        capacity: capacity as u32,
        rotate: 0,
        scale: 1.0 / (dim as f32).sqrt(),
        // Every key up to the query's position.
        window: u32::MAX,
        globals: 0,
        _p0: 0,
        _p1: 0,
        _p2: 0,
    })
}

/// Writes the new keys or values `x` (`[batch, new, heads, dim]`) into `cache` (one of a
/// [`KvCache`]'s tensors) at positions `starts[b] + t`, rotated by RoPE there when
/// `rotate`. Positions past the capacity are not written: the caller keeps
/// `starts[b] + new ≤ capacity` for the rows it reads.
pub fn plan_append(
    ctx: &Context,
    x: &Tensor,
    table: &Tensor,
    starts: &Tensor,
    cache: &Tensor,
    rotate: bool,
) -> Result<Dispatch> {
    let p = Params {
        rotate: rotate as u32,
        ..check("cached attention append", x, table, starts, cache)?
    };
    let pairs = x.numel() as u64 / 2;
    DispatchBuilder::family(ctx, &FAMILY, "append")
        .element_type("T", x.dtype())
        .params(&p)
        .read("x", x)
        .read("table", table)
        .read("starts", starts)
        .write("cache", cache)
        .build(ctx.grid_1d(pairs.div_ceil(256))?)
}

/// `out = softmax(qkᵀ/√d) v` for the queries `q` (`[batch, new, heads, dim]`, not yet
/// rotated: the kernel rotates each at its position `starts[b] + t`) over the cached
/// positions `0 ..= starts[b] + t`; with a `local` window, over those the query sees
/// (causal: the last `window` + 1 and the first `globals`), so that a step's work does not
/// grow with the position.
pub fn plan_attend(
    ctx: &Context,
    q: &Tensor,
    table: &Tensor,
    starts: &Tensor,
    cache: &KvCache,
    local: Option<LocalWindow>,
    out: &Tensor,
) -> Result<Dispatch> {
    let op = "cached attention";
    let mut p = check(op, q, table, starts, &cache.keys)?;
    if let Some(w) = local {
        // (Windows past the capacity see every key: the same as u32::MAX.)
        p.window = w.window.min(p.capacity as usize) as u32;
        p.globals = w.globals.min(p.capacity as usize) as u32;
    }
    cache
        .values
        .expect_shape(op, "values", cache.keys.shape())?;
    cache.values.expect_dtype(op, "values", q.dtype())?;
    out.expect_shape(op, "out", q.shape())?;
    out.expect_dtype(op, "out", q.dtype())?;
    let rows = (p.batch * p.new_tokens * p.heads) as u64;
    // Each query reads up to `capacity` keys and values (local: its window and globals).
    let keys = local.map_or(p.capacity as usize, |w| {
        (w.window.saturating_add(1).saturating_add(w.globals)).min(p.capacity as usize)
    }) as u64;
    DispatchBuilder::family(ctx, &FAMILY, "attend")
        .element_type("T", q.dtype())
        .params(&p)
        .read("x", q)
        .read("table", table)
        .read("starts", starts)
        .read("keys", &cache.keys)
        .read("values", &cache.values)
        .write("out", out)
        .flops(4 * rows * keys * p.dim as u64)
        .serial_steps(keys)
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
            capacity,
            rotate,
            scale,
            window,
            globals,
            _p0,
            _p1,
            _p2
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::reference;
    use crate::ops::rope;
    use crate::testing::*;

    /// Sequences fed to the cache as a ragged prompt block, then a token at a time, give
    /// each token the output of causal attention with RoPE over its whole sequence (the
    /// f64 reference of the materialised form, or of local attention with `local`'s
    /// window, which know nothing of caches).
    fn check_against_full_attention(
        dtype: DType,
        rotary_value: bool,
        local: Option<LocalWindow>,
        tol: f64,
    ) {
        let ctx = &ctx();
        if dtype == DType::F16 && !has_f16(ctx, "cached attention f16") {
            return;
        }
        let mut rng = rng(61);
        // The last: longer than one tile of keys (1024), the prompts most of it.
        for &(batch, heads, dim, total) in &[
            (3usize, 2usize, 16usize, 33usize),
            (1, 1, 128, 7),
            (2, 3, 6, 129),
            (2, 1, 8, 1100),
        ] {
            let prompts: Vec<usize> = (0..batch)
                .map(|b| match total {
                    1100 => 1090 - 3 * b,
                    _ => 1 + (b * 5 + 3) % total.min(9),
                })
                .collect();
            let n = batch * total * heads * dim;
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
                round(randn(&mut rng, n)),
            );
            // The reference: every sequence whole, causal, RoPE on q and k (and v).
            let dims = (batch, total, heads, dim);
            let bhtd = |x: &[f32]| swap_th(&to_f64(x), dims);
            let mut vr = bhtd(&v);
            if rotary_value {
                vr = rope::reference::rotate(&vr, dim, |i| i % total, 1.0);
            }
            let zeros = vec![0.0; n];
            let (want, ..) = match local {
                None => reference::forward_backward(
                    &bhtd(&q),
                    &bhtd(&k),
                    &vr,
                    &zeros,
                    (batch, heads, total, dim),
                    true,
                    true,
                    None,
                ),
                Some(w) => crate::ops::attention::local::reference::forward_backward(
                    &bhtd(&q),
                    &bhtd(&k),
                    &vr,
                    &zeros,
                    (batch, heads, total, dim),
                    true,
                    true,
                    None,
                    w,
                ),
            };
            let want = swap_th(&want, (batch, heads, total, dim));

            let table = rope::table(ctx, total, dim).unwrap();
            let cache = KvCache::new(ctx, batch, total, heads, dim, dtype).unwrap();
            let mut got = vec![f32::NAN; n];
            let row = heads * dim;
            // The prompt block: as many tokens as the longest prompt, from position 0.
            let block = *prompts.iter().max().unwrap();
            let run = |new: usize, starts: &[usize], pick: &dyn Fn(usize, usize) -> usize| {
                let take = |x: &[f32]| -> Vec<f32> {
                    let mut out = Vec::with_capacity(batch * new * row);
                    for b in 0..batch {
                        for t in 0..new {
                            let p = pick(b, t).min(total - 1);
                            out.extend_from_slice(&x[(b * total + p) * row..][..row]);
                        }
                    }
                    out
                };
                let shape = [batch, new, heads, dim];
                let starts_u32: Vec<u32> = starts.iter().map(|&s| s as u32).collect();
                let st = Tensor::from_slice(ctx, &starts_u32, &[batch]).unwrap();
                let (tq, tk, tv) = (
                    upload_as(ctx, &take(&q), &shape, dtype),
                    upload_as(ctx, &take(&k), &shape, dtype),
                    upload_as(ctx, &take(&v), &shape, dtype),
                );
                let out = poisoned_as(ctx, &shape, dtype);
                ctx.run(&[
                    plan_append(ctx, &tk, &table, &st, &cache.keys, true).unwrap(),
                    plan_append(ctx, &tv, &table, &st, &cache.values, rotary_value).unwrap(),
                    plan_attend(ctx, &tq, &table, &st, &cache, local, &out).unwrap(),
                ])
                .unwrap();
                download_f32(ctx, &out)
            };
            // Past a row's prompt the block holds other tokens: padding the cache must not keep.
            let out = run(block, &vec![0; batch], &|b, t| {
                if t < prompts[b] {
                    t
                } else {
                    (t * 7 + 3) % total
                }
            });
            for b in 0..batch {
                for t in 0..prompts[b] {
                    got[(b * total + t) * row..][..row]
                        .copy_from_slice(&out[(b * block + t) * row..][..row]);
                }
            }
            // Then a token at a time, each row from its own length (the prompt block's
            // padding past a row's prompt is overwritten as the row grows).
            let mut lengths = prompts.clone();
            while lengths.iter().any(|&l| l < total) {
                let starts: Vec<usize> = lengths.iter().map(|&l| l.min(total - 1)).collect();
                let out = run(1, &starts, &|b, _| starts[b]);
                for b in 0..batch {
                    if lengths[b] < total {
                        got[(b * total + lengths[b]) * row..][..row]
                            .copy_from_slice(&out[b * row..][..row]);
                        lengths[b] += 1;
                    }
                }
            }
            assert_close(
                &format!("cached attention {dtype:?} B{batch} H{heads} d{dim} T{total} {local:?}"),
                &got,
                &want,
                tol,
            );
        }
    }

    #[test]
    fn cached_attention_equals_causal_attention_over_the_whole_sequence() {
        check_against_full_attention(DType::F32, false, None, 1e-5);
        check_against_full_attention(DType::F32, true, None, 1e-5);
    }

    /// Local attention over the cache: a query sees the last `window` + 1 keys and the first
    /// `globals` (in the 1100-token case a window of 1030 and 3 globals cross the kernel's
    /// tiles of 1024 keys, the globals visited first); a window as long as the sequence is
    /// softmax's.
    #[test]
    fn cached_local_attention_sees_its_window_and_globals() {
        for (window, globals) in [(0, 0), (3, 1), (5, 2), (40, 3), (1030, 3), (2000, 0)] {
            let w = LocalWindow { window, globals };
            check_against_full_attention(DType::F32, true, Some(w), 1e-5);
        }
    }

    #[test]
    fn cached_attention_in_f16() {
        check_against_full_attention(DType::F16, true, None, 3e-3);
        let w = LocalWindow {
            window: 4,
            globals: 1,
        };
        check_against_full_attention(DType::F16, true, Some(w), 3e-3);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ctx = &ctx();
        let table = rope::table(ctx, 8, 4).unwrap();
        let cache = KvCache::new(ctx, 2, 8, 1, 4, DType::F32).unwrap();
        let starts = Tensor::from_slice(ctx, &[0u32, 0], &[2]).unwrap();
        let x = Tensor::zeros(ctx, &[2, 3, 1, 4], DType::F32).unwrap();
        let out = Tensor::zeros(ctx, &[2, 3, 1, 4], DType::F32).unwrap();
        plan_attend(ctx, &x, &table, &starts, &cache, None, &out).unwrap();
        let wrong_batch = Tensor::zeros(ctx, &[3, 3, 1, 4], DType::F32).unwrap();
        assert!(plan_append(ctx, &wrong_batch, &table, &starts, &cache.keys, true).is_err());
        let short_table = rope::table(ctx, 4, 4).unwrap();
        assert!(plan_attend(ctx, &x, &short_table, &starts, &cache, None, &out).is_err());
        let odd = KvCache::new(ctx, 2, 8, 1, 3, DType::F32).unwrap();
        let x3 = Tensor::zeros(ctx, &[2, 3, 1, 3], DType::F32).unwrap();
        assert!(plan_attend(ctx, &x3, &table, &starts, &odd, None, &x3).is_err());
        let f_starts = Tensor::zeros(ctx, &[2], DType::F32).unwrap();
        assert!(plan_attend(ctx, &x, &table, &f_starts, &cache, None, &out).is_err());
    }
}
