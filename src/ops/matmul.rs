//! Batched matrix products `C = alpha · op(A) · op(B) (+ C) (+ bias)`, forward and backward.
//!
//! Two levels of API:
//! - [`plan`] / [`matmul`] take tensors shaped `[batch..., rows, cols]`, with either operand
//!   transposed and either one broadcast over the batch (a weight matrix, say);
//! - [`plan_strided`] takes explicit [`MatrixView`]s, for products over views that are not
//!   contiguous matrices (per-head slices of `[B, T, H, d]` in attention).

use bytemuck::{Pod, Zeroable};

use crate::context::{Context, Shader};
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::ops::matmul_coop::{self, MatmulPrecision};
use crate::ops::reduce;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = Shader {
    name: "matmul",
    source: concat!(
        include_str!("../../shaders/matmul.wgsl"),
        include_str!("../../shaders/lib/gelu.wgsl")
    ),
};

/// Where the elements of a (batched) matrix sit in a tensor: element `(z0, z1, row, col)`
/// is at `offset + z0 * batch_strides[0] + z1 * batch_strides[1] + row * row_stride +
/// col * col_stride`. A stride of 0 broadcasts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatrixView {
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch_strides: [usize; 2],
}

impl MatrixView {
    /// Contiguous row-major `[rows, cols]` matrices, one after another.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        MatrixView {
            offset: 0,
            row_stride: cols,
            col_stride: 1,
            batch_strides: [rows * cols, 0],
        }
    }

    /// The same elements read as the transposed matrix.
    pub fn transposed(self) -> Self {
        MatrixView {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn last_index(&self, rows: usize, cols: usize, batch: [usize; 2]) -> u64 {
        self.offset as u64
            + (batch[0] as u64 - 1) * self.batch_strides[0] as u64
            + (batch[1] as u64 - 1) * self.batch_strides[1] as u64
            + (rows as u64 - 1) * self.row_stride as u64
            + (cols as u64 - 1) * self.col_stride as u64
    }
}

/// A product on views: for every batch index `(z0 < batch[0], z1 < batch[1])`,
/// `C[m×n] = alpha · A[m×k] · B[k×n] + beta · C + bias[bias_offset..][n]`.
#[derive(Clone, Copy, Debug)]
pub struct StridedMatmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: [usize; 2],
    pub a: MatrixView,
    pub b: MatrixView,
    pub c: MatrixView,
    pub alpha: f32,
    pub beta: f32,
    pub bias_offset: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_inner: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    a_so: u32,
    a_si: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    b_so: u32,
    b_si: u32,
    c_off: u32,
    c_rs: u32,
    c_cs: u32,
    c_so: u32,
    c_si: u32,
    bias_off: u32,
    alpha: f32,
    beta: f32,
    has_bias: u32,
    _pad: u32,
}

pub(crate) fn params_of(s: &StridedMatmul, has_bias: bool) -> Params {
    let u = |x: usize| x as u32;
    Params {
        m: u(s.m),
        n: u(s.n),
        k: u(s.k),
        batch_inner: u(s.batch[1]),
        a_off: u(s.a.offset),
        a_rs: u(s.a.row_stride),
        a_cs: u(s.a.col_stride),
        a_so: u(s.a.batch_strides[0]),
        a_si: u(s.a.batch_strides[1]),
        b_off: u(s.b.offset),
        b_rs: u(s.b.row_stride),
        b_cs: u(s.b.col_stride),
        b_so: u(s.b.batch_strides[0]),
        b_si: u(s.b.batch_strides[1]),
        c_off: u(s.c.offset),
        c_rs: u(s.c.row_stride),
        c_cs: u(s.c.col_stride),
        c_so: u(s.c.batch_strides[0]),
        c_si: u(s.c.batch_strides[1]),
        bias_off: u(s.bias_offset),
        alpha: s.alpha,
        beta: s.beta,
        has_bias: has_bias as u32,
        _pad: 0,
    }
}

