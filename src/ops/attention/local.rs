//! Sliding-window ("local") softmax attention with global tokens, forward and backward, in
//! time and memory that grow as `T · (2w + 1 + g)`, never `T²` (Longformer's pattern: a
//! window of `w` positions on each side, and `g` global tokens at the start that see and
//! are seen by every position).
//!
//! Query `i` sees key `j` when `|i − j| ≤ w`, or `i < g`, or `j < g`; with `causal`, when
//! `j ≤ i` and (`i − j ≤ w` or `j < g`): global tokens are then only seen, and causality
//! holds. Otherwise it is [`crate::ops::attention`]'s function (RoPE, additive padding mask,
//! `rotary_value`, scale): softmax attention with the equivalent additive `[T, T]` mask,
//! which the tests hold it to. The forward pass keeps each query's running maximum and sum;
//! the backward pass recomputes the probabilities from them. What it saves and the backward
//! pass's scratch are fused attention's ([`FlashSaved`], [`FlashScratch`]).
//!
//! The kernels give each query (forward, dq) or key (dk, dv) to one invocation that keeps
//! its row in registers and walks its neighbours: no workgroup memory and no barrier, which
//! suits a CPU adapter (where a barrier is a thread switch) and is a plain gather on a GPU.
//! On a CPU adapter an invocation owns four consecutive rows and walks the union of their
//! neighbours, so that each neighbour's loads (there a loop over the SIMD lanes each) serve
//! four rows ([`RowsPerInvocation`]). Where the head dimension and strides are multiples of 4
//! the tensors are read as vec4s. With a window over the whole sequence these are softmax
//! attention's kernels on CPU adapters ([`crate::ops::attention::flash::FlashKernels`]).
//! q, k, v, the output and the gradients are f32 or f16 (one type for all; f32 inside).

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{KernelFamily, ParamBlock, Variant};
use crate::ops::attention::flash::{FlashSaved, FlashScratch};
use crate::ops::attention::heads::{qkv_heads, HeadLayout, Heads};
use crate::ops::attention::AttentionOptions;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "local_attention",
    source: include_str!("../../../shaders/local_attention.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants,
    params: param_blocks,
};

/// Head-dimension variants: the largest head dimension each keeps in registers.
pub const MAX_DIMS: [usize; 4] = [16, 32, 64, 128];

/// The `ACCESS` block of the vec4 variant.
const VEC4_ACCESS: &str = include_str!("../../../shaders/lib/local_attention_vec4.wgsl");

/// The `ROWS` block of the four-rows variant.
const FOUR_ROWS: &str = include_str!("../../../shaders/lib/local_attention_four_rows.wgsl");

/// Invocations per workgroup (the shader's `WG`).
const WORKGROUP: u64 = 64;

/// How many rows (queries; keys in the dk/dv pass) one invocation of the kernels owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RowsPerInvocation {
    /// By the adapter: [`RowsPerInvocation::Four`] on a CPU adapter (llvmpipe, SwiftShader,
    /// WARP), where every load from a buffer is a loop over the SIMD lanes and so the loads
    /// per row are what costs; [`RowsPerInvocation::One`] on a GPU, where four rows' registers
    /// (8 floats per feature) would spill at wide heads.
    #[default]
    Auto,
    /// One row per invocation.
    One,
    /// Four consecutive rows per invocation, each neighbour's loads shared by the four.
    Four,
}

#[derive(Default)]
struct LocalState {
    rows: std::sync::Mutex<RowsPerInvocation>,
}

/// Sets how this context's local (and, on CPU adapters, fused) attention kernels split the
/// rows (default [`RowsPerInvocation::Auto`]). Plans made before keep theirs.
pub fn set_rows_per_invocation(ctx: &Context, rows: RowsPerInvocation) {
    *ctx.op_state::<LocalState>().rows.lock().unwrap() = rows;
}

/// How this context's local attention kernels split the rows.
pub fn rows_per_invocation(ctx: &Context) -> RowsPerInvocation {
    *ctx.op_state::<LocalState>().rows.lock().unwrap()
}

