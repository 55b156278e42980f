//! Timing GPU work, and measuring the adapter's own ceilings (FP32 FMA rate, copy
//! bandwidth) so benchmark figures can be stated as a fraction of what the hardware does.
//! GPU time comes from timestamp queries when the device has them, else from the wall clock
//! around a submission and its wait.

use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};

use crate::context::{Context, Shader};
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::Result;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = Shader {
    name: "profile",
    source: include_str!("../shaders/profile.wgsl"),
};

/// Two timestamp queries around one compute pass (where the adapter has them), for the
/// pass's GPU time.
pub(crate) struct PassTimer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
}

impl PassTimer {
    /// `None` when the adapter has no timestamp queries.
    pub fn new(ctx: &Context, label: &str) -> Option<PassTimer> {
        ctx.capabilities().timestamp_query.then(|| PassTimer {
            set: ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some(label),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
        })
    }

    /// For the pass descriptor: a timestamp at its beginning and one at its end.
    pub fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// After the pass: copies the two timestamps (16 bytes) to `into` at `offset`.
    pub fn copy_to(&self, encoder: &mut wgpu::CommandEncoder, into: &wgpu::Buffer, offset: u64) {
        encoder.resolve_query_set(&self.set, 0..2, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, into, offset, 16);
    }

    /// The time between the two timestamps, as read back.
    pub fn elapsed(ctx: &Context, ticks: [u64; 2]) -> Duration {
        let ns =
            ticks[1].saturating_sub(ticks[0]) as f64 * ctx.queue().get_timestamp_period() as f64;
        Duration::from_nanos(ns as u64)
    }
}

/// Time of `reps` back-to-back runs of `dispatches` in one compute pass, divided by `reps`.
pub fn time_dispatches(ctx: &Context, dispatches: &[Dispatch], reps: u32) -> Result<Duration> {
    let reps = reps.max(1);
    let timer = PassTimer::new(ctx, "timing");
    let read = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("timing"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let start = Instant::now();
    let index = ctx.scoped("timing", || {
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timing"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timing"),
                timestamp_writes: timer.as_ref().map(PassTimer::writes),
            });
            for _ in 0..reps {
                for d in dispatches {
                    d.encode(&mut pass);
                }
            }
        }
        if let Some(timer) = &timer {
            timer.copy_to(&mut encoder, &read, 0);
        }
        ctx.queue().submit([encoder.finish()])
    })?;
    let bytes = ctx.read_mapped(&read, index)?;
    let wall = start.elapsed();
    let total = if timer.is_some() {
        let t: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        PassTimer::elapsed(ctx, [t[0], t[1]])
    } else {
        wall
    };
    Ok(total / reps)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    iters: u32,
    _pad: [u32; 3],
}

/// The adapter's FP32 rate in GFLOP/s, from long chains of vec4 FMAs on `groups` × 256
/// threads (16 FLOPs per round).
pub fn fp32_rate(ctx: &Context, groups: u32, iters: u32) -> Result<f64> {
    let out = Tensor::zeros(ctx, &[groups as usize * 256], DType::F32)?;
    let d = DispatchBuilder::new(ctx, &SHADER, "fma_rate")
        .params(&Params {
            iters,
            _pad: [0; 3],
        })
        .write(&out)
        .build(ctx.grid_1d(groups as u64)?)?;
    time_dispatches(ctx, std::slice::from_ref(&d), 1)?; // warm-up
    let t = time_dispatches(ctx, std::slice::from_ref(&d), 3)?;
    Ok(groups as f64 * 256.0 * iters as f64 * 16.0 / t.as_secs_f64() / 1e9)
}

/// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written), copying a
/// buffer of `bytes` with `copy_buffer_to_buffer`.
pub fn copy_bandwidth(ctx: &Context, bytes: u64) -> Result<f64> {
    let n = (bytes / 4) as usize;
    let (a, b) = (
        Tensor::zeros(ctx, &[n], DType::F32)?,
        Tensor::zeros(ctx, &[n], DType::F32)?,
    );
    let copy = |reps: u32| -> Result<Duration> {
        let start = Instant::now();
        let index = ctx.scoped("copy timing", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("copy"),
                    });
            for _ in 0..reps {
                encoder.copy_buffer_to_buffer(a.buffer(), 0, b.buffer(), 0, a.byte_size());
            }
            ctx.queue().submit([encoder.finish()])
        })?;
        ctx.wait(Some(index))?;
        Ok(start.elapsed() / reps)
    };
    copy(1)?;
    let t = copy(5)?;
    Ok(2.0 * a.byte_size() as f64 / t.as_secs_f64() / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_measured_and_positive() {
        let ctx = &crate::testing::ctx();
        let flops = fp32_rate(ctx, 16, 64).unwrap();
        let bw = copy_bandwidth(ctx, 1 << 20).unwrap();
        assert!(flops.is_finite() && flops > 0.0, "{flops}");
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
    }
}
