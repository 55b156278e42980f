//! Performer attention (Choromanski et al. 2020, "Rethinking Attention with Performers"):
//! FAVOR+ positive orthogonal random features, with RoPE applied to q and k before the
//! feature map as RoFormer's paper does for Performer (its section 3.3), causal or not,
//! forward and backward, in time and memory linear in the length.
//!
//! For the `m` rows `w_i` of a random projection `W` (`[m, d]`, drawn by
//! [`draw_projection`]), `φ(x)_i = exp(w_i·x' − |x'|²/2) / √m` with `x' = x·d^(−1/4)`, so that
//! `φ(q)·φ(k)` estimates `exp(q·k/√d)`, softmax attention's kernel, and
//!
//! ```text
//! out_m = Σ_n (φ(q_m)·φ(k_n)) v_n / Σ_n φ(q_m)·φ(k_n)      (n ≤ m when causal)
//! ```
//!
//! with padding keys (`key_mask` 0) left out. This module owns the feature map
//! (`shaders/performer.wgsl`: forward, and the gradient of x from the features' gradient;
//! the projection products run on matmul). Causal, the prefix sums over the features are
//! [`crate::ops::attention::chunked_linear`]'s kernels, which take the features as they are
//! ([`FeatureMap::Given`]). Non-causal, the sums are batched matmuls, `φ(q) (φ(k)ᵀ [v | 1])`
//! (the column of ones gives the normaliser in the same products), with an elementwise
//! division: at 256 features on llvmpipe a training step runs about 3.6× faster than with the
//! linear attention kernels' one-thread-per-feature sums (PERF.md), and on a GPU these are
//! the products matmul is tuned for.
//!
//! The features are scaled by stabilisers that cancel exactly in `out` (a query's own
//! maximum; one maximum over all of a sequence's keys, per head; see the shader), and the
//! normaliser gets [`EPS`], far below anything f32 resolves, only so that a query that
//! sees no key (every key padding) gives 0 rather than 0/0. [`reference`](mod@reference)
//! computes the function without either, in f64; the tests hold the kernels to it. One limit remains,
//! shared with the reference implementations: the keys' stabiliser is one number per
//! sequence, so where keys' exponents `w·k' − |k'|²/2` spread over more than f32's range
//! (about 87), the smallest keys' features underflow. Non-causal that loses only
//! negligible terms; causal, a query early in the sequence may see only such keys and get
//! 0 (a running maximum, as online softmax keeps, would need the chunked kernels to
//! rescale their states).
//!
//! Everything is f32: the features span orders of magnitude that f16 does not hold, so f16
//! tensors are refused. The feature count `m` is at most [`MAX_FEATURES`], the linear
//! kernels' widest variant (the paper's `m ≈ d·ln d` is 266 for `d` = 64; 256 is the
//! usual choice).

use bytemuck::{Pod, Zeroable};
use rand::{Rng, SeedableRng};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::ops::attention::chunked_linear::{self as chunked, ChunkedSaved};
use crate::ops::attention::head_view;
use crate::ops::attention::heads::{HeadLayout, Heads};
use crate::ops::attention::linear::{self, FeatureMap, LinearAttentionOptions};
use crate::ops::matmul::MatrixView;
use crate::ops::matmul::{self, MatmulOptions, MatmulPrecision};
use crate::ops::rope;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "performer",
    source: include_str!("../../../shaders/performer.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

/// Most random features the kernels take (the linear attention kernels' widest variant).
pub const MAX_FEATURES: usize = linear::MAX_HEAD_DIM;

/// Added to the normaliser `φ(q)·Σφ(k)`: 0 to f32's precision wherever a query sees a key
/// (the stabilised features are at most `1/√m`, and a query's largest is exactly that), so
/// the stabilisers still cancel; it turns a query that sees only padding into 0, not NaN.
pub const EPS: f32 = 1e-30;

/// What a Performer attention computes besides the plain non-causal form.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerformerOptions<'a> {
    /// Position t attends to positions up to t only.
    pub causal: bool,
    /// RoPE sin/cos table `[positions >= T, d]` (see `rope::table`), applied to q and k
    /// before the feature map; `None`: no rotation.
    pub rope: Option<&'a Tensor>,
    /// Key weights `[B, T]`: 1 for tokens, 0 for padding (left out).
    pub key_mask: Option<&'a Tensor>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    seq: u32,
    dim: u32,
    features: u32,
    rb: u32,
    rh: u32,
    rt: u32,
    has_mask: u32,
    scale: f32,
    ratio: f32,
    dim_v: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

/// Sizes of one call: q and k `[.., d]`, v `[.., dv]`, `m` features.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    qk: Heads,
    v: Heads,
    features: usize,
    causal: bool,
}

