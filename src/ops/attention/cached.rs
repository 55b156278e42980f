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
//!
//! A cache holds every position ([`KvCache::new`]), or, for local attention, its global
//! tokens and a ring of slots that the later positions take in turn ([`KvCache::ring`]):
//! its memory then stays flat however long the sequence, as the step's cost does.

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
    slots: u32,
    rotate: u32,
    scale: f32,
    window: u32,
    globals: u32,
    positions: u32,
    ring_from: u32,
    _p0: u32,
}

/// One layer's cache: keys and values `[batch, slots, heads, dim]`, RoPE applied. Position
/// `n` is kept in slot `n` below [`KvCache::ring_from`], and from there on in the ring of
/// the remaining slots ([`KvCache::slot`]).
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Each position's rotated key.
    pub keys: Tensor,
    /// Each position's value (rotated with `rotary_value`).
    pub values: Tensor,
    positions: usize,
    ring_from: usize,
}

impl KvCache {
    /// A zeroed cache for `batch` sequences of up to `capacity` tokens, each position in its
    /// own slot, `heads` heads of `dim` features, stored as `dtype` (f32 or f16).
    pub fn new(
        ctx: &Context,
        batch: usize,
        capacity: usize,
        heads: usize,
        dim: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        KvCache::with_slots(
            ctx,
            [batch, capacity, heads, dim],
            capacity,
            capacity,
            dtype,
        )
    }

    /// A zeroed cache for local attention over sequences of up to `positions` tokens that
    /// keeps the first `kept` positions (the global tokens) and a ring of `ring` slots for
    /// the others: enough for a window of `w` keys and blocks of `n` new tokens when
    /// `ring ≥ w + n` ([`plan_attend`] checks it). As [`KvCache::new`] when the ring would
    /// not be smaller.
    #[allow(clippy::too_many_arguments)]
    pub fn ring(
        ctx: &Context,
        batch: usize,
        positions: usize,
        kept: usize,
        ring: usize,
        heads: usize,
        dim: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        if ring == 0 {
            return Err(Error::invalid(
                "a key/value cache's ring needs at least one slot",
            ));
        }
        let slots = kept.saturating_add(ring);
        if slots >= positions {
            return KvCache::new(ctx, batch, positions, heads, dim, dtype);
        }
        KvCache::with_slots(ctx, [batch, slots, heads, dim], positions, kept, dtype)
    }

    fn with_slots(
        ctx: &Context,
        shape: [usize; 4],
        positions: usize,
        ring_from: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        Ok(KvCache {
            keys: Tensor::zeros(ctx, &shape, dtype)?,
            values: Tensor::zeros(ctx, &shape, dtype)?,
            positions,
            ring_from,
        })
    }

