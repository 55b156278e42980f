//! Softmax attention without the `[B, H, T, T]` matrix (FlashAttention-2's scheme), forward
//! and backward: the same function as [`crate::ops::attention`] (RoPE, padding mask, causal
//! option, `rotary_value`), in memory linear in the sequence length. The forward pass keeps
//! each query's score maximum and softmax sum; the backward pass recomputes the
//! probabilities from them.
//! q, k, v, the output and the gradients are f32 or f16 (one type for all; f32 inside).
//!
//! Two sets of kernels compute it ([`FlashKernels`]), chosen from the adapter: on a GPU this
//! family's tiled kernels (query and key blocks staged in workgroup memory, rows reduced
//! across threads with barriers); on a CPU adapter, where a barrier is a thread switch and
//! every load from workgroup memory a loop over the SIMD lanes, the barrier-free kernels of
//! [`crate::ops::attention::local`] with a window over the whole sequence (each invocation
//! owns rows and walks every key with an online softmax). Both keep the same statistics, so
//! [`FlashSaved`] is one shape for both.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{KernelFamily, ParamBlock, Variant};
use crate::ops::attention::heads::{qkv_heads, HeadLayout, Heads};
use crate::ops::attention::local::{self, LocalWindow};
use crate::ops::attention::AttentionOptions;
use crate::ops::rope;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "flash_attention",
    source: include_str!("../../../shaders/flash_attention.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants,
    params: param_blocks,
};

/// Head-dimension variants: (largest head dimension, rows per block in the forward pass,
/// rows per block in the backward passes), sized so the staged blocks fit 32 KiB.
pub const VARIANTS: [(usize, usize, usize); 3] = [(32, 32, 32), (64, 32, 16), (128, 16, 8)];

/// Which kernels a context's fused softmax attention runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashKernels {
    /// By the adapter: [`FlashKernels::Rows`] on a CPU adapter (llvmpipe, SwiftShader, WARP)
    /// and where the tiled kernels' blocks do not fit the workgroup memory or invocation
    /// limits; [`FlashKernels::Tiled`] elsewhere.
    #[default]
    Auto,
    /// This family's kernels: query and key blocks staged in workgroup memory (for GPUs).
    Tiled,
    /// [`crate::ops::attention::local`]'s kernels with a window over the whole sequence: no
    /// workgroup memory, no barrier (for CPU adapters).
    Rows,
}

#[derive(Default)]
struct FlashState {
    kernels: std::sync::Mutex<FlashKernels>,
}

/// Sets which kernels this context's fused softmax attention runs (default
/// [`FlashKernels::Auto`]). Plans made before keep theirs.
pub fn set_kernels(ctx: &Context, kernels: FlashKernels) {
    *ctx.op_state::<FlashState>().kernels.lock().unwrap() = kernels;
}

/// Which kernels this context's fused softmax attention runs, as set.
pub fn kernels(ctx: &Context) -> FlashKernels {
    *ctx.op_state::<FlashState>().kernels.lock().unwrap()
}

/// The kernels a call runs: the tiled ones with their block sizes, or the row kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chosen {
    Tiled {
        max_d: usize,
        fwd: usize,
        bwd: usize,
    },
    Rows,
}

