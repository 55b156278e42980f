//! Shared by the integration tests: one GPU context per test binary, the reference
//! fixtures, NaN-poisoned outputs.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use roformer_wgpu::{ops::elementwise, Context, DType, Tensor};

pub mod reference_model;

/// The test binary's context, held exclusively for the guard's lifetime (wgpu's GL backend
/// cannot share a device between threads that wait on long submissions). Use as
/// `let ctx = &ctx();`.
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
    let ctx = CTX.get_or_init(|| Context::new().expect("tests need a GPU adapter"));
    GpuGuard { ctx, _turn: turn }
}

/// The crate's fixtures, `tests/fixtures/` (made by `tools/make_fixtures.py`; see the README
/// there).
pub fn fixtures_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures")
}

/// The crate's folder: `CARGO_MANIFEST_DIR` at run time (cargo sets it; the GPU session sets
/// it where it carried the test binaries), else where the tests were built.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Every tensor of a safetensors file as f32 (integers converted), with its shape.
pub fn load_fixture(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let path = fixtures_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
                safetensors::Dtype::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(view.data())
                    .into_iter()
                    .map(|v| v as f32)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

pub fn upload(ctx: &Context, data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(ctx, data, shape).unwrap()
}

pub fn poisoned(ctx: &Context, shape: &[usize]) -> Tensor {
    let t = Tensor::zeros(ctx, shape, DType::F32).unwrap();
    elementwise::fill(ctx, &t, f32::NAN).unwrap();
    t
}

pub fn download(ctx: &Context, t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>(ctx).unwrap()
}

/// Whether a half-precision test can run: the adapter offers `SHADER_F16`. Without it the
/// test says SKIPPED and returns; with `ROFORMER_REQUIRE_F16=1` (CI on llvmpipe's Vulkan) a
/// missing feature fails it instead.
#[allow(dead_code)] // not every test binary has f16 tests
pub fn has_f16(ctx: &Context, test: &str) -> bool {
    if ctx.capabilities().shader_f16 {
        return true;
    }
    let why = format!(
        "{test}: {} has no SHADER_F16",
        ctx.capabilities().adapter_name
    );
    assert_ne!(
        std::env::var("ROFORMER_REQUIRE_F16").as_deref(),
        Ok("1"),
        "{why}"
    );
    eprintln!("SKIPPED {why}");
    false
}
