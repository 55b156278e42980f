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
pub mod matmul;
pub mod matmul_coop;
pub mod reduce;
pub mod rope;
pub mod softmax;

use crate::context::{apply_variant, Shader};

/// One compiled form of a shader: its source after text substitutions, and the values of
/// its `override` constants (empty: the defaults).
#[derive(Clone, Debug)]
pub struct ShaderVariant {
    pub source: String,
    pub constants: Vec<(&'static str, f64)>,
    /// Uses native-only features (cooperative matrices, f16, subgroups): compiled only on
    /// devices that have them, and only for backends that can express them.
    pub native_only: bool,
}

/// Every shader with each variant the library compiles; the cross-translation test
/// validates all of them.
pub fn all_shader_sources() -> Vec<(&'static Shader, Vec<ShaderVariant>)> {
    let text = |sources: Vec<String>| {
        sources
            .into_iter()
            .map(|source| ShaderVariant {
                source,
                constants: Vec::new(),
                native_only: false,
            })
            .collect::<Vec<_>>()
    };
    let matmul_variants = matmul::all_override_constants()
        .into_iter()
        .map(|constants| ShaderVariant {
            source: matmul::SHADER.source.to_string(),
            constants,
            native_only: false,
        })
        .collect::<Vec<_>>();
    let mut all: Vec<_> = all_sources()
        .into_iter()
        .map(|(shader, v)| {
            if shader.name == matmul::SHADER.name {
                (shader, matmul_variants.clone())
            } else {
                (shader, text(v))
            }
        })
        .collect();
    all.push((&matmul_coop::SHADER, matmul_coop::all_variants()));
    all
}

/// Every shader with the full source of each text variant.
fn all_sources() -> Vec<(&'static Shader, Vec<String>)> {
    let plain = |s: &'static Shader| (s, vec![s.source.to_string()]);
    // Row kernels, at every threads-per-row variant.
    let rows = |s: &'static Shader| {
        let v = [32u32, 64, 128, 256]
            .iter()
            .map(|wg| {
                apply_variant(
                    s.source,
                    &[(crate::dispatch::ROW_WG, format!("const WG: u32 = {wg}u;"))],
                )
            })
            .collect();
        (s, v)
    };
    let la = &linear_attention::SHADER;
    let la_variants = linear_attention::HEAD_DIM_VARIANTS
        .iter()
        .map(|&d| apply_variant(la.source, &linear_attention::substitutions(d)))
        .collect::<Vec<_>>();
    let fa = &flash_attention::SHADER;
    let fa_variants = flash_attention::VARIANTS
        .iter()
        .flat_map(|&(d, fwd, bwd)| [fwd, bwd].map(move |blk| (d, blk)))
        .map(|(d, blk)| apply_variant(fa.source, &flash_attention::substitutions(d, blk)))
        .collect::<Vec<_>>();
    let cla = &chunked_linear_attention::SHADER;
    let cla_variants = chunked_linear_attention::VARIANTS
        .iter()
        .map(|&(d, c)| apply_variant(cla.source, &chunked_linear_attention::substitutions(d, c)))
        .collect::<Vec<_>>();
    vec![
        plain(&adamw::SHADER),
        (cla, cla_variants),
        plain(&clip::SHADER),
        rows(&cross_entropy::SHADER),
        plain(&elementwise::SHADER),
        plain(&embedding::SHADER),
        plain(&gelu::SHADER),
        (fa, fa_variants),
        rows(&layernorm::SHADER),
        (la, la_variants),
        plain(&matmul::SHADER),
        plain(&crate::profile::SHADER),
        plain(&reduce::SHADER),
        plain(&rope::SHADER),
        rows(&softmax::SHADER),
    ]
}
