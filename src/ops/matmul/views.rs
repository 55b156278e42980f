//! Where a product's operands sit in memory: strided matrix views, the product on views
//! ([`StridedMatmul`]), the kernel's parameter block, and the operand layout the kernel's
//! loads are compiled for.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Where the elements of a (batched) matrix sit in a tensor: element `(z0, z1, row, col)`
/// is at `offset + z0 * batch_strides[0] + z1 * batch_strides[1] + row * row_stride +
/// col * col_stride`. A stride of 0 broadcasts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatrixView {
    /// Element index of `(0, 0, 0, 0)`.
    pub offset: usize,
    /// Elements from one row to the next.
    pub row_stride: usize,
    /// Elements from one column to the next.
    pub col_stride: usize,
    /// Elements from one batch index to the next: outer `z0`, inner `z1`.
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

    pub(crate) fn last_index(&self, rows: usize, cols: usize, batch: [usize; 2]) -> u64 {
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
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Batch extents `[z0, z1]`.
    pub batch: [usize; 2],
    /// Where A's elements are.
    pub a: MatrixView,
    /// Where B's elements are.
    pub b: MatrixView,
    /// Where C's elements are.
    pub c: MatrixView,
    /// Scales the product.
    pub alpha: f32,
    /// Scales what C held (0: C is not read, so it may hold anything, NaN included).
    pub beta: f32,
    /// Element of the bias added to column 0.
    pub bias_offset: usize,
}

/// The kernels' parameter block (`Params` in `matmul.wgsl` and `matmul_coop.wgsl`).
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

/// The parameter block of a product on views.
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

/// Checks a view of `rows × cols` matrices stays inside its float tensor (f32 or f16).
pub(crate) fn check_view(
    what: &'static str,
    t: &Tensor,
    v: &MatrixView,
    rows: usize,
    cols: usize,
    batch: [usize; 2],
) -> Result<()> {
    t.expect_float("matmul", what)?;
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

/// How the operands lie in memory, as far as the kernel's loads care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct Layout {
    /// A's adjacent elements run along k (else along m).
    pub a_k_contig: bool,
    /// B's adjacent elements run along n (else along k).
    pub b_n_contig: bool,
    /// A can be read as aligned vec4s along its contiguous axis.
    pub a_vec4: bool,
    /// B can be read as aligned vec4s along its contiguous axis.
    pub b_vec4: bool,
}

impl Layout {
    pub(crate) fn of(s: &StridedMatmul, a: &Tensor, b: &Tensor) -> Layout {
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

/// The host mirror of the kernels' parameter block, field by field.
pub(crate) fn params_layout() -> crate::shader::StructLayout {
    crate::host_layout!(Params {
        m,
        n,
        k,
        batch_inner,
        a_off,
        a_rs,
        a_cs,
        a_so,
        a_si,
        b_off,
        b_rs,
        b_cs,
        b_so,
        b_si,
        c_off,
        c_rs,
        c_cs,
        c_so,
        c_si,
        bias_off,
        alpha,
        beta,
        has_bias,
        _pad
    })
}