/// Which keys each query sees besides itself: the window and the global tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalWindow {
    /// `w`: query `i` sees keys `i − w ..= i + w` (causal: `i − w ..= i`).
    pub window: usize,
    /// `g`: the first `g` positions see every key and are seen by every query (causal: are
    /// seen by every later query).
    pub globals: usize,
}

impl LocalWindow {
    /// Whether query `i` sees key `j` (`causal` as the attention's).
    pub fn sees(&self, i: usize, j: usize, causal: bool) -> bool {
        if causal {
            j <= i && (i - j <= self.window || j < self.globals)
        } else {
            i.abs_diff(j) <= self.window || i < self.globals || j < self.globals
        }
    }

    /// Keys a query outside the global tokens sees at most (the work per row): `2w + 1 + g`,
    /// capped at `seq` (a global query, not causal, sees all `seq`).
    pub fn keys_per_query(&self, seq: usize) -> usize {
        (2 * self.window.min(seq) + 1 + self.globals.min(seq)).min(seq)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    seq: u32,
    dim: u32,
    sb: u32,
    sh: u32,
    st: u32,
    causal: u32,
    has_mask: u32,
    scale: f32,
    window: u32,
    globals: u32,
}

/// The form a launch is compiled in: registers for heads up to `max_d` wide, and vec4 or
/// scalar access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Form {
    max_d: usize,
    vec4: bool,
    rows: usize,
}

impl Form {
    fn variant(self) -> Variant {
        let mut v = Variant::default().size("MAX_D", self.max_d as u32);
        if self.vec4 {
            v = v.block("ACCESS", VEC4_ACCESS);
        }
        if self.rows == 4 {
            v = v.block("ROWS", FOUR_ROWS);
        }
        v
    }
}

/// Every variant: each head-dimension size, with scalar and with vec4 access.
fn variants() -> Vec<Variant> {
    MAX_DIMS
        .iter()
        .flat_map(|&max_d| {
            [false, true]
                .into_iter()
                .flat_map(move |vec4| [1, 4].map(move |rows| Form { max_d, vec4, rows }.variant()))
        })
        .collect()
}

/// Checks shapes and the window, and picks the form.
fn setup(
    ctx: &Context,
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
) -> Result<(Heads, Form)> {
    let (h, _) = qkv_heads(op, q, k, v, layout)?;
    v.expect_shape(op, "v (local attention needs v shaped like q)", q.shape())?;
    let max_d = *MAX_DIMS.iter().find(|&&m| h.dim <= m).ok_or_else(|| {
        Error::invalid(format!(
            "{op}: head dimension {} is over the {} this kernel supports",
            h.dim, MAX_DIMS[3]
        ))
    })?;
    if h.batch * h.heads * h.seq > u32::MAX as usize || q.numel() > u32::MAX as usize {
        return Err(Error::invalid(format!(
            "{op}: {:?} is too large for 32-bit indices",
            q.shape()
        )));
    }
    if let Some(mask) = opts.mask {
        mask.expect_dtype(op, "mask", DType::F32)?;
        mask.expect_shape(op, "mask", &[h.batch, h.seq])?;
    }
    let vec4 = h.dim % 4 == 0 && h.strides().iter().all(|s| s % 4 == 0);
    let rows = match rows_per_invocation(ctx) {
        RowsPerInvocation::Auto if ctx.capabilities().is_cpu() => 4,
        RowsPerInvocation::Auto | RowsPerInvocation::One => 1,
        RowsPerInvocation::Four => 4,
    };
    Ok((h, Form { max_d, vec4, rows }))
}

fn builder<'a>(
    ctx: &'a Context,
    entry: &'static str,
    dtype: DType,
    h: &Heads,
    form: Form,
    opts: &AttentionOptions<'_>,
    win: LocalWindow,
) -> DispatchBuilder<'a> {
    let [sb, sh, st] = h.strides();
    let u = |x: usize| x as u32;
    DispatchBuilder::family(ctx, &FAMILY, entry)
        .variant(form.variant())
        .element_type("T", dtype)
        .params(&Params {
            batch: u(h.batch),
            heads: u(h.heads),
            seq: u(h.seq),
            dim: u(h.dim),
            sb: u(sb),
            sh: u(sh),
            st: u(st),
            causal: opts.causal as u32,
            has_mask: opts.mask.is_some() as u32,
            scale: opts.scale.unwrap_or(1.0 / (h.dim as f32).sqrt()),
            window: u(win.window.min(h.seq)),
            globals: u(win.globals.min(h.seq)),
        })
        .serial_steps((win.keys_per_query(h.seq) + form.rows - 1).min(h.seq) as u64)
}

