//! Matrix products on cooperative matrices (tensor cores), for [`super`] when the context's
//! precision is [`MatmulPrecision::Fast`](super::MatmulPrecision::Fast) and the device has
//! wgpu's cooperative-matrix feature in a form this kernel can use.
//!
//! Same product, views and parameters as the f32 kernel; the difference is precision: the
//! inputs are rounded to f16 and products summed in f32 (16×16×16 fragments), about 1e-3
//! relative error (the test holds it to 2e-3 in relative L2), and inputs beyond ±65504
//! overflow.
//!
//! Where it runs: the workgroup is exactly four subgroups, so the kernel needs an adapter
//! that reports one fixed subgroup size, with 16×16×16 f16→f32 among its cooperative-matrix
//! shapes and `shader-f16`. With wgpu 30 that is NVIDIA on Vulkan (subgroups of 32). Other
//! adapters fall back to the f32 kernel: Metal's simdgroup matrices are reported with
//! subgroup sizes 4..64 (wgpu does not know the real one), AMD's RDNA with 32..64, Intel's
//! with 8..32 (see `fragment_follows_what_wgpu_reports`).

use crate::context::{Capabilities, Context};
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::Result;
use crate::family::{KernelFamily, Variant};
use crate::shader::Shader;

use super::params_of;
use super::views::{Operands, StridedMatmul};

/// The cooperative-matrix kernel (with the GELU epilogue's snippet).
pub static SHADER: Shader = Shader {
    name: "matmul_coop",
    source: concat!(
        include_str!("../../../shaders/matmul_coop.wgsl"),
        include_str!("../../../shaders/lib/gelu.wgsl")
    ),
};

/// The fragment type the kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// 16×16×16, f16 inputs, f32 accumulation (VK_KHR_cooperative_matrix).
    F16x16,
}

impl Fragment {
    fn size(self) -> u32 {
        16
    }

    /// Rows (and columns) of C per workgroup.
    pub fn block(self) -> usize {
        8 * self.size() as usize
    }

    /// Relative L2 error against the exact product that the tests allow.
    pub fn tolerance(self) -> f64 {
        2e-3
    }

    /// Workgroup memory: the f16 tiles of A and B, and one f32 fragment per subgroup.
    fn workgroup_bytes(self) -> u32 {
        let s = self.size();
        let (bm, bk) = (8 * s, 2 * s);
        2 * bm * bk * 2 + 4 * s * s * 4
    }
}

/// The fragment this device can run the kernel with, if any: it needs the configuration
/// among the device's cooperative-matrix shapes, `shader-f16`, one fixed subgroup size (the
/// workgroup is exactly four subgroups), and room for the workgroup.
pub fn fragment_for(caps: &Capabilities) -> Option<Fragment> {
    use wgpu::CooperativeScalarType::{F16, F32};
    let (sg_min, sg_max) = caps.subgroup_sizes?;
    if sg_min != sg_max {
        return None;
    }
    let f = Fragment::F16x16;
    let offered = caps.cooperative_matrices.iter().any(|p| {
        p.m_size == f.size()
            && p.n_size == f.size()
            && p.k_size == f.size()
            && p.ab_type == F16
            && p.cr_type == F32
    });
    let fits = 4 * sg_max <= caps.max_invocations_per_workgroup
        && f.workgroup_bytes() <= caps.max_workgroup_storage;
    (offered && caps.shader_f16 && fits).then_some(f)
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
    let block = fragment.block();
    let flag = |x: bool| if x { 1.0 } else { 0.0 };
    let builder = DispatchBuilder::family(ctx, &FAMILY, "matmul")
        .element_type("In", ops.a.dtype())
        .element_type("Out", ops.c.dtype())
        .constant("SG", sg as f64)
        .constant("A_K_CONTIG", flag(a_k_contig))
        .constant("B_N_CONTIG", flag(b_n_contig))
        .constant("GELU", flag(ops.gelu.is_some()))
        .params(&params_of(s, ops.bias.is_some()))
        .read("a", ops.a)
        .read("b", ops.b)
        .read_opt("bias", ops.bias);
    // beta 0 never loads C: written only.
    let builder = if s.beta == 0.0 {
        builder.write_only("c", ops.c)
    } else {
        builder.write("c", ops.c)
    };
    builder
        .write_opt("act", ops.gelu)
        .flops((2 * s.m * s.n * s.k * s.batch[0] * s.batch[1]) as u64)
        .on_tensor_cores()
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

/// The family: same parameters as the f32 kernel's.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants,
    params: super::param_blocks,
};

