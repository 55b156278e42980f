//! Batched matrix products `C = alpha · op(A) · op(B) (+ C) (+ bias)`, forward and backward.
//!
//! Two levels of API:
//! - [`plan`] / [`matmul`] take tensors shaped `[batch..., rows, cols]`, with either operand
//!   transposed and either one broadcast over the batch (a weight matrix, say);
//! - [`plan_strided`] takes explicit [`MatrixView`]s, for products over views that are not
//!   contiguous matrices (per-head slices of `[B, T, H, d]` in attention).
//!
//! The op owns its kernel selection: per context ([`set_precision`], [`set_tiling`]) it sends
//! a product to the cooperative-matrix kernel ([`coop`]) or to the f32 kernel at a tiling
//! chosen by shape or by timing ([`TilingChoice`]). Files: `views.rs` (operand views, the
//! parameter block), `tiling.rs` (tilings, tuning), `backward.rs`, `coop.rs` (tensor cores),
//! `reference.rs` (f64 CPU reference).

use std::sync::Mutex;

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{KernelFamily, ParamBlock, Variant};
use crate::shader::Shader;
use crate::tensor::Tensor;

mod backward;
pub mod coop;
pub mod reference;
pub mod split_k;
mod tiling;
#[cfg(not(target_arch = "wasm32"))]
mod tuning;
mod views;

pub use backward::{backward, plan_backward, GradTarget, GradTargets, MatmulGrads};
pub use tiling::{heuristic_tiling, Tiling, TilingChoice, CPU_TILING, TILINGS};
#[cfg(not(target_arch = "wasm32"))]
pub use tuning::time_tilings;
pub(crate) use views::{params_of, Operands};
pub use views::{MatrixView, StridedMatmul};

use tiling::ShapeClass;
use views::{check_view, Layout};

/// The f32 kernel (with the GELU epilogue's snippet).
pub static SHADER: Shader = Shader {
    name: "matmul",
    source: concat!(
        include_str!("../../../shaders/matmul.wgsl"),
        include_str!("../../../shaders/lib/gelu.wgsl")
    ),
};

/// Which products a context sends to cooperative matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 multiply-adds everywhere: results match the f64 reference to f32 rounding
    /// (what the HF fixtures are checked at).
    #[default]
    F32,
    /// Cooperative matrices where the device has them (f16 inputs, f32 sums: see
    /// [`coop`]), the f32 kernel elsewhere.
    Fast,
}

/// What matmul keeps in a context ([`Context::op_state`]): its settings and the tilings it
/// timed, by kind of shape.
#[derive(Default)]
pub(crate) struct MatmulState {
    /// `None` until set: `Auto` on a device the context opened, `Heuristic` on a borrowed
    /// one (timing would submit work on the application's queue).
    pub tiling: Mutex<Option<TilingChoice>>,
    pub precision: Mutex<MatmulPrecision>,
    pub tuned: Mutex<std::collections::HashMap<ShapeClass, Tiling>>,
    /// `None` until set: [`default_tuning_cache`]. `Some(None)`: no cache.
    pub cache_dir: Mutex<Option<Option<std::path::PathBuf>>>,
    /// Whether the cache file was read into `tuned` yet.
    pub cache_read: std::sync::atomic::AtomicBool,
    /// Partial products of split-K products (`split_k`), shared by all of them.
    pub split_scratch: Mutex<Option<Tensor>>,
}

/// Where timed tilings are kept between processes, one file per adapter, driver and
/// library version, so only a machine's first process tunes: `ROFORMER_CACHE_DIR` (empty:
/// nowhere), else `$XDG_CACHE_HOME/roformer-wgpu`, else `~/.cache/roformer-wgpu`. The files
/// are small (a few hundred bytes per kind of product shape).
pub fn default_tuning_cache() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("ROFORMER_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("roformer-wgpu"))
}

