//! Helpers shared by the kernel tests: one context per test binary, seeded random inputs,
//! NaN-poisoned outputs and the relative-L2 assertion.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};

use crate::{check::rel_l2, Context, DType, Tensor};

pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = Context::new().expect("tests need a GPU adapter");
        eprintln!("{}", ctx.capabilities());
        ctx
    })
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Standard-normal-ish values (sum of uniforms; exact distribution does not matter).
pub fn randn(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.7)
        .collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn upload(ctx: &Context, data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(ctx, data, shape).unwrap()
}

/// An output tensor filled with NaN, so any element a kernel fails to write shows up.
pub fn poisoned(ctx: &Context, shape: &[usize]) -> Tensor {
    let t = Tensor::zeros(ctx, shape, DType::F32).unwrap();
    crate::ops::elementwise::fill(ctx, &t, f32::NAN).unwrap();
    t
}

pub fn download(ctx: &Context, t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>(ctx).unwrap()
}

#[track_caller]
pub fn assert_close(what: &str, ours: &[f32], reference: &[f64], tol: f64) {
    let err = rel_l2(ours, reference);
    assert!(
        err < tol,
        "{what}: relative L2 error {err:.3e} over tolerance {tol:.0e}"
    );
}