fn rows(ctx: &Context, h: &Heads, form: Form) -> Result<[u32; 3]> {
    let invocations = h.batch * h.heads * h.seq.div_ceil(form.rows);
    ctx.grid_1d((invocations as u64).div_ceil(WORKGROUP))
}

/// Multiply-adds of one pass over every (query, key) pair the window allows, times `per`.
fn pair_flops(h: &Heads, win: LocalWindow, per: usize) -> u64 {
    (per * h.batch * h.heads * h.seq * win.keys_per_query(h.seq) * h.dim) as u64
}

/// `out` from q, k, v; fills `saved` for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn plan_forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
    win: LocalWindow,
    saved: &FlashSaved,
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "local attention";
    let (h, form) = setup(ctx, op, q, k, v, layout, opts)?;
    out.expect_shape(op, "out", q.shape())?;
    out.expect_dtype(op, "out", q.dtype())?;
    saved
        .stats
        .expect_shape(op, "stats", &[h.batch, h.heads, h.seq, 3])?;
    let mut plan = Vec::new();
    let [qr, kr, vr] = saved.rotate_inputs(ctx, op, opts, layout, [q, k, v], &mut plan)?;
    plan.push(
        builder(ctx, "forward", q.dtype(), &h, form, opts, win)
            .read("q", &qr)
            .read("k", &kr)
            .read("v", &vr)
            .read_opt("mask", opts.mask)
            .write("stats", &saved.stats)
            .write("out", out)
            .flops(pair_flops(&h, win, 4))
            .build(rows(ctx, &h, form)?)?,
    );
    Ok(plan)
}

/// Gradients of q, k and v from `grad_out`, the forward output and `saved`.
#[allow(clippy::too_many_arguments)]
pub fn plan_backward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
    win: LocalWindow,
    saved: &FlashSaved,
    out: &Tensor,
    grad_out: &Tensor,
    scratch: &FlashScratch,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "local attention backward";
    let (h, form) = setup(ctx, op, q, k, v, layout, opts)?;
    for (what, t) in [
        ("out", out),
        ("grad_out", grad_out),
        ("dq", dq),
        ("dk", dk),
        ("dv", dv),
    ] {
        t.expect_shape(op, what, q.shape())?;
        t.expect_dtype(op, what, q.dtype())?;
    }
    saved
        .stats
        .expect_shape(op, "stats", &[h.batch, h.heads, h.seq, 3])?;
    let [qr, kr, vr] = saved.rotated_inputs(op, opts, [q, k, v])?;
    let targets = scratch.targets(op, opts, [dq, dk, dv])?;
    let [dqr, dkr, dvr] = &targets;
    let mut plan = vec![
        builder(ctx, "bwd_dq", q.dtype(), &h, form, opts, win)
            .read("q", &qr)
            .read("k", &kr)
            .read("v", &vr)
            .read_opt("mask", opts.mask)
            .read("out_saved", out)
            .read("grad_out", grad_out)
            .write("stats", &saved.stats)
            .write("grad_q", dqr)
            .flops(pair_flops(&h, win, 6))
            .build(rows(ctx, &h, form)?)?,
        builder(ctx, "bwd_dkdv", q.dtype(), &h, form, opts, win)
            .read("q", &qr)
            .read("k", &kr)
            .read("v", &vr)
            .read_opt("mask", opts.mask)
            .read("grad_out", grad_out)
            .write("stats", &saved.stats)
            .write("grad_k", dkr)
            .write("grad_v", dvr)
            .flops(pair_flops(&h, win, 8))
            .build(rows(ctx, &h, form)?)?,
    ];
    plan.extend(FlashScratch::plan_rotate_back(
        ctx,
        opts,
        layout,
        &targets,
        [dq, dk, dv],
    )?);
    Ok(plan)
}

