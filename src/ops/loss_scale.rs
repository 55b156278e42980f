//! Dynamic loss scaling for mixed-precision training, as `torch.cuda.amp.GradScaler` does
//! it: the loss's gradient is multiplied by a scale so that small f16 gradients do not
//! flush to zero; gradient clipping divides it out again ([`super::clip`]); and after each
//! step one thread updates the scale on the GPU: halved when a gradient overflowed (the
//! optimizer skipped that step), doubled after a run of good steps. The scale lives in a
//! `[4]` f32 state tensor, `(scale, good steps, scale used, skipped)`, read by the next step
//! without a round trip to the host.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::readback::Pending;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The update kernel.
pub static SHADER: Shader = Shader {
    name: "loss_scale",
    source: include_str!("../../shaders/loss_scale.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

/// Elements of the state tensor: `(scale, good steps, scale used by the last step, 1 when
/// the last step was skipped)`.
pub const STATE_LEN: usize = 4;

/// How the loss scale moves, with `GradScaler`'s defaults.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaling {
    /// The first step's scale (2^16).
    pub init_scale: f32,
    /// Multiplies the scale after `growth_interval` good steps in a row (2).
    pub growth_factor: f32,
    /// Multiplies the scale when a step's gradients overflow (0.5).
    pub backoff_factor: f32,
    /// Good steps in a row before the scale grows (2000).
    pub growth_interval: u32,
}

impl Default for LossScaling {
    fn default() -> Self {
        LossScaling {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl LossScaling {
    /// `Ok` when the settings make sense: a positive finite initial scale, growth above 1,
    /// backoff in (0, 1), an interval from 1 to 2^24 (counted in an f32).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(format!("loss scaling: {what}")));
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return bad(format!(
                "init_scale must be positive and finite, got {}",
                self.init_scale
            ));
        }
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            return bad(format!(
                "growth_factor must be above 1, got {}",
                self.growth_factor
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return bad(format!(
                "backoff_factor must be between 0 and 1, got {}",
                self.backoff_factor
            ));
        }
        if self.growth_interval == 0 || self.growth_interval > 1 << 24 {
            return bad(format!(
                "growth_interval must be from 1 to 2^24, got {}",
                self.growth_interval
            ));
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    growth: f32,
    backoff: f32,
    interval: u32,
    n: u32,
}

/// The state's values for `scale` after `good_steps` good steps (the last step's record
/// set as if it had used `scale` and not been skipped).
fn state_values(scale: f32, good_steps: u32) -> [f32; STATE_LEN] {
    [scale, good_steps as f32, scale, 0.0]
}

/// A new state tensor: the initial scale, no good steps yet.
pub fn new_state(ctx: &Context, scaling: &LossScaling) -> Result<Tensor> {
    scaling.validate()?;
    Tensor::from_slice(ctx, &state_values(scaling.init_scale, 0), &[STATE_LEN])
}

/// `(scale, good steps)` of a state tensor, on their way back.
pub fn read_state(ctx: &Context, state: &Tensor) -> Result<Pending<(f32, u32)>> {
    state.expect_shape("loss_scale", "state", &[STATE_LEN])?;
    state.read_then(ctx, |s: Vec<f32>| Ok((s[0], s[1] as u32)))
}

/// Sets a state tensor to `scale` after `good_steps` good steps (what [`read_state`] read):
/// the scale positive and finite, the steps fewer than `scaling.growth_interval`.
pub fn write_state(
    ctx: &Context,
    scaling: &LossScaling,
    state: &Tensor,
    scale: f32,
    good_steps: u32,
) -> Result<()> {
    state.expect_shape("loss_scale", "state", &[STATE_LEN])?;
    if !(scale.is_finite() && scale > 0.0) || good_steps >= scaling.growth_interval {
        return Err(Error::invalid(format!(
            "loss scale {scale} after {good_steps} good steps: the scale must be positive \
             and finite, the steps fewer than the growth interval ({})",
            scaling.growth_interval
        )));
    }
    state.write(ctx, &state_values(scale, good_steps))
}

/// Plans the update of `state` from the step's gradient statistics `stats` (`(factor,
/// norm)`, as [`super::clip::plan`] writes them). Run it after the optimizer.
pub fn plan_update(
    ctx: &Context,
    scaling: &LossScaling,
    stats: &Tensor,
    state: &Tensor,
) -> Result<Dispatch> {
    scaling.validate()?;
    stats.expect_shape("loss_scale", "stats", &[2])?;
    stats.expect_dtype("loss_scale", "stats", DType::F32)?;
    state.expect_shape("loss_scale", "state", &[STATE_LEN])?;
    state.expect_dtype("loss_scale", "state", DType::F32)?;
    DispatchBuilder::family(ctx, &FAMILY, "update")
        .params(&Params {
            growth: scaling.growth_factor,
            backoff: scaling.backoff_factor,
            interval: scaling.growth_interval,
            n: 0,
        })
        .read("stats", stats)
        .write("state", state)
        .build([1, 1, 1])
}

/// Plans `grads *= 1 / state[0]` (f32 gradients, in place): a backward pass's gradients
/// without the loss scale, as `GradScaler.unscale_` leaves them.
pub fn plan_unscale(ctx: &Context, grads: &Tensor, state: &Tensor) -> Result<Dispatch> {
    grads.expect_dtype("loss_scale unscale", "grads", DType::F32)?;
    state.expect_shape("loss_scale unscale", "state", &[STATE_LEN])?;
    state.expect_dtype("loss_scale unscale", "state", DType::F32)?;
    let n = grads.numel();
    DispatchBuilder::family(ctx, &FAMILY, "unscale")
        .params(&Params {
            growth: 0.0,
            backoff: 0.0,
            interval: 0,
            n: n as u32,
        })
        .write("state", state)
        .write("grads", grads)
        .build(ctx.grid_1d((n as u64).div_ceil(256))?)
}

/// CPU reference, following torch's `_amp_update_scale_`.
pub mod reference {
    use super::LossScaling;

    /// `(scale, good steps)` after a step whose unscaled gradient norm was `norm`.
    pub fn update(s: &LossScaling, scale: f64, good: u32, norm: f64) -> (f64, u32) {
        if !norm.is_finite() {
            return (scale * s.backoff_factor as f64, 0);
        }
        if good + 1 == s.growth_interval {
            let grown = (scale * s.growth_factor as f64) as f32;
            let scale = if grown.is_finite() {
                grown as f64
            } else {
                scale
            };
            return (scale, 0);
        }
        (scale, good + 1)
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            growth,
            backoff,
            interval,
            n
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn the_scale_backs_off_on_overflow_and_grows_after_a_run_of_good_steps() {
        let ctx = &ctx();
        let scaling = LossScaling {
            init_scale: 1024.0,
            growth_interval: 3,
            ..Default::default()
        };
        let state = new_state(ctx, &scaling).unwrap();
        let stats = upload(ctx, &[1.0, 0.0], &[2]);
        let update = plan_update(ctx, &scaling, &stats, &state).unwrap();
        let (mut scale, mut good) = (scaling.init_scale as f64, 0u32);
        let norms = [
            1.0,
            2.0,
            f32::INFINITY,
            0.5,
            3.0,
            4.0,
            5.0,
            f32::NAN,
            f32::NEG_INFINITY,
            1.0,
            1.0,
            1.0,
            1.0,
        ];
        for (i, norm) in norms.into_iter().enumerate() {
            stats.write(ctx, &[1.0f32, norm]).unwrap();
            ctx.run(std::slice::from_ref(&update)).unwrap();
            let used = scale;
            (scale, good) = reference::update(&scaling, scale, good, norm as f64);
            let got = download(ctx, &state);
            let want = [
                scale as f32,
                good as f32,
                used as f32,
                !norm.is_finite() as u8 as f32,
            ];
            assert_eq!(got, want, "step {i}, norm {norm}");
        }
    }

    #[test]
    fn unscaling_divides_every_gradient_by_the_current_scale() {
        let ctx = &ctx();
        let mut rng = rng(31);
        let state = upload(ctx, &[4096.0, 3.0, 4096.0, 0.0], &[STATE_LEN]);
        for n in [1usize, 7, 33, 129, 70_001] {
            let g = randn(&mut rng, n);
            let grads = upload(ctx, &g, &[n]);
            ctx.run(&[plan_unscale(ctx, &grads, &state).unwrap()])
                .unwrap();
            let want: Vec<f64> = g.iter().map(|&v| v as f64 / 4096.0).collect();
            assert_close(
                &format!("unscale n={n}"),
                &download(ctx, &grads),
                &want,
                1e-7,
            );
        }
    }

    #[test]
    fn the_scale_does_not_grow_past_f32() {
        let ctx = &ctx();
        let scaling = LossScaling {
            init_scale: f32::MAX / 1.5,
            growth_interval: 1,
            ..Default::default()
        };
        let state = new_state(ctx, &scaling).unwrap();
        let stats = upload(ctx, &[1.0, 1.0], &[2]);
        ctx.run(&[plan_update(ctx, &scaling, &stats, &state).unwrap()])
            .unwrap();
        assert_eq!(download(ctx, &state)[..2], [f32::MAX / 1.5, 0.0]);
    }

    #[test]
    fn settings_out_of_range_are_errors() {
        let ok = LossScaling::default();
        assert!(ok.validate().is_ok());
        for bad in [
            LossScaling {
                init_scale: 0.0,
                ..ok
            },
            LossScaling {
                init_scale: f32::INFINITY,
                ..ok
            },
            LossScaling {
                growth_factor: 1.0,
                ..ok
            },
            LossScaling {
                backoff_factor: 1.0,
                ..ok
            },
            LossScaling {
                backoff_factor: 0.0,
                ..ok
            },
            LossScaling {
                growth_interval: 0,
                ..ok
            },
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("loss scaling"), "{e}");
        }
    }
}