/// The window that makes local attention softmax attention over all `seq` positions.
fn whole(seq: usize) -> LocalWindow {
    LocalWindow {
        window: seq,
        globals: 0,
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
    _p0: u32,
    _p1: u32,
}

/// What the forward pass writes and the backward pass reads (local attention's too,
/// [`crate::ops::attention::local`]).
#[derive(Clone, Debug)]
pub struct FlashSaved {
    /// Rotated q and k (and v with `rotary_value`), in the input layout, when RoPE is on.
    pub q_rot: Option<Tensor>,
    /// Rotated k.
    pub k_rot: Option<Tensor>,
    /// Rotated v (with `rotary_value`).
    pub v_rot: Option<Tensor>,
    /// `[B, H, T, 3]`: each query's score maximum and softmax sum; the backward pass adds
    /// its `D = dout · out`.
    pub stats: Tensor,
}

/// Scratch of the backward pass (local attention's too): gradients of the rotated tensors
/// before rotating back.
#[derive(Clone, Debug, Default)]
pub struct FlashScratch {
    /// Gradient of the rotated q.
    pub dq_rot: Option<Tensor>,
    /// Gradient of the rotated k.
    pub dk_rot: Option<Tensor>,
    /// Gradient of the rotated v.
    pub dv_rot: Option<Tensor>,
}

fn zeros_if(ctx: &Context, on: bool, like: &Tensor) -> Result<Option<Tensor>> {
    on.then(|| Tensor::zeros(ctx, like.shape(), like.dtype()))
        .transpose()
}

impl FlashSaved {
    /// Zeroed tensors for q of this shape and these options.
    pub fn new(
        ctx: &Context,
        q: &Tensor,
        layout: HeadLayout,
        opts: &AttentionOptions<'_>,
    ) -> Result<Self> {
        let rope = opts.rope.is_some();
        Ok(FlashSaved {
            q_rot: zeros_if(ctx, rope, q)?,
            k_rot: zeros_if(ctx, rope, q)?,
            v_rot: zeros_if(ctx, rope && opts.rotary_value, q)?,
            stats: Tensor::zeros(ctx, &stats_shape(q, layout)?, DType::F32)?,
        })
    }
}

impl FlashScratch {
    /// Zeroed tensors for q of this shape and these options.
    pub fn new(ctx: &Context, q: &Tensor, opts: &AttentionOptions<'_>) -> Result<Self> {
        let rope = opts.rope.is_some();
        Ok(FlashScratch {
            dq_rot: zeros_if(ctx, rope, q)?,
            dk_rot: zeros_if(ctx, rope, q)?,
            dv_rot: zeros_if(ctx, rope && opts.rotary_value, q)?,
        })
    }
}

impl FlashSaved {
    /// What the kernels read for q, k and v: with RoPE, q and k (and v with
    /// `rotary_value`) rotated into this struct's buffers, the dispatches appended to
    /// `plan`; without, the inputs themselves.
    pub(crate) fn rotate_inputs(
        &self,
        ctx: &Context,
        op: &'static str,
        opts: &AttentionOptions<'_>,
        layout: HeadLayout,
        [q, k, v]: [&Tensor; 3],
        plan: &mut Vec<Dispatch>,
    ) -> Result<[Tensor; 3]> {
        let (table, rv) = (opts.rope, opts.rotary_value);
        Ok([
            rope::rotate_into(ctx, op, table, true, q, layout, &self.q_rot, plan)?,
            rope::rotate_into(ctx, op, table, true, k, layout, &self.k_rot, plan)?,
            rope::rotate_into(ctx, op, table, rv, v, layout, &self.v_rot, plan)?,
        ])
    }

    /// What the backward kernels read for q, k and v: the rotated copies the forward pass
    /// left with RoPE, the inputs themselves without.
    pub(crate) fn rotated_inputs(
        &self,
        op: &'static str,
        opts: &AttentionOptions<'_>,
        [q, k, v]: [&Tensor; 3],
    ) -> Result<[Tensor; 3]> {
        rotated_or(op, opts, [&self.q_rot, &self.k_rot, &self.v_rot], [q, k, v])
    }
}

impl FlashScratch {
    /// Where the backward kernels write the gradients of q, k and v: with RoPE this
    /// struct's buffers (the gradients of the rotated tensors, rotated back by
    /// [`FlashScratch::plan_rotate_back`]), without it the gradients themselves.
    pub(crate) fn targets(
        &self,
        op: &'static str,
        opts: &AttentionOptions<'_>,
        [dq, dk, dv]: [&Tensor; 3],
    ) -> Result<[Tensor; 3]> {
        rotated_or(
            op,
            opts,
            [&self.dq_rot, &self.dk_rot, &self.dv_rot],
            [dq, dk, dv],
        )
    }

    /// The dispatches that rotate the `targets` back into dq, dk and dv (none without RoPE).
    pub(crate) fn plan_rotate_back(
        ctx: &Context,
        opts: &AttentionOptions<'_>,
        layout: HeadLayout,
        targets: &[Tensor; 3],
        [dq, dk, dv]: [&Tensor; 3],
    ) -> Result<Vec<Dispatch>> {
        let Some(table) = opts.rope else {
            return Ok(Vec::new());
        };
        let mut plan = vec![
            rope::plan(ctx, &targets[0], layout, table, dq, layout, true)?,
            rope::plan(ctx, &targets[1], layout, table, dk, layout, true)?,
        ];
        if opts.rotary_value {
            plan.push(rope::plan(
                ctx,
                &targets[2],
                layout,
                table,
                dv,
                layout,
                true,
            )?);
        }
        Ok(plan)
    }
}

/// For the q, k and v sides (inputs or gradients): the rotated copy in `slots` where RoPE
/// rotates that side (q and k with RoPE, v also with `rotary_value`), `plain` otherwise.
fn rotated_or(
    op: &'static str,
    opts: &AttentionOptions<'_>,
    slots: [&Option<Tensor>; 3],
    plain: [&Tensor; 3],
) -> Result<[Tensor; 3]> {
    let rot = opts.rope.is_some();
    let on = [rot, rot, rot && opts.rotary_value];
    Ok([
        rope::rotated_or(op, on[0], slots[0], plain[0])?,
        rope::rotated_or(op, on[1], slots[1], plain[1])?,
        rope::rotated_or(op, on[2], slots[2], plain[2])?,
    ])
}

/// `[B, H, T, 3]` for q (the same for both sets of kernels).
pub fn stats_shape(q: &Tensor, layout: HeadLayout) -> Result<[usize; 4]> {
    let h = Heads::of("flash attention", "q", q, layout)?;
    Ok([h.batch, h.heads, h.seq, 3])
}

/// Checks shapes and picks the kernels (see [`FlashKernels`]).
fn setup(
    ctx: &Context,
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
    opts: &AttentionOptions<'_>,
) -> Result<(Heads, Chosen)> {
    let (h, _) = qkv_heads(op, q, k, v, layout)?;
    v.expect_shape(op, "v (the fused kernel needs v shaped like q)", q.shape())?;
    let &(max_d, fwd, bwd) = VARIANTS.iter().find(|v| h.dim <= v.0).ok_or_else(|| {
        Error::invalid(format!(
            "{op}: head dimension {} is over the {} this kernel supports",
            h.dim, VARIANTS[2].0
        ))
    })?;
    if let Some(mask) = opts.mask {
        mask.expect_shape(op, "mask", &[h.batch, h.seq])?;
    }
    let caps = ctx.capabilities();
    // The staged tiles, their rows padded by one (see the shader), and the row statistics.
    let shared = 4
        * (4 * bwd * (max_d + 1) + 2 * bwd * (bwd + 1) + 7 * bwd)
            .max(3 * fwd * (max_d + 1) + fwd * (fwd + 1) + 4 * fwd);
    let tiled_fits = shared <= caps.max_workgroup_storage as usize
        && 4 * fwd.max(bwd) <= caps.max_invocations_per_workgroup as usize;
    let tiled = Chosen::Tiled { max_d, fwd, bwd };
    match kernels(ctx) {
        FlashKernels::Auto if caps.is_cpu() || !tiled_fits => Ok((h, Chosen::Rows)),
        FlashKernels::Auto => Ok((h, tiled)),
        FlashKernels::Rows => Ok((h, Chosen::Rows)),
        FlashKernels::Tiled if tiled_fits => Ok((h, tiled)),
        FlashKernels::Tiled => Err(Error::OverLimit {
            what: format!("{op} with head dimension {}", h.dim),
            needed: shared as u64,
            limit: caps.max_workgroup_storage as u64,
            limit_name: "max_compute_workgroup_storage_size",
        }),
    }
}

/// The variant sized for heads up to `max_d` wide and `blk` rows per block.
fn variant(max_d: usize, blk: usize) -> Variant {
    Variant::default()
        .size("MAX_D", max_d as u32)
        .size("BLK", blk as u32)
}

/// Every variant: each head-dimension size with its forward and its backward block.
fn variants() -> Vec<Variant> {
    VARIANTS
        .iter()
        .flat_map(|&(d, fwd, bwd)| [variant(d, fwd), variant(d, bwd)])
        .collect()
}

fn builder<'a>(
    ctx: &'a Context,
    entry: &'static str,
    dtype: DType,
    h: &Heads,
    max_d: usize,
    blk: usize,
    opts: &AttentionOptions<'_>,
) -> DispatchBuilder<'a> {
    let [sb, sh, st] = h.strides();
    let u = |x: usize| x as u32;
    DispatchBuilder::family(ctx, &FAMILY, entry)
        .variant(variant(max_d, blk))
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
            _p0: 0,
            _p1: 0,
        })
}

