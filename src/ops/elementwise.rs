//! Elementwise kernels: fill, and `out = alpha * a + beta * b` (residual adds, copies,
//! scaled accumulation). The backward of an add is the identity, so there is no kernel for it.

use bytemuck::{Pod, Zeroable};

use crate::context::{Context, Shader};
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = Shader {
    name: "elementwise",
    source: include_str!("../../shaders/elementwise.wgsl"),
};

const WG: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    value: f32,
}

/// `out[i] = value` for every element.
pub fn plan_fill(ctx: &Context, out: &Tensor, value: f32) -> Result<Dispatch> {
    out.expect_dtype("fill", "out", DType::F32)?;
    let n = out.numel();
    DispatchBuilder::new(ctx, &SHADER, "fill")
        .params(&Params {
            n: n as u32,
            alpha: 0.0,
            beta: 0.0,
            value,
        })
        .read_opt(None)
        .read_opt(None)
        .write(out)
        .build(ctx.grid_1d((n as u64).div_ceil(WG))?)
}

pub fn fill(ctx: &Context, out: &Tensor, value: f32) -> Result<()> {
    ctx.submit(&[plan_fill(ctx, out, value)?]).map(drop)
}

/// `out = alpha * a + beta * b`; with `b = None` (or `beta = 0`) b is not read.
pub fn plan_axpby(
    ctx: &Context,
    alpha: f32,
    a: &Tensor,
    beta: f32,
    b: Option<&Tensor>,
    out: &Tensor,
) -> Result<Dispatch> {
    a.expect_dtype("axpby", "a", DType::F32)?;
    out.expect_dtype("axpby", "out", DType::F32)?;
    if out.numel() != a.numel() {
        return Err(Error::shape(
            "axpby",
            "out",
            format!("{} elements like a {:?}", a.numel(), a.shape()),
            out.shape(),
        ));
    }
    let beta = match b {
        Some(b) => {
            b.expect_dtype("axpby", "b", DType::F32)?;
            if b.numel() != a.numel() {
                return Err(Error::shape(
                    "axpby",
                    "b",
                    format!("{} elements like a {:?}", a.numel(), a.shape()),
                    b.shape(),
                ));
            }
            beta
        }
        None => 0.0,
    };
    let n = a.numel();
    DispatchBuilder::new(ctx, &SHADER, "axpby")
        .params(&Params {
            n: n as u32,
            alpha,
            beta,
            value: 0.0,
        })
        .read(a)
        .read_opt(b.filter(|_| beta != 0.0))
        .write(out)
        .build(ctx.grid_1d((n as u64).div_ceil(WG))?)
}

/// `a + b` in a new tensor of a's shape.
pub fn add(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = Tensor::zeros(ctx, a.shape(), DType::F32)?;
    ctx.submit(&[plan_axpby(ctx, 1.0, a, 1.0, Some(b), &out)?])?;
    Ok(out)
}

/// CPU reference, in f64.
pub mod reference {
    pub fn axpby(alpha: f64, a: &[f64], beta: f64, b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| alpha * x + beta * y).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn axpby_matches_reference_at_awkward_sizes() {
        let ctx = &ctx();
        let mut rng = rng(1);
        for n in [1usize, 7, 33, 129, 1000, 65537] {
            let a = randn(&mut rng, n);
            let b = randn(&mut rng, n);
            let ta = upload(ctx, &a, &[n]);
            let tb = upload(ctx, &b, &[n]);
            let out = poisoned(ctx, &[n]);
            ctx.run(&[plan_axpby(ctx, 0.5, &ta, -2.0, Some(&tb), &out).unwrap()])
                .unwrap();
            let want = reference::axpby(0.5, &to_f64(&a), -2.0, &to_f64(&b));
            assert_close(&format!("axpby n={n}"), &download(ctx, &out), &want, 1e-6);
        }
    }

    #[test]
    fn fill_writes_every_element_and_b_is_optional() {
        let ctx = &ctx();
        let out = poisoned(ctx, &[3, 67]);
        fill(ctx, &out, 2.5).unwrap();
        assert!(download(ctx, &out).iter().all(|&v| v == 2.5));
        let a = upload(ctx, &[1.0, -2.0, 3.0], &[3]);
        let copy = poisoned(ctx, &[3]);
        ctx.run(&[plan_axpby(ctx, 2.0, &a, 1.0, None, &copy).unwrap()])
            .unwrap();
        assert_eq!(download(ctx, &copy), vec![2.0, -4.0, 6.0]);
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let ctx = &ctx();
        let a = upload(ctx, &[1.0, 2.0], &[2]);
        let b = upload(ctx, &[1.0, 2.0, 3.0], &[3]);
        assert!(matches!(add(ctx, &a, &b), Err(Error::Shape { .. })));
    }
}