/// Forward pass in new tensors: `(out, saved)`.
pub fn forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
    win: LocalWindow,
) -> Result<(Tensor, FlashSaved)> {
    let saved = FlashSaved::new(ctx, q, layout, opts)?;
    let out = Tensor::zeros(ctx, q.shape(), q.dtype())?;
    ctx.submit(&plan_forward(
        ctx, q, k, v, layout, opts, win, &saved, &out,
    )?)?;
    Ok((out, saved))
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
            sb,
            sh,
            st,
            causal,
            has_mask,
            scale,
            window,
            globals
        }),
    }]
}

/// CPU reference in f64 on `[B, H, T, d]` arrays.
pub mod reference {
    use super::LocalWindow;
    use crate::ops::rope;

    /// Local attention and its gradients for `grad_out`, `[B, H, T, d]` each:
    /// `(out, dq, dk, dv)`. `mask` is the additive `[B, T]` padding mask; scale `1/√d`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        grad_out: &[f64],
        (bsz, heads, t, d): (usize, usize, usize, usize),
        causal: bool,
        use_rope: bool,
        mask: Option<&[f64]>,
        win: LocalWindow,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let scale = 1.0 / (d as f64).sqrt();
        let rot = |x: &[f64], sign: f64| {
            if use_rope {
                rope::reference::rotate(x, d, |i| i % t, sign)
            } else {
                x.to_vec()
            }
        };
        let (qr, kr) = (rot(q, 1.0), rot(k, 1.0));
        let mut out = vec![0.0; v.len()];
        let (mut dqr, mut dkr, mut dv) =
            (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for bh in 0..bsz * heads {
            let o = bh * t * d;
            let row = |x: &[f64], i: usize| x[o + i * d..o + (i + 1) * d].to_vec();
            for i in 0..t {
                let keys: Vec<usize> = (0..t).filter(|&j| win.sees(i, j, causal)).collect();
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        scale * dot(&row(&qr, i), &row(&kr, j))
                            + mask.map_or(0.0, |m| m[(bh / heads) * t + j])
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
                let g = row(grad_out, i);
                let dp: Vec<f64> = keys.iter().map(|&j| dot(&g, &row(v, j))).collect();
                let dd: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for (n, &j) in keys.iter().enumerate() {
                    let ds = p[n] * (dp[n] - dd) * scale;
                    for l in 0..d {
                        out[o + i * d + l] += p[n] * v[o + j * d + l];
                        dv[o + j * d + l] += p[n] * g[l];
                        dqr[o + i * d + l] += ds * kr[o + j * d + l];
                        dkr[o + j * d + l] += ds * qr[o + i * d + l];
                    }
                }
            }
        }
        (out, rot(&dqr, -1.0), rot(&dkr, -1.0), dv)
    }

