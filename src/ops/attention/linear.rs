//! Linear attention (Katharopoulos et al. 2020, feature map `elu(x) + 1`), plain or with
//! RoPE as in RoFormer eq. (19) (rotated features in the numerator, unrotated normaliser),
//! causal or not, forward and backward. Memory is linear in the sequence length: the only
//! per-token state saved for the backward pass is the denominator.
//!
//! This is the simple scan form (see `shaders/linear_attention.wgsl`); it is the reference
//! any faster form is tested against. Non-causal, its sums over every token are taken in
//! chunks of the sequence in parallel and added up, and each chunk's tokens are emitted in
//! parallel: one workgroup per (sequence, head, chunk), enough to fill a GPU at LRA's shapes.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{KernelFamily, ParamBlock, Variant};
use crate::ops::attention::heads::{qkv_heads, HeadLayout, Heads};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "linear_attention",
    source: include_str!("../../../shaders/linear_attention.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants,
    params: param_blocks,
};

/// Largest head dimension (or feature count, see [`FeatureMap::Given`]) the kernels take
/// (one thread per feature).
pub const MAX_HEAD_DIM: usize = 256;
/// Workgroup arrays of `BT · MAX_D` floats an entry point uses at most.
const STAGED_ARRAYS: usize = 6;

/// The normaliser's epsilon in RoFormer eq. (19) and the fixtures.
pub const EPS: f32 = 1e-6;

/// The feature map the kernels apply to q and k.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FeatureMap {
    /// `elu(x) + 1` (Katharopoulos et al.; RoFormer eq. 19).
    #[default]
    EluPlusOne,
    /// None: q and k are features mapped already (non-negative, e.g. Performer's random
    /// features, [`crate::ops::attention::performer`]) and are used as they are. RoPE is
    /// refused with it: rotate before mapping.
    Given,
}

/// What a linear attention computes besides the plain `elu+1` form.
#[derive(Clone, Copy, Debug)]
pub struct LinearAttentionOptions<'a> {
    /// Position t attends to positions up to t only.
    pub causal: bool,
    /// RoPE sin/cos table `[positions >= T, d]` (see `rope::table`); `None`: plain.
    pub rope: Option<&'a Tensor>,
    /// Key weights `[B, T]`: 1 for tokens, 0 for padding (which then adds nothing).
    pub key_mask: Option<&'a Tensor>,
    /// Added to the normaliser ([`EPS`] in RoFormer and the fixtures).
    pub eps: f32,
    /// The feature map of q and k.
    pub feature_map: FeatureMap,
}

impl Default for LinearAttentionOptions<'_> {
    fn default() -> Self {
        LinearAttentionOptions {
            causal: false,
            rope: None,
            key_mask: None,
            eps: EPS,
            feature_map: FeatureMap::EluPlusOne,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    seq: u32,
    dim: u32,
    dim_v: u32,
    qb: u32,
    qh: u32,
    qt: u32,
    vb: u32,
    vh: u32,
    vt: u32,
    mapped: u32,
    has_mask: u32,
    has_rope: u32,
    eps: f32,
    chunk_len: u32,
}

/// Shapes of one call, checked: q and k `[.., d]`, v `[.., dv]`, same batch, heads and length.
struct Shapes {
    qk: Heads,
    v: Heads,
    /// The variant: `(max_d, tokens staged per block)`.
    max_d: (usize, usize),
    /// q, k, v, the output and the gradients: f32 or f16.
    dtype: DType,
}

fn shapes(
    ctx: &Context,
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &LinearAttentionOptions<'_>,
) -> Result<Shapes> {
    let (qk, hv) = qkv_heads(op, q, k, v, layout)?;
    let widest = qk.dim.max(hv.dim);
    if widest > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "{op}: head dimension {widest} is over the {MAX_HEAD_DIM} this kernel supports"
        )));
    }
    let (max_d, bt) = VARIANTS.into_iter().find(|&(m, _)| widest <= m).unwrap();
    let caps = ctx.capabilities();
    let shared = (STAGED_ARRAYS * bt * max_d + bt) * 4;
    if shared > caps.max_workgroup_storage as usize
        || max_d > caps.max_invocations_per_workgroup as usize
    {
        return Err(Error::OverLimit {
            what: format!("{op}: linear attention with head dimension {widest}"),
            needed: shared as u64,
            limit: caps.max_workgroup_storage as u64,
            limit_name: "max_compute_workgroup_storage_size",
        });
    }
    check_options(op, opts, &qk)?;
    Ok(Shapes {
        qk,
        v: hv,
        max_d: (max_d, bt),
        dtype: q.dtype(),
    })
}

