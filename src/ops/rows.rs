//! How the row kernels (softmax, LayerNorm, cross-entropy: one row of the last dimension per
//! workgroup, reduced with `shaders/lib/rows.wgsl`) lay a row over threads.
//!
//! By default a row gets a power of two from 32 to 256 threads, combined by a tree through
//! workgroup memory with a barrier per step. Where the adapter's subgroups have one fixed
//! size (NVIDIA 32, llvmpipe 8) and rows are at most [`SUBGROUP_MAX_ROW`] long, a row gets a
//! workgroup of exactly one subgroup instead, combined by shuffles with no barrier
//! (`shaders/lib/rows_subgroup.wgsl`): a whole warp on a row of attention scores or hidden
//! units, and no barrier, which is a thread switch on a CPU adapter. A range of sizes (AMD
//! 32..64, Intel 8..32) keeps the tree: nothing promises a workgroup of the smallest size is
//! one subgroup.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::context::Context;
use crate::family::Variant;

/// The longest row the subgroup layout takes (32 elements per lane of a 32-wide subgroup);
/// longer rows (a vocabulary's logits) want more threads than one subgroup.
pub const SUBGROUP_MAX_ROW: usize = 1024;

/// Threads per row and how they combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowLayout {
    /// A workgroup of this many threads (a power of two, 32 to 256), a tree through
    /// workgroup memory.
    Workgroup(u32),
    /// A workgroup that is one subgroup of this many lanes, shuffles.
    Subgroup(u32),
}

/// Whether this context may use the subgroup layout (default: yes, where it applies).
#[derive(Default)]
struct RowState {
    workgroup_only: AtomicBool,
}

/// Sets whether this context's row kernels may run a row on one subgroup (default `true`);
/// `false` keeps the workgroup tree everywhere (to compare the two, or to test the tree on
/// an adapter that has subgroups). Kernels planned before keep theirs.
pub fn set_row_subgroups(ctx: &Context, allowed: bool) {
    ctx.op_state::<RowState>()
        .workgroup_only
        .store(!allowed, Ordering::SeqCst);
}

/// The layout for rows of `n` on this context.
pub fn row_layout(ctx: &Context, n: usize) -> RowLayout {
    let caps = ctx.capabilities();
    let allowed = !ctx
        .op_state::<RowState>()
        .workgroup_only
        .load(Ordering::SeqCst);
    match caps.subgroup_sizes {
        Some((lo, hi))
            if allowed && lo == hi && lo.is_power_of_two() && lo >= 4 && n <= SUBGROUP_MAX_ROW =>
        {
            RowLayout::Subgroup(lo)
        }
        _ => RowLayout::Workgroup(n.next_power_of_two().clamp(32, 256) as u32),
    }
}

/// The variant of a row kernel (whose source includes `shaders/lib/rows.wgsl` once) for rows
/// of `n` on this context: threads per row (the `WG` override) and how they combine.
pub(crate) fn variant(ctx: &Context, n: usize) -> Variant {
    layout_variant(row_layout(ctx, n))
}

fn layout_variant(layout: RowLayout) -> Variant {
    match layout {
        RowLayout::Workgroup(threads) => Variant::default().constant("WG", threads as f64),
        RowLayout::Subgroup(lanes) => Variant::default()
            .constant("WG", lanes as f64)
            .block("row_reduce", SUBGROUP_REDUCE)
            .native(),
    }
}

/// The subgroup layout's `row_reduce` block.
const SUBGROUP_REDUCE: &str = include_str!("../../shaders/lib/rows_subgroup.wgsl");

/// Every variant a row kernel family is compiled in: each threads-per-row, and the subgroup
/// layout at every subgroup size wgpu reports.
pub(crate) fn variants() -> Vec<Variant> {
    let tree = [32, 64, 128, 256].map(RowLayout::Workgroup);
    let subgroup = [4, 8, 16, 32, 64, 128].map(RowLayout::Subgroup);
    tree.into_iter()
        .chain(subgroup)
        .map(layout_variant)
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::ops::cross_entropy::{self, Labels, LossState};
    use crate::ops::{layernorm, softmax};
    use crate::testing::*;
    use crate::{DType, Error, Tensor};

    /// A 0-d tensor has no last dimension to take rows of: every row kernel refuses it
    /// with a shape error naming the tensor, where each used to panic on `shape.last()`.
    #[test]
    fn a_tensor_without_dimensions_is_a_shape_error_not_a_panic() {
        let ctx = &ctx();
        let scalar = Tensor::zeros(ctx, &[], DType::F32).unwrap();
        let one = upload(ctx, &[1.0], &[1]);
        let is_shape_error = |what: &str, r: crate::Result<()>| match r {
            Err(Error::Shape { found, .. }) => assert!(found.is_empty(), "{what}"),
            other => panic!("{what}: expected a shape error, got {other:?}"),
        };
        let opts = softmax::SoftmaxOptions::default();
        is_shape_error(
            "softmax",
            softmax::plan_forward(ctx, &scalar, &opts, &scalar).map(drop),
        );
        is_shape_error(
            "softmax backward",
            softmax::plan_backward(ctx, &scalar, &scalar, 1.0, &scalar).map(drop),
        );
        is_shape_error(
            "layernorm",
            layernorm::forward(ctx, &scalar, &one, &one, 1e-5).map(drop),
        );
        let stats = Tensor::zeros(ctx, &[1, 2], DType::F32).unwrap();
        is_shape_error(
            "layernorm backward",
            layernorm::plan_backward(ctx, &scalar, &one, &stats, &scalar, &scalar).map(drop),
        );
        is_shape_error(
            "layernorm backward (parameters)",
            layernorm::plan_backward_params(ctx, &scalar, &stats, &scalar, &one, &one, false)
                .map(drop),
        );
        let labels = Labels::new(ctx, &[0], &[1], 1, -100).unwrap();
        let state = LossState::new(ctx, 1).unwrap();
        is_shape_error(
            "cross_entropy",
            cross_entropy::plan_forward(ctx, &scalar, &labels, &state).map(drop),
        );
    }
}