impl Sizes {
    /// Checks the shapes (q's and k's, v's, in `layout`) and the feature count.
    pub fn new(
        q: &[usize],
        v: &[usize],
        layout: HeadLayout,
        features: usize,
        causal: bool,
    ) -> Result<Sizes> {
        let op = "performer attention";
        let heads = |what, s: &[usize]| -> Result<Heads> {
            if s.len() != 4 || s.contains(&0) {
                return Err(Error::shape(
                    op,
                    what,
                    "[batch, heads, seq, dim] or [batch, seq, heads, dim]",
                    s,
                ));
            }
            let (h, t) = match layout {
                HeadLayout::Bhtd => (s[1], s[2]),
                HeadLayout::Bthd => (s[2], s[1]),
            };
            Ok(Heads::new(s[0], h, t, s[3], layout))
        };
        let qk = heads("q", q)?;
        let hv = heads("v", v)?;
        qk.expect_same_bht(op, "v", &hv)?;
        if features == 0 || features > MAX_FEATURES {
            return Err(Error::invalid(format!(
                "{op}: {features} random features; the kernels take 1 to {MAX_FEATURES}"
            )));
        }
        if hv.dim > MAX_FEATURES {
            return Err(Error::invalid(format!(
                "{op}: value dimension {} is over the {MAX_FEATURES} the kernels take",
                hv.dim
            )));
        }
        let rows = qk.batch * qk.heads * qk.seq;
        if rows
            .checked_mul(features.max(qk.dim).max(hv.dim) * 6)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::invalid(format!(
                "{op}: {q:?} with {features} features is too large for 32-bit indices"
            )));
        }
        Ok(Sizes {
            qk,
            v: hv,
            features,
            causal,
        })
    }

    /// The random features of q or k: q's shape with `m` for `d`.
    pub fn features(&self) -> [usize; 4] {
        self.qk.with_dim(self.features).shape()
    }

    /// `[B, H, T]`: each key's largest exponent.
    pub fn key_rows(&self) -> [usize; 3] {
        [self.qk.batch, self.qk.heads, self.qk.seq]
    }

    /// `[B, H]`: the keys' stabiliser per sequence and head.
    pub fn key_max(&self) -> [usize; 2] {
        [self.qk.batch, self.qk.heads]
    }

    /// Non-causal: the width of [`Sums`]' rows, `dv + 1` rounded up to a multiple of 4
    /// (zeros past the normaliser's column), so the matmuls read them as vec4s.
    pub fn sums_width(&self) -> usize {
        (self.v.dim + 1).next_multiple_of(4)
    }

    /// Non-causal: `[B, H, T, w]` ([`Sizes::sums_width`]), per token `[v | 1]` or
    /// `[num | den]` ([`Sums`]).
    pub fn sums(&self) -> [usize; 4] {
        [self.qk.batch, self.qk.heads, self.qk.seq, self.sums_width()]
    }

    /// Non-causal: `[B, H, m, w]`, `[S | z] = φ(k)ᵀ [v | 1]` per sequence and head.
    pub fn state(&self) -> [usize; 4] {
        [
            self.qk.batch,
            self.qk.heads,
            self.features,
            self.sums_width(),
        ]
    }

    /// The backward pass's states ([`PerformerScratch::states`]): causal, the chunked
    /// form's reverse states; non-causal, the gradient of `[S | z]`.
    pub fn backward_states(&self) -> Result<Vec<usize>> {
        Ok(if self.causal {
            self.chunked()?[1].clone()
        } else {
            self.state().to_vec()
        })
    }

    /// Causal: the chunked linear attention's saved tensors (features, states, tokens).
    pub fn chunked(&self) -> Result<[Vec<usize>; 3]> {
        let (b, h, t, m, dv) = (
            self.qk.batch,
            self.qk.heads,
            self.qk.seq,
            self.features,
            self.v.dim,
        );
        let chunk = chunked::VARIANTS
            .iter()
            .find(|v| m.max(dv) <= v.0)
            .map(|v| v.1)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "performer attention: {m} features or values {dv} wide are over what \
                     the chunked kernels take"
                ))
            })?;
        Ok([
            vec![b, h, t, 6, m],
            vec![b, h, t.div_ceil(chunk), m * dv + m],
            vec![b, h, t, 2],
        ])
    }

    /// The chunked linear attention's options (causal).
    fn chunked_options<'a>(&self, key_mask: Option<&'a Tensor>) -> LinearAttentionOptions<'a> {
        LinearAttentionOptions {
            causal: true,
            rope: None,
            key_mask,
            eps: EPS,
            feature_map: FeatureMap::Given,
        }
    }
}

/// Non-causal: what the matmuls over the features keep, `[B, H, ..]` contiguous, rows
/// [`Sizes::sums_width`] wide (`dv + 1` and zeros).
#[derive(Clone, Debug)]
pub struct Sums {
    /// `[B, H, T, w]`: `[v | 1]`.
    pub values: Tensor,
    /// `[B, H, m, w]`: `[S | z] = φ(k)ᵀ [v | 1]`.
    pub state: Tensor,
    /// `[B, H, T, w]`: `φ(q) [S | z]`, each query's numerators and normaliser; the backward
    /// pass overwrites them with their gradients.
    pub rows: Tensor,
}

/// What the linear attention over the features saves.
#[derive(Clone, Debug)]
pub enum LinearSaved {
    /// Non-causal: the matmuls' products.
    NonCausal(Sums),
    /// Causal: the chunked form's tensors.
    Causal(ChunkedSaved),
}

/// What the forward pass writes and the backward pass reads.
#[derive(Clone, Debug)]
pub struct PerformerSaved {
    /// Rotated q, in the input layout, when RoPE is on.
    pub q_rot: Option<Tensor>,
    /// Rotated k.
    pub k_rot: Option<Tensor>,
    /// φ(q), stabilised: q's shape with `m` for `d` ([`Sizes::features`]).
    pub q_features: Tensor,
    /// φ(k), stabilised, 0 for padding.
    pub k_features: Tensor,
    /// `[B, H, T]` scratch: each key's largest exponent.
    pub key_rows: Tensor,
    /// `[B, H]`: the keys' stabiliser.
    pub key_max: Tensor,
    /// The linear attention's.
    pub linear: LinearSaved,
}

/// Scratch of the backward pass.
#[derive(Clone, Debug)]
pub struct PerformerScratch {
    /// Gradient of φ(q) (then `g·φ`), shaped like the features.
    pub dq_features: Tensor,
    /// Gradient of φ(k).
    pub dk_features: Tensor,
    /// Gradient of the rotated q before rotating back (with RoPE).
    pub dq_rot: Option<Tensor>,
    /// Gradient of the rotated k.
    pub dk_rot: Option<Tensor>,
    /// [`Sizes::backward_states`]: causal, the chunked form's reverse states; non-causal,
    /// the gradient of `[S | z]`.
    pub states: Tensor,
}

fn zeros_if(ctx: &Context, on: bool, shape: &[usize]) -> Result<Option<Tensor>> {
    on.then(|| Tensor::zeros(ctx, shape, DType::F32))
        .transpose()
}

impl PerformerSaved {
    /// Zeroed tensors for these sizes and options.
    pub fn new(ctx: &Context, s: &Sizes, opts: &PerformerOptions<'_>) -> Result<Self> {
        let f32s = |shape: &[usize]| Tensor::zeros(ctx, shape, DType::F32);
        let rope = opts.rope.is_some();
        let q = s.qk.shape();
        Ok(PerformerSaved {
            q_rot: zeros_if(ctx, rope, &q)?,
            k_rot: zeros_if(ctx, rope, &q)?,
            q_features: f32s(&s.features())?,
            k_features: f32s(&s.features())?,
            key_rows: f32s(&s.key_rows())?,
            key_max: f32s(&s.key_max())?,
            linear: if s.causal {
                let [features, states, tokens] = s.chunked()?;
                LinearSaved::Causal(ChunkedSaved {
                    features: f32s(&features)?,
                    states: f32s(&states)?,
                    tokens: f32s(&tokens)?,
                })
            } else {
                LinearSaved::NonCausal(Sums {
                    values: f32s(&s.sums())?,
                    state: f32s(&s.state())?,
                    rows: f32s(&s.sums())?,
                })
            },
        })
    }
}

impl PerformerScratch {
    /// Zeroed tensors for these sizes and options.
    pub fn new(ctx: &Context, s: &Sizes, opts: &PerformerOptions<'_>) -> Result<Self> {
        let f32s = |shape: &[usize]| Tensor::zeros(ctx, shape, DType::F32);
        let rope = opts.rope.is_some();
        let q = s.qk.shape();
        Ok(PerformerScratch {
            dq_features: f32s(&s.features())?,
            dk_features: f32s(&s.features())?,
            dq_rot: zeros_if(ctx, rope, &q)?,
            dk_rot: zeros_if(ctx, rope, &q)?,
            states: f32s(&s.backward_states()?)?,
        })
    }
}