/// The options fit q's heads: the RoPE table (as `rope` checks it; none with given
/// features) and the key mask (f32 `[B, T]`). Shared with the chunked form.
pub(crate) fn check_options(
    op: &'static str,
    opts: &LinearAttentionOptions<'_>,
    qk: &Heads,
) -> Result<()> {
    if opts.feature_map == FeatureMap::Given && opts.rope.is_some() {
        return Err(Error::invalid(format!(
            "{op}: RoPE with given features: rotate q and k before mapping them"
        )));
    }
    if let Some(table) = opts.rope {
        crate::ops::rope::check_table(op, table, qk)?;
    }
    if let Some(mask) = opts.key_mask {
        mask.expect_dtype(op, "key_mask", DType::F32)?;
        mask.expect_shape(op, "key_mask", &[qk.batch, qk.seq])?;
    }
    Ok(())
}

/// Shape of the per-token state the forward pass saves: `[B, H, T, 2]`.
pub fn saved_shape(q: &Tensor, layout: HeadLayout) -> Result<[usize; 4]> {
    let h = Heads::of("linear attention", "q", q, layout)?;
    Ok([h.batch, h.heads, h.seq, 2])
}

fn params(s: &Shapes, opts: &LinearAttentionOptions<'_>) -> Params {
    let [qb, qh, qt] = s.qk.strides();
    let [vb, vh, vt] = s.v.strides();
    let u = |x: usize| x as u32;
    Params {
        batch: u(s.qk.batch),
        heads: u(s.qk.heads),
        seq: u(s.qk.seq),
        dim: u(s.qk.dim),
        dim_v: u(s.v.dim),
        qb: u(qb),
        qh: u(qh),
        qt: u(qt),
        vb: u(vb),
        vh: u(vh),
        vt: u(vt),
        mapped: (opts.feature_map == FeatureMap::Given) as u32,
        has_mask: opts.key_mask.is_some() as u32,
        has_rope: opts.rope.is_some() as u32,
        eps: opts.eps,
        chunk_len: chunk_len(s, opts) as u32,
    }
}

/// Workgroups a non-causal call aims at (several per multiprocessor of a large GPU), and the
/// fewest tokens a chunk keeps.
const TARGET_WORKGROUPS: usize = 1024;
const MIN_CHUNK: usize = 64;

/// Chunks of the sequence: 1 when causal (a scan), else a power of two giving about
/// [`TARGET_WORKGROUPS`] with chunks of at least [`MIN_CHUNK`] tokens.
fn chunks(s: &Shapes, opts: &LinearAttentionOptions<'_>) -> usize {
    if opts.causal {
        return 1;
    }
    let heads = s.qk.batch * s.qk.heads;
    let mut c = 1;
    while heads * c * 2 <= TARGET_WORKGROUPS && s.qk.seq / (c * 2) >= MIN_CHUNK {
        c *= 2;
    }
    c
}

fn chunk_len(s: &Shapes, opts: &LinearAttentionOptions<'_>) -> usize {
    s.qk.seq.div_ceil(chunks(s, opts))
}

/// Floats of one (sequence, head)'s state: a d × dv matrix and a d-vector.
fn state_len(s: &Shapes) -> usize {
    s.qk.dim * s.v.dim + s.qk.dim
}

/// Non-causal: scratch for each chunk's partial state, `[chunks, B · H · state_len]`.
fn partial_states(ctx: &Context, s: &Shapes, opts: &LinearAttentionOptions<'_>) -> Result<Tensor> {
    let heads = s.qk.batch * s.qk.heads;
    Tensor::zeros(ctx, &[chunks(s, opts), heads * state_len(s)], DType::F32)
}

/// Non-causal: `sum` (sum_s or sum_u, its inputs bound) sums each chunk into `partial`,
/// which `reduce` adds up into `state` (`[B · H · state_len]`).
fn plan_sum_state(
    ctx: &Context,
    s: &Shapes,
    opts: &LinearAttentionOptions<'_>,
    sum: DispatchBuilder<'_>,
    partial: &Tensor,
    state: &Tensor,
) -> Result<Vec<Dispatch>> {
    let mut plan = vec![sum
        .write("state_out", partial)
        .serial_steps(chunk_len(s, opts) as u64)
        .build(emit_grid(ctx, s, opts)?)?];
    plan.extend(crate::ops::reduce::plan_sum_rows(
        ctx, partial, state, false,
    )?);
    Ok(plan)
}

/// The grid of the emitting passes: (sequence, head) by chunk.
fn emit_grid(ctx: &Context, s: &Shapes, opts: &LinearAttentionOptions<'_>) -> Result<[u32; 3]> {
    let [x, y, _] = ctx.grid_1d((s.qk.batch * s.qk.heads) as u64)?;
    Ok([x, y, chunks(s, opts) as u32])
}

/// The variants the kernel is compiled in: (largest head dimension = threads per
/// workgroup, tokens staged per block), the widest staging fewer tokens so its workgroup
/// memory is no more than the 128-wide one's.
pub(crate) const VARIANTS: [(usize, usize); 4] = [(32, 8), (64, 8), (128, 8), (MAX_HEAD_DIM, 4)];

/// The variant sized for heads up to `max_d` wide, staging `bt` tokens at a time.
fn variant((max_d, bt): (usize, usize)) -> Variant {
    Variant::default()
        .size("MAX_D", max_d as u32)
        .size("BT", bt as u32)
}

