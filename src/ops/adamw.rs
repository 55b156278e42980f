//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments).
//! One dispatch updates a flat range: a parameter tensor, or all parameters at once when
//! they share one buffer.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{one_form, KernelFamily, ParamBlock};
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The AdamW kernel.
pub static SHADER: Shader = Shader {
    name: "adamw",
    source: include_str!("../../shaders/adamw.wgsl"),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

/// Hyper-parameters, with torch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (the schedule's peak).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay, applied to every parameter as torch does.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    decay: f32,
    beta2: f32,
    w1: f32,
    w2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

/// Parameters of step `t` (1-based) at learning rate `lr`, the f64 parts computed as torch does.
fn params(n: usize, c: &AdamWConfig, lr: f64, t: u64) -> Params {
    let bc1 = 1.0 - c.beta1.powf(t as f64);
    let bc2 = 1.0 - c.beta2.powf(t as f64);
    Params {
        n: n as u32,
        decay: (1.0 - lr * c.weight_decay) as f32,
        beta2: c.beta2 as f32,
        w1: (1.0 - c.beta1) as f32,
        w2: (1.0 - c.beta2) as f32,
        eps: c.eps as f32,
        step_size: (lr / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
    }
}

/// Optimizer state of one flat range of parameters.
#[derive(Clone, Debug)]
pub struct AdamWState {
    /// First moments.
    pub m: Tensor,
    /// Second moments.
    pub v: Tensor,
}

impl AdamWState {
    /// Zero moments for a parameter of `shape`.
    pub fn zeros(ctx: &Context, shape: &[usize]) -> Result<AdamWState> {
        Ok(AdamWState {
            m: Tensor::zeros(ctx, shape, DType::F32)?,
            v: Tensor::zeros(ctx, shape, DType::F32)?,
        })
    }
}

/// A planned update; [`AdamWStep::set_step`] rewrites the step number and learning rate
/// before each replay.
#[derive(Clone, Debug)]
pub struct AdamWStep {
    /// The update's dispatch.
    pub dispatch: Dispatch,
    n: usize,
    config: AdamWConfig,
}

impl AdamWStep {
    /// Sets step `t` (1-based) and the learning rate for the next run.
    pub fn set_step(&self, ctx: &Context, t: u64, lr: f64) -> Result<()> {
        if t == 0 {
            return Err(Error::invalid("AdamW steps count from 1"));
        }
        self.dispatch
            .write_params(ctx, &params(self.n, &self.config, lr, t));
        Ok(())
    }
}

/// Plans `param ← AdamW(param, grad · scale[0])`. `scale` (`[2]`) is what gradient clipping
/// writes: the factor and the global gradient norm; a non-finite norm skips the update (the
/// parameters and moments stay as they were). `None` means `(1, 0)`. Step 1 at `config.lr`
/// until [`AdamWStep::set_step`].
pub fn plan_step(
    ctx: &Context,
    config: &AdamWConfig,
    param: &Tensor,
    grad: &Tensor,
    state: &AdamWState,
    scale: Option<&Tensor>,
) -> Result<AdamWStep> {
    param.expect_dtype("adamw", "param", DType::F32)?;
    grad.expect_shape("adamw", "grad", param.shape())?;
    state.m.expect_shape("adamw", "m", param.shape())?;
    state.v.expect_shape("adamw", "v", param.shape())?;
    if let Some(s) = scale {
        s.expect_shape("adamw", "scale", &[2])?;
    }
    let scale = &super::factors_or(ctx, scale, &[1.0, 0.0], "adamw", "scale")?;
    let n = param.numel();
    let dispatch = DispatchBuilder::family(ctx, &FAMILY, "step")
        .params(&params(n, config, config.lr, 1))
        .read("grad", grad)
        .read("scale", scale)
        .write("param", param)
        .write("m", &state.m)
        .write("v", &state.v)
        .build(ctx.grid_1d((n as u64).div_ceil(256))?)?;
    Ok(AdamWStep {
        dispatch,
        n,
        config: *config,
    })
}

/// CPU reference, in f64, following torch's `_single_tensor_adamw`.
pub mod reference {
    use super::AdamWConfig;

    /// Step `t` (1-based) of AdamW on `p` with gradient `g`.
    pub fn step(c: &AdamWConfig, t: u64, p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
        let bc1 = 1.0 - c.beta1.powf(t as f64);
        let bc2 = 1.0 - c.beta2.powf(t as f64);
        for i in 0..p.len() {
            p[i] *= 1.0 - c.lr * c.weight_decay;
            m[i] += (1.0 - c.beta1) * (g[i] - m[i]);
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            p[i] -= c.lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + c.eps);
        }
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            n,
            decay,
            beta2,
            w1,
            w2,
            eps,
            step_size,
            bc2_sqrt
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn ten_steps_match_reference() {
        let ctx = &ctx();
        let mut rng = rng(14);
        for n in [1usize, 7, 33, 129, 4097] {
            let config = AdamWConfig {
                lr: 3e-3,
                weight_decay: 0.1,
                ..Default::default()
            };
            let mut p = to_f64(&randn(&mut rng, n));
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let tp = upload(ctx, &p.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[n]);
            let tg = upload(ctx, &vec![0.0; n], &[n]);
            let state = AdamWState::zeros(ctx, &[n]).unwrap();
            let scale = upload(ctx, &[0.5, 1.0], &[2]);
            let step = plan_step(ctx, &config, &tp, &tg, &state, Some(&scale)).unwrap();
            for t in 1..=10u64 {
                let g = randn(&mut rng, n);
                tg.write(ctx, &g).unwrap();
                step.set_step(ctx, t, config.lr).unwrap();
                ctx.run(std::slice::from_ref(&step.dispatch)).unwrap();
                let g: Vec<f64> = g.iter().map(|&x| 0.5 * x as f64).collect();
                reference::step(&config, t, &mut p, &g, &mut m, &mut v);
            }
            assert_close(
                &format!("adamw params n={n}"),
                &download(ctx, &tp),
                &p,
                1e-5,
            );
            assert_close(
                &format!("adamw m n={n}"),
                &download(ctx, &state.m),
                &m,
                1e-5,
            );
            assert_close(
                &format!("adamw v n={n}"),
                &download(ctx, &state.v),
                &v,
                1e-5,
            );
        }
    }

    #[test]
    fn a_non_finite_gradient_norm_skips_the_step() {
        let ctx = &ctx();
        let p0 = [1.0f32, -2.0, 3.0];
        let tp = upload(ctx, &p0, &[3]);
        let tg = upload(ctx, &[0.1, 0.2, f32::NAN], &[3]);
        let state = AdamWState::zeros(ctx, &[3]).unwrap();
        for norm in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let scale = upload(ctx, &[1.0, norm], &[2]);
            let step =
                plan_step(ctx, &AdamWConfig::default(), &tp, &tg, &state, Some(&scale)).unwrap();
            ctx.run(std::slice::from_ref(&step.dispatch)).unwrap();
            assert_eq!(download(ctx, &tp), p0, "norm {norm}: parameters must stay");
            assert_eq!(
                download(ctx, &state.m),
                vec![0.0; 3],
                "norm {norm}: moments must stay"
            );
        }
    }
}