fn check_view(
    what: &'static str,
    t: &Tensor,
    v: &MatrixView,
    rows: usize,
    cols: usize,
    batch: [usize; 2],
) -> Result<()> {
    t.expect_dtype("matmul", what, DType::F32)?;
    let last = v.last_index(rows, cols, batch);
    if last >= t.numel() as u64 {
        return Err(Error::shape(
            "matmul",
            what,
            format!(
                "at least {} elements for a {rows}x{cols} view {v:?}",
                last + 1
            ),
            t.shape(),
        ));
    }
    Ok(())
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
    plan_strided_with(ctx, ctx.matmul_precision(), s, a, b, bias, c)
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

/// The tensors of one product.
#[derive(Clone, Copy)]
pub(crate) struct Operands<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub c: &'a Tensor,
    /// Also written, through the same view as C: gelu of each element of C.
    pub gelu: Option<&'a Tensor>,
}

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
    if let Some(act) = ops.gelu {
        check_view("gelu output", act, &s.c, s.m, s.n, s.batch)?;
    }
    if let Some(bias) = ops.bias {
        bias.expect_dtype("matmul", "bias", DType::F32)?;
        if s.bias_offset + s.n > bias.numel() {
            return Err(Error::shape(
                "matmul",
                "bias",
                format!("at least {} elements", s.bias_offset + s.n),
                bias.shape(),
            ));
        }
    }
    if precision == MatmulPrecision::Fast {
        if let Some(fragment) = matmul_coop::fragment_for(ctx.capabilities()) {
            return matmul_coop::plan(ctx, fragment, s, ops);
        }
    }
    let layout = Layout::of(s, ops.a, ops.b);
    let tiling = choose_tiling(ctx, s, &layout)?;
    dispatch(ctx, s, &layout, tiling, ops)
}

/// The dispatch for one tiling; `plan_views` has checked everything.
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
    let mut builder = DispatchBuilder::new(ctx, &SHADER, "matmul");
    for (name, value) in override_constants(tiling, layout, ops.gelu.is_some()) {
        builder = builder.constant(name, value);
    }
    builder
        .params(&params_of(s, ops.bias.is_some()))
        .read(ops.a)
        .read(ops.b)
        .read_opt(ops.bias)
        .write(ops.c)
        .read_opt(a4)
        .read_opt(b4)
        .write_opt(ops.gelu)
        .build([
            s.n.div_ceil(tiling.bn as usize) as u32,
            s.m.div_ceil(tiling.bm as usize) as u32,
            (s.batch[0] * s.batch[1]) as u32,
        ])
}

/// The shader's override constants for one tiling, operand layout and epilogue.
fn override_constants(t: Tiling, l: &Layout, gelu: bool) -> [(&'static str, f64); 11] {
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
    ]
}

/// Every set of override constants the library may compile: each tiling with each
/// operand layout and epilogue (for the cross-translation test).
pub fn all_override_constants() -> Vec<Vec<(&'static str, f64)>> {
    let mut sets = Vec::new();
    for t in TILINGS {
        for bits in 0..32u32 {
            let l = Layout {
                a_k_contig: bits & 1 != 0,
                b_n_contig: bits & 2 != 0,
                a_vec4: bits & 4 != 0,
                b_vec4: bits & 8 != 0,
            };
            sets.push(override_constants(t, &l, bits & 16 != 0).to_vec());
        }
    }
    sets
}

/// How the operands lie in memory, as far as the kernel's loads care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Layout {
    /// A's adjacent elements run along k (else along m).
    a_k_contig: bool,
    /// B's adjacent elements run along n (else along k).
    b_n_contig: bool,
    /// A can be read as aligned vec4s along its contiguous axis.
    a_vec4: bool,
    b_vec4: bool,
}

impl Layout {
    fn of(s: &StridedMatmul, a: &Tensor, b: &Tensor) -> Layout {
        // Contiguous along k unless the other axis has the unit stride.
        let a_k_contig = !(s.a.row_stride == 1 && s.a.col_stride != 1);
        let b_n_contig = !(s.b.row_stride == 1 && s.b.col_stride != 1);
        // A vec4 along the contiguous axis needs unit stride there, a multiple-of-4 extent
        // (so a vec4 never straddles an edge), and every other offset and stride a multiple
        // of 4; the binding needs a whole number of vec4s.
        let vec4 = |v: &MatrixView, contig_is_col: bool, extent: usize, t: &Tensor| {
            let (unit, other) = if contig_is_col {
                (v.col_stride, v.row_stride)
            } else {
                (v.row_stride, v.col_stride)
            };
            unit == 1
                && extent % 4 == 0
                && [other, v.offset, v.batch_strides[0], v.batch_strides[1]]
                    .iter()
                    .all(|x| x % 4 == 0)
                && t.numel() % 4 == 0
        };
        Layout {
            a_k_contig,
            b_n_contig,
            a_vec4: vec4(&s.a, a_k_contig, if a_k_contig { s.k } else { s.m }, a),
            b_vec4: vec4(&s.b, b_n_contig, if b_n_contig { s.n } else { s.k }, b),
        }
    }
}