/// Every variant: each head-dimension size.
fn variants() -> Vec<Variant> {
    VARIANTS.iter().map(|&v| variant(v)).collect()
}

fn builder<'a>(
    ctx: &'a Context,
    s: &Shapes,
    opts: &LinearAttentionOptions<'_>,
    entry: &'static str,
) -> DispatchBuilder<'a> {
    DispatchBuilder::family(ctx, &FAMILY, entry)
        .variant(variant(s.max_d))
        .element_type("T", s.dtype)
        .params(&params(s, opts))
}

/// `out` (shaped like v) and `saved` (`[B, H, T, 2]`, the denominators) from q, k, v.
#[allow(clippy::too_many_arguments)]
pub fn plan_forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &LinearAttentionOptions<'_>,
    out: &Tensor,
    saved: &Tensor,
) -> Result<Vec<Dispatch>> {
    let s = shapes(ctx, "linear attention", q, k, v, layout, opts)?;
    out.expect_shape("linear attention", "out", v.shape())?;
    saved.expect_shape("linear attention", "saved", &saved_shape(q, layout)?)?;
    if opts.causal {
        // a scan over the whole sequence, one workgroup per (sequence, head)
        return Ok(vec![builder(ctx, &s, opts, "forward")
            .read("q", q)
            .read("k", k)
            .read("v", v)
            .read_opt("table", opts.rope)
            .read_opt("mask", opts.key_mask)
            .write("tok", saved)
            .write("out", out)
            .serial_steps(s.qk.seq as u64)
            .build(emit_grid(ctx, &s, opts)?)?]);
    }
    // S and z summed over every token, then each chunk's tokens emitted from them
    let state = Tensor::zeros(ctx, &[s.qk.batch * s.qk.heads * state_len(&s)], DType::F32)?;
    let partial = partial_states(ctx, &s, opts)?;
    let sum = builder(ctx, &s, opts, "sum_s")
        .read("k", k)
        .read("v", v)
        .read_opt("table", opts.rope)
        .read_opt("mask", opts.key_mask);
    let mut plan = plan_sum_state(ctx, &s, opts, sum, &partial, &state)?;
    plan.push(
        builder(ctx, &s, opts, "forward_chunk")
            .read("q", q)
            .read_opt("table", opts.rope)
            .read("state", &state)
            .write("tok", saved)
            .write("out", out)
            .serial_steps(chunk_len(&s, opts) as u64)
            .build(emit_grid(ctx, &s, opts)?)?,
    );
    Ok(plan)
}

/// Gradients of q, k and v given the forward's inputs, output, saved state and `grad_out`.
/// `saved` is updated in place (it gains the per-token gradient of the denominator).
#[allow(clippy::too_many_arguments)]
pub fn plan_backward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &LinearAttentionOptions<'_>,
    out: &Tensor,
    saved: &Tensor,
    grad_out: &Tensor,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "linear attention backward";
    let s = shapes(ctx, op, q, k, v, layout, opts)?;
    out.expect_shape(op, "out", v.shape())?;
    grad_out.expect_shape(op, "grad_out", v.shape())?;
    saved.expect_shape(op, "saved", &saved_shape(q, layout)?)?;
    dq.expect_shape(op, "dq", q.shape())?;
    dk.expect_shape(op, "dk", k.shape())?;
    dv.expect_shape(op, "dv", v.shape())?;
    let grid = emit_grid(ctx, &s, opts)?;
    let tokens = (s.qk.batch * s.qk.heads * s.qk.seq) as u64;
    let mut plan = vec![builder(ctx, &s, opts, "backward_prep")
        .read("grad_out", grad_out)
        .read("out_saved", out)
        .write("tok", saved)
        .build(ctx.grid_1d(tokens.div_ceil(256))?)?];
    if opts.causal {
        // Scans; each pass writes one gradient, only the q and k passes read v.
        let scan = |entry: &'static str, grad: &'static str, reads_v: bool, target: &Tensor| {
            let b = builder(ctx, &s, opts, entry)
                .read("q", q)
                .read("k", k)
                .read_opt("table", opts.rope)
                .read_opt("mask", opts.key_mask)
                .read("grad_out", grad_out)
                .write("tok", saved)
                .write(grad, target)
                .serial_steps(s.qk.seq as u64);
            if reads_v { b.read("v", v) } else { b }.build(grid)
        };
        plan.push(scan("backward_q", "grad_q", true, dq)?);
        plan.push(scan("backward_k", "grad_k", true, dk)?);
        plan.push(scan("backward_v", "grad_v", false, dv)?);
        return Ok(plan);
    }
    // S and z (for dq), U and y (for dk and dv), summed over every token; one scratch of
    // partial states for both sums, which run one after the other.
    let len = s.qk.batch * s.qk.heads * state_len(&s);
    let (s_state, u_state) = (
        Tensor::zeros(ctx, &[len], DType::F32)?,
        Tensor::zeros(ctx, &[len], DType::F32)?,
    );
    let partial = partial_states(ctx, &s, opts)?;
    let sum_s = builder(ctx, &s, opts, "sum_s")
        .read("k", k)
        .read("v", v)
        .read_opt("table", opts.rope)
        .read_opt("mask", opts.key_mask);
    plan.extend(plan_sum_state(ctx, &s, opts, sum_s, &partial, &s_state)?);
    let sum_u = builder(ctx, &s, opts, "sum_u")
        .read("q", q)
        .read_opt("table", opts.rope)
        .read("grad_out", grad_out)
        .write("tok", saved);
    plan.extend(plan_sum_state(ctx, &s, opts, sum_u, &partial, &u_state)?);
    // Each chunk's tokens from the sums.
    let steps = chunk_len(&s, opts) as u64;
    plan.push(
        builder(ctx, &s, opts, "backward_q_chunk")
            .read("q", q)
            .read_opt("table", opts.rope)
            .read("grad_out", grad_out)
            .read("state", &s_state)
            .write("tok", saved)
            .write("grad_q", dq)
            .serial_steps(steps)
            .build(grid)?,
    );
    plan.push(
        builder(ctx, &s, opts, "backward_k_chunk")
            .read("k", k)
            .read("v", v)
            .read_opt("table", opts.rope)
            .read_opt("mask", opts.key_mask)
            .read("state", &u_state)
            .write("grad_k", dk)
            .serial_steps(steps)
            .build(grid)?,
    );
    plan.push(
        builder(ctx, &s, opts, "backward_v_chunk")
            .read("k", k)
            .read_opt("table", opts.rope)
            .read_opt("mask", opts.key_mask)
            .read("state", &u_state)
            .write("grad_v", dv)
            .serial_steps(steps)
            .build(grid)?,
    );
    Ok(plan)
}