fn blocks(ctx: &Context, h: &Heads, blk: usize) -> Result<[u32; 3]> {
    ctx.grid_1d((h.batch * h.heads * h.seq.div_ceil(blk)) as u64)
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
    saved: &FlashSaved,
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "flash attention";
    let (h, chosen) = setup(ctx, op, q, k, v, layout, opts)?;
    out.expect_shape(op, "out", q.shape())?;
    saved
        .stats
        .expect_shape(op, "stats", &stats_shape(q, layout)?)?;
    let Chosen::Tiled { max_d, fwd, .. } = chosen else {
        return local::plan_forward(ctx, q, k, v, layout, opts, whole(h.seq), saved, out);
    };
    let mut plan = Vec::new();
    let [qr, kr, vr] = saved.rotate_inputs(ctx, op, opts, layout, [q, k, v], &mut plan)?;
    plan.push(
        builder(ctx, "forward", q.dtype(), &h, max_d, fwd, opts)
            .read("q", &qr)
            .read("k", &kr)
            .read("v", &vr)
            .read_opt("mask", opts.mask)
            .write("stats", &saved.stats)
            .write("out", out)
            .flops((4 * h.batch * h.heads * h.seq * h.seq * h.dim) as u64)
            .build(blocks(ctx, &h, fwd)?)?,
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
    saved: &FlashSaved,
    out: &Tensor,
    grad_out: &Tensor,
    scratch: &FlashScratch,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
) -> Result<Vec<Dispatch>> {
    let op = "flash attention backward";
    let (h, chosen) = setup(ctx, op, q, k, v, layout, opts)?;
    for (what, t) in [
        ("out", out),
        ("grad_out", grad_out),
        ("dq", dq),
        ("dk", dk),
        ("dv", dv),
    ] {
        t.expect_shape(op, what, q.shape())?;
    }
    let Chosen::Tiled { max_d, bwd, .. } = chosen else {
        return local::plan_backward(
            ctx,
            q,
            k,
            v,
            layout,
            opts,
            whole(h.seq),
            saved,
            out,
            grad_out,
            scratch,
            dq,
            dk,
            dv,
        );
    };
    let [qr, kr, vr] = saved.rotated_inputs(op, opts, [q, k, v])?;
    let targets = scratch.targets(op, opts, [dq, dk, dv])?;
    let [dqr, dkr, dvr] = &targets;
    let tokens = (h.batch * h.heads * h.seq) as u64;
    let mut plan = vec![
        builder(ctx, "bwd_prep", q.dtype(), &h, max_d, bwd, opts)
            .read("grad_out", grad_out)
            .read("out_saved", out)
            .write("stats", &saved.stats)
            .build(ctx.grid_1d(tokens.div_ceil(4 * bwd as u64))?)?,
        builder(ctx, "bwd_dq", q.dtype(), &h, max_d, bwd, opts)
            .read("q", &qr)
            .read("k", &kr)
            .read("v", &vr)
            .read_opt("mask", opts.mask)
            .read("grad_out", grad_out)
            .write("stats", &saved.stats)
            .write("grad_q", dqr)
            .flops((6 * h.batch * h.heads * h.seq * h.seq * h.dim) as u64)
            .build(blocks(ctx, &h, bwd)?)?,
        builder(ctx, "bwd_dkdv", q.dtype(), &h, max_d, bwd, opts)
            .read("q", &qr)
            .read("k", &kr)
            .read("v", &vr)
            .read_opt("mask", opts.mask)
            .read("grad_out", grad_out)
            .write("stats", &saved.stats)
            .write("grad_k", dkr)
            .write("grad_v", dvr)
            .flops((8 * h.batch * h.heads * h.seq * h.seq * h.dim) as u64)
            .build(blocks(ctx, &h, bwd)?)?,
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
) -> Result<(Tensor, FlashSaved)> {
    let saved = FlashSaved::new(ctx, q, layout, opts)?;
    let out = Tensor::zeros(ctx, q.shape(), q.dtype())?;
    ctx.submit(&plan_forward(ctx, q, k, v, layout, opts, &saved, &out)?)?;
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
            _p0,
            _p1
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{self, BackwardBuffers, BufferShapes, Saved};
    use crate::testing::*;

    /// Both sets of kernels, each set on the context in turn.
    const KERNELS: [FlashKernels; 2] = [FlashKernels::Tiled, FlashKernels::Rows];

    /// The fused kernels, tiled and rows, against the materialised attention, which the
    /// fixtures check.
    #[test]
    fn matches_the_materialised_attention() {
        let ctx = &ctx();
        for kernels in KERNELS {
            set_kernels(ctx, kernels);
            check_against_the_materialised_attention(ctx, kernels);
        }
        set_kernels(ctx, FlashKernels::Auto);
    }

    fn check_against_the_materialised_attention(ctx: &Context, kernels: FlashKernels) {
        let mut rng = rng(31);
        let cases = [
            (1, 1, 1, 2, HeadLayout::Bhtd),
            (2, 3, 7, 8, HeadLayout::Bthd),
            (1, 2, 33, 16, HeadLayout::Bhtd),
            (2, 1, 70, 40, HeadLayout::Bthd),
            (1, 2, 19, 100, HeadLayout::Bhtd),
        ];
        for &(b, h, t, d, layout) in &cases {
            let shape = Heads::new(b, h, t, d, layout).shape();
            let n = b * h * t * d;
            let (q, k, v, g) = (
                randn(&mut rng, n),
                randn(&mut rng, n),
                randn(&mut rng, n),
                randn(&mut rng, n),
            );
            let (tq, tk, tv, tg) = (
                upload(ctx, &q, &shape),
                upload(ctx, &k, &shape),
                upload(ctx, &v, &shape),
                upload(ctx, &g, &shape),
            );
            // Sequence 0 padded on the left (causal, its first rows see only padded keys:
            // uniform, as HF's softmax makes them), sequence 1 on the right.
            let mask: Vec<f32> = (0..b * t)
                .map(|i| {
                    if (i / t == 0 && i % t < 2) || (i / t == 1 && i % t >= t.saturating_sub(3)) {
                        -f32::MAX
                    } else {
                        0.0
                    }
                })
                .collect();
            let tmask = upload(ctx, &mask, &[b, t]);
            let table = rope::table(ctx, t, d).unwrap();
            for (causal, use_rope, masked, rotary_value) in [
                (false, false, false, false),
                (true, true, false, false),
                (false, true, true, true),
                (true, false, true, false),
            ] {
                let opts = AttentionOptions {
                    causal,
                    mask: masked.then_some(&tmask),
                    rope: use_rope.then_some(&table),
                    rotary_value,
                    scale: None,
                };
                // Reference: materialised.
                let shapes = BufferShapes::new(&shape, &shape, layout, &opts).unwrap();
                let (rs, rb) = (
                    Saved::new(ctx, &shapes).unwrap(),
                    BackwardBuffers::new(ctx, &shapes).unwrap(),
                );
                let scores = Tensor::zeros(ctx, &shapes.square, DType::F32).unwrap();
                let (ro, rq, rk, rv) = (
                    poisoned(ctx, &shape),
                    poisoned(ctx, &shape),
                    poisoned(ctx, &shape),
                    poisoned(ctx, &shape),
                );
                ctx.run(
                    &attention::plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &rs, &scores, &ro)
                        .unwrap(),
                )
                .unwrap();
                ctx.run(
                    &attention::plan_backward(
                        ctx, &tq, &tk, &tv, layout, &opts, &rs, &rb, &tg, &rq, &rk, &rv,
                    )
                    .unwrap(),
                )
                .unwrap();
                // Fused.
                let saved = FlashSaved::new(ctx, &tq, layout, &opts).unwrap();
                crate::ops::elementwise::fill(ctx, &saved.stats, f32::NAN).unwrap();
                let scratch = FlashScratch::new(ctx, &tq, &opts).unwrap();
                let (fo, fq, fk, fv) = (
                    poisoned(ctx, &shape),
                    poisoned(ctx, &shape),
                    poisoned(ctx, &shape),
                    poisoned(ctx, &shape),
                );
                ctx.run(&plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &saved, &fo).unwrap())
                    .unwrap();
                ctx.run(
                    &plan_backward(
                        ctx, &tq, &tk, &tv, layout, &opts, &saved, &fo, &tg, &scratch, &fq, &fk,
                        &fv,
                    )
                    .unwrap(),
                )
                .unwrap();
                let what = format!("flash {kernels:?} [{b},{h},{t},{d}] {layout:?} causal={causal} rope={use_rope} mask={masked} rotv={rotary_value}");
                for (name, ours, reference, tol) in [
                    ("out", &fo, &ro, 1e-5),
                    ("dq", &fq, &rq, 1e-4),
                    ("dk", &fk, &rk, 1e-4),
                    ("dv", &fv, &rv, 1e-4),
                ] {
                    if t == 1 && (name == "dq" || name == "dk") {
                        // One key: the output is v, and dq, dk are 0 up to rounding.
                        let m = download(ctx, ours)
                            .iter()
                            .fold(0.0f32, |a, x| a.max(x.abs()));
                        assert!(m < 1e-5, "{what} {name}: {m}");
                        continue;
                    }
                    let want = to_f64(&download(ctx, reference));
                    assert_close(&format!("{what} {name}"), &download(ctx, ours), &want, tol);
                }
            }
        }
    }

    /// f16 q, k, v, outputs and gradients (f32 mask and statistics) against the f64
    /// reference computed from the same f16-rounded inputs.
    #[test]
    fn f16_tensors_match_the_f64_reference() {
        let ctx = &ctx();
        if !has_f16(ctx, "f16 flash attention") {
            return;
        }
        for kernels in KERNELS {
            set_kernels(ctx, kernels);
            check_f16_against_the_f64_reference(ctx, kernels);
        }
        set_kernels(ctx, FlashKernels::Auto);
    }

    fn check_f16_against_the_f64_reference(ctx: &Context, kernels: FlashKernels) {
        let mut rng = rng(37);
        let h16 = DType::F16;
        for (b, h, t, d) in [(1, 1, 1, 4), (2, 3, 7, 8), (1, 2, 33, 16), (1, 1, 129, 40)] {
            let shape = [b, h, t, d];
            let n = b * h * t * d;
            let (q, k, v, g) = (
                round_f16(&randn(&mut rng, n)),
                round_f16(&randn(&mut rng, n)),
                round_f16(&randn(&mut rng, n)),
                round_f16(&randn(&mut rng, n)),
            );
            let (tq, tk, tv, tg) = (
                upload_as(ctx, &q, &shape, h16),
                upload_as(ctx, &k, &shape, h16),
                upload_as(ctx, &v, &shape, h16),
                upload_as(ctx, &g, &shape, h16),
            );
            let mask: Vec<f32> = (0..b * t)
                .map(|i| {
                    if i / t == 1 && i % t >= t - 2 {
                        -f32::MAX
                    } else {
                        0.0
                    }
                })
                .collect();
            let tmask = upload(ctx, &mask, &[b, t]);
            let table = rope::table(ctx, t, d).unwrap();
            for (causal, use_rope, masked) in [(false, false, false), (true, true, true)] {
                let opts = AttentionOptions {
                    causal,
                    mask: masked.then_some(&tmask),
                    rope: use_rope.then_some(&table),
                    rotary_value: false,
                    scale: None,
                };
                let saved = FlashSaved::new(ctx, &tq, HeadLayout::Bhtd, &opts).unwrap();
                let scratch = FlashScratch::new(ctx, &tq, &opts).unwrap();
                let outs: Vec<Tensor> = (0..4).map(|_| poisoned_as(ctx, &shape, h16)).collect();
                let (fo, fq, fk, fv) = (&outs[0], &outs[1], &outs[2], &outs[3]);
                let layout = HeadLayout::Bhtd;
                ctx.run(&plan_forward(ctx, &tq, &tk, &tv, layout, &opts, &saved, fo).unwrap())
                    .unwrap();
                ctx.run(
                    &plan_backward(
                        ctx, &tq, &tk, &tv, layout, &opts, &saved, fo, &tg, &scratch, fq, fk, fv,
                    )
                    .unwrap(),
                )
                .unwrap();
                let mask64 = masked.then(|| to_f64(&mask));
                let (ro, rq, rk, rv) = attention::reference::forward_backward(
                    &to_f64(&q),
                    &to_f64(&k),
                    &to_f64(&v),
                    &to_f64(&g),
                    (b, h, t, d),
                    causal,
                    use_rope,
                    mask64.as_deref(),
                );
                let what = format!(
                    "f16 flash {kernels:?} [{b},{h},{t},{d}] causal={causal} rope={use_rope}"
                );
                for (name, ours, want, tol) in [
                    ("out", fo, &ro, 1e-3),
                    ("dq", fq, &rq, 2e-3),
                    ("dk", fk, &rk, 2e-3),
                    ("dv", fv, &rv, 1e-3),
                ] {
                    let got = download_f32(ctx, ours);
                    if t == 1 && (name == "dq" || name == "dk") {
                        // One key: dq and dk are 0 up to rounding.
                        let m = got.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                        assert!(m < 1e-3, "{what} {name}: {m}");
                        continue;
                    }
                    assert_close(&format!("{what} {name}"), &got, want, tol);
                }
            }
        }
    }

    /// What a context picks follows the adapter's capabilities, not its name: the row
    /// kernels (four rows per invocation) on a CPU adapter, the tiled kernels on a GPU,
    /// the row kernels where the GPU's workgroup memory is too small for the tiles; a
    /// forced choice holds, and forced tiles that do not fit are an error.
    #[test]
    fn the_kernels_follow_the_adapter() {
        let _turn = ctx(); // a second device must not race the shared one
        let mut planner = Context::with_options(crate::context::ContextOptions {
            plan_only: true,
            ..Default::default()
        })
        .unwrap();
        let (b, h, t, d) = (2, 3, 37, 16);
        let q = Tensor::zeros(&planner, &[b, h, t, d], DType::F32).unwrap();
        let out = Tensor::zeros(&planner, &[b, h, t, d], DType::F32).unwrap();
        let opts = AttentionOptions::default();
        let kernel_and_groups = |ctx: &Context| -> Result<(&'static str, u64)> {
            let saved = FlashSaved::new(ctx, &q, HeadLayout::Bhtd, &opts)?;
            let plan = plan_forward(ctx, &q, &q, &q, HeadLayout::Bhtd, &opts, &saved, &out)?;
            let last = plan.last().unwrap();
            Ok((last.kernel().0, last.workgroup_count()))
        };
        let cpu = planner.capabilities().clone();
        let mut gpu = cpu.clone();
        gpu.device_type = wgpu::DeviceType::DiscreteGpu;
        let mut small_gpu = gpu.clone();
        small_gpu.max_workgroup_storage = 8 << 10;
        // 64 invocations a workgroup, each owning four rows on a CPU, one on a GPU; the
        // tiled kernels run a workgroup per 32 queries here.
        let four_rows = (b * h * t.div_ceil(4)).div_ceil(64) as u64;
        let one_row = (b * h * t).div_ceil(64) as u64;
        let tiles = (b * h * t.div_ceil(32)) as u64;
        let cpu_caps = crate::context::Capabilities {
            device_type: wgpu::DeviceType::Cpu,
            ..cpu
        };
        for (caps, set, want) in [
            (
                &cpu_caps,
                FlashKernels::Auto,
                Ok(("local_attention", four_rows)),
            ),
            (&gpu, FlashKernels::Auto, Ok(("flash_attention", tiles))),
            (
                &small_gpu,
                FlashKernels::Auto,
                Ok(("local_attention", one_row)),
            ),
            (
                &cpu_caps,
                FlashKernels::Tiled,
                Ok(("flash_attention", tiles)),
            ),
            (&gpu, FlashKernels::Rows, Ok(("local_attention", one_row))),
            (&small_gpu, FlashKernels::Tiled, Err(())),
        ] {
            planner.plan_as(caps.clone()).unwrap();
            set_kernels(&planner, set);
            let got = kernel_and_groups(&planner).map_err(|e| {
                assert!(matches!(e, Error::OverLimit { .. }), "{e}");
            });
            assert_eq!(got, want, "{:?} {set:?}", caps.device_type);
        }
    }

    #[test]
    fn wide_heads_and_odd_shapes_are_errors() {
        let ctx = &ctx();
        let q = upload(ctx, &vec![0.0; 130], &[1, 1, 1, 130]);
        assert!(forward(
            ctx,
            &q,
            &q,
            &q,
            HeadLayout::Bhtd,
            &AttentionOptions::default()
        )
        .is_err());
        let q = upload(ctx, &[0.0; 8], &[1, 1, 2, 4]);
        let v = upload(ctx, &[0.0; 4], &[1, 1, 2, 2]);
        assert!(matches!(
            forward(
                ctx,
                &q,
                &q,
                &v,
                HeadLayout::Bhtd,
                &AttentionOptions::default()
            ),
            Err(Error::Shape { .. })
        ));
    }
}