/// Draws a projection `[features, dim]` as FAVOR+ does (`gaussian_orthogonal_random_matrix`
/// with scaling 0 in the reference implementations): blocks of `dim` rows orthonormalised
/// from Gaussian vectors (the last block cut to what is left), each row then scaled to the
/// length of an independent Gaussian `dim`-vector, so rows are marginally Gaussian and
/// orthogonal within a block. Deterministic from `seed`.
///
/// The blocks are Gram-Schmidt of Gaussian vectors (in f64), which makes them uniformly
/// (Haar) distributed: the reference implementations' QR without correcting the signs of
/// R's diagonal does not, and that biases the estimate (in numpy, its error against softmax
/// attention stalls near 3% where this one's keeps falling as 1/√m; NOTES.md).
pub fn draw_projection(features: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut normal = move || {
        // Box–Muller
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(features);
    while rows.len() < features {
        let mut block: Vec<Vec<f64>> = Vec::with_capacity(dim);
        while block.len() < dim {
            let mut v: Vec<f64> = (0..dim).map(|_| normal()).collect();
            // Twice, so the rows stay orthogonal to rounding ("twice is enough").
            for _ in 0..2 {
                for u in &block {
                    let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                    v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
                }
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm > 1e-6 {
                block.push(v.into_iter().map(|a| a / norm).collect());
            }
        }
        let take = dim.min(features - rows.len());
        rows.extend(block.into_iter().take(take));
    }
    rows.into_iter()
        .flat_map(|row| {
            let length = (0..dim).map(|_| normal().powi(2)).sum::<f64>().sqrt();
            row.into_iter().map(move |a| (a * length) as f32)
        })
        .collect()
}

/// Checks q, k, v, the projection and the options against each other.
fn setup(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    projection: &Tensor,
    opts: &PerformerOptions<'_>,
) -> Result<Sizes> {
    for (what, t) in [("q", q), ("k", k), ("v", v), ("projection", projection)] {
        if t.dtype() != DType::F32 {
            return Err(Error::invalid(format!(
                "{op}: {what} is {:?}; Performer attention runs in f32 only (its random \
                 features span orders of magnitude f16 does not hold)",
                t.dtype()
            )));
        }
    }
    k.expect_shape(op, "k", q.shape())?;
    let pshape = projection.shape();
    let features = if pshape.len() == 2 { pshape[0] } else { 0 };
    let s = Sizes::new(q.shape(), v.shape(), layout, features, opts.causal)?;
    projection.expect_shape(op, "projection", &[features, s.qk.dim])?;
    if let Some(table) = opts.rope {
        rope::check_table(op, table, &s.qk)?;
    }
    if let Some(mask) = opts.key_mask {
        mask.expect_dtype(op, "key_mask", DType::F32)?;
        mask.expect_shape(op, "key_mask", &[s.qk.batch, s.qk.seq])?;
    }
    Ok(s)
}

fn builder<'a>(
    ctx: &'a Context,
    s: &Sizes,
    has_mask: bool,
    entry: &'static str,
) -> DispatchBuilder<'a> {
    let [sb, sh, st] = s.qk.strides();
    let d = s.qk.dim;
    let u = |x: usize| x as u32;
    DispatchBuilder::family(ctx, &FAMILY, entry).params(&Params {
        batch: u(s.qk.batch),
        heads: u(s.qk.heads),
        seq: u(s.qk.seq),
        dim: u(d),
        features: u(s.features),
        rb: u(sb / d),
        rh: u(sh / d),
        rt: u(st / d),
        has_mask: has_mask as u32,
        scale: (d as f32).powf(-0.25),
        ratio: 1.0 / (s.features as f32).sqrt(),
        dim_v: u(s.v.dim),
        eps: EPS,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    })
}

/// Non-causal: one product per (sequence, head) on views, in f32 (features far below 1
/// would not survive rounding to f16).
fn product(
    ctx: &Context,
    s: &Sizes,
    (m, n, k): (usize, usize, usize),
    (a, va): (&Tensor, MatrixView),
    (b, vb): (&Tensor, MatrixView),
    (c, vc): (&Tensor, MatrixView),
) -> Result<Dispatch> {
    let spec = crate::ops::attention::product(&s.qk, m, n, k, va, vb, vc);
    matmul::plan_strided_with(ctx, MatmulPrecision::F32, &spec, a, b, None, c)
}

/// Non-causal: the views of the products' operands, per (sequence, head).
struct Views {
    /// φ(q), φ(k) and their gradients: `[T, m]`.
    features: MatrixView,
    /// v and its gradient: `[T, dv]`.
    values: MatrixView,
    /// [`Sums::values`] and [`Sums::rows`]: `[T, w]`.
    sums: MatrixView,
    /// [`Sums::state`] and its gradient: `[m, w]`.
    state: MatrixView,
}

impl Views {
    fn new(s: &Sizes) -> Views {
        let (h, t, m, w) = (s.qk.heads, s.qk.seq, s.features, s.sums_width());
        let bhtd = |rows: usize| MatrixView {
            batch_strides: [h * rows * w, rows * w],
            ..MatrixView::row_major(rows, w)
        };
        Views {
            features: head_view(&s.qk.with_dim(m)),
            values: head_view(&s.v),
            sums: bhtd(t),
            state: bhtd(m),
        }
    }
}

/// Rows `[B·H·T, width]` of a contiguous per-head tensor.
fn rows(t: &Tensor, width: usize) -> Result<Tensor> {
    t.reshape(&[t.numel() / width, width])
}

/// One invocation per (b, h, t), or per feature.
fn grid(ctx: &Context, s: &Sizes, per_row: usize) -> Result<[u32; 3]> {
    let n = (s.qk.batch * s.qk.heads * s.qk.seq * per_row) as u64;
    ctx.grid_1d(n.div_ceil(256))
}

/// φ of the (rotated) q or k `x` into `features`: the projection's products, then the
/// map (a query's own stabiliser, or the keys' shared one).
#[allow(clippy::too_many_arguments)]
fn plan_features(
    ctx: &Context,
    s: &Sizes,
    x: &Tensor,
    projection: &Tensor,
    features: &Tensor,
    keys: Option<(&PerformerSaved, Option<&Tensor>)>,
    plan: &mut Vec<Dispatch>,
) -> Result<()> {
    let (d, m) = (s.qk.dim, s.features);
    plan.push(matmul::plan_with(
        ctx,
        // The exponents' error multiplies into the features: keep them f32.
        MatmulPrecision::F32,
        &rows(x, d)?,
        projection,
        None,
        &rows(features, m)?,
        &MatmulOptions {
            trans_b: true,
            alpha: (d as f32).powf(-0.25),
            ..Default::default()
        },
    )?);
    let Some((saved, mask)) = keys else {
        plan.push(
            builder(ctx, s, false, "map_queries")
                .write("feat", features)
                .serial_steps(2 * m as u64)
                .build(grid(ctx, s, 1)?)?,
        );
        return Ok(());
    };
    plan.push(
        builder(ctx, s, mask.is_some(), "key_exponents")
            .read("x", x)
            .write("feat", features)
            .read_opt("mask", mask)
            .write("key_rows", &saved.key_rows)
            .serial_steps((d + m) as u64)
            .build(grid(ctx, s, 1)?)?,
    );
    plan.push(
        builder(ctx, s, mask.is_some(), "key_maximum")
            .write("key_rows", &saved.key_rows)
            .write("key_max", &saved.key_max)
            .serial_steps(s.qk.seq.div_ceil(64) as u64)
            .build(ctx.grid_1d((s.qk.batch * s.qk.heads) as u64)?)?,
    );
    plan.push(
        builder(ctx, s, mask.is_some(), "map_keys")
            .write("feat", features)
            .read_opt("mask", mask)
            .write("key_max", &saved.key_max)
            .build(grid(ctx, s, m)?)?,
    );
    Ok(())
}