/// Forward pass in new tensors: `(out, saved)`.
pub fn forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &LinearAttentionOptions<'_>,
) -> Result<(Tensor, Tensor)> {
    let out = Tensor::zeros(ctx, v.shape(), v.dtype())?;
    let saved = Tensor::zeros(ctx, &saved_shape(q, layout)?, DType::F32)?;
    ctx.submit(&plan_forward(ctx, q, k, v, layout, opts, &out, &saved)?)?;
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
    opts: &LinearAttentionOptions<'_>,
    out: &Tensor,
    saved: &Tensor,
    grad_out: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dq = Tensor::zeros(ctx, q.shape(), q.dtype())?;
    let dk = Tensor::zeros(ctx, k.shape(), k.dtype())?;
    let dv = Tensor::zeros(ctx, v.shape(), v.dtype())?;
    ctx.submit(&plan_backward(
        ctx, q, k, v, layout, opts, out, saved, grad_out, &dq, &dk, &dv,
    )?)?;
    Ok((dq, dk, dv))
}

/// CPU reference in f64, in the quadratic form `out_m = Σ_n (a_m·b_n) v_n / D_m`
/// (an independent derivation from the kernels' scans). Tensors are `[B, H, T, d]`.
pub mod reference {
    fn phi(x: f64) -> f64 {
        if x > 0.0 {
            x + 1.0
        } else {
            x.exp()
        }
    }

    fn dphi(x: f64) -> f64 {
        if x > 0.0 {
            1.0
        } else {
            x.exp()
        }
    }