/// A tiling of the kernel, set through its override constants: a workgroup computes a
/// `bm × bn` block of C with `(bm/tm)·(bn/tn)` threads of `tm × tn` each, through K in
/// slices of `bk`; with `prefetch`, the next slice is loaded while the current one is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tiling {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
    pub prefetch: bool,
}

impl Tiling {
    pub const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Tiling {
        Tiling {
            bm,
            bn,
            bk,
            tm,
            tn,
            prefetch: false,
        }
    }

    /// The same tiling, loading the next K-slice into registers during the current one.
    pub const fn prefetched(self) -> Tiling {
        Tiling {
            prefetch: true,
            ..self
        }
    }

    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    /// Bytes of workgroup memory (the two k-major tiles).
    pub fn workgroup_bytes(&self) -> u32 {
        (self.bm + self.bn) * self.bk * 4
    }

    /// Whether the kernel supports this tiling (its register block holds at most 8 × 8,
    /// in vec4s; every thread stages whole vec4s, at most 4 per operand and slice) and the
    /// adapter can run it.
    pub fn fits(&self, caps: &crate::context::Capabilities) -> bool {
        let Tiling {
            bm, bn, bk, tm, tn, ..
        } = *self;
        let wg = self.threads();
        tm % 4 == 0
            && tm <= 8
            && (tn == 4 || tn == 8)
            && bk % 4 == 0
            && bm % tm == 0
            && bn % tn == 0
            && (bm * bk / 4) % wg == 0
            && (bn * bk / 4) % wg == 0
            && bm * bk / 4 / wg <= 4
            && bn * bk / 4 / wg <= 4
            && wg <= caps.max_invocations_per_workgroup
            && self.workgroup_bytes() <= caps.max_workgroup_storage
    }
}

impl std::fmt::Display for Tiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}/{}x{}{}",
            self.bm,
            self.bn,
            self.bk,
            self.tm,
            self.tn,
            if self.prefetch { "+prefetch" } else { "" }
        )
    }
}

/// The tilings the library chooses from, small to large; the large ones also prefetched
/// (only timing tells whether that pays on a given GPU, so only the tuner picks them).
pub const TILINGS: [Tiling; 8] = [
    Tiling::new(32, 32, 16, 4, 4),
    Tiling::new(64, 64, 16, 4, 4),
    Tiling::new(128, 64, 16, 8, 4),
    Tiling::new(64, 128, 16, 4, 8),
    Tiling::new(128, 128, 8, 8, 8),
    Tiling::new(128, 128, 16, 8, 8),
    Tiling::new(128, 128, 8, 8, 8).prefetched(),
    Tiling::new(128, 128, 16, 8, 8).prefetched(),
];

/// How a context picks the matmul tiling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TilingChoice {
    /// On a GPU, the first large product of each kind of shape times every tiling that
    /// fits on scratch buffers and the context remembers the fastest; everything else
    /// (small products, CPU adapters) uses [`TilingChoice::Heuristic`].
    #[default]
    Auto,
    /// By the shape alone: large tiles for large products, small for small.
    Heuristic,
    /// Always this one (it must fit the adapter).
    Fixed(Tiling),
}

/// Products below this many multiply-adds are not worth timing: launch overhead dominates.
const TUNE_MIN_MACS: u64 = 1 << 28;

/// What tuning results are remembered by: shapes within a factor of two, same layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ShapeClass {
    log2_m: u32,
    log2_n: u32,
    log2_k: u32,
    log2_batch: u32,
    layout: Layout,
}