/// `out` (shaped like v) from q, k, v and the projection (`[m, d]`); fills `saved`.
#[allow(clippy::too_many_arguments)]
pub fn plan_forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    projection: &Tensor,
    opts: &PerformerOptions<'_>,
    saved: &PerformerSaved,
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "performer attention";
    let s = setup(op, q, k, v, layout, projection, opts)?;
    out.expect_shape(op, "out", v.shape())?;
    out.expect_dtype(op, "out", DType::F32)?;
    check_saved(op, &s, saved)?;
    let mut plan = Vec::new();
    let table = opts.rope;
    let qr = rope::rotate_into(ctx, op, table, true, q, layout, &saved.q_rot, &mut plan)?;
    let kr = rope::rotate_into(ctx, op, table, true, k, layout, &saved.k_rot, &mut plan)?;
    plan_features(ctx, &s, &qr, projection, &saved.q_features, None, &mut plan)?;
    plan_features(
        ctx,
        &s,
        &kr,
        projection,
        &saved.k_features,
        Some((saved, opts.key_mask)),
        &mut plan,
    )?;
    let (fq, fk) = (&saved.q_features, &saved.k_features);
    let sums = match &saved.linear {
        LinearSaved::Causal(c) => {
            let lin = s.chunked_options(opts.key_mask);
            plan.extend(chunked::plan_forward(ctx, fq, fk, v, layout, &lin, c, out)?);
            return Ok(plan);
        }
        LinearSaved::NonCausal(sums) => sums,
    };
    // [S | z] = φ(k)ᵀ [v | 1], [num | den] = φ(q) [S | z], out = num / (den + ε).
    let (t, m, w) = (s.qk.seq, s.features, s.sums_width());
    let views = Views::new(&s);
    plan.push(
        builder(ctx, &s, false, "augment")
            .read("v", v)
            .write("values", &sums.values)
            .build(grid(ctx, &s, w)?)?,
    );
    plan.push(product(
        ctx,
        &s,
        (m, w, t),
        (fk, views.features.transposed()),
        (&sums.values, views.sums),
        (&sums.state, views.state),
    )?);
    plan.push(product(
        ctx,
        &s,
        (t, w, m),
        (fq, views.features),
        (&sums.state, views.state),
        (&sums.rows, views.sums),
    )?);
    plan.push(
        builder(ctx, &s, false, "normalise")
            .write("sums", &sums.rows)
            .write("out", out)
            .build(grid(ctx, &s, s.v.dim)?)?,
    );
    Ok(plan)
}

fn check_saved(op: &'static str, s: &Sizes, saved: &PerformerSaved) -> Result<()> {
    saved
        .q_features
        .expect_shape(op, "q_features", &s.features())?;
    saved
        .k_features
        .expect_shape(op, "k_features", &s.features())?;
    saved.key_rows.expect_shape(op, "key_rows", &s.key_rows())?;
    saved.key_max.expect_shape(op, "key_max", &s.key_max())?;
    match (&saved.linear, s.causal) {
        (LinearSaved::NonCausal(sums), false) => {
            sums.values.expect_shape(op, "values", &s.sums())?;
            sums.state.expect_shape(op, "state", &s.state())?;
            sums.rows.expect_shape(op, "rows", &s.sums())
        }
        (LinearSaved::Causal(_), true) => Ok(()),
        _ => Err(Error::invalid(format!(
            "{op}: saved tensors of the {} form for a {} call",
            if s.causal { "non-causal" } else { "causal" },
            if s.causal { "causal" } else { "non-causal" }
        ))),
    }
}

/// Gradients of q, k and v from `grad_out`, the forward output and `saved`.
#[allow(clippy::too_many_arguments)]
pub fn plan_backward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    projection: &Tensor,
    opts: &PerformerOptions<'_>,
    saved: &PerformerSaved,
    out: &Tensor,
    grad_out: &Tensor,
    scratch: &PerformerScratch,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "performer attention backward";
    let s = setup(op, q, k, v, layout, projection, opts)?;
    check_saved(op, &s, saved)?;
    for (what, t, like) in [
        ("out", out, v),
        ("grad_out", grad_out, v),
        ("dq", dq, q),
        ("dk", dk, k),
        ("dv", dv, v),
    ] {
        t.expect_shape(op, what, like.shape())?;
        t.expect_dtype(op, what, DType::F32)?;
    }
    for (what, t) in [
        ("dq_features", &scratch.dq_features),
        ("dk_features", &scratch.dk_features),
    ] {
        t.expect_shape(op, what, &s.features())?;
    }
    scratch
        .states
        .expect_shape(op, "states", &s.backward_states()?)?;
    let rot = opts.rope.is_some();
    let qr = rope::rotated_or(op, rot, &saved.q_rot, q)?;
    let kr = rope::rotated_or(op, rot, &saved.k_rot, k)?;
    let dqr = rope::rotated_or(op, rot, &scratch.dq_rot, dq)?;
    let dkr = rope::rotated_or(op, rot, &scratch.dk_rot, dk)?;
    // dφ(q), dφ(k) and dv from the attention over the features.
    let (fq, fk) = (&saved.q_features, &saved.k_features);
    let (gq, gk) = (&scratch.dq_features, &scratch.dk_features);
    let mut plan = match &saved.linear {
        LinearSaved::Causal(c) => {
            let lin = s.chunked_options(opts.key_mask);
            chunked::plan_backward(
                ctx,
                fq,
                fk,
                v,
                layout,
                &lin,
                c,
                out,
                grad_out,
                &scratch.states,
                gq,
                gk,
                dv,
            )?
        }
        LinearSaved::NonCausal(sums) => {
            // G = [g / den | −(g·out) / den] over the rows; dφ(q) = G [S | z]ᵀ,
            // d[S | z] = φ(q)ᵀ G, dφ(k) = [v | 1] d[S | z]ᵀ, dv = φ(k) dS.
            let (t, m, dv_w, w) = (s.qk.seq, s.features, s.v.dim, s.sums_width());
            let views = Views::new(&s);
            let dstate = &scratch.states;
            vec![
                builder(ctx, &s, false, "grad_sums")
                    .read("grad_out", grad_out)
                    .write("out", out)
                    .write("sums", &sums.rows)
                    .serial_steps(dv_w as u64)
                    .build(grid(ctx, &s, 1)?)?,
                product(
                    ctx,
                    &s,
                    (t, m, w),
                    (&sums.rows, views.sums),
                    (&sums.state, views.state.transposed()),
                    (gq, views.features),
                )?,
                product(
                    ctx,
                    &s,
                    (m, w, t),
                    (fq, views.features.transposed()),
                    (&sums.rows, views.sums),
                    (dstate, views.state),
                )?,
                product(
                    ctx,
                    &s,
                    (t, m, w),
                    (&sums.values, views.sums),
                    (dstate, views.state.transposed()),
                    (gk, views.features),
                )?,
                product(
                    ctx,
                    &s,
                    (t, dv_w, m),
                    (fk, views.features),
                    (dstate, views.state),
                    (dv, views.values),
                )?,
            ]
        }
    };
    // Through the feature map: the |x'|² term, then the projection's product added.
    let (d, m) = (s.qk.dim, s.features);
    for (x, f, g, dx) in [(&qr, fq, gq, &dqr), (&kr, fk, gk, &dkr)] {
        plan.push(
            builder(ctx, &s, false, "feature_grads")
                .read("x", x)
                .write("feat", f)
                .write("grad_feat", g)
                .write("grad_x", dx)
                .serial_steps((d + m) as u64)
                .build(grid(ctx, &s, 1)?)?,
        );
        plan.push(matmul::plan_with(
            ctx,
            MatmulPrecision::F32,
            &rows(g, m)?,
            projection,
            None,
            &rows(dx, d)?,
            &MatmulOptions {
                alpha: (d as f32).powf(-0.25),
                accumulate: true,
                ..Default::default()
            },
        )?);
    }
    if let Some(table) = opts.rope {
        plan.push(rope::plan(ctx, &dqr, layout, table, dq, layout, true)?);
        plan.push(rope::plan(ctx, &dkr, layout, table, dk, layout, true)?);
    }
    Ok(plan)
}

