//! The adapter's own ceilings (FP32 FMA rate, copy bandwidth), so benchmark figures can be
//! stated as a fraction of what the hardware does. Both are kernels timed like every other
//! (see [`roformer_wgpu::timing`]), so a kernel's fraction of a ceiling compares like with like.

use bytemuck::{Pod, Zeroable};

use crate::cost_model::Measured;
use roformer_wgpu::shader::Shader;
use roformer_wgpu::timing::{time_dispatches, time_each};
use roformer_wgpu::Context;
use roformer_wgpu::Result;
use roformer_wgpu::{one_form, DispatchBuilder, KernelFamily, ParamBlock};
use roformer_wgpu::{DType, Tensor};

/// The microbenchmark kernels.
pub static SHADER: Shader = Shader {
    name: "profile",
    source: include_str!("../shaders/profile.wgsl"),
};

/// Their family, checked by the library's translation and layout tests beside the library's
/// own families.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: one_form,
    params: param_blocks,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct Params {
    iters: u32,
    vec4s: u32,
    _p0: u32,
    _p1: u32,
}

/// The adapter's FP32 rate in GFLOP/s, from long chains of vec4 FMAs on `groups` × 256
/// threads (16 FLOPs per round).
pub fn fp32_rate(ctx: &Context, groups: u32, iters: u32) -> Result<f64> {
    let out = Tensor::zeros(ctx, &[groups as usize * 256], DType::F32)?;
    let d = DispatchBuilder::family(ctx, &FAMILY, "fma_rate")
        .params(&Params {
            iters,
            vec4s: 0,
            _p0: 0,
            _p1: 0,
        })
        .write("out", &out)
        .build(ctx.grid_1d(groups as u64)?)?;
    time_dispatches(ctx, std::slice::from_ref(&d), 1)?; // warm-up
    let t = time_dispatches(ctx, std::slice::from_ref(&d), 3)?;
    Ok(groups as f64 * 256.0 * iters as f64 * 16.0 / t.as_secs_f64() / 1e9)
}

/// Copy bandwidth in GB/s (bytes read plus bytes written) of a kernel copying `bytes`
/// (rounded down to whole vec4s) from one buffer to another.
pub fn copy_bandwidth(ctx: &Context, bytes: u64) -> Result<f64> {
    let vec4s = (bytes / 16).max(1) as usize;
    let (src, dst) = (
        Tensor::zeros(ctx, &[vec4s * 4], DType::F32)?,
        Tensor::zeros(ctx, &[vec4s * 4], DType::F32)?,
    );
    let d = DispatchBuilder::family(ctx, &FAMILY, "copy")
        .params(&Params {
            iters: 0,
            vec4s: vec4s as u32,
            _p0: 0,
            _p1: 0,
        })
        .read("src", &src)
        .write("dst", &dst)
        .build(ctx.grid_1d((vec4s as u64).div_ceil(256))?)?;
    time_dispatches(ctx, std::slice::from_ref(&d), 1)?; // warm-up
    let t = time_dispatches(ctx, std::slice::from_ref(&d), 5)?;
    Ok(2.0 * src.byte_size() as f64 / t.as_secs_f64() / 1e9)
}

/// What the cost model needs of this adapter, measured ([`crate::cost_model::Gpu::measured`]):
/// its FP32 and copy ceilings (the best of several tries), its subgroup size and, as its
/// multiprocessors, the CPU's cores llvmpipe runs workgroups on (`LP_NUM_THREADS` where set).
/// A GPU adapter does not say how many multiprocessors it has: for one, an
/// `InvalidArgument` error (model it by name instead).
pub fn measure(ctx: &Context) -> Result<Measured> {
    let caps = ctx.capabilities();
    if !caps.is_cpu() {
        return Err(roformer_wgpu::Error::InvalidArgument(format!(
            "{} is not a CPU adapter, and wgpu does not say how many multiprocessors a GPU              has: model it by name (h200, rtx4090, m3-max)",
            caps.adapter_name
        )));
    }
    let threads = std::env::var("LP_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0);
    let cores = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    Ok(Measured {
        adapter: caps.adapter_name.clone(),
        device_type: caps.device_type,
        sms: cores,
        fp32_gflops: best_of(|| fp32_rate(ctx, 64, 256))?,
        // Fresh buffers each time, of three sizes: on llvmpipe in a VM the same copy runs
        // at 4 or at 9 GB/s depending on where its buffers landed.
        copy_gbs: best_of(|| {
            let sizes = [4 << 20, 16 << 20, 64 << 20].map(|b| copy_bandwidth(ctx, b));
            sizes
                .into_iter()
                .try_fold(0.0f64, |best, r| Ok(best.max(r?)))
        })?,
        subgroup_size: caps.subgroup_sizes.map_or(1, |(_, max)| max),
        max_workgroup_memory: caps.max_workgroup_storage as u64,
        dispatch_us: dispatch_overhead(ctx)?,
    })
}

/// What a dispatch costs by itself, µs: the fastest of 3 × 32 one-workgroup fills of one
/// element, each timed alone as `bench step --profile` times every dispatch (its own compute
/// pass between timestamps, where the adapter has them).
pub fn dispatch_overhead(ctx: &Context) -> Result<f64> {
    let t = Tensor::zeros(ctx, &[1], DType::F32)?;
    let fill = roformer_wgpu::ops::elementwise::plan_fill(ctx, &t, 0.0)?;
    let fills = vec![fill; 32];
    time_each(ctx, &fills)?; // warm-up
    let mut fastest = f64::INFINITY;
    for _ in 0..3 {
        for t in time_each(ctx, &fills)? {
            fastest = fastest.min(t.as_secs_f64() * 1e6);
        }
    }
    Ok(fastest)
}

/// The highest of five measurements of a rate: other work on the machine only ever lowers
/// one.
fn best_of(rate: impl Fn() -> Result<f64>) -> Result<f64> {
    let mut best = 0.0f64;
    for _ in 0..5 {
        best = best.max(rate()?);
    }
    Ok(best)
}

/// The host's mirror of the shader's parameter block, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: roformer_wgpu::host_layout!(Params {
            iters,
            vec4s,
            _p0,
            _p1
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_measured_and_positive() {
        let ctx = &Context::new().unwrap();
        let flops = fp32_rate(ctx, 16, 64).unwrap();
        let bw = copy_bandwidth(ctx, 1 << 20).unwrap();
        let overhead = dispatch_overhead(ctx).unwrap();
        assert!(flops.is_finite() && flops > 0.0, "{flops}");
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
        // a dispatch takes some time, and an empty one well under a second
        assert!(overhead > 0.0 && overhead < 1e6, "{overhead}");
    }
}
