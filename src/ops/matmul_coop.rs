//! Matrix products on cooperative matrices (tensor cores on NVIDIA, matrix cores on AMD,
//! simdgroup matrices on Apple), for [`crate::ops::matmul`] when the context asks for
//! [`MatmulPrecision::Fast`] and the device has wgpu's cooperative-matrix feature.
//!
//! Same product, views and parameters as the f32 kernel; the difference is precision. With
//! 16×16 fragments (Vulkan) the inputs are rounded to f16 and products summed in f32: about
//! 1e-3 relative error (the test holds it to 2e-3 in relative L2), and inputs beyond ±65504
//! overflow. With 8×8 f32 fragments (Metal) the result is as precise as the f32 kernel's.

use crate::context::{apply_variant, Capabilities, Context, Shader};
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::Result;
use crate::ops::matmul::{params_of, Operands, StridedMatmul};
use crate::ops::ShaderVariant;

pub static SHADER: Shader = Shader {
    name: "matmul_coop",
    source: concat!(
        include_str!("../../shaders/matmul_coop.wgsl"),
        include_str!("../../shaders/lib/gelu.wgsl")
    ),
};

/// Which products a context sends to cooperative matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 multiply-adds everywhere: results match the f64 reference to f32 rounding
    /// (what the HF fixtures are checked at).
    #[default]
    F32,
    /// Cooperative matrices where the device has them (see [`Fragment`] for the precision
    /// of each kind), the f32 kernel elsewhere.
    Fast,
}

/// The fragment type the kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// 16×16×16, f16 inputs, f32 accumulation (VK_KHR_cooperative_matrix on NVIDIA, AMD).
    F16x16,
    /// 8×8×8, f32 inputs and accumulation (Metal simdgroup matrices).
    F32x8,
}

impl Fragment {
    fn size(self) -> u32 {
        match self {
            Fragment::F16x16 => 16,
            Fragment::F32x8 => 8,
        }
    }

    /// Rows (and columns) of C per workgroup.
    pub fn block(self) -> usize {
        8 * self.size() as usize
    }

    /// Relative L2 error against the exact product that the tests allow.
    pub fn tolerance(self) -> f64 {
        match self {
            Fragment::F16x16 => 2e-3,
            Fragment::F32x8 => 1e-5,
        }
    }

    fn workgroup_bytes(self) -> u32 {
        let s = self.size();
        let elem = match self {
            Fragment::F16x16 => 2,
            Fragment::F32x8 => 4,
        };
        let (bm, bk) = (8 * s, 2 * s);
        2 * bm * bk * elem + 4 * s * s * 4
    }

    /// Text substitutions that compile the shader for this fragment.
    fn variant(self) -> Vec<(&'static str, String)> {
        match self {
            Fragment::F16x16 => Vec::new(), // the file as written
            Fragment::F32x8 => vec![
                ("enable f16; // VARIANT: inputs", String::new()),
                ("alias Elem = f16;", "alias Elem = f32;".into()),
                ("coop_mat16x16<f16, A>", "coop_mat8x8<f32, A>".into()),
                ("coop_mat16x16<f16, B>", "coop_mat8x8<f32, B>".into()),
                ("coop_mat16x16<f32, C>", "coop_mat8x8<f32, C>".into()),
                ("const S: u32 = 16u;", "const S: u32 = 8u;".into()),
            ],
        }
    }
}

/// The fragment this device can run the kernel with, if any: it needs the configuration
/// among the device's cooperative-matrix shapes, one fixed subgroup size (the workgroup is
/// exactly four subgroups), and room for the workgroup.
pub fn fragment_for(caps: &Capabilities) -> Option<Fragment> {
    use wgpu::CooperativeScalarType::{F16, F32};
    let (sg_min, sg_max) = caps.subgroup_sizes?;
    if sg_min != sg_max {
        return None;
    }
    let offers = |size: u32, ab, cr| {
        caps.cooperative_matrices.iter().any(|p| {
            p.m_size == size
                && p.n_size == size
                && p.k_size == size
                && p.ab_type == ab
                && p.cr_type == cr
        })
    };
    let fits = |f: Fragment| {
        4 * sg_max <= caps.max_invocations_per_workgroup
            && f.workgroup_bytes() <= caps.max_workgroup_storage
    };
    [
        (Fragment::F16x16, caps.shader_f16 && offers(16, F16, F32)),
        (Fragment::F32x8, offers(8, F32, F32)),
    ]
    .into_iter()
    .find(|&(f, offered)| offered && fits(f))
    .map(|(f, _)| f)
}

/// The dispatch of `s` on cooperative matrices; `plan_views` has checked the views.
pub(crate) fn plan(
    ctx: &Context,
    fragment: Fragment,
    s: &StridedMatmul,
    ops: &Operands,
) -> Result<Dispatch> {
    let caps = ctx.capabilities();
    let sg = caps.subgroup_sizes.map_or(32, |(_, max)| max);
    let (a_k_contig, b_n_contig) = contiguity(s);
    let mut builder = DispatchBuilder::new(ctx, &SHADER, "matmul");
    for (needle, replacement) in fragment.variant() {
        builder = builder.variant(needle, replacement);
    }
    let block = fragment.block();
    let flag = |x: bool| if x { 1.0 } else { 0.0 };
    builder
        .constant("SG", sg as f64)
        .constant("A_K_CONTIG", flag(a_k_contig))
        .constant("B_N_CONTIG", flag(b_n_contig))
        .constant("GELU", flag(ops.gelu.is_some()))
        .params(&params_of(s, ops.bias.is_some()))
        .read(ops.a)
        .read(ops.b)
        .read_opt(ops.bias)
        .write(ops.c)
        .skip()
        .skip()
        .write_opt(ops.gelu)
        .build([
            s.n.div_ceil(block) as u32,
            s.m.div_ceil(block) as u32,
            (s.batch[0] * s.batch[1]) as u32,
        ])
}