/// Forward pass in new tensors: `(out, saved)`.
pub fn forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    projection: &Tensor,
    opts: &PerformerOptions<'_>,
) -> Result<(Tensor, PerformerSaved)> {
    let s = setup("performer attention", q, k, v, layout, projection, opts)?;
    let saved = PerformerSaved::new(ctx, &s, opts)?;
    let out = Tensor::zeros(ctx, v.shape(), DType::F32)?;
    ctx.submit(&plan_forward(
        ctx, q, k, v, layout, projection, opts, &saved, &out,
    )?)?;
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
    projection: &Tensor,
    opts: &PerformerOptions<'_>,
    saved: &PerformerSaved,
    out: &Tensor,
    grad_out: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let s = setup(
        "performer attention backward",
        q,
        k,
        v,
        layout,
        projection,
        opts,
    )?;
    let scratch = PerformerScratch::new(ctx, &s, opts)?;
    let dq = Tensor::zeros(ctx, q.shape(), DType::F32)?;
    let dk = Tensor::zeros(ctx, k.shape(), DType::F32)?;
    let dv = Tensor::zeros(ctx, v.shape(), DType::F32)?;
    ctx.submit(&plan_backward(
        ctx, q, k, v, layout, projection, opts, saved, out, grad_out, &scratch, &dq, &dk, &dv,
    )?)?;
    Ok((dq, dk, dv))
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
            features,
            rb,
            rh,
            rt,
            has_mask,
            scale,
            ratio,
            dim_v,
            eps,
            _pad0,
            _pad1,
            _pad2
        }),
    }]
}

/// CPU reference in f64 on `[B, H, T, d]` arrays: the features without stabilisers and the
/// attention in its quadratic form `out_m = Σ_n A_mn v_n / Σ_n A_mn`, `A_mn = φ(q_m)·φ(k_n)`
/// (an independent derivation from the kernels' linear-time sums).
pub mod reference {
    use crate::ops::rope;

    /// `φ(x)_i = exp(w_i·x' − |x'|²/2) / √m`, `x' = x·d^(−1/4)`, for every d-vector of `x`;
    /// `projection` is `[m, d]`.
    pub fn features(x: &[f64], projection: &[f64], d: usize) -> Vec<f64> {
        let m = projection.len() / d;
        let c = (d as f64).powf(-0.25);
        x.chunks(d)
            .flat_map(|row| {
                let xs: Vec<f64> = row.iter().map(|v| v * c).collect();
                let half_sq = xs.iter().map(|v| v * v).sum::<f64>() / 2.0;
                projection
                    .chunks(d)
                    .map(|w| {
                        let dot: f64 = w.iter().zip(&xs).map(|(a, b)| a * b).sum();
                        (dot - half_sq).exp() / (m as f64).sqrt()
                    })
                    .collect::<Vec<f64>>()
            })
            .collect()
    }

