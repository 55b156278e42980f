//! Global gradient norm and the clipping factor of `torch.nn.utils.clip_grad_norm_`.
//! The factor lands in a `[2]` tensor `(scale, norm)` that AdamW reads as its gradient scale.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::Result;
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "clip",
    source: concat!(
        include_str!("../../shaders/clip.wgsl"),
        include_str!("../../shaders/lib/rows.wgsl")
    ),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

/// Workgroups per chunk in `sum_squares` (the shader's `GROUPS`).
const GROUPS: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    partials: u32,
    clip: u32,
    max_norm: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

/// Scratch for the partial sums of `chunks` gradient chunks.
pub fn partials(ctx: &Context, chunks: usize) -> Result<Tensor> {
    Tensor::zeros(ctx, &[chunks.max(1) * GROUPS], DType::F32)
}

/// `out = (scale, norm)` over every tensor in `grads` (each bound whole, so each must fit
/// a storage binding). `max_norm = None`: no clipping, scale 1; the norm is still computed.
/// `loss_scale` (its first element, read when the step runs): the factor the gradients
/// carry under mixed precision; the norm is of the gradients divided by it, and the scale
/// written is divided by it too (`None`: 1).
pub fn plan(
    ctx: &Context,
    grads: &[Tensor],
    max_norm: Option<f32>,
    loss_scale: Option<&Tensor>,
    partial: &Tensor,
    out: &Tensor,
) -> Result<Vec<Dispatch>> {
    out.expect_shape("clip", "out", &[2])?;
    partial.expect_shape("clip", "partial", &[grads.len().max(1) * GROUPS])?;
    let loss_scale = &super::factors_or(ctx, loss_scale, &[1.0], "clip", "loss_scale")?;
    let mut plan = Vec::new();
    let params = |n: usize, offset: usize| Params {
        n: n as u32,
        offset: offset as u32,
        partials: (grads.len() * GROUPS) as u32,
        clip: max_norm.is_some() as u32,
        max_norm: max_norm.unwrap_or(0.0),
        _p0: 0,
        _p1: 0,
        _p2: 0,
    };
    for (i, g) in grads.iter().enumerate() {
        g.expect_dtype("clip", "gradient", DType::F32)?;
        plan.push(
            DispatchBuilder::family(ctx, &FAMILY, "sum_squares")
                .params(&params(g.numel(), i * GROUPS))
                .read("grads", g)
                .read("loss_scale", loss_scale)
                .write("partial", partial)
                .build([GROUPS as u32, 1, 1])?,
        );
    }
    plan.push(
        DispatchBuilder::family(ctx, &FAMILY, "finish")
            .params(&params(0, 0))
            .read("partial_sums", partial)
            .read("loss_scale", loss_scale)
            .write("stats", out)
            .build([1, 1, 1])?,
    );
    Ok(plan)
}

/// CPU reference, in f64: `(scale, norm)`.
pub mod reference {
    /// `(scale, norm)` of torch's `clip_grad_norm_` over all gradients.
    pub fn clip(grads: &[f64], max_norm: Option<f64>) -> (f64, f64) {
        let norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
        let scale = max_norm.map_or(1.0, |m| (m / (norm + 1e-6)).min(1.0));
        (scale, norm)
    }

    /// [`clip`] of gradients that carry a loss scale, as `torch.cuda.amp.GradScaler`'s
    /// `unscale_` then `clip_grad_norm_` see them: `(scale / loss_scale, norm)`, the norm
    /// of the unscaled gradients.
    pub fn clip_scaled(grads: &[f64], max_norm: Option<f64>, loss_scale: f64) -> (f64, f64) {
        let unscaled: Vec<f64> = grads.iter().map(|g| g / loss_scale).collect();
        let (scale, norm) = clip(&unscaled, max_norm);
        (scale / loss_scale, norm)
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            n,
            offset,
            partials,
            clip,
            max_norm,
            _p0,
            _p1,
            _p2
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn norm_and_scale_match_reference_over_several_chunks() {
        let ctx = &ctx();
        let mut rng = rng(19);
        let sizes = [1usize, 7, 129, 70_001];
        let data: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut rng, n)).collect();
        let grads: Vec<Tensor> = data.iter().map(|d| upload(ctx, d, &[d.len()])).collect();
        let all: Vec<f64> = data.iter().flatten().map(|&v| v as f64).collect();
        let scratch = partials(ctx, grads.len()).unwrap();
        for max_norm in [None, Some(1.0f32), Some(1e6)] {
            let out = poisoned(ctx, &[2]);
            ctx.run(&plan(ctx, &grads, max_norm, None, &scratch, &out).unwrap())
                .unwrap();
            let (scale, norm) = reference::clip(&all, max_norm.map(|m| m as f64));
            let got = download(ctx, &out);
            assert_close(&format!("grad norm {max_norm:?}"), &got[1..], &[norm], 1e-5);
            assert_close(
                &format!("clip scale {max_norm:?}"),
                &got[..1],
                &[scale],
                1e-5,
            );
        }
    }

    #[test]
    fn loss_scaled_gradients_are_unscaled_in_the_norm_and_the_factor() {
        let ctx = &ctx();
        let mut rng = rng(23);
        let sizes = [1usize, 33, 4097];
        // What the backward pass gives under a loss scale: the true gradients times it.
        let loss_scale = 32768.0f32;
        let data: Vec<Vec<f32>> = sizes
            .iter()
            .map(|&n| randn(&mut rng, n).iter().map(|g| g * loss_scale).collect())
            .collect();
        let grads: Vec<Tensor> = data.iter().map(|d| upload(ctx, d, &[d.len()])).collect();
        let all: Vec<f64> = data.iter().flatten().map(|&v| v as f64).collect();
        let scratch = partials(ctx, grads.len()).unwrap();
        let scale_tensor = upload(ctx, &[loss_scale, 7.0], &[2]);
        for max_norm in [None, Some(1.0f32)] {
            let out = poisoned(ctx, &[2]);
            let dispatches =
                plan(ctx, &grads, max_norm, Some(&scale_tensor), &scratch, &out).unwrap();
            ctx.run(&dispatches).unwrap();
            let (scale, norm) =
                reference::clip_scaled(&all, max_norm.map(|m| m as f64), loss_scale as f64);
            let got = download(ctx, &out);
            let what = format!("loss-scaled {max_norm:?}");
            assert_close(&format!("{what} norm"), &got[1..], &[norm], 1e-5);
            assert_close(&format!("{what} factor"), &got[..1], &[scale], 1e-5);
        }
    }
}
