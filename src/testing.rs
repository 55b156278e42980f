//! Helpers shared by the kernel tests: one context per test binary, seeded random inputs,
//! NaN-poisoned outputs and the relative-L2 assertion.

use std::ops::Deref;
use std::sync::{Mutex, MutexGuard, OnceLock};

use rand::{Rng, SeedableRng};

use crate::{check::rel_l2, Context, DType, Tensor};

/// The test binary's context, held exclusively for the guard's lifetime: wgpu's GL backend
/// panics when one thread waits on its context lock for more than a second while another
/// runs a long llvmpipe submission, so tests take turns. Use as `let ctx = &ctx();`.
pub struct GpuGuard {
    ctx: &'static Context,
    _turn: MutexGuard<'static, ()>,
}

impl Deref for GpuGuard {
    type Target = Context;
    fn deref(&self) -> &Context {
        self.ctx
    }
}

pub fn ctx() -> GpuGuard {
    static CTX: OnceLock<Context> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = CTX.get_or_init(|| {
        let ctx = Context::new().expect("tests need a GPU adapter");
        eprintln!("{}", ctx.capabilities());
        ctx
    });
    GpuGuard { ctx, _turn: turn }
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

/// Checks an f64 reference's gradients of q, k and v (`grads`) against central finite
/// differences of `objective(q, k, v)` (step 1e-6), within 1e-6 relative; `what` names the
/// case in a failure.
pub fn assert_qkv_gradients_match_finite_differences(
    what: &str,
    [q, k, v]: [&[f64]; 3],
    grads: [&[f64]; 3],
    objective: impl Fn(&[f64], &[f64], &[f64]) -> f64,
) {
    let eps = 1e-6;
    for (which, grad) in grads.iter().enumerate() {
        for (i, &g) in grad.iter().enumerate() {
            let mut plus = [q.to_vec(), k.to_vec(), v.to_vec()];
            let mut minus = plus.clone();
            plus[which][i] += eps;
            minus[which][i] -= eps;
            let fd = (objective(&plus[0], &plus[1], &plus[2])
                - objective(&minus[0], &minus[1], &minus[2]))
                / (2.0 * eps);
            assert!(
                (fd - g).abs() < 1e-6 * (1.0 + fd.abs()),
                "{what}tensor {which} [{i}]: fd {fd} vs {g}"
            );
        }
    }
}

#[track_caller]
pub fn assert_close(what: &str, ours: &[f32], reference: &[f64], tol: f64) {
    let err = rel_l2(ours, reference);
    assert!(
        err < tol,
        "{what}: relative L2 error {err:.3e} over tolerance {tol:.0e}"
    );
}

/// Runs `check` with each row layout the adapter offers (`ops::rows`): one subgroup per row
/// where its subgroups have a fixed size, then the workgroup tree; `check` gets the layout's
/// name for its messages. The context's default (subgroups allowed) is restored after.
pub fn for_each_row_layout(ctx: &Context, mut check: impl FnMut(&str)) {
    use crate::ops::rows::{row_layout, set_row_subgroups, RowLayout};
    struct Restore<'a>(&'a Context);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            set_row_subgroups(self.0, true);
        }
    }
    let _restore = Restore(ctx);
    set_row_subgroups(ctx, true);
    if let RowLayout::Subgroup(lanes) = row_layout(ctx, 1) {
        check(&format!("a subgroup of {lanes} per row"));
    }
    set_row_subgroups(ctx, false);
    check("a workgroup per row");
}

/// Whether a half-precision test can run here: the adapter offers `SHADER_F16`. Where it
/// does not (wgpu's GL backend never does) the test says so on stderr and the caller returns;
/// with `ROFORMER_REQUIRE_F16=1` (CI, on llvmpipe's Vulkan, which has f16) a missing feature
/// fails the test instead, so the f16 tests cannot be skipped there unnoticed.
#[track_caller]
pub fn has_f16(ctx: &Context, test: &str) -> bool {
    let caps = ctx.capabilities();
    if caps.shader_f16 {
        return true;
    }
    let why = format!(
        "{test}: needs SHADER_F16, which {} ({:?}) lacks",
        caps.adapter_name, caps.backend
    );
    assert!(
        std::env::var("ROFORMER_REQUIRE_F16").as_deref() != Ok("1"),
        "{why} (ROFORMER_REQUIRE_F16=1)"
    );
    eprintln!("SKIPPED {why}");
    false
}

/// `data` rounded to the nearest f16, as f32: what an f16 tensor of it holds.
pub fn round_f16(data: &[f32]) -> Vec<f32> {
    data.iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Uploads `data` as `dtype` (f32, or f16 rounded to nearest).
pub fn upload_as(ctx: &Context, data: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    match dtype {
        DType::F16 => {
            let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
            Tensor::from_slice(ctx, &h, shape).unwrap()
        }
        _ => upload(ctx, data, shape),
    }
}

/// An output tensor of `dtype` filled with NaN.
pub fn poisoned_as(ctx: &Context, shape: &[usize], dtype: DType) -> Tensor {
    let t = Tensor::zeros(ctx, shape, dtype).unwrap();
    crate::ops::elementwise::fill(ctx, &t, f32::NAN).unwrap();
    t
}

/// A float tensor's values (f32 or f16) as f32.
pub fn download_f32(ctx: &Context, t: &Tensor) -> Vec<f32> {
    match t.dtype() {
        DType::F16 => t
            .to_vec::<half::f16>(ctx)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        _ => download(ctx, t),
    }
}