    /// Rotation of one d-vector at position t by `sign · θ` (RoPE pairs (2i, 2i+1)).
    fn rotate(x: &[f64], t: usize, sign: f64) -> Vec<f64> {
        let d = x.len();
        let mut y = x.to_vec();
        for i in 0..d / 2 {
            let theta = t as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
            let (s, c) = ((sign * theta).sin(), theta.cos());
            y[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
            y[2 * i + 1] = x[2 * i + 1] * c + x[2 * i] * s;
        }
        y
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// One linear attention for the reference, `[B, H, T, d]` tensors.
    pub struct Problem<'a> {
        /// Queries.
        pub q: &'a [f64],
        /// Keys.
        pub k: &'a [f64],
        /// Values, `[B, H, T, dv]`.
        pub v: &'a [f64],
        /// `(batch, heads, seq, d, dv)`.
        pub dims: (usize, usize, usize, usize, usize),
        /// Position t attends to positions up to t only.
        pub causal: bool,
        /// RoPE per RoFormer eq. (19).
        pub rope: bool,
        /// `[B, T]` key weights.
        pub mask: Option<&'a [f64]>,
        /// The normaliser's epsilon.
        pub eps: f64,
    }

    /// `(out, dq, dk, dv)` for the gradient `grad_out` of the output.
    pub fn forward_backward(
        p: &Problem<'_>,
        grad_out: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (bsz, heads, t_len, d, dv) = p.dims;
        let mut out = vec![0.0; bsz * heads * t_len * dv];
        let mut dq = vec![0.0; p.q.len()];
        let mut dk = vec![0.0; p.k.len()];
        let mut dvv = vec![0.0; p.v.len()];
        for b in 0..bsz {
            for h in 0..heads {
                let base = (b * heads + h) * t_len;
                let qv = |t: usize| &p.q[(base + t) * d..(base + t + 1) * d];
                let kv = |t: usize| &p.k[(base + t) * d..(base + t + 1) * d];
                let vv = |t: usize| &p.v[(base + t) * dv..(base + t + 1) * dv];
                let gv = |t: usize| &grad_out[(base + t) * dv..(base + t + 1) * dv];
                let w = |t: usize| p.mask.map_or(1.0, |m| m[b * t_len + t]);
                let fq: Vec<Vec<f64>> = (0..t_len)
                    .map(|t| qv(t).iter().map(|&x| phi(x)).collect())
                    .collect();
                let fk: Vec<Vec<f64>> = (0..t_len)
                    .map(|t| kv(t).iter().map(|&x| w(t) * phi(x)).collect())
                    .collect();
                let rot =
                    |f: &Vec<f64>, t: usize| if p.rope { rotate(f, t, 1.0) } else { f.clone() };
                let a: Vec<Vec<f64>> = (0..t_len).map(|t| rot(&fq[t], t)).collect();
                let bb: Vec<Vec<f64>> = (0..t_len).map(|t| rot(&fk[t], t)).collect();
                let pairs = |m: usize| if p.causal { 0..m + 1 } else { 0..t_len };
                // Forward.
                let den: Vec<f64> = (0..t_len)
                    .map(|m| pairs(m).map(|n| dot(&fq[m], &fk[n])).sum::<f64>() + p.eps)
                    .collect();
                let mut o = vec![vec![0.0; dv]; t_len];
                for m in 0..t_len {
                    for n in pairs(m) {
                        let s = dot(&a[m], &bb[n]) / den[m];
                        for (o, v) in o[m].iter_mut().zip(vv(n)) {
                            *o += s * v;
                        }
                    }
                    out[(base + m) * dv..(base + m + 1) * dv].copy_from_slice(&o[m]);
                }
                // Backward of out_m = Σ_n A_mn v_n / D_m.
                let mut da = vec![vec![0.0; d]; t_len];
                let mut db = vec![vec![0.0; d]; t_len];
                let mut dfq = vec![vec![0.0; d]; t_len];
                let mut dfk = vec![vec![0.0; d]; t_len];
                for m in 0..t_len {
                    let g = gv(m);
                    let dden = -dot(g, &o[m]) / den[m];
                    for n in pairs(m) {
                        let da_mn = dot(g, vv(n)) / den[m];
                        let a_mn = dot(&a[m], &bb[n]);
                        for i in 0..d {
                            da[m][i] += da_mn * bb[n][i];
                            db[n][i] += da_mn * a[m][i];
                            dfq[m][i] += dden * fk[n][i];
                            dfk[n][i] += dden * fq[m][i];
                        }
                        for e in 0..dv {
                            dvv[(base + n) * dv + e] += a_mn / den[m] * g[e];
                        }
                    }
                }
                for t in 0..t_len {
                    let back = |x: &Vec<f64>| {
                        if p.rope {
                            rotate(x, t, -1.0)
                        } else {
                            x.clone()
                        }
                    };
                    let (ra, rb) = (back(&da[t]), back(&db[t]));
                    for i in 0..d {
                        dq[(base + t) * d + i] = dphi(qv(t)[i]) * (ra[i] + dfq[t][i]);
                        dk[(base + t) * d + i] = w(t) * dphi(kv(t)[i]) * (rb[i] + dfk[t][i]);
                    }
                }
            }
        }
        (out, dq, dk, dvv)
    }
}

/// One f16 test case of this family and its chunked form: random f16-rounded q, k, v and
/// output gradient `[B, H, T, d]` (`Bhtd`) on the GPU, a key mask hiding the last two
/// tokens of the second sequence, the RoPE table, and the f64 reference from the same
/// values.
#[cfg(test)]
pub(crate) struct F16Case {
    /// `[q, k, v, grad_out]`, f16.
    pub inputs: [Tensor; 4],
    pub mask: Tensor,
    pub table: Tensor,
    values: [Vec<f32>; 4],
    mask_values: Vec<f32>,
    dims: (usize, usize, usize, usize, usize),
}

#[cfg(test)]
impl F16Case {
    pub fn new(
        ctx: &Context,
        rng: &mut impl rand::Rng,
        dims: (usize, usize, usize, usize, usize),
    ) -> F16Case {
        use crate::testing::{randn, round_f16, upload, upload_as};
        let (b, h, t, d, dv) = dims;
        let (qs, vs) = ([b, h, t, d], [b, h, t, dv]);
        let values = [d, d, dv, dv].map(|width| round_f16(&randn(rng, b * h * t * width)));
        let shapes = [qs, qs, vs, vs];
        let inputs = [0, 1, 2, 3].map(|i| upload_as(ctx, &values[i], &shapes[i], DType::F16));
        let mask_values: Vec<f32> = (0..b * t)
            .map(|i| {
                if i / t == 1 && i % t >= t - 2 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        F16Case {
            inputs,
            mask: upload(ctx, &mask_values, &[b, t]),
            table: crate::ops::rope::table(ctx, t, d).unwrap(),
            values,
            mask_values,
            dims,
        }
    }

    pub fn options(&self, causal: bool, rope: bool, masked: bool) -> LinearAttentionOptions<'_> {
        LinearAttentionOptions {
            causal,
            rope: rope.then_some(&self.table),
            key_mask: masked.then_some(&self.mask),
            eps: EPS,
            feature_map: FeatureMap::EluPlusOne,
        }
    }

    /// `(out, dq, dk, dv)` in f64.
    #[allow(clippy::type_complexity)]
    pub fn reference(
        &self,
        causal: bool,
        rope: bool,
        masked: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let [q, k, v, g] = &self.values;
        let mask = f64s(&self.mask_values);
        let problem = reference::Problem {
            q: &f64s(q),
            k: &f64s(k),
            v: &f64s(v),
            dims: self.dims,
            causal,
            rope,
            mask: masked.then_some(&mask[..]),
            eps: EPS as f64,
        };
        reference::forward_backward(&problem, &f64s(g))
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
            dim_v,
            qb,
            qh,
            qt,
            vb,
            vh,
            vt,
            mapped,
            has_mask,
            has_rope,
            eps,
            chunk_len
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rope;
    use crate::testing::*;

    /// Permutes a `[B, H, T, d]` array into `layout`.
    fn to_layout(
        x: &[f32],
        b: usize,
        h: usize,
        t: usize,
        d: usize,
        layout: HeadLayout,
    ) -> Vec<f32> {
        Heads::new(b, h, t, d, HeadLayout::Bhtd).relayout(x, layout)
    }

    #[test]
    fn all_variants_match_the_quadratic_reference() {
        let ctx = &ctx();
        let mut rng = rng(15);
        let cases = [
            (1, 1, 1, 2, 2, HeadLayout::Bhtd),
            (2, 3, 7, 8, 8, HeadLayout::Bhtd),
            (1, 2, 33, 6, 5, HeadLayout::Bthd),
            (2, 1, 19, 40, 40, HeadLayout::Bthd),
            (1, 1, 9, 128, 70, HeadLayout::Bhtd),
            // the widest variant (Performer's feature counts), values narrower
            (1, 1, 11, 200, 24, HeadLayout::Bthd),
            // non-causal in 2 and 4 chunks of the sequence (the last one short)
            (1, 2, 199, 16, 12, HeadLayout::Bthd),
            (2, 1, 290, 8, 8, HeadLayout::Bhtd),
        ];
        for &(b, h, t, d, dv, layout) in &cases {
            let q = randn(&mut rng, b * h * t * d);
            let k = randn(&mut rng, b * h * t * d);
            let v = randn(&mut rng, b * h * t * dv);
            let g = randn(&mut rng, b * h * t * dv);
            let mask: Vec<f32> = (0..b * t)
                .map(|i| {
                    if i / t == 1 && i % t >= t.saturating_sub(3) {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let table = rope::table(ctx, t, d).unwrap();
            let tmask = upload(ctx, &mask, &[b, t]);
            let qk_shape = Heads::new(b, h, t, d, layout).shape();
            let v_shape = Heads::new(b, h, t, dv, layout).shape();
            let tq = upload(ctx, &to_layout(&q, b, h, t, d, layout), &qk_shape);
            let tk = upload(ctx, &to_layout(&k, b, h, t, d, layout), &qk_shape);
            let tv = upload(ctx, &to_layout(&v, b, h, t, dv, layout), &v_shape);
            let tg = upload(ctx, &to_layout(&g, b, h, t, dv, layout), &v_shape);
            for causal in [false, true] {
                for use_rope in [false, true] {
                    for masked in [false, true] {
                        let opts = LinearAttentionOptions {
                            causal,
                            rope: use_rope.then_some(&table),
                            key_mask: masked.then_some(&tmask),
                            eps: EPS,
                            feature_map: FeatureMap::EluPlusOne,
                        };
                        let out = poisoned(ctx, &v_shape);
                        let saved = poisoned(ctx, &[b, h, t, 2]);
                        let (dq, dk, dvt) = (
                            poisoned(ctx, &qk_shape),
                            poisoned(ctx, &qk_shape),
                            poisoned(ctx, &v_shape),
                        );
                        ctx.run(
                            &plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &out, &saved).unwrap(),
                        )
                        .unwrap();
                        ctx.run(
                            &plan_backward(
                                ctx, &tq, &tk, &tv, layout, &opts, &out, &saved, &tg, &dq, &dk,
                                &dvt,
                            )
                            .unwrap(),
                        )
                        .unwrap();

                        let m64 = to_f64(&mask);
                        let problem = reference::Problem {
                            q: &to_f64(&q),
                            k: &to_f64(&k),
                            v: &to_f64(&v),
                            dims: (b, h, t, d, dv),
                            causal,
                            rope: use_rope,
                            mask: masked.then_some(&m64[..]),
                            eps: EPS as f64,
                        };
                        let (wo, wq, wk, wv) = reference::forward_backward(&problem, &to_f64(&g));
                        let what = format!("linear attention [{b},{h},{t},{d}/{dv}] {layout:?} causal={causal} rope={use_rope} mask={masked}");
                        // Back to [B, H, T, d] for comparison.
                        let back = |x: &Tensor, dim| {
                            Heads::new(b, h, t, dim, layout)
                                .relayout(&download(ctx, x), HeadLayout::Bhtd)
                        };
                        assert_close(&format!("{what} out"), &back(&out, dv), &wo, 1e-5);
                        if t == 1 {
                            // One token: out = v·A/(A+ε), so dq and dk are O(ε) = 1e-6, the
                            // difference of two O(1) terms; in f32 that is rounding noise.
                            // Check they are that small (a wrong kernel gives O(1)).
                            for (name, x) in [("dq", &dq), ("dk", &dk)] {
                                let m = download(ctx, x).iter().fold(0.0f32, |a, v| a.max(v.abs()));
                                assert!(
                                    m < 1e-3,
                                    "{what} {name}: max |{name}| {m} for a single token"
                                );
                            }
                        } else {
                            assert_close(&format!("{what} dq"), &back(&dq, d), &wq, 1e-4);
                            assert_close(&format!("{what} dk"), &back(&dk, d), &wk, 1e-4);
                        }
                        assert_close(&format!("{what} dv"), &back(&dvt, dv), &wv, 1e-4);
                    }
                }
            }
        }
    }

    /// f16 q, k, v, outputs and gradients (f32 table, mask, sums) against the f64
    /// reference from the same f16-rounded inputs; non-causal over several chunks too.
    #[test]
    fn f16_tensors_match_the_f64_reference() {
        let ctx = &ctx();
        if !has_f16(ctx, "f16 linear attention") {
            return;
        }
        let mut rng = rng(43);
        let dims = [
            (1, 1, 1, 4, 4),
            (2, 3, 7, 8, 8),
            (1, 2, 33, 16, 12),
            (2, 1, 290, 8, 8),
        ];
        for dims in dims {
            let case = F16Case::new(ctx, &mut rng, dims);
            let (b, h, t, d, dv) = dims;
            let (qs, vs) = ([b, h, t, d], [b, h, t, dv]);
            for (causal, use_rope, masked) in [
                (false, false, false),
                (true, true, true),
                (false, true, true),
            ] {
                let opts = case.options(causal, use_rope, masked);
                let h16 = DType::F16;
                let out = poisoned_as(ctx, &vs, h16);
                let saved = poisoned(ctx, &[b, h, t, 2]);
                let (dq, dk, dvt) = (
                    poisoned_as(ctx, &qs, h16),
                    poisoned_as(ctx, &qs, h16),
                    poisoned_as(ctx, &vs, h16),
                );
                let [tq, tk, tv, tg] = &case.inputs;
                let layout = HeadLayout::Bhtd;
                ctx.run(&plan_forward(ctx, tq, tk, tv, layout, &opts, &out, &saved).unwrap())
                    .unwrap();
                ctx.run(
                    &plan_backward(
                        ctx, tq, tk, tv, layout, &opts, &out, &saved, tg, &dq, &dk, &dvt,
                    )
                    .unwrap(),
                )
                .unwrap();
                let (wo, wq, wk, wv) = case.reference(causal, use_rope, masked);
                let what = format!(
                    "f16 linear attention [{b},{h},{t},{d}/{dv}] causal={causal} rope={use_rope} mask={masked}"
                );
                assert_close(&format!("{what} out"), &download_f32(ctx, &out), &wo, 1e-3);
                if t > 1 {
                    // (one token: dq and dk are O(eps) rounding noise, see above)
                    assert_close(&format!("{what} dq"), &download_f32(ctx, &dq), &wq, 2e-3);
                    assert_close(&format!("{what} dk"), &download_f32(ctx, &dk), &wk, 2e-3);
                }
                assert_close(&format!("{what} dv"), &download_f32(ctx, &dvt), &wv, 1e-3);
            }
        }
    }

    /// Given features (`FeatureMap::Given`) are used as they are: elu+1 of q and k mapped on
    /// the host gives the elu+1 reference's output and dv, and dq, dk are the gradients of
    /// the features (the reference's divided by elu+1's derivative), causal and not.
    #[test]
    fn given_features_are_used_as_they_are() {
        let ctx = &ctx();
        let mut rng = rng(17);
        let (b, h, t, d, dv) = (2, 2, 9, 6, 5);
        let (q, k) = (
            randn(&mut rng, b * h * t * d),
            randn(&mut rng, b * h * t * d),
        );
        let (v, g) = (
            randn(&mut rng, b * h * t * dv),
            randn(&mut rng, b * h * t * dv),
        );
        let phi = |x: &[f32]| -> Vec<f32> {
            x.iter()
                .map(|&a| if a > 0.0 { a + 1.0 } else { a.exp() })
                .collect()
        };
        let dphi = |a: f32| if a > 0.0 { 1.0 } else { (a as f64).exp() };
        let (qs, vs) = ([b, h, t, d], [b, h, t, dv]);
        let (tq, tk) = (upload(ctx, &phi(&q), &qs), upload(ctx, &phi(&k), &qs));
        let (tv, tg) = (upload(ctx, &v, &vs), upload(ctx, &g, &vs));
        let mask: Vec<f32> = (0..b * t)
            .map(|i| if i >= 2 * t - 2 { 0.0 } else { 1.0 })
            .collect();
        let tmask = upload(ctx, &mask, &[b, t]);
        for causal in [false, true] {
            let opts = LinearAttentionOptions {
                causal,
                key_mask: Some(&tmask),
                feature_map: FeatureMap::Given,
                ..Default::default()
            };
            let layout = HeadLayout::Bhtd;
            let (out, saved) = forward(ctx, &tq, &tk, &tv, layout, &opts).unwrap();
            let (dq, dk, dvt) =
                backward(ctx, &tq, &tk, &tv, layout, &opts, &out, &saved, &tg).unwrap();
            let m64 = to_f64(&mask);
            let problem = reference::Problem {
                q: &to_f64(&q),
                k: &to_f64(&k),
                v: &to_f64(&v),
                dims: (b, h, t, d, dv),
                causal,
                rope: false,
                mask: Some(&m64),
                eps: EPS as f64,
            };
            let (wo, wq, wk, wv) = reference::forward_backward(&problem, &to_f64(&g));
            let chain = |grad: &Tensor, x: &[f32]| -> Vec<f32> {
                download(ctx, grad)
                    .iter()
                    .zip(x)
                    .map(|(gf, &a)| (*gf as f64 * dphi(a)) as f32)
                    .collect()
            };
            let what = format!("given features causal={causal}");
            assert_close(&format!("{what} out"), &download(ctx, &out), &wo, 1e-5);
            assert_close(&format!("{what} dv"), &download(ctx, &dvt), &wv, 1e-4);
            assert_close(&format!("{what} dq"), &chain(&dq, &q), &wq, 1e-4);
            assert_close(&format!("{what} dk"), &chain(&dk, &k), &wk, 1e-4);
        }
    }

    #[test]
    fn reference_gradients_match_finite_differences() {
        // Keeps the reference honest: d(Σ out·g)/dq by central differences.
        let mut rng = rng(16);
        let (b, h, t, d, dv) = (1, 1, 5, 4, 3);
        let q = to_f64(&randn(&mut rng, t * d));
        let k = to_f64(&randn(&mut rng, t * d));
        let v = to_f64(&randn(&mut rng, t * dv));
        let g = to_f64(&randn(&mut rng, t * dv));
        for (causal, use_rope) in [(false, false), (true, true), (false, true)] {
            let run = |q: &[f64], k: &[f64], v: &[f64]| {
                let p = reference::Problem {
                    q,
                    k,
                    v,
                    dims: (b, h, t, d, dv),
                    causal,
                    rope: use_rope,
                    mask: None,
                    eps: 1e-6,
                };
                reference::forward_backward(&p, &g)
            };
            let (_, dq, dk, dvv) = run(&q, &k, &v);
            let objective = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
                run(q, k, v).0.iter().zip(&g).map(|(o, g)| o * g).sum()
            };
            crate::testing::assert_qkv_gradients_match_finite_differences(
                "",
                [&q, &k, &v],
                [&dq, &dk, &dvv],
                objective,
            );
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ctx = &ctx();
        let q = upload(ctx, &[0.0; 2 * 3 * 4], &[1, 2, 3, 4]);
        let v_wrong_t = upload(ctx, &[0.0; 2 * 2 * 4], &[1, 2, 2, 4]);
        let opts = LinearAttentionOptions::default();
        assert!(matches!(
            forward(ctx, &q, &q, &v_wrong_t, HeadLayout::Bhtd, &opts),
            Err(Error::Shape { .. })
        ));
        let short = rope::table(ctx, 2, 4).unwrap();
        let opts = LinearAttentionOptions {
            rope: Some(&short),
            ..Default::default()
        };
        assert!(forward(ctx, &q, &q, &q, HeadLayout::Bhtd, &opts).is_err());
        let table = rope::table(ctx, 3, 4).unwrap();
        let given_rotated = LinearAttentionOptions {
            rope: Some(&table),
            feature_map: FeatureMap::Given,
            ..Default::default()
        };
        let e = forward(ctx, &q, &q, &q, HeadLayout::Bhtd, &given_rotated).unwrap_err();
        assert!(e.to_string().contains("rotate q and k before"), "{e}");
        let wide = upload(ctx, &vec![0.0; 258], &[1, 1, 1, 258]);
        assert!(forward(
            ctx,
            &wide,
            &wide,
            &wide,
            HeadLayout::Bhtd,
            &LinearAttentionOptions::default()
        )
        .is_err());
    }
}
