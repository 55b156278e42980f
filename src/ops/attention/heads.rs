//! How a 4-D attention tensor (queries, keys, values, outputs) is laid out. Kernels take
//! the strides, so the model can feed them the `[B, T, H, d]` output of a linear layer
//! directly, while HuggingFace and the fixtures use `[B, H, T, d]`.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// How a per-head tensor `[batch, heads, seq, dim]` is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadLayout {
    /// `[batch, heads, seq, dim]`, as HF's `transpose_for_scores` leaves it.
    Bhtd,
    /// `[batch, seq, heads, dim]`, as a linear layer's `[B, T, H·d]` output is stored.
    Bthd,
}

/// Sizes and layout of an attention tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Positions.
    pub seq: usize,
    /// Features per head.
    pub dim: usize,
    /// Memory order.
    pub layout: HeadLayout,
}

impl Heads {
    /// Sizes in a layout.
    pub fn new(batch: usize, heads: usize, seq: usize, dim: usize, layout: HeadLayout) -> Self {
        Heads {
            batch,
            heads,
            seq,
            dim,
            layout,
        }
    }

    /// Reads the sizes off a 4-D tensor in the given layout.
    pub fn of(
        op: &'static str,
        what: &'static str,
        t: &Tensor,
        layout: HeadLayout,
    ) -> Result<Heads> {
        let s = t.shape();
        let expected = match layout {
            HeadLayout::Bhtd => "[batch, heads, seq, dim]",
            HeadLayout::Bthd => "[batch, seq, heads, dim]",
        };
        if s.len() != 4 || s.contains(&0) {
            return Err(Error::shape(op, what, expected, s));
        }
        let (heads, seq) = match layout {
            HeadLayout::Bhtd => (s[1], s[2]),
            HeadLayout::Bthd => (s[2], s[1]),
        };
        Ok(Heads::new(s[0], heads, seq, s[3], layout))
    }

    /// The tensor shape for these sizes.
    pub fn shape(&self) -> [usize; 4] {
        match self.layout {
            HeadLayout::Bhtd => [self.batch, self.heads, self.seq, self.dim],
            HeadLayout::Bthd => [self.batch, self.seq, self.heads, self.dim],
        }
    }

    /// Element strides of (batch, head, position); the feature dimension is contiguous.
    pub fn strides(&self) -> [usize; 3] {
        let (h, t, d) = (self.heads, self.seq, self.dim);
        match self.layout {
            HeadLayout::Bhtd => [h * t * d, t * d, d],
            HeadLayout::Bthd => [t * h * d, d, h * d],
        }
    }

    /// Flat index of feature `i` of head `h` at position `t` in batch `b`.
    pub fn index(&self, b: usize, h: usize, t: usize, i: usize) -> usize {
        let [sb, sh, st] = self.strides();
        b * sb + h * sh + t * st + i
    }

    /// `x`, stored in this layout, rearranged into `layout` (for tests, whose references
    /// are `[B, H, T, d]`): f32 inputs, or their f64 references.
    #[cfg(test)]
    pub(crate) fn relayout<T: Copy + Default>(&self, x: &[T], layout: HeadLayout) -> Vec<T> {
        let to = Heads { layout, ..*self };
        let mut y = vec![T::default(); x.len()];
        for b in 0..self.batch {
            for h in 0..self.heads {
                for t in 0..self.seq {
                    for i in 0..self.dim {
                        y[to.index(b, h, t, i)] = x[self.index(b, h, t, i)];
                    }
                }
            }
        }
        y
    }

    /// Same sizes and layout, another feature width (values may differ from keys).
    pub fn with_dim(&self, dim: usize) -> Heads {
        Heads { dim, ..*self }
    }

    /// Fails unless `other` has the same batch, heads and sequence length.
    pub(crate) fn expect_same_bht(
        &self,
        op: &'static str,
        what: &'static str,
        other: &Heads,
    ) -> Result<()> {
        if (self.batch, self.heads, self.seq) != (other.batch, other.heads, other.seq) {
            let want = Heads {
                dim: other.dim,
                ..*self
            };
            return Err(Error::shape(
                op,
                what,
                format!("{:?}", want.shape()),
                &other.shape(),
            ));
        }
        Ok(())
    }
}

/// The checks every attention kernel makes of its inputs: q of a float type (f32 or f16), k
/// and v of q's type, k shaped like q, and v with q's batch, heads and length (its head
/// width may differ). Returns q's heads and v's.
pub(crate) fn qkv_heads(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: HeadLayout,
) -> Result<(Heads, Heads)> {
    if !q.dtype().is_float() {
        q.expect_dtype(op, "q", DType::F32)?;
    }
    for (what, t) in [("k", k), ("v", v)] {
        t.expect_dtype(op, what, q.dtype())?;
    }
    let qk = Heads::of(op, "q", q, layout)?;
    k.expect_shape(op, "k", q.shape())?;
    let hv = Heads::of(op, "v", v, layout)?;
    qk.expect_same_bht(op, "v", &hv)?;
    Ok((qk, hv))
}