/// Whether A's adjacent elements run along k and B's along n (else m and k).
fn contiguity(s: &StridedMatmul) -> (bool, bool) {
    (
        !(s.a.row_stride == 1 && s.a.col_stride != 1),
        !(s.b.row_stride == 1 && s.b.col_stride != 1),
    )
}

/// Every compiled form: each fragment, each contiguity (for the cross-translation test).
pub fn all_variants() -> Vec<ShaderVariant> {
    let mut out = Vec::new();
    for f in [Fragment::F16x16, Fragment::F32x8] {
        for bits in 0..8u32 {
            out.push(ShaderVariant {
                source: apply_variant(SHADER.source, &f.variant()),
                constants: vec![
                    ("SG", 32.0),
                    ("A_K_CONTIG", (bits & 1) as f64),
                    ("B_N_CONTIG", ((bits >> 1) & 1) as f64),
                    ("GELU", ((bits >> 2) & 1) as f64),
                ],
                native_only: true,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gelu;
    use crate::ops::matmul::{self, reference, MatmulOptions};
    use crate::testing::*;

    fn coop(
        m: u32,
        ab: wgpu::CooperativeScalarType,
        cr: wgpu::CooperativeScalarType,
    ) -> wgpu::CooperativeMatrixProperties {
        wgpu::CooperativeMatrixProperties {
            m_size: m,
            n_size: m,
            k_size: m,
            ab_type: ab,
            cr_type: cr,
            saturating_accumulation: false,
        }
    }

    #[test]
    fn fragment_follows_what_the_device_offers() {
        use wgpu::CooperativeScalarType::{F16, F32};
        let base = ctx().capabilities().clone();
        let with = |coops: Vec<wgpu::CooperativeMatrixProperties>, sg, f16| Capabilities {
            cooperative_matrices: coops,
            subgroup_sizes: sg,
            shader_f16: f16,
            max_invocations_per_workgroup: 1024,
            max_workgroup_storage: 48 << 10,
            ..base.clone()
        };
        // NVIDIA-like: 16x16x16 f16 -> f32 among others.
        let nvidia = vec![coop(16, F16, F16), coop(16, F16, F32)];
        assert_eq!(
            fragment_for(&with(nvidia.clone(), Some((32, 32)), true)),
            Some(Fragment::F16x16)
        );
        // ... but not without shader-f16, nor with a variable subgroup size, nor subgroups.
        assert_eq!(
            fragment_for(&with(nvidia.clone(), Some((32, 32)), false)),
            None
        );
        assert_eq!(
            fragment_for(&with(nvidia.clone(), Some((32, 64)), true)),
            None
        );
        assert_eq!(fragment_for(&with(nvidia, None, true)), None);
        // Apple-like: 8x8 f32.
        assert_eq!(
            fragment_for(&with(vec![coop(8, F32, F32)], Some((32, 32)), false)),
            Some(Fragment::F32x8)
        );
        // Nothing offered.
        assert_eq!(fragment_for(&with(Vec::new(), Some((32, 32)), true)), None);
        // Too little workgroup memory for the 16x16 kernel's 20 KiB.
        let small = Capabilities {
            max_workgroup_storage: 16 << 10,
            ..with(vec![coop(16, F16, F32)], Some((32, 32)), true)
        };
        assert_eq!(fragment_for(&small), None);
    }

    #[test]
    fn cooperative_matmul_matches_reference_within_its_precision() {
        let shared = ctx();
        let Some(fragment) = fragment_for(shared.capabilities()) else {
            eprintln!(
                "skipped: {} has no cooperative matrices this kernel can use",
                shared.capabilities().adapter_name
            );
            return;
        };
        drop(shared);
        let ctx = &ctx();
        let mut rng = rng(11);
        for &(m, n, k) in &[(1, 1, 1), (7, 33, 129), (130, 260, 70)] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = randn(&mut rng, m * k);
                let b = randn(&mut rng, k * n);
                let bias = randn(&mut rng, n);
                let shape = |r, c, t| if t { [c, r] } else { [r, c] };
                let ta = upload(ctx, &a, &shape(m, k, trans_a));
                let tb = upload(ctx, &b, &shape(k, n, trans_b));
                let c = poisoned(ctx, &[m, n]);
                let o = MatmulOptions {
                    trans_a,
                    trans_b,
                    alpha: 0.5,
                    accumulate: false,
                };
                let spec = matmul::strided_spec(ta.shape(), tb.shape(), &o).unwrap();
                let tbias = upload(ctx, &bias, &[n]);
                let act = poisoned(ctx, &[m, n]);
                let ops = Operands {
                    a: &ta,
                    b: &tb,
                    bias: Some(&tbias),
                    c: &c,
                    gelu: Some(&act),
                };
                ctx.run(&[plan(ctx, fragment, &spec, &ops).unwrap()])
                    .unwrap();
                let mut want =
                    reference::matmul(&to_f64(&a), &to_f64(&b), (m, n, k), trans_a, trans_b);
                for (i, w) in want.iter_mut().enumerate() {
                    *w = 0.5 * *w + bias[i % n] as f64;
                }
                let want_gelu: Vec<f64> =
                    want.iter().map(|&x| gelu::reference::forward(x)).collect();
                let what = format!("{fragment:?} {m}x{n}x{k} ta={trans_a} tb={trans_b}");
                assert_close(&what, &download(ctx, &c), &want, fragment.tolerance());
                assert_close(
                    &what,
                    &download(ctx, &act),
                    &want_gelu,
                    fragment.tolerance(),
                );
            }
        }
    }
}
