//! Kernel families. Each module owns one WGSL file in `shaders/`: its pipelines, its
//! forward and backward entry points, a plain CPU reference in f64 (`reference`), and the
//! tests that hold the GPU to that reference. Its `FAMILY` describes the shader and every
//! form it is compiled in; [`FAMILIES`] lists them all. Attention's forms live together in
//! [`attention`], the matrix products' in [`matmul`].

pub mod adamw;
pub mod attention;
pub mod bce_mse;
pub mod clip;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod loss_scale;
pub mod matmul;
pub mod reduce;
pub mod rope;
pub mod rows;
pub mod softmax;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::family::KernelFamily;
use crate::tensor::{DType, Tensor};

/// A small f32 tensor of factors a kernel reads when the step runs (mixed precision's loss
/// scale, clipping's `(factor, norm)`), or `default` uploaded where the caller has none. A
/// given one must be f32 with at least `default.len()` elements.
pub(crate) fn factors_or(
    ctx: &Context,
    given: Option<&Tensor>,
    default: &[f32],
    op: &'static str,
    what: &'static str,
) -> Result<Tensor> {
    let Some(t) = given else {
        return Tensor::from_slice(ctx, default, &[default.len()]);
    };
    t.expect_dtype(op, what, DType::F32)?;
    if t.numel() < default.len() {
        return Err(Error::shape(
            op,
            what,
            format!("at least {} elements", default.len()),
            t.shape(),
        ));
    }
    Ok(t.clone())
}

/// Every kernel family of the library, once: what the translation test compiles for every
/// backend, what the layout test holds to the WGSL, and what the dispatches are built from.
/// Adding a family is adding its module's `FAMILY` here.
pub static FAMILIES: [&KernelFamily; 21] = [
    &adamw::FAMILY,
    &attention::cached::FAMILY,
    &attention::flash::FAMILY,
    &attention::linear::FAMILY,
    &attention::chunked_linear::FAMILY,
    &attention::local::FAMILY,
    &attention::performer::FAMILY,
    &attention::recurrent::FAMILY,
    &bce_mse::FAMILY,
    &clip::FAMILY,
    &cross_entropy::FAMILY,
    &elementwise::FAMILY,
    &embedding::FAMILY,
    &gelu::FAMILY,
    &layernorm::FAMILY,
    &loss_scale::FAMILY,
    &matmul::FAMILY,
    &matmul::coop::FAMILY,
    &reduce::FAMILY,
    &rope::FAMILY,
    &softmax::FAMILY,
];

#[cfg(test)]
mod tests {
    /// The host's mirrors of the WGSL parameter structs have the WGSL's size and the same
    /// fields at the same offsets (as naga lays the WGSL out), so no field is read from the
    /// wrong place after either side changes; a shader with a uniform block has one.
    #[test]
    fn parameter_blocks_match_the_wgsl_layout() {
        let problems: Vec<String> = super::FAMILIES
            .iter()
            .filter_map(|f| f.check_params().err().map(|e| e.to_string()))
            .collect();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[cfg(test)]
mod binding_limits {
    use crate::shader::{entry_interface, parse, BindingKind};

    /// WebGPU's default limit of storage buffers per shader stage: every entry point of
    /// every variant stays within it, so no kernel needs a device with raised limits for
    /// its bindings (README, "What the library needs of a device").
    #[test]
    fn every_entry_point_binds_at_most_eight_storage_buffers() {
        let mut worst = (0, String::new());
        for family in super::FAMILIES {
            let shader = family.shader;
            for (_, source) in family.compiled_forms().unwrap() {
                let (module, info) = parse(shader.name, &source).unwrap();
                for ep in &module.entry_points {
                    let i = entry_interface(shader.name, &module, &info, &ep.name).unwrap();
                    let storage = i
                        .bindings
                        .iter()
                        .filter(|b| matches!(b.kind, BindingKind::Storage(_)))
                        .count();
                    if storage > worst.0 {
                        worst = (storage, format!("{}::{}", shader.name, ep.name));
                    }
                }
            }
        }
        eprintln!(
            "most storage buffers in one entry point: {} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= 8,
            "{} binds {} storage buffers",
            worst.1,
            worst.0
        );
    }
}