impl ShapeClass {
    fn of(s: &StridedMatmul, layout: &Layout) -> ShapeClass {
        let l = |x: usize| x.next_power_of_two().trailing_zeros();
        ShapeClass {
            log2_m: l(s.m),
            log2_n: l(s.n),
            log2_k: l(s.k),
            log2_batch: l(s.batch[0] * s.batch[1]),
            layout: *layout,
        }
    }
}

/// The tiling by shape: the largest whose tiles are mostly filled and which still gives
/// the GPU enough workgroups; on a CPU adapter, 64 × 64 (measured fastest on llvmpipe).
pub fn heuristic_tiling(
    caps: &crate::context::Capabilities,
    m: usize,
    n: usize,
    batch: usize,
) -> Tiling {
    let fits = |t: &Tiling| t.fits(caps);
    let pick = |t: Tiling| if fits(&t) { Some(t) } else { None };
    let small = TILINGS[0];
    let medium = TILINGS[1];
    if caps.is_cpu() {
        return pick(medium).unwrap_or(small);
    }
    let groups =
        |t: &Tiling| (m.div_ceil(t.bm as usize) * n.div_ceil(t.bn as usize) * batch) as u64;
    // Fraction of a tile grid's area that is real output.
    let filled = |t: &Tiling| {
        (m * n) as f64
            / (m.next_multiple_of(t.bm as usize) * n.next_multiple_of(t.bn as usize)) as f64
    };
    let candidates = [TILINGS[4], TILINGS[2], TILINGS[3], medium];
    candidates
        .into_iter()
        .filter(fits)
        .find(|t| filled(t) >= 0.75 && groups(t) >= 128)
        .or_else(|| pick(medium).filter(|t| filled(t) >= 0.5))
        .unwrap_or(small)
}

fn choose_tiling(ctx: &Context, s: &StridedMatmul, layout: &Layout) -> Result<Tiling> {
    let caps = ctx.capabilities();
    let batch = s.batch[0] * s.batch[1];
    match ctx.tiling_choice() {
        TilingChoice::Fixed(t) => {
            if t.fits(caps) {
                Ok(t)
            } else {
                Err(Error::invalid(format!(
                    "matmul tiling {t} is not supported here (register block up to 8x8, \
                     at most {} threads and {} bytes of workgroup memory)",
                    caps.max_invocations_per_workgroup, caps.max_workgroup_storage
                )))
            }
        }
        TilingChoice::Heuristic => Ok(heuristic_tiling(caps, s.m, s.n, batch)),
        TilingChoice::Auto => {
            let macs = (s.m * s.n * s.k) as u64 * batch as u64;
            if caps.is_cpu() || macs < TUNE_MIN_MACS {
                return Ok(heuristic_tiling(caps, s.m, s.n, batch));
            }
            let class = ShapeClass::of(s, layout);
            if let Some(t) = ctx.tuned_tiling(&class) {
                return Ok(t);
            }
            let started = std::time::Instant::now();
            let t = tune(ctx, s, layout)?.0;
            ctx.remember_tiling(class, t, started.elapsed());
            Ok(t)
        }
    }
}

/// Times every tiling that fits on a `[m, k] · [k, n]` product (operands stored transposed
/// as asked) on scratch buffers, fastest first: what [`TilingChoice::Auto`] does for a
/// large product, shown (by `bench`) for any.
pub fn time_tilings(
    ctx: &Context,
    (m, n, k): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
) -> Result<Vec<(Tiling, std::time::Duration)>> {
    let view = |rows, cols, trans| {
        if trans {
            MatrixView::row_major(cols, rows).transposed()
        } else {
            MatrixView::row_major(rows, cols)
        }
    };
    let s = StridedMatmul {
        m,
        n,
        k,
        batch: [1, 1],
        a: view(m, k, trans_a),
        b: view(k, n, trans_b),
        c: MatrixView::row_major(m, n),
        alpha: 1.0,
        beta: 0.0,
        bias_offset: 0,
    };
    let ta = Tensor::zeros(ctx, &[m, k], DType::F32)?;
    let tb = Tensor::zeros(ctx, &[k, n], DType::F32)?;
    Ok(tune(ctx, &s, &Layout::of(&s, &ta, &tb))?.1)
}