/// Every compiled form: subgroups of 32 (NVIDIA) and 64, each contiguity, with and without
/// GELU.
fn variants() -> Vec<Variant> {
    let mut all = Vec::new();
    for sg in [32u32, 64] {
        for bits in 0..8u32 {
            all.push(
                Variant::default()
                    .constant("SG", sg as f64)
                    .constant("A_K_CONTIG", (bits & 1) as f64)
                    .constant("B_N_CONTIG", ((bits >> 1) & 1) as f64)
                    .constant("GELU", ((bits >> 2) & 1) as f64)
                    .native(),
            );
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gelu;
    use crate::ops::matmul::{self, reference, MatmulOptions};
    use crate::testing::*;
    use crate::DType;

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

    /// The adapters as wgpu 30 describes them (wgpu-hal: Vulkan reports the driver's
    /// subgroup size range, Metal a fixed 4..64).
    #[test]
    fn fragment_follows_what_wgpu_reports() {
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
        // NVIDIA on Vulkan: subgroups of 32, 16x16x16 f16 -> f32 among its shapes.
        let nvidia = vec![coop(16, F16, F16), coop(16, F16, F32)];
        assert_eq!(
            fragment_for(&with(nvidia.clone(), Some((32, 32)), true)),
            Some(Fragment::F16x16)
        );
        // ... but not without shader-f16, nor without subgroups.
        assert_eq!(
            fragment_for(&with(nvidia.clone(), Some((32, 32)), false)),
            None
        );
        assert_eq!(fragment_for(&with(nvidia.clone(), None, true)), None);
        // AMD RDNA on Vulkan: the same shapes, subgroups of 32..64: not this kernel.
        assert_eq!(
            fragment_for(&with(nvidia.clone(), Some((32, 64)), true)),
            None
        );
        // Intel on Vulkan: 8..32.
        assert_eq!(fragment_for(&with(nvidia, Some((8, 32)), true)), None);
        // Apple on Metal: simdgroup matrices 8x8 f32 (and f16), reported as 4..64.
        let apple = vec![coop(8, F32, F32), coop(8, F16, F32)];
        assert_eq!(fragment_for(&with(apple, Some((4, 64)), true)), None);
        // Nothing offered.
        assert_eq!(fragment_for(&with(Vec::new(), Some((32, 32)), true)), None);
        // Too little workgroup memory for the kernel's 20 KiB.
        let small = Capabilities {
            max_workgroup_storage: 16 << 10,
            ..with(vec![coop(16, F16, F32)], Some((32, 32)), true)
        };
        assert_eq!(fragment_for(&small), None);
    }

    /// Needs an adapter with cooperative matrices this kernel can use (NVIDIA on Vulkan):
    /// run with `--ignored`; without one it fails, naming the adapter.
    #[test]
    #[ignore = "needs a GPU with cooperative matrices (NVIDIA, Vulkan); fails without one"]
    fn cooperative_matmul_matches_reference_within_its_precision() {
        let ctx = &ctx();
        let fragment = fragment_for(ctx.capabilities()).unwrap_or_else(|| {
            panic!(
                "{} has no cooperative matrices this kernel can use:\n{}",
                ctx.capabilities().adapter_name,
                ctx.capabilities()
            )
        });
        let mut rng = rng(11);
        // f32 operands (rounded to f16 by the kernel) and f16 ones (fed to the fragments as
        // they are, results stored f16).
        for dt in [DType::F32, DType::F16] {
            for &(m, n, k) in &[(1, 1, 1), (7, 33, 129), (130, 260, 70)] {
                for (trans_a, trans_b) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let mut a = randn(&mut rng, m * k);
                    let mut b = randn(&mut rng, k * n);
                    let mut bias = randn(&mut rng, n);
                    if dt == DType::F16 {
                        (a, b, bias) = (round_f16(&a), round_f16(&b), round_f16(&bias));
                    }
                    let shape = |r, c, t| if t { [c, r] } else { [r, c] };
                    let ta = upload_as(ctx, &a, &shape(m, k, trans_a), dt);
                    let tb = upload_as(ctx, &b, &shape(k, n, trans_b), dt);
                    let c = poisoned_as(ctx, &[m, n], dt);
                    let o = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: 0.5,
                        accumulate: false,
                    };
                    let spec = matmul::strided_spec(ta.shape(), tb.shape(), &o).unwrap();
                    let tbias = upload_as(ctx, &bias, &[n], dt);
                    let act = poisoned_as(ctx, &[m, n], dt);
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
                    let what = format!("{fragment:?} {m}x{n}x{k} ta={trans_a} tb={trans_b} {dt:?}");
                    // f16 results add their own rounding (half an ulp, 4.9e-4 relative).
                    let tol = fragment
                        .tolerance()
                        .max(if dt == DType::F16 { 2e-3 } else { 0.0 });
                    assert_close(&what, &download_f32(ctx, &c), &want, tol);
                    assert_close(&what, &download_f32(ctx, &act), &want_gelu, tol);
                }
            }
        }
    }
}