    /// `[batch, slots, heads, dim]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.keys.shape();
        [s[0], s[1], s[2], s[3]]
    }

    /// Positions each sequence may reach (`0 .. positions`).
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// The first position that shares the ring (the number of slots for a full cache).
    pub fn ring_from(&self) -> usize {
        self.ring_from
    }

    /// Slots in the ring: 0 for a full cache.
    pub fn ring_slots(&self) -> usize {
        self.shape()[1] - self.ring_from.min(self.shape()[1])
    }

    /// The slot that holds position `n`.
    pub fn slot(&self, n: usize) -> usize {
        match n.checked_sub(self.ring_from) {
            Some(past) if self.ring_slots() > 0 => self.ring_from + past % self.ring_slots(),
            _ => n,
        }
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
    cache: &KvCache,
) -> Result<Params> {
    x.expect_float(op, "x")?;
    for (what, t) in [("keys", &cache.keys), ("values", &cache.values)] {
        t.expect_dtype(op, what, x.dtype())?;
    }
    cache
        .values
        .expect_shape(op, "values", cache.keys.shape())?;
    let xs = x.shape();
    let cs = cache.keys.shape();
    if xs.len() != 4 || cs.len() != 4 {
        return Err(Error::shape(op, "x", "[batch, new tokens, heads, dim]", xs));
    }
    let (batch, new_tokens, heads, dim) = (xs[0], xs[1], xs[2], xs[3]);
    if cs[0] != batch || cs[2] != heads || cs[3] != dim {
        return Err(Error::shape(
            op,
            "cache",
            format!("[{batch}, slots, {heads}, {dim}]"),
            cs,
        ));
    }
    if dim % 2 != 0 || dim > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "{op}: heads of {dim} features; the kernel takes even widths up to {MAX_HEAD_DIM}"
        )));
    }
    let (slots, positions) = (cs[1], cache.positions);
    if new_tokens > positions {
        return Err(Error::shape(
            op,
            "x",
            format!("at most the cache's {positions} new tokens"),
            xs,
        ));
    }
    starts.expect_dtype(op, "starts", DType::U32)?;
    starts.expect_shape(op, "starts", &[batch])?;
    table.expect_dtype(op, "table", DType::F32)?;
    let ts = table.shape();
    if ts.len() != 2 || ts[1] != dim || ts[0] < positions {
        return Err(Error::shape(
            op,
            "table",
            format!("[positions >= {positions}, {dim}]"),
            ts,
        ));
    }
    Ok(Params {
        batch: batch as u32,
        new_tokens: new_tokens as u32,
        heads: heads as u32,
        dim: dim as u32,
        slots: slots as u32,
        rotate: 0,
        scale: 1.0 / (dim as f32).sqrt(),
        // Every key up to the query's position.
        window: u32::MAX,
        globals: 0,
        positions: positions as u32,
        ring_from: cache.ring_from.min(slots) as u32,
        _p0: 0,
    })
}

/// Writes the new keys `k` and values `v` (`[batch, new, heads, dim]`) into `cache` at
/// positions `starts[b] + t` (their slots), keys rotated by RoPE there, values too with
/// `rotary_value`. Positions past the cache's are not written: the caller keeps
/// `starts[b] + new ≤ positions` for the rows it reads.
pub fn plan_append(
    ctx: &Context,
    k: &Tensor,
    v: &Tensor,
    table: &Tensor,
    starts: &Tensor,
    cache: &KvCache,
    rotary_value: bool,
) -> Result<Vec<Dispatch>> {
    let op = "cached attention append";
    let p = check(op, k, table, starts, cache)?;
    v.expect_shape(op, "v", k.shape())?;
    let ring = cache.ring_slots();
    if ring > 0 && k.shape()[1] > ring {
        // Two of the block's tokens would share a slot, written at once.
        return Err(Error::invalid(format!(
            "{op}: {} new tokens into a ring of {ring} slots",
            k.shape()[1]
        )));
    }
    let pairs = k.numel() as u64 / 2;
    [(k, &cache.keys, true), (v, &cache.values, rotary_value)]
        .into_iter()
        .map(|(x, into, rotate)| {
            DispatchBuilder::family(ctx, &FAMILY, "append")
                .element_type("T", x.dtype())
                .params(&Params {
                    rotate: rotate as u32,
                    ..p
                })
                .read("x", x)
                .read("table", table)
                .read("starts", starts)
                .write("cache", into)
                .build(ctx.grid_1d(pairs.div_ceil(256))?)
        })
        .collect()
}