/// Times every tiling that fits on scratch operands laid out like `s`'s (contiguity and
/// vec4 eligibility), capped in size, and returns them fastest first.
pub(crate) fn tune(
    ctx: &Context,
    s: &StridedMatmul,
    layout: &Layout,
) -> Result<(Tiling, Vec<(Tiling, std::time::Duration)>)> {
    // At most 2^24 elements (64 MiB) per scratch operand: fewer batches, then fewer rows.
    const CAP: usize = 1 << 24;
    let (mut m, n, k) = (s.m, s.n, s.k);
    let per = (m * k).max(k * n).max(m * n);
    let batch = (s.batch[0] * s.batch[1]).clamp(1, (CAP / per).max(1));
    if batch * per > CAP {
        m = (CAP / k.max(n)).max(256).min(m).next_multiple_of(4);
    }
    let view = |rows: usize, cols: usize, contig_is_col: bool| {
        let v = MatrixView::row_major(rows, cols);
        if contig_is_col {
            v
        } else {
            MatrixView::row_major(cols, rows).transposed()
        }
    };
    let spec = StridedMatmul {
        m,
        n,
        k,
        batch: [batch, 1],
        a: view(m, k, layout.a_k_contig),
        b: view(k, n, layout.b_n_contig),
        c: MatrixView::row_major(m, n),
        alpha: 1.0,
        beta: 0.0,
        bias_offset: 0,
    };
    let ta = Tensor::zeros(ctx, &[batch, m, k], DType::F32)?;
    let tb = Tensor::zeros(ctx, &[batch, k, n], DType::F32)?;
    let tc = Tensor::zeros(ctx, &[batch, m, n], DType::F32)?;
    let scratch_layout = Layout::of(&spec, &ta, &tb);
    let ops = Operands {
        a: &ta,
        b: &tb,
        bias: None,
        c: &tc,
        gelu: None,
    };
    let mut times = Vec::new();
    for t in TILINGS.iter().filter(|t| t.fits(ctx.capabilities())) {
        let d = dispatch(ctx, &spec, &scratch_layout, *t, &ops)?;
        crate::profile::time_dispatches(ctx, std::slice::from_ref(&d), 1)?; // compile, warm
        let time = crate::profile::time_dispatches(ctx, std::slice::from_ref(&d), 3)?;
        times.push((*t, time));
    }
    times.sort_by_key(|&(_, d)| d);
    Ok((times[0].0, times))
}

/// Options of a tensor-level product.
#[derive(Clone, Copy, Debug)]
pub struct MatmulOptions {
    /// A is stored `[..., K, M]` and used transposed.
    pub trans_a: bool,
    /// B is stored `[..., N, K]` and used transposed (a PyTorch `Linear` weight).
    pub trans_b: bool,
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
    plan_with(ctx, ctx.matmul_precision(), a, b, bias, c, opts)
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
    plan_views(ctx, ctx.matmul_precision(), &spec, &ops)
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
    let c = Tensor::zeros(ctx, &output_shape(a.shape(), b.shape(), opts)?, DType::F32)?;
    let opts = MatmulOptions {
        accumulate: false,
        ..*opts
    };
    ctx.submit(&[plan(ctx, a, b, bias, &c, &opts)?])?;
    Ok(c)
}

/// A tensor a gradient goes to, overwritten or added to (gradient accumulation).
#[derive(Clone, Copy, Debug)]
pub struct GradTarget<'a> {
    pub tensor: &'a Tensor,
    pub accumulate: bool,
}

impl<'a> GradTarget<'a> {
    /// Overwrite `tensor` with the gradient.
    pub fn write(tensor: &'a Tensor) -> Self {
        GradTarget {
            tensor,
            accumulate: false,
        }
    }

    /// Add the gradient to `tensor`.
    pub fn add(tensor: &'a Tensor) -> Self {
        GradTarget {
            tensor,
            accumulate: true,
        }
    }
}

/// Where [`plan_backward`] puts each gradient (each `None` is skipped).
#[derive(Clone, Copy, Debug, Default)]
pub struct GradTargets<'a> {
    /// Shaped like a.
    pub a: Option<GradTarget<'a>>,
    /// Shaped like b.
    pub b: Option<GradTarget<'a>>,
    /// Shaped `[N]`.
    pub bias: Option<GradTarget<'a>>,
}