    /// The equivalent additive `[T, T]` mask: 0 where query `i` sees key `j`, `-inf`
    /// elsewhere (what a materialised softmax attention adds to its scores).
    pub fn additive_mask(t: usize, causal: bool, win: LocalWindow) -> Vec<f64> {
        (0..t * t)
            .map(|n| {
                if win.sees(n / t, n % t, causal) {
                    0.0
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{self, reference as full};
    use crate::ops::rope;
    use crate::testing::*;

    /// `[B, T]` padding: the last `pad` positions of sequence 1.
    fn padding(b: usize, t: usize, pad: usize) -> Vec<f32> {
        (0..b * t)
            .map(|i| {
                if i / t == 1 && i % t >= t.saturating_sub(pad) {
                    f32::MIN
                } else {
                    0.0
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

    /// Forward and backward on the GPU, every output poisoned with NaN first.
    #[allow(clippy::too_many_arguments)]
    fn run_gpu(
        ctx: &Context,
        [q, k, v, g]: [&Tensor; 4],
        layout: HeadLayout,
        opts: &AttentionOptions<'_>,
        win: LocalWindow,
    ) -> Run {
        let shape = q.shape().to_vec();
        let dt = q.dtype();
        let saved = FlashSaved::new(ctx, q, layout, opts).unwrap();
        crate::ops::elementwise::fill(ctx, &saved.stats, f32::NAN).unwrap();
        let scratch = FlashScratch::new(ctx, q, opts).unwrap();
        let outs: Vec<Tensor> = (0..4).map(|_| poisoned_as(ctx, &shape, dt)).collect();
        let (o, dq, dk, dv) = (&outs[0], &outs[1], &outs[2], &outs[3]);
        ctx.run(&plan_forward(ctx, q, k, v, layout, opts, win, &saved, o).unwrap())
            .unwrap();
        ctx.run(
            &plan_backward(
                ctx, q, k, v, layout, opts, win, &saved, o, g, &scratch, dq, dk, dv,
            )
            .unwrap(),
        )
        .unwrap();
        let get = |t: &Tensor| download_f32(ctx, t);
        Run {
            out: get(o),
            dq: get(dq),
            dk: get(dk),
            dv: get(dv),
        }
    }

    /// Both forms of the kernels, each set on the context in turn.
    const FORMS: [RowsPerInvocation; 2] = [RowsPerInvocation::One, RowsPerInvocation::Four];

    /// Windows small and past the length, no, one and three global tokens, causal and not,
    /// RoPE and padding, both layouts, odd lengths and head dimensions (scalar access)
    /// and multiples of 4 (vec4 access), one and four rows per invocation (lengths that are
    /// not multiples of 4 included): the GPU against the f64 reference.
    #[test]
    fn matches_the_f64_reference() {
        let ctx = &ctx();
        for rows in FORMS {
            set_rows_per_invocation(ctx, rows);
            check_against_the_f64_reference(ctx, rows);
        }
        set_rows_per_invocation(ctx, RowsPerInvocation::Auto);
    }

    fn check_against_the_f64_reference(ctx: &Context, rows: RowsPerInvocation) {
        let mut rng = rng(41);
        let cases = [
            (1, 1, 1, 4, HeadLayout::Bhtd),
            (2, 3, 7, 6, HeadLayout::Bthd),
            (2, 2, 33, 16, HeadLayout::Bhtd),
            (1, 2, 129, 8, HeadLayout::Bthd),
            (2, 1, 20, 40, HeadLayout::Bhtd),
        ];
        for &(b, h, t, d, layout) in &cases {
            let base = Heads::new(b, h, t, d, HeadLayout::Bhtd);
            let hd = Heads::new(b, h, t, d, layout);
            let shape = hd.shape();
            let n = b * h * t * d;
            let data: Vec<Vec<f32>> = (0..4).map(|_| randn(&mut rng, n)).collect();
            let tensors: Vec<Tensor> = data
                .iter()
                .map(|x| upload(ctx, &base.relayout(x, layout), &shape))
                .collect();
            let mask = padding(b, t, 3.min(t - 1));
            let tmask = upload(ctx, &mask, &[b, t]);
            let table = rope::table(ctx, t, d).unwrap();
            for (window, globals) in [(0, 0), (2, 1), (5, 3), (t, 0)] {
                let win = LocalWindow { window, globals };
                for (causal, use_rope, masked) in [
                    (false, false, false),
                    (true, true, false),
                    (false, true, true),
                    (true, false, true),
                ] {
                    let opts = AttentionOptions {
                        causal,
                        mask: masked.then_some(&tmask),
                        rope: use_rope.then_some(&table),
                        ..Default::default()
                    };
                    let r = run_gpu(
                        ctx,
                        [&tensors[0], &tensors[1], &tensors[2], &tensors[3]],
                        layout,
                        &opts,
                        win,
                    );
                    let m64 = to_f64(&mask);
                    let (wo, wq, wk, wv) = reference::forward_backward(
                        &to_f64(&data[0]),
                        &to_f64(&data[1]),
                        &to_f64(&data[2]),
                        &to_f64(&data[3]),
                        (b, h, t, d),
                        causal,
                        use_rope,
                        masked.then_some(&m64[..]),
                        win,
                    );
                    let what = format!(
                        "local [{b},{h},{t},{d}] {layout:?} w={window} g={globals} \
                         causal={causal} rope={use_rope} mask={masked} {rows:?}"
                    );
                    let back = |x: &[f32]| hd.relayout(x, HeadLayout::Bhtd);
                    for (name, ours, want) in [
                        ("out", &r.out, &wo),
                        ("dq", &r.dq, &wq),
                        ("dk", &r.dk, &wk),
                        ("dv", &r.dv, &wv),
                    ] {
                        let ours = back(ours);
                        assert!(ours.iter().all(|x| x.is_finite()), "{what} {name}: NaN");
                        let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                        if scale < 1e-9 {
                            // Rows of one key: dq and dk are 0 up to rounding.
                            let m = ours.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                            assert!(m < 1e-5, "{what} {name}: {m}");
                            continue;
                        }
                        let tol = if name == "out" { 1e-5 } else { 1e-4 };
                        assert_close(&format!("{what} {name}"), &ours, want, tol);
                    }
                }
            }
        }
    }

    /// The library's materialised softmax attention given the equivalent additive mask
    /// (the window's `[T, T]` pattern plus the padding, as one `[B·H·T, T]` mask of its
    /// softmax) computes what the local kernels do.
    #[test]
    fn equals_materialised_softmax_with_the_equivalent_mask() {
        let ctx = &ctx();
        for rows in FORMS {
            set_rows_per_invocation(ctx, rows);
            check_against_materialised_softmax(ctx, rows);
        }
        set_rows_per_invocation(ctx, RowsPerInvocation::Auto);
    }

    fn check_against_materialised_softmax(ctx: &Context, rows: RowsPerInvocation) {
        use crate::ops::{matmul, softmax};
        let mut rng = rng(43);
        for &(b, h, t, d, window, globals, causal) in &[
            (2, 2, 9, 8, 1, 0, false),
            (2, 1, 33, 16, 4, 3, true),
            (1, 2, 17, 6, 20, 1, false),
        ] {
            let layout = HeadLayout::Bhtd;
            let shape = [b, h, t, d];
            let n = b * h * t * d;
            let data: Vec<Vec<f32>> = (0..4).map(|_| randn(&mut rng, n)).collect();
            let ts: Vec<Tensor> = data.iter().map(|x| upload(ctx, x, &shape)).collect();
            let win = LocalWindow { window, globals };
            let pad = padding(b, t, 2);
            let tpad = upload(ctx, &pad, &[b, t]);
            let opts = AttentionOptions {
                causal,
                mask: Some(&tpad),
                ..Default::default()
            };
            let ours = run_gpu(ctx, [&ts[0], &ts[1], &ts[2], &ts[3]], layout, &opts, win);
            // The materialised path: scores, softmax with the full mask, probabilities · v,
            // and its backward, from the library's kernels. Where the window hides a key the
            // mask is f32::MIN, and a padded key it shows gets -1e30 (above it, so a row that
            // sees only padded keys stays uniform over them, as with HF's additive masks).
            let band = reference::additive_mask(t, causal, win);
            let full_mask: Vec<f32> = (0..b * h * t * t)
                .map(|n| {
                    let (bb, i, j) = (n / (h * t * t), (n / t) % t, n % t);
                    if !band[i * t + j].is_finite() {
                        f32::MIN
                    } else if pad[bb * t + j] < 0.0 {
                        -1e30
                    } else {
                        0.0
                    }
                })
                .collect();
            let tmask = upload(ctx, &full_mask, &[b * h * t, t]);
            let square = [b, h, t, t];
            let scores = Tensor::zeros(ctx, &square, DType::F32).unwrap();
            let probs = Tensor::zeros(ctx, &square, DType::F32).unwrap();
            let dprobs = Tensor::zeros(ctx, &square, DType::F32).unwrap();
            let dscores = Tensor::zeros(ctx, &square, DType::F32).unwrap();
            let outs: Vec<Tensor> = (0..4).map(|_| poisoned(ctx, &shape)).collect();
            let heads = Heads::new(b, h, t, d, layout);
            let prod = |m, n, k, a, bm, c| attention::product(&heads, m, n, k, a, bm, c);
            let hv = attention::head_view(&heads);
            let sq = attention::square_view(&heads);
            let flat = |x: &Tensor| x.reshape(&[b * h * t, t]).unwrap();
            let sm = softmax::SoftmaxOptions {
                scale: 1.0 / (d as f32).sqrt(),
                mask: Some(&tmask),
                causal: false,
            };
            let plan = vec![
                matmul::plan_strided(
                    ctx,
                    &prod(t, t, d, hv, hv.transposed(), sq),
                    &ts[0],
                    &ts[1],
                    None,
                    &scores,
                )
                .unwrap(),
                softmax::plan_forward(ctx, &flat(&scores), &sm, &flat(&probs)).unwrap(),
                matmul::plan_strided(
                    ctx,
                    &prod(t, d, t, sq, hv, hv),
                    &probs,
                    &ts[2],
                    None,
                    &outs[0],
                )
                .unwrap(),
                matmul::plan_strided(
                    ctx,
                    &prod(t, t, d, hv, hv.transposed(), sq),
                    &ts[3],
                    &ts[2],
                    None,
                    &dprobs,
                )
                .unwrap(),
                matmul::plan_strided(
                    ctx,
                    &prod(t, d, t, sq.transposed(), hv, hv),
                    &probs,
                    &ts[3],
                    None,
                    &outs[3],
                )
                .unwrap(),
                softmax::plan_backward(
                    ctx,
                    &flat(&probs),
                    &flat(&dprobs),
                    sm.scale,
                    &flat(&dscores),
                )
                .unwrap(),
                matmul::plan_strided(
                    ctx,
                    &prod(t, d, t, sq, hv, hv),
                    &dscores,
                    &ts[1],
                    None,
                    &outs[1],
                )
                .unwrap(),
                matmul::plan_strided(
                    ctx,
                    &prod(t, d, t, sq.transposed(), hv, hv),
                    &dscores,
                    &ts[0],
                    None,
                    &outs[2],
                )
                .unwrap(),
            ];
            ctx.run(&plan).unwrap();
            let what = format!(
                "local vs materialised [{b},{h},{t},{d}] w={window} g={globals} causal={causal} \
                 {rows:?}"
            );
            for (name, got, reference) in [
                ("out", &ours.out, &outs[0]),
                ("dq", &ours.dq, &outs[1]),
                ("dk", &ours.dk, &outs[2]),
                ("dv", &ours.dv, &outs[3]),
            ] {
                let want = to_f64(&download(ctx, reference));
                assert_close(&format!("{what} {name}"), got, &want, 1e-4);
            }
            // And with a window past the length and no padding, plain softmax attention.
            if window >= t {
                let plain = AttentionOptions {
                    causal,
                    ..Default::default()
                };
                let ours = run_gpu(ctx, [&ts[0], &ts[1], &ts[2], &ts[3]], layout, &plain, win);
                let (wo, ..) = full::forward_backward(
                    &to_f64(&data[0]),
                    &to_f64(&data[1]),
                    &to_f64(&data[2]),
                    &to_f64(&data[3]),
                    (b, h, t, d),
                    causal,
                    false,
                    None,
                );
                assert_close(&format!("{what} full window"), &ours.out, &wo, 1e-5);
            }
        }
    }

    /// f16 q, k, v, outputs and gradients (f32 mask and statistics) against the f64
    /// reference computed from the same f16-rounded inputs, with scalar and vec4 access.
    #[test]
    fn f16_tensors_match_the_f64_reference() {
        let ctx = &ctx();
        if !has_f16(ctx, "f16 local attention") {
            return;
        }
        for rows in FORMS {
            set_rows_per_invocation(ctx, rows);
            check_f16_against_the_f64_reference(ctx, rows);
        }
        set_rows_per_invocation(ctx, RowsPerInvocation::Auto);
    }

    fn check_f16_against_the_f64_reference(ctx: &Context, rows: RowsPerInvocation) {
        let mut rng = rng(47);
        let h16 = DType::F16;
        for (b, h, t, d) in [(1, 1, 1, 4), (2, 3, 7, 6), (2, 2, 33, 16), (1, 1, 129, 40)] {
            let shape = [b, h, t, d];
            let n = b * h * t * d;
            let data: Vec<Vec<f32>> = (0..4).map(|_| round_f16(&randn(&mut rng, n))).collect();
            let ts: Vec<Tensor> = data
                .iter()
                .map(|x| upload_as(ctx, x, &shape, h16))
                .collect();
            let mask = padding(b, t, 2.min(t - 1));
            let tmask = upload(ctx, &mask, &[b, t]);
            let table = rope::table(ctx, t, d).unwrap();
            for (causal, use_rope, masked, window, globals) in
                [(false, false, false, 3, 1), (true, true, true, 5, 2)]
            {
                let win = LocalWindow { window, globals };
                let opts = AttentionOptions {
                    causal,
                    mask: masked.then_some(&tmask),
                    rope: use_rope.then_some(&table),
                    ..Default::default()
                };
                let r = run_gpu(
                    ctx,
                    [&ts[0], &ts[1], &ts[2], &ts[3]],
                    HeadLayout::Bhtd,
                    &opts,
                    win,
                );
                let m64 = to_f64(&mask);
                let (wo, wq, wk, wv) = reference::forward_backward(
                    &to_f64(&data[0]),
                    &to_f64(&data[1]),
                    &to_f64(&data[2]),
                    &to_f64(&data[3]),
                    (b, h, t, d),
                    causal,
                    use_rope,
                    masked.then_some(&m64[..]),
                    win,
                );
                let what =
                    format!("f16 local [{b},{h},{t},{d}] causal={causal} rope={use_rope} {rows:?}");
                for (name, got, want, tol) in [
                    ("out", &r.out, &wo, 1e-3),
                    ("dq", &r.dq, &wq, 2e-3),
                    ("dk", &r.dk, &wk, 2e-3),
                    ("dv", &r.dv, &wv, 1e-3),
                ] {
                    assert!(got.iter().all(|x| x.is_finite()), "{what} {name}: NaN");
                    if t == 1 && (name == "dq" || name == "dk") {
                        let m = got.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                        assert!(m < 1e-3, "{what} {name}: {m}");
                        continue;
                    }
                    assert_close(&format!("{what} {name}"), got, want, tol);
                }
            }
        }
    }

    #[test]
    fn wide_heads_and_odd_shapes_are_errors() {
        let ctx = &ctx();
        let win = LocalWindow {
            window: 1,
            globals: 0,
        };
        let opts = AttentionOptions::default();
        let q = upload(ctx, &vec![0.0; 130], &[1, 1, 1, 130]);
        assert!(forward(ctx, &q, &q, &q, HeadLayout::Bhtd, &opts, win).is_err());
        let q = upload(ctx, &[0.0; 8], &[1, 1, 2, 4]);
        let v = upload(ctx, &[0.0; 4], &[1, 1, 2, 2]);
        assert!(matches!(
            forward(ctx, &q, &q, &v, HeadLayout::Bhtd, &opts, win),
            Err(Error::Shape { .. })
        ));
        let mask = upload(ctx, &[0.0; 3], &[1, 3]);
        let masked = AttentionOptions {
            mask: Some(&mask),
            ..Default::default()
        };
        assert!(forward(ctx, &q, &q, &q, HeadLayout::Bhtd, &masked, win).is_err());
    }

    #[test]
    fn the_window_sees_what_the_docs_say() {
        let w = LocalWindow {
            window: 2,
            globals: 1,
        };
        assert!(w.sees(5, 3, false) && w.sees(3, 5, false) && !w.sees(6, 3, false));
        assert!(w.sees(6, 0, false) && w.sees(0, 6, false));
        assert!(w.sees(6, 0, true) && !w.sees(0, 6, true) && !w.sees(3, 5, true));
        assert_eq!(w.keys_per_query(100), 6);
        assert_eq!(w.keys_per_query(3), 3);
    }
}
