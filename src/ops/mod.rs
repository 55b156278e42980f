//! Kernel families. Each module owns one WGSL file in `shaders/`: its pipelines, its
//! forward and backward entry points, a plain CPU reference in f64 (`reference`), and the
//! tests that hold the GPU to that reference.

pub mod adamw;
pub mod attention;
pub mod chunked_linear_attention;
pub mod clip;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod flash_attention;
pub mod gelu;
pub mod heads;
pub mod layernorm;
pub mod linear_attention;
pub mod loss_scale;
pub mod matmul;
pub mod reduce;
pub mod rope;
pub mod rows;
pub mod softmax;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::shader::{apply_variant, Shader};
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

/// One compiled form of a shader: its source after text substitutions, and the values of
/// its `override` constants (empty: the defaults).
#[derive(Clone, Debug)]
pub struct ShaderVariant {
    /// The WGSL, text substitutions applied.
    pub source: String,
    /// `override` constants, by name.
    pub constants: Vec<(&'static str, f64)>,
    /// Uses native-only features (cooperative matrices, f16, subgroups): compiled only on
    /// devices that have them, and only for backends that can express them.
    pub native_only: bool,
}

/// Every shader with each variant the library compiles; the cross-translation test
/// validates all of them. An error means a variant's text substitution no longer matches
/// its shader.
pub fn all_shader_sources() -> Result<Vec<(&'static Shader, Vec<ShaderVariant>)>> {
    let plain = |s: &'static Shader| {
        (
            s,
            vec![ShaderVariant {
                source: s.source.to_string(),
                constants: Vec::new(),
                native_only: false,
            }],
        )
    };
    // Text variants: sizes that fix per-thread arrays (what overrides cannot do).
    let text = |s: &'static Shader, subs: Vec<Vec<(&'static str, String)>>| -> Result<_> {
        let variants = subs
            .iter()
            .map(|sub| {
                Ok(ShaderVariant {
                    source: apply_variant(s, sub)?,
                    constants: Vec::new(),
                    native_only: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((s, variants))
    };
    // Row kernels, at every threads-per-row override, and as the subgroup variant at
    // every subgroup size wgpu reports.
    let rows = |s: &'static Shader| -> Result<_> {
        let mut variants: Vec<ShaderVariant> = [32u32, 64, 128, 256]
            .iter()
            .map(|&wg| ShaderVariant {
                source: s.source.to_string(),
                constants: vec![("WG", wg as f64)],
                native_only: false,
            })
            .collect();
        let subgroup_source = apply_variant(s, &rows::subgroup_substitutions())?;
        for lanes in [4u32, 8, 16, 32, 64, 128] {
            variants.push(ShaderVariant {
                source: subgroup_source.clone(),
                constants: vec![("WG", lanes as f64)],
                native_only: true,
            });
        }
        Ok((s, variants))
    };
    let matmul_variants = matmul::all_override_constants()
        .into_iter()
        .map(|constants| ShaderVariant {
            source: matmul::SHADER.source.to_string(),
            constants,
            native_only: false,
        })
        .collect::<Vec<_>>();
    #[allow(unused_mut)]
    let mut all = vec![
        plain(&adamw::SHADER),
        text(
            &chunked_linear_attention::SHADER,
            chunked_linear_attention::VARIANTS
                .iter()
                .map(|&(d, c)| chunked_linear_attention::substitutions(d, c).to_vec())
                .collect(),
        )?,
        plain(&clip::SHADER),
        rows(&cross_entropy::SHADER)?,
        plain(&elementwise::SHADER),
        plain(&embedding::SHADER),
        plain(&gelu::SHADER),
        text(
            &flash_attention::SHADER,
            flash_attention::VARIANTS
                .iter()
                .flat_map(|&(d, fwd, bwd)| [(d, fwd), (d, bwd)])
                .map(|(d, blk)| flash_attention::substitutions(d, blk).to_vec())
                .collect(),
        )?,
        rows(&layernorm::SHADER)?,
        text(
            &linear_attention::SHADER,
            linear_attention::HEAD_DIM_VARIANTS
                .iter()
                .map(|&d| linear_attention::substitutions(d).to_vec())
                .collect(),
        )?,
        plain(&loss_scale::SHADER),
        (&matmul::SHADER, matmul_variants),
        (&matmul::coop::SHADER, matmul::coop::all_variants()),
        plain(&reduce::SHADER),
        plain(&rope::SHADER),
        rows(&softmax::SHADER)?,
    ];
    // The half-precision variants of the families that declare element-type aliases: each
    // alias f16 alone, and all of them (at the first variant's constants).
    for (shader, variants) in &mut all {
        let aliases: Vec<&'static str> = crate::shader::ELEMENT_ALIASES
            .into_iter()
            .filter(|line| shader.source.contains(line))
            .collect();
        let mut choices: Vec<Vec<&'static str>> = aliases.iter().map(|&a| vec![a]).collect();
        if aliases.len() > 1 {
            choices.push(aliases.clone());
        }
        for chosen in choices {
            let sub: Vec<(&'static str, String)> = chosen
                .iter()
                .map(|&line| (line, line.replace("f32", "f16")))
                .collect();
            variants.push(ShaderVariant {
                source: apply_variant(shader, &sub)?,
                constants: variants[0].constants.clone(),
                native_only: true,
            });
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use crate::shader::{struct_layout, Shader, StructLayout};

    /// Every `#[repr(C)]` parameter block, with the shader and WGSL struct it mirrors.
    fn host_params() -> Vec<(&'static Shader, &'static str, StructLayout)> {
        let mut all = Vec::new();
        all.extend(super::adamw::params_layouts());
        all.extend(super::chunked_linear_attention::params_layouts());
        all.extend(super::clip::params_layouts());
        all.extend(super::cross_entropy::params_layouts());
        all.extend(super::elementwise::params_layouts());
        all.extend(super::embedding::params_layouts());
        all.extend(super::flash_attention::params_layouts());
        all.extend(super::gelu::params_layouts());
        all.extend(super::layernorm::params_layouts());
        all.extend(super::linear_attention::params_layouts());
        all.extend(super::loss_scale::params_layouts());
        all.extend(super::matmul::params_layouts());
        all.extend(super::reduce::params_layouts());
        all.extend(super::rope::params_layouts());
        all.extend(super::softmax::params_layouts());
        all
    }

    /// The host's mirrors of the WGSL parameter structs have the WGSL's size and the same
    /// fields at the same offsets (as naga lays the WGSL out), so no field is read from the
    /// wrong place after either side changes.
    #[test]
    fn parameter_blocks_match_the_wgsl_layout() {
        let mut mismatches = Vec::new();
        let all = host_params();
        for (shader, wgsl_struct, host) in &all {
            let wgsl = struct_layout(shader, wgsl_struct).unwrap();
            if &wgsl != host {
                mismatches.push(format!(
                    "{}'s {wgsl_struct}:\n  WGSL {wgsl:?}\n  host {host:?}",
                    shader.name
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        // Every shader with a uniform block is covered.
        for (shader, _) in super::all_shader_sources().unwrap() {
            if shader.source.contains("var<uniform>") {
                assert!(
                    all.iter().any(|(s, _, _)| s.name == shader.name),
                    "{} has no host layout in the test",
                    shader.name
                );
            }
        }
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
        for (shader, variants) in super::all_shader_sources().unwrap() {
            for v in variants {
                let (module, info) = parse(shader.name, &v.source).unwrap();
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