/// Gradients of a product, as returned by [`backward`].
#[derive(Clone, Debug, Default)]
pub struct MatmulGrads {
    pub a: Option<Tensor>,
    pub b: Option<Tensor>,
    pub bias: Option<Tensor>,
}

/// Plans `d op(A) = dC · op(B)ᵀ` and `d op(B) = op(A)ᵀ · dC` (stored the way A and B are
/// stored, summed over the batch for a broadcast operand), and `d bias = Σ_rows dC`.
pub fn plan_backward(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    opts: &MatmulOptions,
    targets: GradTargets<'_>,
) -> Result<Vec<Dispatch>> {
    let d = dims(a.shape(), b.shape(), opts)?;
    grad_c.expect_shape("matmul backward", "grad_c", &d.out_shape())?;
    let base = MatmulOptions {
        trans_a: false,
        trans_b: false,
        alpha: opts.alpha,
        accumulate: false,
    };
    let mut out = Vec::new();
    if let Some(GradTarget {
        tensor: ga,
        accumulate,
    }) = targets.a
    {
        let inner = MatmulOptions { accumulate, ..base };
        ga.expect_shape("matmul backward", "grad_a", a.shape())?;
        // dA = dC · op(B)ᵀ, or stored transposed: op(B) · dCᵀ.
        let (x, y, o) = if opts.trans_a {
            (
                b,
                grad_c,
                MatmulOptions {
                    trans_a: opts.trans_b,
                    trans_b: true,
                    ..inner
                },
            )
        } else {
            (
                grad_c,
                b,
                MatmulOptions {
                    trans_b: !opts.trans_b,
                    ..inner
                },
            )
        };
        out.extend(plan_batched_grad(ctx, x, y, ga, &o, &d, d.a_batched)?);
    }
    if let Some(GradTarget {
        tensor: gb,
        accumulate,
    }) = targets.b
    {
        let inner = MatmulOptions { accumulate, ..base };
        gb.expect_shape("matmul backward", "grad_b", b.shape())?;
        if !d.b_batched && d.count() > 1 && !opts.trans_a {
            // A shared weight: fold the batch into the rows, one product sums over it.
            let rows = d.count() * d.m;
            let a2 = a.reshape(&[rows, d.k])?;
            let g2 = grad_c.reshape(&[rows, d.n])?;
            let (x, y, o) = if opts.trans_b {
                (
                    &g2,
                    &a2,
                    MatmulOptions {
                        trans_a: true,
                        ..inner
                    },
                )
            } else {
                (
                    &a2,
                    &g2,
                    MatmulOptions {
                        trans_a: true,
                        ..inner
                    },
                )
            };
            out.push(plan(ctx, x, y, None, gb, &o)?);
        } else {
            // dB = op(A)ᵀ · dC, or stored transposed: dCᵀ · op(A).
            let (x, y, o) = if opts.trans_b {
                (
                    grad_c,
                    a,
                    MatmulOptions {
                        trans_a: true,
                        trans_b: opts.trans_a,
                        ..inner
                    },
                )
            } else {
                (
                    a,
                    grad_c,
                    MatmulOptions {
                        trans_a: !opts.trans_a,
                        ..inner
                    },
                )
            };
            out.extend(plan_batched_grad(ctx, x, y, gb, &o, &d, d.b_batched)?);
        }
    }
    if let Some(GradTarget {
        tensor: gbias,
        accumulate,
    }) = targets.bias
    {
        gbias.expect_shape("matmul backward", "grad_bias", &[d.n])?;
        out.push(reduce::plan_sum_rows(ctx, grad_c, gbias, accumulate)?);
    }
    Ok(out)
}

/// `target = x · y` where the product is batched; when the target operand was broadcast
/// over a batch of more than one, the per-batch products go to a scratch tensor that is
/// then summed over the batch.
fn plan_batched_grad(
    ctx: &Context,
    x: &Tensor,
    y: &Tensor,
    target: &Tensor,
    o: &MatmulOptions,
    d: &Dims,
    target_batched: bool,
) -> Result<Vec<Dispatch>> {
    let shape = output_shape(x.shape(), y.shape(), o)?;
    if target_batched || d.count() == 1 {
        return Ok(vec![plan(ctx, x, y, None, &target.reshape(&shape)?, o)?]);
    }
    let scratch = Tensor::zeros(ctx, &shape, DType::F32)?;
    let per_batch = MatmulOptions {
        accumulate: false,
        ..*o
    };
    Ok(vec![
        plan(ctx, x, y, None, &scratch, &per_batch)?,
        reduce::plan_sum_rows(
            ctx,
            &scratch,
            &target.reshape(&[target.numel()])?,
            o.accumulate,
        )?,
    ])
}