    /// One Performer attention for the reference, `[B, H, T, d]` tensors.
    pub struct Problem<'a> {
        /// Queries.
        pub q: &'a [f64],
        /// Keys.
        pub k: &'a [f64],
        /// Values, `[B, H, T, dv]`.
        pub v: &'a [f64],
        /// The projection, `[m, d]`.
        pub projection: &'a [f64],
        /// `(batch, heads, seq, d, dv)`.
        pub dims: (usize, usize, usize, usize, usize),
        /// Position t attends to positions up to t only.
        pub causal: bool,
        /// RoPE on q and k before the feature map.
        pub rope: bool,
        /// `[B, T]` key weights (1 token, 0 padding).
        pub mask: Option<&'a [f64]>,
    }

    /// `(out, dq, dk, dv)` for the gradient `grad_out` of the output.
    pub fn forward_backward(
        p: &Problem<'_>,
        grad_out: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (bsz, heads, t_len, d, dv) = p.dims;
        let m = p.projection.len() / d;
        let c = (d as f64).powf(-0.25);
        let rot = |x: &[f64], sign: f64| {
            if p.rope {
                rope::reference::rotate(x, d, |i| i % t_len, sign)
            } else {
                x.to_vec()
            }
        };
        let (qr, kr) = (rot(p.q, 1.0), rot(p.k, 1.0));
        let (fq, fk) = (
            features(&qr, p.projection, d),
            features(&kr, p.projection, d),
        );
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut out = vec![0.0; p.v.len()];
        let (mut dfq, mut dfk) = (vec![0.0; fq.len()], vec![0.0; fk.len()]);
        let mut dv_out = vec![0.0; p.v.len()];
        for bh in 0..bsz * heads {
            let b = bh / heads;
            // Token i's row of a [B, H, T, width] array.
            let at =
                |width: usize, i: usize| (bh * t_len + i) * width..(bh * t_len + i + 1) * width;
            let w = |n: usize| p.mask.map_or(1.0, |mk| mk[b * t_len + n]);
            for i in 0..t_len {
                let keys: Vec<usize> = (0..t_len)
                    .filter(|&n| (!p.causal || n <= i) && w(n) != 0.0)
                    .collect();
                let a: Vec<f64> = keys
                    .iter()
                    .map(|&n| w(n) * dot(&fq[at(m, i)], &fk[at(m, n)]))
                    .collect();
                let den: f64 = a.iter().sum();
                if den == 0.0 {
                    continue; // no key: out 0, as the kernels' EPS makes it
                }
                let g = &grad_out[at(dv, i)];
                let mut o = vec![0.0; dv];
                for (&n, &amn) in keys.iter().zip(&a) {
                    for (oe, ve) in o.iter_mut().zip(&p.v[at(dv, n)]) {
                        *oe += amn / den * ve;
                    }
                }
                out[at(dv, i)].copy_from_slice(&o);
                let g_out = dot(g, &o);
                for (&n, &amn) in keys.iter().zip(&a) {
                    // d out_i / d A_in = (v_n − out_i) / den
                    let da = (dot(g, &p.v[at(dv, n)]) - g_out) / den;
                    let (qi, kn) = (at(m, i), at(m, n));
                    for j in 0..m {
                        dfq[qi.start + j] += da * w(n) * fk[kn.start + j];
                        dfk[kn.start + j] += da * w(n) * fq[qi.start + j];
                    }
                    for (e, ge) in g.iter().enumerate() {
                        dv_out[at(dv, n).start + e] += amn / den * ge;
                    }
                }
            }
        }
        // Through φ: dx' = Σ_i dφ_i φ_i (w_i − x'), dx = d^(−1/4) dx', then RoPE's inverse.
        let through = |x: &[f64], f: &[f64], df: &[f64]| -> Vec<f64> {
            let mut dx = vec![0.0; x.len()];
            for (r, xr) in x.chunks(d).enumerate() {
                for j in 0..m {
                    let gp = df[r * m + j] * f[r * m + j];
                    for l in 0..d {
                        dx[r * d + l] += c * gp * (p.projection[j * d + l] - c * xr[l]);
                    }
                }
            }
            rot(&dx, -1.0)
        };
        (
            out,
            through(&qr, &fq, &dfq),
            through(&kr, &fk, &dfk),
            dv_out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    /// `[B, T]` key weights: the last `pad` positions of sequence 1 are padding.
    fn key_mask(b: usize, t: usize, pad: usize) -> Vec<f32> {
        (0..b * t)
            .map(|i| {
                if i / t == 1 && i % t >= t.saturating_sub(pad) {
                    0.0
                } else {
                    1.0
                }
            })
            .collect()
    }

    struct Run {
        out: Vec<f32>,
        dq: Vec<f32>,
        dk: Vec<f32>,
        dv: Vec<f32>,
    }

    /// Forward and backward on the GPU, every output, saved tensor and scratch poisoned
    /// with NaN first.
    fn run_gpu(
        ctx: &Context,
        [q, k, v, g]: [&Tensor; 4],
        layout: HeadLayout,
        projection: &Tensor,
        opts: &PerformerOptions<'_>,
    ) -> Run {
        let s = setup("test", q, k, v, layout, projection, opts).unwrap();
        let saved = PerformerSaved::new(ctx, &s, opts).unwrap();
        let scratch = PerformerScratch::new(ctx, &s, opts).unwrap();
        let mut all = vec![
            &saved.q_features,
            &saved.k_features,
            &saved.key_rows,
            &saved.key_max,
            &scratch.dq_features,
            &scratch.dk_features,
        ];
        all.extend(saved.q_rot.iter().chain(&saved.k_rot));
        all.extend(scratch.dq_rot.iter().chain(&scratch.dk_rot));
        all.push(&scratch.states);
        match &saved.linear {
            LinearSaved::NonCausal(s) => all.extend([&s.values, &s.state, &s.rows]),
            LinearSaved::Causal(c) => all.extend([&c.features, &c.states, &c.tokens]),
        }
        for t in all {
            crate::ops::elementwise::fill(ctx, t, f32::NAN).unwrap();
        }
        let o = poisoned(ctx, v.shape());
        let (dq, dk, dv) = (
            poisoned(ctx, q.shape()),
            poisoned(ctx, k.shape()),
            poisoned(ctx, v.shape()),
        );
        ctx.run(&plan_forward(ctx, q, k, v, layout, projection, opts, &saved, &o).unwrap())
            .unwrap();
        ctx.run(
            &plan_backward(
                ctx, q, k, v, layout, projection, opts, &saved, &o, g, &scratch, &dq, &dk, &dv,
            )
            .unwrap(),
        )
        .unwrap();
        Run {
            out: download(ctx, &o),
            dq: download(ctx, &dq),
            dk: download(ctx, &dk),
            dv: download(ctx, &dv),
        }
    }

    /// Causal and not, RoPE and padding, both layouts, lengths 1, 7, 33, 129 (the
    /// non-causal sums in two chunks), feature counts below and above the head dimension
    /// and past 128 (the linear kernels' widest variant), values wider than the keys: the
    /// GPU against the f64 reference, which has no stabilisers.
    #[test]
    fn matches_the_f64_reference() {
        let ctx = &ctx();
        let mut rng = rng(61);
        let mut worst = [0.0f64; 4];
        let cases = [
            (1, 1, 1, 4, 4, 8, HeadLayout::Bhtd),
            (2, 3, 7, 6, 6, 5, HeadLayout::Bthd),
            (2, 2, 33, 8, 8, 40, HeadLayout::Bhtd),
            (1, 2, 129, 16, 16, 64, HeadLayout::Bthd),
            (2, 1, 20, 8, 12, 200, HeadLayout::Bhtd),
        ];
        for (n, &(b, h, t, d, dv, m, layout)) in cases.iter().enumerate() {
            let (base, basev) = (
                Heads::new(b, h, t, d, HeadLayout::Bhtd),
                Heads::new(b, h, t, dv, HeadLayout::Bhtd),
            );
            let (shape, vshape) = (base.with_dim(d), basev);
            let (hq, hv) = (Heads { layout, ..shape }, Heads { layout, ..vshape });
            let data: Vec<Vec<f32>> = [d, d, dv, dv]
                .iter()
                .map(|&w| randn(&mut rng, b * h * t * w))
                .collect();
            let ts: Vec<Tensor> = data
                .iter()
                .zip([hq, hq, hv, hv])
                .zip([base, base, basev, basev])
                .map(|((x, to), from)| upload(ctx, &from.relayout(x, layout), &to.shape()))
                .collect();
            let proj = draw_projection(m, d, n as u64);
            let tproj = upload(ctx, &proj, &[m, d]);
            let mask = key_mask(b, t, 3.min(t - 1));
            let tmask = upload(ctx, &mask, &[b, t]);
            let table = rope::table(ctx, t, d).unwrap();
            for (causal, use_rope, masked) in [
                (false, false, false),
                (true, true, false),
                (false, true, true),
                (true, false, true),
            ] {
                let opts = PerformerOptions {
                    causal,
                    rope: use_rope.then_some(&table),
                    key_mask: masked.then_some(&tmask),
                };
                let r = run_gpu(ctx, [&ts[0], &ts[1], &ts[2], &ts[3]], layout, &tproj, &opts);
                let m64 = to_f64(&mask);
                let problem = reference::Problem {
                    q: &to_f64(&data[0]),
                    k: &to_f64(&data[1]),
                    v: &to_f64(&data[2]),
                    projection: &to_f64(&proj),
                    dims: (b, h, t, d, dv),
                    causal,
                    rope: use_rope,
                    mask: masked.then_some(&m64[..]),
                };
                let (wo, wq, wk, wv) = reference::forward_backward(&problem, &to_f64(&data[3]));
                let what = format!(
                    "performer [{b},{h},{t},{d}/{dv}] m={m} {layout:?} causal={causal} \
                     rope={use_rope} mask={masked}"
                );
                for (name, ours, want, heads) in [
                    ("out", &r.out, &wo, hv),
                    ("dq", &r.dq, &wq, hq),
                    ("dk", &r.dk, &wk, hq),
                    ("dv", &r.dv, &wv, hv),
                ] {
                    let ours = heads.relayout(ours, HeadLayout::Bhtd);
                    assert!(ours.iter().all(|x| x.is_finite()), "{what} {name}: NaN");
                    if t == 1 && (name == "dq" || name == "dk") {
                        // One key: out = v whatever q and k are; their gradients are 0 up
                        // to rounding.
                        let big = ours.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                        assert!(big < 1e-5, "{what} {name}: {big}");
                        continue;
                    }
                    let tol = if name == "out" { 1e-5 } else { 1e-4 };
                    assert_close(&format!("{what} {name}"), &ours, want, tol);
                    let i = ["out", "dq", "dk", "dv"]
                        .iter()
                        .position(|n| *n == name)
                        .unwrap();
                    worst[i] = worst[i].max(crate::check::rel_l2(&ours, want));
                }
            }
        }
        eprintln!(
            "performer vs f64 reference, worst relative L2: out {:.1e}, dq {:.1e}, dk {:.1e}, \
             dv {:.1e}",
            worst[0], worst[1], worst[2], worst[3]
        );
    }

    /// Queries and keys so long that exp(−|x'|²/2) underflows f32 (|x'|²/2 near 90): the
    /// stabilisers keep the features in range, and since they cancel the result is still
    /// the f64 reference's, which needs none. Causal, the keys are shorter (|k'|²/2 near
    /// 13): their stabiliser is the largest exponent of the whole sequence, so where keys'
    /// exponents spread over more than f32's range the first positions, which see only a
    /// few small keys, lose theirs (see the module documentation).
    #[test]
    fn long_queries_and_keys_are_stabilised() {
        let ctx = &ctx();
        let mut rng = rng(64);
        let (b, h, t, d, m) = (2, 2, 9, 8, 24);
        let n = b * h * t * d;
        let shape = [b, h, t, d];
        let scaled = |x: &[f32], s: f32| x.iter().map(|v| s * v).collect::<Vec<f32>>();
        let (q, k) = (randn(&mut rng, n), randn(&mut rng, n));
        let (v, g) = (randn(&mut rng, n), randn(&mut rng, n));
        let proj = draw_projection(m, d, 7);
        let tproj = upload(ctx, &proj, &[m, d]);
        let mask = key_mask(b, t, 2);
        let tmask = upload(ctx, &mask, &[b, t]);
        let m64 = to_f64(&mask);
        for (causal, key_scale) in [(false, 8.0), (true, 3.0)] {
            let data = [scaled(&q, 8.0), scaled(&k, key_scale), v.clone(), g.clone()];
            let ts: Vec<Tensor> = data.iter().map(|x| upload(ctx, x, &shape)).collect();
            let opts = PerformerOptions {
                causal,
                key_mask: Some(&tmask),
                ..Default::default()
            };
            let r = run_gpu(
                ctx,
                [&ts[0], &ts[1], &ts[2], &ts[3]],
                HeadLayout::Bhtd,
                &tproj,
                &opts,
            );
            let problem = reference::Problem {
                q: &to_f64(&data[0]),
                k: &to_f64(&data[1]),
                v: &to_f64(&data[2]),
                projection: &to_f64(&proj),
                dims: (b, h, t, d, d),
                causal,
                rope: false,
                mask: Some(&m64),
            };
            let (wo, wq, wk, wv) = reference::forward_backward(&problem, &to_f64(&data[3]));
            for (name, ours, want) in [
                ("out", &r.out, &wo),
                ("dq", &r.dq, &wq),
                ("dk", &r.dk, &wk),
                ("dv", &r.dv, &wv),
            ] {
                assert_close(
                    &format!("long inputs causal={causal} {name}"),
                    ours,
                    want,
                    1e-4,
                );
            }
        }
    }

    /// Keeps the reference honest: d(Σ out·g)/d(q, k, v) by central differences.
    #[test]
    fn reference_gradients_match_finite_differences() {
        let mut rng = rng(62);
        let (b, h, t, d, dv, m) = (2, 1, 5, 4, 3, 6);
        let q = to_f64(&randn(&mut rng, b * h * t * d));
        let k = to_f64(&randn(&mut rng, b * h * t * d));
        let v = to_f64(&randn(&mut rng, b * h * t * dv));
        let g = to_f64(&randn(&mut rng, b * h * t * dv));
        let proj = to_f64(&draw_projection(m, d, 3));
        let mask = to_f64(&key_mask(b, t, 2));
        for (causal, use_rope, masked) in [
            (false, false, false),
            (true, true, true),
            (false, true, true),
        ] {
            let run = |q: &[f64], k: &[f64], v: &[f64]| {
                let p = reference::Problem {
                    q,
                    k,
                    v,
                    projection: &proj,
                    dims: (b, h, t, d, dv),
                    causal,
                    rope: use_rope,
                    mask: masked.then_some(&mask[..]),
                };
                reference::forward_backward(&p, &g)
            };
            let (_, dq, dk, dvv) = run(&q, &k, &v);
            let objective = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
                run(q, k, v).0.iter().zip(&g).map(|(o, g)| o * g).sum()
            };
            crate::testing::assert_qkv_gradients_match_finite_differences(
                &format!("causal={causal} rope={use_rope} "),
                [&q, &k, &v],
                [&dq, &dk, &dvv],
                objective,
            );
        }
    }

    /// φ(q)·φ(k) estimates exp(q·k/√d), so with many features the attention approaches
    /// softmax attention's (the exact f64 function, scale 1/√d): a guard on the scaling
    /// conventions (d^(−1/4), |x'|²/2, the projection's row lengths), which a wrong one
    /// breaks by far more than the tolerance (it converges to another function, as far from
    /// softmax attention as averaging every value is). Statistical, with fixed seeds: the
    /// error falls as 1/√m (about 0.35, 0.11, 0.030, 0.007 at m = 16, 256, 4K, 64K for
    /// these inputs, over 5 draws: `tools/performer_orthogonal_bias.py`, scale 0.45).
    #[test]
    fn many_features_approach_softmax_attention() {
        let ctx = &ctx();
        let mut rng = rng(63);
        let (b, h, t, d) = (1, 2, 24, 16);
        let n = b * h * t * d;
        // Logits q·k/√d of spread about 0.8, so the attention is far from uniform.
        let q: Vec<f32> = randn(&mut rng, n).iter().map(|x| 0.45 * x).collect();
        let k: Vec<f32> = randn(&mut rng, n).iter().map(|x| 0.45 * x).collect();
        let v = randn(&mut rng, n);
        let zeros = vec![0.0; n];
        let (exact, ..) = crate::ops::attention::reference::forward_backward(
            &to_f64(&q),
            &to_f64(&k),
            &to_f64(&v),
            &zeros,
            (b, h, t, d),
            false,
            true,
            None,
        );
        // Every query averaging every value: where a wrong convention lands.
        let mut uniform = vec![0.0; n];
        for bh in 0..b * h {
            for l in 0..d {
                let at = |i: usize| (bh * t + i) * d + l;
                let mean = (0..t).map(|j| v[at(j)] as f64).sum::<f64>() / t as f64;
                (0..t).for_each(|i| uniform[at(i)] = mean);
            }
        }
        let far = crate::check::rel_l2(&uniform, &exact);
        let reference_out = |proj: &[f32]| {
            let p = reference::Problem {
                q: &to_f64(&q),
                k: &to_f64(&k),
                v: &to_f64(&v),
                projection: &to_f64(proj),
                dims: (b, h, t, d, d),
                causal: false,
                rope: true,
                mask: None,
            };
            reference::forward_backward(&p, &zeros).0
        };
        let error = |m: usize, seed: u64| {
            crate::check::rel_l2(&reference_out(&draw_projection(m, d, seed)), &exact)
        };
        let (few, many) = (error(16, 5), error(16384, 5));
        // The kernels with 256 features, which must be the reference's estimate.
        let shape = [b, h, t, d];
        let ts: Vec<Tensor> = [&q, &k, &v, &vec![0.0; n]]
            .iter()
            .map(|x| upload(ctx, x, &shape))
            .collect();
        let proj = draw_projection(MAX_FEATURES, d, 6);
        let tproj = upload(ctx, &proj, &[MAX_FEATURES, d]);
        let table = rope::table(ctx, t, d).unwrap();
        let opts = PerformerOptions {
            rope: Some(&table),
            ..Default::default()
        };
        let r = run_gpu(
            ctx,
            [&ts[0], &ts[1], &ts[2], &ts[3]],
            HeadLayout::Bhtd,
            &tproj,
            &opts,
        );
        assert_close(
            "m=256 against its reference",
            &r.out,
            &reference_out(&proj),
            1e-5,
        );
        let gpu = crate::check::rel_l2(&r.out, &exact);
        eprintln!(
            "performer vs softmax attention: averaging {far:.3}, m=16 {few:.3}, \
             m=256 (GPU) {gpu:.3}, m=16384 {many:.4}"
        );
        assert!(
            many < 0.05 && many < few / 4.0 && many < far / 3.0,
            "m=16384: {many}, m=16: {few}, averaging {far}"
        );
        assert!(gpu < far, "m=256: {gpu}, averaging {far}");
    }

    /// Rows within a block of `d` are orthogonal, their lengths vary as a Gaussian vector's
    /// (mean square `d`), and the draw is a function of the seed.
    #[test]
    fn projections_are_orthogonal_gaussian_blocks() {
        let (m, d) = (200, 8);
        let w = draw_projection(m, d, 11);
        assert_eq!(w.len(), m * d);
        assert_eq!(w, draw_projection(m, d, 11));
        assert_ne!(w, draw_projection(m, d, 12));
        let row = |i: usize| &w[i * d..(i + 1) * d];
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        for blk in 0..m.div_ceil(d) {
            for i in blk * d..((blk + 1) * d).min(m) {
                for j in blk * d..i {
                    let cos =
                        dot(row(i), row(j)) / (dot(row(i), row(i)) * dot(row(j), row(j))).sqrt();
                    assert!(cos.abs() < 1e-5, "rows {i} and {j}: cosine {cos}");
                }
            }
        }
        let squares: Vec<f64> = (0..m).map(|i| dot(row(i), row(i))).collect();
        let mean = squares.iter().sum::<f64>() / m as f64;
        let spread = squares.iter().cloned().fold(f64::INFINITY, f64::min)
            / squares.iter().cloned().fold(0.0, f64::max);
        // Mean of a chi-square with 8 degrees of freedom over 200 draws: 8 ± 0.3.
        assert!((mean - d as f64).abs() < 1.5, "mean square length {mean}");
        assert!(spread < 0.2, "lengths barely vary: min/max {spread}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ctx = &ctx();
        let q = upload(ctx, &[0.5; 2 * 3 * 4], &[1, 2, 3, 4]);
        let proj = upload(ctx, &draw_projection(8, 4, 1), &[8, 4]);
        let opts = PerformerOptions::default();
        let layout = HeadLayout::Bhtd;
        assert!(forward(ctx, &q, &q, &q, layout, &proj, &opts).is_ok());
        // f16 is refused, naming why.
        if ctx.capabilities().shader_f16 {
            let h = upload_as(ctx, &[0.5; 24], &[1, 2, 3, 4], DType::F16);
            let e = forward(ctx, &h, &h, &h, layout, &proj, &opts).unwrap_err();
            assert!(e.to_string().contains("f32 only"), "{e}");
        }
        // The projection's width is the head dimension, its rows at most MAX_FEATURES.
        let narrow = upload(ctx, &[0.0; 8 * 3], &[8, 3]);
        assert!(matches!(
            forward(ctx, &q, &q, &q, layout, &narrow, &opts),
            Err(Error::Shape { .. })
        ));
        let many = upload(
            ctx,
            &vec![0.0; (MAX_FEATURES + 1) * 4],
            &[MAX_FEATURES + 1, 4],
        );
        let e = forward(ctx, &q, &q, &q, layout, &many, &opts).unwrap_err();
        assert!(e.to_string().contains("random features"), "{e}");
        // v of another length, a mask of the wrong shape.
        let v = upload(ctx, &[0.0; 2 * 2 * 4], &[1, 2, 2, 4]);
        assert!(forward(ctx, &q, &q, &v, layout, &proj, &opts).is_err());
        let mask = upload(ctx, &[1.0; 2], &[1, 2]);
        let masked = PerformerOptions {
            key_mask: Some(&mask),
            ..Default::default()
        };
        assert!(forward(ctx, &q, &q, &q, layout, &proj, &masked).is_err());
    }
}