/// Sets where this context reads and writes timed tilings (`None`: neither; default
/// [`default_tuning_cache`]). Set it before the first product is planned.
pub fn set_tuning_cache(ctx: &Context, dir: Option<std::path::PathBuf>) {
    let state = state(ctx);
    *state.cache_dir.lock().unwrap() = Some(dir);
    state
        .cache_read
        .store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Where this context keeps timed tilings, if anywhere.
pub fn tuning_cache(ctx: &Context) -> Option<std::path::PathBuf> {
    state(ctx)
        .cache_dir
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(default_tuning_cache)
}

pub(crate) fn state(ctx: &Context) -> std::sync::Arc<MatmulState> {
    ctx.op_state::<MatmulState>()
}

/// Sets how this context's products choose their tiling (default [`TilingChoice::Auto`] on
/// a device the context opened, [`TilingChoice::Heuristic`] on a borrowed one). Products
/// planned before keep theirs.
pub fn set_tiling(ctx: &Context, choice: TilingChoice) {
    *state(ctx).tiling.lock().unwrap() = Some(choice);
}

/// How this context's products choose their tiling.
pub fn tiling_choice(ctx: &Context) -> TilingChoice {
    state(ctx)
        .tiling
        .lock()
        .unwrap()
        .unwrap_or(if ctx.owns_device() {
            TilingChoice::Auto
        } else {
            TilingChoice::Heuristic
        })
}

/// Sets whether this context's products may use cooperative matrices (default
/// [`MatmulPrecision::F32`]). Products planned before keep theirs.
pub fn set_precision(ctx: &Context, precision: MatmulPrecision) {
    *state(ctx).precision.lock().unwrap() = precision;
}

/// Whether this context's products may use cooperative matrices.
pub fn precision(ctx: &Context) -> MatmulPrecision {
    *state(ctx).precision.lock().unwrap()
}

/// The tilings chosen by timing in this context so far, one per kind of shape.
pub fn tuned_tilings(ctx: &Context) -> Vec<Tiling> {
    state(ctx).tuned.lock().unwrap().values().copied().collect()
}

/// Builds the dispatch for a product on views, checking every view stays inside its tensor.
/// The caller makes sure distinct `(z, row, col)` of C map to distinct elements.
pub fn plan_strided(
    ctx: &Context,
    s: &StridedMatmul,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Dispatch> {
    plan_strided_with(ctx, precision(ctx), s, a, b, bias, c)
}

/// [`plan_strided`] at a given precision rather than the context's.
pub fn plan_strided_with(
    ctx: &Context,
    precision: MatmulPrecision,
    s: &StridedMatmul,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Dispatch> {
    let ops = Operands {
        a,
        b,
        bias,
        c,
        gelu: None,
    };
    plan_views(ctx, precision, s, &ops)
}

/// Checks a product on views and launches it on the kernel the context's settings choose.
fn plan_views(
    ctx: &Context,
    precision: MatmulPrecision,
    s: &StridedMatmul,
    ops: &Operands,
) -> Result<Dispatch> {
    if s.m == 0 || s.n == 0 || s.k == 0 || s.batch[0] == 0 || s.batch[1] == 0 {
        return Err(Error::invalid(format!(
            "matmul: empty product (m {}, n {}, k {}, batch {:?})",
            s.m, s.n, s.k, s.batch
        )));
    }
    check_view("a", ops.a, &s.a, s.m, s.k, s.batch)?;
    check_view("b", ops.b, &s.b, s.k, s.n, s.batch)?;
    check_view("c", ops.c, &s.c, s.m, s.n, s.batch)?;
    // A, B and the bias share a type, C and the GELU output theirs: f32 or f16 each.
    ops.b.expect_dtype("matmul", "b", ops.a.dtype())?;
    if let Some(act) = ops.gelu {
        check_view("gelu output", act, &s.c, s.m, s.n, s.batch)?;
        act.expect_dtype("matmul", "gelu output", ops.c.dtype())?;
    }
    if let Some(bias) = ops.bias {
        bias.expect_dtype("matmul", "bias", ops.a.dtype())?;
        if s.bias_offset + s.n > bias.numel() {
            return Err(Error::shape(
                "matmul",
                "bias",
                format!("at least {} elements", s.bias_offset + s.n),
                bias.shape(),
            ));
        }
    }
    // f16 operands go to the cooperative-matrix kernel as they are (f32 ones are rounded to
    // f16 as it stages them).
    if precision == MatmulPrecision::Fast {
        if let Some(fragment) = coop::fragment_for(ctx.capabilities()) {
            return coop::plan(ctx, fragment, s, ops);
        }
    }
    let layout = Layout::of(s, ops.a, ops.b);
    let tiling = tiling::choose(ctx, s, &layout)?;
    dispatch(ctx, s, &layout, tiling, ops)
}

/// The f32 kernel's dispatch at one tiling; `plan_views` has checked everything.
fn dispatch(
    ctx: &Context,
    s: &StridedMatmul,
    layout: &Layout,
    tiling: Tiling,
    ops: &Operands,
) -> Result<Dispatch> {
    // The vec4 bindings alias a and b (read-only aliasing is allowed); where a kernel reads
    // scalars they get the dummy buffer, which may be smaller than a vec4 array needs.
    let a4 = layout.a_vec4.then_some(ops.a);
    let b4 = layout.b_vec4.then_some(ops.b);
    let mut builder = DispatchBuilder::family(ctx, &FAMILY, "matmul")
        .element_type("In", ops.a.dtype())
        .element_type("Out", ops.c.dtype());
    for (name, value) in override_constants(tiling, layout, ops.gelu.is_some()) {
        builder = builder.constant(name, value);
    }
    builder = builder
        .params(&params_of(s, ops.bias.is_some()))
        .read("a", ops.a)
        .read("b", ops.b)
        .read_opt("bias", ops.bias);
    // beta 0 never loads C (it may hold anything): written only.
    builder = if s.beta == 0.0 {
        builder.write_only("c", ops.c)
    } else {
        builder.write("c", ops.c)
    };
    builder
        .read_opt("a4", a4)
        .read_opt("b4", b4)
        .write_opt("act", ops.gelu)
        .flops((2 * s.m * s.n * s.k * s.batch[0] * s.batch[1]) as u64)
        .accumulators(tiling.tm * tiling.tn)
        .build([
            s.n.div_ceil(tiling.bn as usize) as u32,
            s.m.div_ceil(tiling.bm as usize) as u32,
            (s.batch[0] * s.batch[1]) as u32,
        ])
}

/// The shader's override constants for one tiling, operand layout and epilogue.
fn override_constants(t: Tiling, l: &Layout, gelu: bool) -> [(&'static str, f64); 12] {
    let flag = |x: bool| if x { 1.0 } else { 0.0 };
    [
        ("BM", t.bm as f64),
        ("BN", t.bn as f64),
        ("BK", t.bk as f64),
        ("TM", t.tm as f64),
        ("TN", t.tn as f64),
        ("A_K_CONTIG", flag(l.a_k_contig)),
        ("B_N_CONTIG", flag(l.b_n_contig)),
        ("A_VEC4", flag(l.a_vec4)),
        ("B_VEC4", flag(l.b_vec4)),
        ("GELU", flag(gelu)),
        ("PREFETCH", flag(t.prefetch)),
        ("DIRECT", flag(t.direct)),
    ]
}

/// The family: the f32 (or f16-operand) kernel at every tiling, operand layout and epilogue.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants,
    params: param_blocks,
};

/// Every variant the library may compile: each tiling with each operand layout and epilogue.
fn variants() -> Vec<Variant> {
    let mut sets = Vec::new();
    for t in TILINGS {
        for bits in 0..32u32 {
            let l = Layout {
                a_k_contig: bits & 1 != 0,
                b_n_contig: bits & 2 != 0,
                a_vec4: bits & 4 != 0,
                b_vec4: bits & 8 != 0,
            };
            let constants = override_constants(t, &l, bits & 16 != 0).to_vec();
            sets.push(Variant {
                constants,
                ..Variant::default()
            });
        }
    }
    sets
}

/// Options of a tensor-level product.
#[derive(Clone, Copy, Debug)]
pub struct MatmulOptions {
    /// A is stored `[..., K, M]` and used transposed.
    pub trans_a: bool,
    /// B is stored `[..., N, K]` and used transposed (a PyTorch `Linear` weight).
    pub trans_b: bool,
    /// Scales the product.
    pub alpha: f32,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
}

impl Default for MatmulOptions {
    fn default() -> Self {
        MatmulOptions {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            accumulate: false,
        }
    }
}

/// Sizes of a tensor-level product.
#[derive(Clone, Debug)]
struct Dims {
    batch: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
    a_batched: bool,
    b_batched: bool,
}

impl Dims {
    fn count(&self) -> usize {
        self.batch.iter().product()
    }

    fn out_shape(&self) -> Vec<usize> {
        let mut s = self.batch.clone();
        s.extend([self.m, self.n]);
        s
    }
}

fn dims(a: &[usize], b: &[usize], o: &MatmulOptions) -> Result<Dims> {
    if a.len() < 2 {
        return Err(Error::shape("matmul", "a", "at least 2 dimensions", a));
    }
    if b.len() < 2 {
        return Err(Error::shape("matmul", "b", "at least 2 dimensions", b));
    }
    let (ab, a2) = a.split_at(a.len() - 2);
    let (bb, b2) = b.split_at(b.len() - 2);
    let (m, ka) = if o.trans_a {
        (a2[1], a2[0])
    } else {
        (a2[0], a2[1])
    };
    let (kb, n) = if o.trans_b {
        (b2[1], b2[0])
    } else {
        (b2[0], b2[1])
    };
    if ka != kb {
        return Err(Error::shape(
            "matmul",
            "b",
            format!("inner dimension {ka} to match a {a:?}"),
            b,
        ));
    }
    let batch = match (ab.is_empty(), bb.is_empty()) {
        (_, true) => ab.to_vec(),
        (true, false) => bb.to_vec(),
        (false, false) if ab == bb => ab.to_vec(),
        _ => {
            return Err(Error::shape(
                "matmul",
                "b",
                format!("batch dimensions {ab:?} (or none) to match a {a:?}"),
                b,
            ))
        }
    };
    Ok(Dims {
        batch,
        m,
        n,
        k: ka,
        a_batched: !ab.is_empty(),
        b_batched: !bb.is_empty(),
    })
}

/// Shape of `op(A) · op(B)`.
pub fn output_shape(a: &[usize], b: &[usize], opts: &MatmulOptions) -> Result<Vec<usize>> {
    dims(a, b, opts).map(|d| d.out_shape())
}

fn operand_view(rows: usize, cols: usize, trans: bool, batched: bool) -> MatrixView {
    // Stored [rows, cols], or [cols, rows] when used transposed.
    let mut v = if trans {
        MatrixView::row_major(cols, rows).transposed()
    } else {
        MatrixView::row_major(rows, cols)
    };
    if !batched {
        v.batch_strides = [0, 0];
    }
    v
}

/// `c = alpha · op(a) · op(b) (+ c if accumulate) (+ bias)`; c must have the output shape.
pub fn plan(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    opts: &MatmulOptions,
) -> Result<Dispatch> {
    plan_with(ctx, precision(ctx), a, b, bias, c, opts)
}

/// [`plan`] at a given precision rather than the context's.
pub fn plan_with(
    ctx: &Context,
    precision: MatmulPrecision,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    opts: &MatmulOptions,
) -> Result<Dispatch> {
    let d = dims(a.shape(), b.shape(), opts)?;
    c.expect_shape("matmul", "c", &d.out_shape())?;
    if let Some(bias) = bias {
        bias.expect_shape("matmul", "bias", &[d.n])?;
    }
    let spec = strided_spec(a.shape(), b.shape(), opts)?;
    plan_strided_with(ctx, precision, &spec, a, b, bias, c)
}

/// `c = alpha · op(a) · op(b) + bias` and, in the same pass, `act = gelu(c)` (a Linear
/// layer and its activation; `c` is kept for the backward pass). `act` has c's shape.
pub fn plan_gelu(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    act: &Tensor,
    opts: &MatmulOptions,
) -> Result<Dispatch> {
    let d = dims(a.shape(), b.shape(), opts)?;
    c.expect_shape("matmul", "c", &d.out_shape())?;
    act.expect_shape("matmul", "gelu output", &d.out_shape())?;
    if let Some(bias) = bias {
        bias.expect_shape("matmul", "bias", &[d.n])?;
    }
    if opts.accumulate {
        return Err(Error::invalid(
            "matmul with a GELU epilogue: accumulating into c is not supported",
        ));
    }
    let spec = strided_spec(a.shape(), b.shape(), opts)?;
    let ops = Operands {
        a,
        b,
        bias,
        c,
        gelu: Some(act),
    };
    plan_views(ctx, precision(ctx), &spec, &ops)
}

/// The product on views that a tensor-level product of these shapes is.
pub(crate) fn strided_spec(
    a: &[usize],
    b: &[usize],
    opts: &MatmulOptions,
) -> Result<StridedMatmul> {
    let d = dims(a, b, opts)?;
    Ok(StridedMatmul {
        m: d.m,
        n: d.n,
        k: d.k,
        batch: [d.count(), 1],
        a: operand_view(d.m, d.k, opts.trans_a, d.a_batched),
        b: operand_view(d.k, d.n, opts.trans_b, d.b_batched),
        c: MatrixView::row_major(d.m, d.n),
        alpha: opts.alpha,
        beta: if opts.accumulate { 1.0 } else { 0.0 },
        bias_offset: 0,
    })
}

/// `alpha · op(a) · op(b) (+ bias)` in a new tensor.
pub fn matmul(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    opts: &MatmulOptions,
) -> Result<Tensor> {
    let c = Tensor::zeros(ctx, &output_shape(a.shape(), b.shape(), opts)?, a.dtype())?;
    let opts = MatmulOptions {
        accumulate: false,
        ..*opts
    };
    ctx.submit(&[plan(ctx, a, b, bias, &c, &opts)?])?;
    Ok(c)
}

/// The host's mirrors of the shader's parameter blocks, field by field.
pub(crate) fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: views::params_layout(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gelu;
    use crate::testing::*;
    use crate::DType;

    /// Batched CPU reference: a is `[batch?, ...]`, b likewise; returns `[batch, m, n]`.
    pub(super) fn cpu_forward(
        a: &[f64],
        b: &[f64],
        batch: usize,
        (m, n, k): (usize, usize, usize),
        o: &MatmulOptions,
        a_batched: bool,
        b_batched: bool,
    ) -> Vec<f64> {
        (0..batch)
            .flat_map(|z| {
                let az = if a_batched {
                    &a[z * m * k..(z + 1) * m * k]
                } else {
                    a
                };
                let bz = if b_batched {
                    &b[z * k * n..(z + 1) * k * n]
                } else {
                    b
                };
                reference::matmul(az, bz, (m, n, k), o.trans_a, o.trans_b)
            })
            .map(|v| v * o.alpha as f64)
            .collect()
    }

    pub(super) fn shape_of(
        batch: usize,
        batched: bool,
        rows: usize,
        cols: usize,
        trans: bool,
    ) -> Vec<usize> {
        let mut s = if batched { vec![batch] } else { vec![] };
        if trans {
            s.extend([cols, rows]);
        } else {
            s.extend([rows, cols]);
        }
        s
    }

    #[test]
    fn forward_matches_reference_for_every_transpose_and_broadcast() {
        let ctx = &ctx();
        let mut rng = rng(3);
        let shapes = [
            (1, 1, 1),
            (7, 33, 129),
            (129, 7, 33),
            (33, 129, 7),
            (65, 63, 64),
        ];
        for &(m, n, k) in &shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for (batch, a_batched, b_batched) in [
                    (1, false, false),
                    (3, true, true),
                    (2, true, false),
                    (2, false, true),
                ] {
                    let o = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: 0.75,
                        accumulate: false,
                    };
                    let a = randn(&mut rng, if a_batched { batch } else { 1 } * m * k);
                    let b = randn(&mut rng, if b_batched { batch } else { 1 } * k * n);
                    let bias = randn(&mut rng, n);
                    let ta = upload(ctx, &a, &shape_of(batch, a_batched, m, k, trans_a));
                    let tb = upload(ctx, &b, &shape_of(batch, b_batched, k, n, trans_b));
                    let tbias = upload(ctx, &bias, &[n]);
                    let out_shape = output_shape(ta.shape(), tb.shape(), &o).unwrap();
                    let c = poisoned(ctx, &out_shape);
                    ctx.run(&[plan(ctx, &ta, &tb, Some(&tbias), &c, &o).unwrap()])
                        .unwrap();
                    let mut want = cpu_forward(
                        &to_f64(&a),
                        &to_f64(&b),
                        batch,
                        (m, n, k),
                        &o,
                        a_batched,
                        b_batched,
                    );
                    for (i, w) in want.iter_mut().enumerate() {
                        *w += bias[i % n] as f64;
                    }
                    let what = format!("matmul {m}x{n}x{k} ta={trans_a} tb={trans_b} batch={batch} ({a_batched},{b_batched})");
                    assert_close(&what, &download(ctx, &c), &want, 1e-5);
                }
            }
        }
    }

    #[test]
    fn accumulate_adds_to_c() {
        let ctx = &ctx();
        let mut rng = rng(4);
        let (m, n, k) = (33, 7, 17);
        let a = randn(&mut rng, m * k);
        let b = randn(&mut rng, k * n);
        let c0 = randn(&mut rng, m * n);
        let c = upload(ctx, &c0, &[m, n]);
        let o = MatmulOptions {
            accumulate: true,
            ..Default::default()
        };
        ctx.run(&[plan(
            ctx,
            &upload(ctx, &a, &[m, k]),
            &upload(ctx, &b, &[k, n]),
            None,
            &c,
            &o,
        )
        .unwrap()])
            .unwrap();
        let prod = reference::matmul(&to_f64(&a), &to_f64(&b), (m, n, k), false, false);
        let want: Vec<f64> = prod.iter().zip(&c0).map(|(p, c)| p + *c as f64).collect();
        assert_close("accumulate", &download(ctx, &c), &want, 1e-5);
    }

    #[test]
    fn strided_views_compute_per_head_products() {
        // Q Kᵀ per head straight from [B, T, H, d] tensors: batch (B, H), rows strided by H·d.
        let ctx = &ctx();
        let mut rng = rng(6);
        let (bsz, t, h, d) = (2, 7, 3, 5);
        let q = randn(&mut rng, bsz * t * h * d);
        let k = randn(&mut rng, bsz * t * h * d);
        let view = MatrixView {
            offset: 0,
            row_stride: h * d,
            col_stride: 1,
            batch_strides: [t * h * d, d],
        };
        let spec = StridedMatmul {
            m: t,
            n: t,
            k: d,
            batch: [bsz, h],
            a: view,
            b: view.transposed(),
            c: MatrixView {
                offset: 0,
                row_stride: t,
                col_stride: 1,
                batch_strides: [h * t * t, t * t],
            },
            alpha: 1.0,
            beta: 0.0,
            bias_offset: 0,
        };
        let tq = upload(ctx, &q, &[bsz, t, h, d]);
        let tk = upload(ctx, &k, &[bsz, t, h, d]);
        let s = poisoned(ctx, &[bsz, h, t, t]);
        ctx.run(&[plan_strided(ctx, &spec, &tq, &tk, None, &s).unwrap()])
            .unwrap();
        let mut want = vec![0.0; bsz * h * t * t];
        for b in 0..bsz {
            for hh in 0..h {
                for i in 0..t {
                    for j in 0..t {
                        want[((b * h + hh) * t + i) * t + j] = (0..d)
                            .map(|l| {
                                q[((b * t + i) * h + hh) * d + l] as f64
                                    * k[((b * t + j) * h + hh) * d + l] as f64
                            })
                            .sum();
                    }
                }
            }
        }
        assert_close("per-head QKᵀ", &download(ctx, &s), &want, 1e-5);
    }

    #[test]
    fn every_tiling_and_operand_layout_matches_reference() {
        // Each tiling the library may choose, with A and B each contiguous along either axis,
        // read as scalars (extents not multiples of 4) and as vec4s (multiples of 4), on
        // shapes with edge tiles, interior tiles and a partial last K slice.
        let ctx = &ctx();
        let mut rng = rng(7);
        let batch = 2;
        for &(m, n, k, vec4) in &[(7, 33, 129, false), (132, 136, 36, true)] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = randn(&mut rng, batch * m * k);
                let b = randn(&mut rng, k * n);
                let bias = randn(&mut rng, n);
                let c0 = randn(&mut rng, batch * m * n);
                let ta = upload(ctx, &a, &shape_of(batch, true, m, k, trans_a));
                let tb = upload(ctx, &b, &shape_of(batch, false, k, n, trans_b));
                let tbias = upload(ctx, &bias, &[n]);
                let operand = |rows, cols, trans, batched: bool| {
                    let v = if trans {
                        MatrixView::row_major(cols, rows).transposed()
                    } else {
                        MatrixView::row_major(rows, cols)
                    };
                    MatrixView {
                        batch_strides: [if batched { rows * cols } else { 0 }, 0],
                        ..v
                    }
                };
                let spec = StridedMatmul {
                    m,
                    n,
                    k,
                    batch: [batch, 1],
                    a: operand(m, k, trans_a, true),
                    b: operand(k, n, trans_b, false),
                    c: operand(m, n, false, true),
                    alpha: 0.5,
                    beta: 2.0,
                    bias_offset: 0,
                };
                let layout = Layout::of(&spec, &ta, &tb);
                assert_eq!((layout.a_vec4, layout.b_vec4), (vec4, vec4), "{layout:?}");
                assert_eq!((layout.a_k_contig, layout.b_n_contig), (!trans_a, !trans_b));
                let mut want = cpu_forward(
                    &to_f64(&a),
                    &to_f64(&b),
                    batch,
                    (m, n, k),
                    &MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: 0.5,
                        accumulate: false,
                    },
                    true,
                    false,
                );
                for (i, w) in want.iter_mut().enumerate() {
                    *w += 2.0 * c0[i] as f64 + bias[i % n] as f64;
                }
                let want_gelu: Vec<f64> =
                    want.iter().map(|&x| gelu::reference::forward(x)).collect();
                // Every tiling adds the products over K in the same order (the README says
                // results do not depend on the tiling): the same bits from each.
                let mut first_bits: Option<(Tiling, Vec<u32>)> = None;
                for tiling in TILINGS.iter().filter(|t| t.fits(ctx.capabilities())) {
                    // With and without the GELU epilogue (which does not depend on the
                    // operand layout: tried on the Linear layer's, A Bᵀ).
                    let epilogues: &[bool] = if !trans_a && trans_b {
                        &[false, true]
                    } else {
                        &[false]
                    };
                    for &with_gelu in epilogues {
                        let c = upload(ctx, &c0, &[batch, m, n]);
                        let act = poisoned(ctx, &[batch, m, n]);
                        let ops = Operands {
                            a: &ta,
                            b: &tb,
                            bias: Some(&tbias),
                            c: &c,
                            gelu: with_gelu.then_some(&act),
                        };
                        ctx.run(&[dispatch(ctx, &spec, &layout, *tiling, &ops).unwrap()])
                            .unwrap();
                        let what = format!(
                            "tiling {tiling}, {m}x{n}x{k} ta={trans_a} tb={trans_b} gelu={with_gelu}"
                        );
                        let got = download(ctx, &c);
                        assert_close(&what, &got, &want, 1e-5);
                        if with_gelu {
                            assert_close(&what, &download(ctx, &act), &want_gelu, 1e-5);
                        }
                        let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                        match &first_bits {
                            None => first_bits = Some((*tiling, bits)),
                            Some((t0, b0)) => {
                                assert!(*b0 == bits, "{what}: not the same bits as tiling {t0}")
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn f16_operands_match_reference_at_every_tiling_and_layout() {
        // f16 A, B and bias, read as scalars and as vec4<f16>s, into f16 or f32 C (with the
        // GELU epilogue in C's type): f32 sums, one rounding when C is stored.
        let ctx = &ctx();
        if !has_f16(ctx, "matmul f16") {
            return;
        }
        let h = DType::F16;
        let mut rng = rng(71);
        for &(m, n, k) in &[(1, 1, 1), (7, 33, 129), (132, 136, 36)] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = round_f16(&randn(&mut rng, m * k));
                let b = round_f16(&randn(&mut rng, k * n));
                let bias = round_f16(&randn(&mut rng, n));
                let ta = upload_as(ctx, &a, &shape_of(1, false, m, k, trans_a), h);
                let tb = upload_as(ctx, &b, &shape_of(1, false, k, n, trans_b), h);
                let tbias = upload_as(ctx, &bias, &[n], h);
                let o = MatmulOptions {
                    trans_a,
                    trans_b,
                    alpha: 0.5,
                    accumulate: false,
                };
                let spec = strided_spec(ta.shape(), tb.shape(), &o).unwrap();
                let layout = Layout::of(&spec, &ta, &tb);
                let mut want =
                    cpu_forward(&to_f64(&a), &to_f64(&b), 1, (m, n, k), &o, false, false);
                for (i, w) in want.iter_mut().enumerate() {
                    *w += bias[i % n] as f64;
                }
                let want_gelu: Vec<f64> =
                    want.iter().map(|&x| gelu::reference::forward(x)).collect();
                // The f32 test covers every tiling; the conversions sit in the loads and the
                // epilogue, which the three kinds of kernel share: one tiling of each kind.
                let kinds = [(true, false), (false, false), (false, true)];
                let tilings: Vec<&Tiling> = kinds
                    .iter()
                    .filter_map(|&(direct, prefetch)| {
                        TILINGS.iter().find(|t| {
                            t.direct == direct
                                && t.prefetch == prefetch
                                && t.fits(ctx.capabilities())
                        })
                    })
                    .collect();
                assert_eq!(
                    tilings.len(),
                    3,
                    "a direct, a staged and a prefetching tiling"
                );
                for tiling in tilings {
                    for out in [DType::F16, DType::F32] {
                        let c = poisoned_as(ctx, &[m, n], out);
                        let act = poisoned_as(ctx, &[m, n], out);
                        let ops = Operands {
                            a: &ta,
                            b: &tb,
                            bias: Some(&tbias),
                            c: &c,
                            gelu: Some(&act),
                        };
                        ctx.run(&[dispatch(ctx, &spec, &layout, *tiling, &ops).unwrap()])
                            .unwrap();
                        let what = format!(
                            "f16 tiling {tiling}, {m}x{n}x{k} ta={trans_a} tb={trans_b} vec4={} out {out:?}",
                            layout.a_vec4
                        );
                        let tol = if out == DType::F16 { 1e-3 } else { 1e-5 };
                        assert_close(&what, &download_f32(ctx, &c), &want, tol);
                        assert_close(
                            &format!("{what} gelu"),
                            &download_f32(ctx, &act),
                            &want_gelu,
                            tol,
                        );
                    }
                }
            }
        }
        // The backward of an f16 Linear layer: x [33, 129] · Wᵀ, W [7, 129], gradients in
        // f16, the weight's summed over 2048 rows through f32 partial sums (split K).
        for &(rows, k, n) in &[(33, 129, 7), (2048, 64, 8)] {
            let x = round_f16(&randn(&mut rng, rows * k));
            let w = round_f16(&randn(&mut rng, n * k));
            let dy = round_f16(&randn(&mut rng, rows * n));
            let o = MatmulOptions {
                trans_b: true,
                ..Default::default()
            };
            let g = backward(
                ctx,
                &upload_as(ctx, &x, &[rows, k], h),
                &upload_as(ctx, &w, &[n, k], h),
                &upload_as(ctx, &dy, &[rows, n], h),
                &o,
                true,
            )
            .unwrap();
            let (x64, w64, dy64) = (to_f64(&x), to_f64(&w), to_f64(&dy));
            let want_dx = reference::matmul(&dy64, &w64, (rows, k, n), false, false);
            let want_dw = reference::matmul(&dy64, &x64, (n, k, rows), true, false);
            let want_db: Vec<f64> = (0..n)
                .map(|j| (0..rows).map(|r| dy64[r * n + j]).sum())
                .collect();
            let what = format!("f16 linear backward {rows}x{k}->{n}");
            assert_close(
                &format!("{what} dx"),
                &download_f32(ctx, g.a.as_ref().unwrap()),
                &want_dx,
                1e-3,
            );
            assert_close(
                &format!("{what} dW"),
                &download_f32(ctx, g.b.as_ref().unwrap()),
                &want_dw,
                1e-3,
            );
            assert_close(
                &format!("{what} dbias"),
                &download_f32(ctx, g.bias.as_ref().unwrap()),
                &want_db,
                1e-3,
            );
        }
        // Mixed A and B types are an error, not a misread.
        let a = upload_as(ctx, &[1.0; 4], &[2, 2], h);
        let b = upload(ctx, &[1.0; 4], &[2, 2]);
        assert!(matches!(
            matmul(ctx, &a, &b, None, &MatmulOptions::default()),
            Err(Error::DType { .. })
        ));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ctx = &ctx();
        let a = upload(ctx, &[0.0; 6], &[2, 3]);
        let b = upload(ctx, &[0.0; 8], &[4, 2]);
        assert!(matches!(
            matmul(ctx, &a, &b, None, &MatmulOptions::default()),
            Err(Error::Shape { .. })
        ));
        let view = MatrixView::row_major(3, 3);
        let spec = StridedMatmul {
            m: 3,
            n: 3,
            k: 3,
            batch: [1, 1],
            a: view,
            b: view,
            c: view,
            alpha: 1.0,
            beta: 0.0,
            bias_offset: 0,
        };
        assert!(
            plan_strided(ctx, &spec, &a, &a, None, &a).is_err(),
            "views past the end"
        );
    }
}