/// Gradients with respect to a, b and the bias, in new tensors.
pub fn backward(
    ctx: &Context,
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    opts: &MatmulOptions,
    with_bias: bool,
) -> Result<MatmulGrads> {
    let ga = Tensor::zeros(ctx, a.shape(), DType::F32)?;
    let gb = Tensor::zeros(ctx, b.shape(), DType::F32)?;
    let n = *grad_c.shape().last().unwrap_or(&1);
    let gbias = if with_bias {
        Some(Tensor::zeros(ctx, &[n], DType::F32)?)
    } else {
        None
    };
    let targets = GradTargets {
        a: Some(GradTarget::write(&ga)),
        b: Some(GradTarget::write(&gb)),
        bias: gbias.as_ref().map(GradTarget::write),
    };
    ctx.submit(&plan_backward(ctx, a, b, grad_c, opts, targets)?)?;
    Ok(MatmulGrads {
        a: Some(ga),
        b: Some(gb),
        bias: gbias,
    })
}

/// CPU reference, in f64, for one batch element.
pub mod reference {
    /// Element `(r, c)` of a matrix stored row-major, read transposed when `trans`.
    fn at(x: &[f64], rows: usize, cols: usize, trans: bool, r: usize, c: usize) -> f64 {
        if trans {
            x[c * rows + r]
        } else {
            x[r * cols + c]
        }
    }