/// `out = softmax(qkᵀ/√d) v` for the queries `q` (`[batch, new, heads, dim]`, not yet
/// rotated: the kernel rotates each at its position `starts[b] + t`) over the cached
/// positions `0 ..= starts[b] + t`; with a `local` window, over those the query sees
/// (causal: the last `window` + 1 and the first `globals`), so that a step's work does not
/// grow with the position. A ring cache ([`KvCache::ring`]) needs `local`, its globals
/// among the kept positions, and `window` + new tokens within the ring.
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
    let mut p = check(op, q, table, starts, cache)?;
    if let Some(w) = local {
        // (Windows past the positions see every key: the same as u32::MAX.)
        p.window = w.window.min(cache.positions) as u32;
        p.globals = w.globals.min(cache.positions) as u32;
    }
    let ring = cache.ring_slots();
    if ring > 0 {
        // The ring must hold every key a block's queries see past the kept positions.
        let needed = local.map(|w| (w.globals, w.window.saturating_add(q.shape()[1])));
        match needed {
            Some((globals, keys)) if globals <= cache.ring_from && keys <= ring => {}
            _ => {
                return Err(Error::invalid(format!(
                    "{op}: a cache that keeps {} positions and a ring of {ring} slots serves \
                     local attention with at most that many globals and window + new tokens \
                     ({local:?}, {} new tokens)",
                    cache.ring_from,
                    q.shape()[1]
                )))
            }
        }
    }
    out.expect_shape(op, "out", q.shape())?;
    out.expect_dtype(op, "out", q.dtype())?;
    let rows = (p.batch * p.new_tokens * p.heads) as u64;
    // Each query reads up to `positions` keys and values (local: its window and globals).
    let keys = local.map_or(cache.positions, |w| {
        (w.window.saturating_add(1).saturating_add(w.globals)).min(cache.positions)
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
            slots,
            rotate,
            scale,
            window,
            globals,
            positions,
            ring_from,
            _p0
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::heads::{HeadLayout, Heads};
    use crate::ops::attention::reference;
    use crate::ops::rope;
    use crate::testing::*;

    /// Sequences fed to the cache as a ragged prompt block, then a token at a time, give
    /// each token the output of causal attention with RoPE over its whole sequence (the
    /// f64 reference of the materialised form, or of local attention with `local`'s
    /// window, which know nothing of caches). With `ring`, a local cache keeps the globals
    /// and a ring of `window` + prompt block slots (the fewest it may), which the longer
    /// sequences wrap around many times.
    fn check_against_full_attention(
        dtype: DType,
        rotary_value: bool,
        local: Option<LocalWindow>,
        ring: bool,
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
            let heads_of = Heads::new(batch, heads, total, dim, HeadLayout::Bthd);
            let bhtd = |x: &[f32]| heads_of.relayout(&to_f64(x), HeadLayout::Bhtd);
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
            let want = Heads::new(batch, heads, total, dim, HeadLayout::Bhtd)
                .relayout(&want, HeadLayout::Bthd);

            let table = rope::table(ctx, total, dim).unwrap();
            // The prompt block: as many tokens as the longest prompt, from position 0.
            let block = *prompts.iter().max().unwrap();
            let cache = match local {
                Some(w) if ring => {
                    let slots = w.window + block;
                    KvCache::ring(ctx, batch, total, w.globals, slots, heads, dim, dtype)
                }
                _ => KvCache::new(ctx, batch, total, heads, dim, dtype),
            }
            .unwrap();
            let mut got = vec![f32::NAN; n];
            let row = heads * dim;
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
                let mut plan = plan_append(ctx, &tk, &tv, &table, &st, &cache, rotary_value);
                let plan = plan.as_mut().unwrap();
                plan.push(plan_attend(ctx, &tq, &table, &st, &cache, local, &out).unwrap());
                ctx.run(plan).unwrap();
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
                &format!(
                    "cached attention {dtype:?} B{batch} H{heads} d{dim} T{total} {local:?} \
                     slots {}",
                    cache.shape()[1]
                ),
                &got,
                &want,
                tol,
            );
        }
    }

    #[test]
    fn cached_attention_equals_causal_attention_over_the_whole_sequence() {
        check_against_full_attention(DType::F32, false, None, false, 1e-5);
        check_against_full_attention(DType::F32, true, None, false, 1e-5);
    }

    /// Local attention over the cache: a query sees the last `window` + 1 keys and the first
    /// `globals` (in the 1100-token case a window of 1030 and 3 globals cross the kernel's
    /// tiles of 1024 keys, the globals visited first); a window as long as the sequence is
    /// softmax's.
    #[test]
    fn cached_local_attention_sees_its_window_and_globals() {
        for (window, globals) in [(0, 0), (3, 1), (5, 2), (40, 3), (1030, 3), (2000, 0)] {
            let w = LocalWindow { window, globals };
            check_against_full_attention(DType::F32, true, Some(w), false, 1e-5);
        }
    }

    /// The same over a ring cache: the globals kept, then `window` + prompt block slots
    /// that later positions take in turn (129 positions through 14 slots: nine times round).
    #[test]
    fn a_ring_cache_serves_local_attention_as_a_full_one() {
        for (window, globals) in [(0, 0), (3, 1), (5, 2), (40, 3)] {
            let w = LocalWindow { window, globals };
            check_against_full_attention(DType::F32, true, Some(w), true, 1e-5);
        }
        let w = LocalWindow {
            window: 4,
            globals: 1,
        };
        check_against_full_attention(DType::F16, true, Some(w), true, 3e-3);
    }

    /// A ring holds only what local attention sees: softmax attention over it, more globals
    /// than it keeps, a window and block wider than its ring, or a block longer than the ring
    /// (two tokens in one slot) are refused.
    #[test]
    fn a_ring_cache_refuses_what_it_cannot_hold() {
        let ctx = &ctx();
        let table = rope::table(ctx, 64, 4).unwrap();
        let cache = KvCache::ring(ctx, 1, 64, 2, 8, 1, 4, DType::F32).unwrap();
        assert_eq!(cache.shape(), [1, 10, 1, 4]);
        assert_eq!(
            (cache.slot(1), cache.slot(2), cache.slot(9), cache.slot(10)),
            (1, 2, 9, 2)
        );
        let starts = Tensor::from_slice(ctx, &[20u32], &[1]).unwrap();
        let x = Tensor::zeros(ctx, &[1, 3, 1, 4], DType::F32).unwrap();
        let out = Tensor::zeros(ctx, &[1, 3, 1, 4], DType::F32).unwrap();
        let fits = LocalWindow {
            window: 5,
            globals: 2,
        };
        plan_attend(ctx, &x, &table, &starts, &cache, Some(fits), &out).unwrap();
        for local in [
            None,
            Some(LocalWindow {
                window: 6,
                globals: 2,
            }),
            Some(LocalWindow {
                window: 5,
                globals: 3,
            }),
        ] {
            let e = plan_attend(ctx, &x, &table, &starts, &cache, local, &out).unwrap_err();
            assert!(e.to_string().contains("ring of 8 slots"), "{e}");
        }
        let nine = Tensor::zeros(ctx, &[1, 9, 1, 4], DType::F32).unwrap();
        let e = plan_append(ctx, &nine, &nine, &table, &starts, &cache, true).unwrap_err();
        assert!(
            e.to_string().contains("9 new tokens into a ring of 8"),
            "{e}"
        );
        // A ring as large as the positions is a full cache.
        let full = KvCache::ring(ctx, 1, 10, 2, 8, 1, 4, DType::F32).unwrap();
        assert_eq!((full.shape()[1], full.ring_slots()), (10, 0));
        assert!(KvCache::ring(ctx, 1, 64, 2, 0, 1, 4, DType::F32).is_err());
    }

    #[test]
    fn cached_attention_in_f16() {
        check_against_full_attention(DType::F16, true, None, false, 3e-3);
        let w = LocalWindow {
            window: 4,
            globals: 1,
        };
        check_against_full_attention(DType::F16, true, Some(w), false, 3e-3);
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
        assert!(plan_append(ctx, &wrong_batch, &x, &table, &starts, &cache, true).is_err());
        assert!(plan_append(ctx, &x, &wrong_batch, &table, &starts, &cache, true).is_err());
        let short_table = rope::table(ctx, 4, 4).unwrap();
        assert!(plan_attend(ctx, &x, &short_table, &starts, &cache, None, &out).is_err());
        let odd = KvCache::new(ctx, 2, 8, 1, 3, DType::F32).unwrap();
        let x3 = Tensor::zeros(ctx, &[2, 3, 1, 3], DType::F32).unwrap();
        assert!(plan_attend(ctx, &x3, &table, &starts, &odd, None, &x3).is_err());
        let f_starts = Tensor::zeros(ctx, &[2], DType::F32).unwrap();
        assert!(plan_attend(ctx, &x, &table, &f_starts, &cache, None, &out).is_err());
    }
}