    /// `op(a) · op(b)`, `[m, n]`.
    pub fn matmul(
        a: &[f64],
        b: &[f64],
        (m, n, k): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| at(a, m, k, trans_a, i, l) * at(b, k, n, trans_b, l, j))
                    .sum();
            }
        }
        c
    }

    /// Gradients of `sum(op(a) · op(b) ⊙ dc)` with respect to a and b, stored like a and b.
    pub fn backward(
        a: &[f64],
        b: &[f64],
        dc: &[f64],
        (m, n, k): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut da = vec![0.0; m * k];
        let mut db = vec![0.0; k * n];
        for i in 0..m {
            for j in 0..n {
                let g = dc[i * n + j];
                for l in 0..k {
                    let ia = if trans_a { l * m + i } else { i * k + l };
                    let ib = if trans_b { j * k + l } else { l * n + j };
                    da[ia] += g * b[ib];
                    db[ib] += g * a[ia];
                }
            }
        }
        (da, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gelu;
    use crate::testing::*;

    /// Batched CPU reference: a is `[batch?, ...]`, b likewise; returns `[batch, m, n]`.
    fn cpu_forward(
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

    fn shape_of(batch: usize, batched: bool, rows: usize, cols: usize, trans: bool) -> Vec<usize> {
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
    fn backward_matches_reference_including_broadcast_sums() {
        let ctx = &ctx();
        let mut rng = rng(5);
        for &(m, n, k) in &[(1, 1, 1), (7, 33, 13), (33, 7, 65)] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for (batch, a_batched, b_batched) in [
                    (1, false, false),
                    (3, true, true),
                    (3, true, false),
                    (2, false, true),
                ] {
                    let o = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: 1.5,
                        accumulate: false,
                    };
                    let na = if a_batched { batch } else { 1 };
                    let nb = if b_batched { batch } else { 1 };
                    let a = randn(&mut rng, na * m * k);
                    let b = randn(&mut rng, nb * k * n);
                    let g = randn(&mut rng, batch * m * n);
                    let ta = upload(ctx, &a, &shape_of(batch, a_batched, m, k, trans_a));
                    let tb = upload(ctx, &b, &shape_of(batch, b_batched, k, n, trans_b));
                    let out_shape = output_shape(ta.shape(), tb.shape(), &o).unwrap();
                    let tg = upload(ctx, &g, &out_shape);
                    // grad a and bias are written (poisoned first); grad b is added to
                    // existing values, as for a weight used twice.
                    let gb0 = randn(&mut rng, b.len());
                    let (ga, gb, gbias) = (
                        poisoned(ctx, ta.shape()),
                        upload(ctx, &gb0, tb.shape()),
                        poisoned(ctx, &[n]),
                    );
                    let targets = GradTargets {
                        a: Some(GradTarget::write(&ga)),
                        b: Some(GradTarget::add(&gb)),
                        bias: Some(GradTarget::write(&gbias)),
                    };
                    ctx.run(&plan_backward(ctx, &ta, &tb, &tg, &o, targets).unwrap())
                        .unwrap();

                    let (a64, b64, g64) = (to_f64(&a), to_f64(&b), to_f64(&g));
                    let mut want_a = vec![0.0; a.len()];
                    let mut want_b = to_f64(&gb0);
                    for z in 0..batch {
                        let za = if a_batched { z } else { 0 };
                        let zb = if b_batched { z } else { 0 };
                        let (da, db) = reference::backward(
                            &a64[za * m * k..(za + 1) * m * k],
                            &b64[zb * k * n..(zb + 1) * k * n],
                            &g64[z * m * n..(z + 1) * m * n],
                            (m, n, k),
                            trans_a,
                            trans_b,
                        );
                        for (w, v) in want_a[za * m * k..].iter_mut().zip(&da) {
                            *w += 1.5 * v;
                        }
                        for (w, v) in want_b[zb * k * n..].iter_mut().zip(&db) {
                            *w += 1.5 * v;
                        }
                    }
                    let what = format!("{m}x{n}x{k} ta={trans_a} tb={trans_b} batch={batch} ({a_batched},{b_batched})");
                    assert_close(
                        &format!("grad a {what}"),
                        &download(ctx, &ga),
                        &want_a,
                        1e-5,
                    );
                    assert_close(
                        &format!("grad b {what}"),
                        &download(ctx, &gb),
                        &want_b,
                        1e-5,
                    );
                    let want_bias = reduce::reference::sum_rows(&g64, n);
                    assert_close(
                        &format!("grad bias {what}"),
                        &download(ctx, &gbias),
                        &want_bias,
                        1e-5,
                    );
                }
            }
        }
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
                        assert_close(&what, &download(ctx, &c), &want, 1e-5);
                        if with_gelu {
                            assert_close(&what, &download(ctx, &act), &want_gelu, 1e-5);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tuning_times_every_tiling_that_fits() {
        let ctx = &ctx();
        let spec = StridedMatmul {
            m: 64,
            n: 64,
            k: 32,
            batch: [1, 1],
            a: MatrixView::row_major(64, 32),
            b: MatrixView::row_major(32, 64),
            c: MatrixView::row_major(64, 64),
            alpha: 1.0,
            beta: 0.0,
            bias_offset: 0,
        };
        let layout = Layout {
            a_k_contig: true,
            b_n_contig: true,
            a_vec4: true,
            b_vec4: true,
        };
        let (best, times) = tune(ctx, &spec, &layout).unwrap();
        let fitting: Vec<Tiling> = TILINGS
            .iter()
            .copied()
            .filter(|t| t.fits(ctx.capabilities()))
            .collect();
        assert_eq!(times.len(), fitting.len());
        assert!(fitting.iter().all(|t| times.iter().any(|(u, _)| u == t)));
        assert_eq!(best, times[0].0);
        assert!(times.windows(2).all(|w| w[0].1 <= w[1].1), "{times:?}");
    }

    #[test]
    fn a_fixed_tiling_the_kernel_cannot_run_is_an_error() {
        let shared = ctx(); // taking the turn: a second device must not race the first
        let bad = Tiling::new(64, 64, 16, 16, 4); // register block taller than 8
        assert!(!bad.fits(shared.capabilities()));
        let ctx = Context::with_options(crate::ContextOptions {
            matmul_tiling: TilingChoice::Fixed(bad),
            ..Default::default()
        })
        .unwrap();
        let a = upload(&ctx, &[1.0; 4], &[2, 2]);
        let r = matmul(&ctx, &a, &a, None, &MatmulOptions::default());
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
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
