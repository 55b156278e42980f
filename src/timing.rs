//! GPU time of dispatches: from timestamp queries where the device has them, else from the
//! wall clock around a submission and its wait (which on a GPU includes submission latency,
//! so every figure says which it is: [`TimingMethod`]).

//! The timing functions block until the GPU is done (native only); in a browser a step's
//! GPU time comes with its metrics (`StepMetrics::gpu`).

use std::time::Duration;

#[cfg(not(target_arch = "wasm32"))]
use web_time::Instant;

use crate::context::Context;
#[cfg(not(target_arch = "wasm32"))]
use crate::dispatch::Dispatch;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::Result;
#[cfg(not(target_arch = "wasm32"))]
use crate::readback::Pending;

/// How a time was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingMethod {
    /// Timestamp queries at the start and end of a compute pass: GPU time.
    Timestamps,
    /// The wall clock around submitting and waiting: GPU time plus submission and
    /// synchronisation latency (the device has no timestamp queries).
    WallClock,
}

impl std::fmt::Display for TimingMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimingMethod::Timestamps => "timestamp queries",
            TimingMethod::WallClock => "wall clock (no timestamp queries on this adapter)",
        })
    }
}

/// The method [`time_dispatches`] and [`time_each`] use on this context.
pub fn method(ctx: &Context) -> TimingMethod {
    if ctx.capabilities().timestamp_query {
        TimingMethod::Timestamps
    } else {
        TimingMethod::WallClock
    }
}

/// Two timestamp queries around one compute pass (where the adapter has them), for the
/// pass's GPU time.
pub(crate) struct PassTimer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    pairs: u32,
}

impl PassTimer {
    /// Room for `pairs` passes; `None` when the adapter has no timestamp queries.
    pub fn new(ctx: &Context, label: &str, pairs: u32) -> Option<PassTimer> {
        ctx.capabilities().timestamp_query.then(|| PassTimer {
            set: ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some(label),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * pairs,
            }),
            resolve: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16 * pairs as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            pairs,
        })
    }

    /// For pass `i`'s descriptor: a timestamp at its beginning and one at its end.
    pub fn writes(&self, i: u32) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        }
    }

    /// After the passes: copies the timestamps (16 bytes per pass) to `into` at `offset`.
    pub fn copy_to(&self, encoder: &mut wgpu::CommandEncoder, into: &wgpu::Buffer, offset: u64) {
        encoder.resolve_query_set(&self.set, 0..2 * self.pairs, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, into, offset, 16 * self.pairs as u64);
    }

    /// The time between two timestamps, as read back; `period` is the queue's nanoseconds
    /// per tick (`Queue::get_timestamp_period`).
    pub fn elapsed(period: f32, ticks: [u64; 2]) -> Duration {
        let ns = ticks[1].saturating_sub(ticks[0]) as f64 * period as f64;
        Duration::from_nanos(ns as u64)
    }
}

/// Runs `passes` (each a list of dispatches encoded into one compute pass) in one
/// submission and returns each pass's GPU time from timestamp queries; without them, one
/// figure: the wall clock around the submission and its read-back.
#[cfg(not(target_arch = "wasm32"))]
fn timed_passes(ctx: &Context, passes: &[Vec<&Dispatch>]) -> Result<Vec<Duration>> {
    let n = passes.len() as u32;
    let timer = PassTimer::new(ctx, "timing", n);
    let period = ctx.queue().get_timestamp_period();
    let start = Instant::now();
    let ticks = Pending::submit(
        ctx,
        "timing",
        16 * n as u64,
        |encoder, read| {
            for (i, dispatches) in passes.iter().enumerate() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("timing"),
                    timestamp_writes: timer.as_ref().map(|t| t.writes(i as u32)),
                });
                for d in dispatches {
                    d.encode(&mut pass);
                }
            }
            if let Some(timer) = &timer {
                timer.copy_to(encoder, read, 0);
            }
        },
        |bytes| Ok(bytemuck::pod_collect_to_vec::<u8, u64>(bytes)),
    )?
    .wait(ctx)?;
    let wall = start.elapsed();
    Ok(match timer {
        Some(_) => ticks
            .chunks(2)
            .take(passes.len())
            .map(|t| PassTimer::elapsed(period, [t[0], t[1]]))
            .collect(),
        None => vec![wall],
    })
}

/// Time of `reps` back-to-back runs of `dispatches` in one compute pass, divided by `reps`
/// (by [`method`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn time_dispatches(ctx: &Context, dispatches: &[Dispatch], reps: u32) -> Result<Duration> {
    let reps = reps.max(1);
    let pass: Vec<&Dispatch> = (0..reps).flat_map(|_| dispatches).collect();
    Ok(timed_passes(ctx, &[pass])?[0] / reps)
}

/// Dispatches per submission when timing each: two queries per dispatch, within wgpu's
/// limit of 4096 queries per set.
#[cfg(not(target_arch = "wasm32"))]
const EACH_PER_SUBMIT: usize = 1024;

/// The time of each dispatch, run in order (each sees what the ones before it wrote), by
/// [`method`]: with timestamps, each dispatch is its own compute pass with a timestamp at
/// its start and end, a thousand passes per submission; otherwise each is submitted and
/// waited for alone.
#[cfg(not(target_arch = "wasm32"))]
pub fn time_each(ctx: &Context, dispatches: &[Dispatch]) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(dispatches.len());
    if method(ctx) == TimingMethod::WallClock {
        for d in dispatches {
            let start = Instant::now();
            ctx.run(std::slice::from_ref(d))?;
            times.push(start.elapsed());
        }
        return Ok(times);
    }
    for chunk in dispatches.chunks(EACH_PER_SUBMIT) {
        let passes: Vec<Vec<&Dispatch>> = chunk.iter().map(|d| vec![d]).collect();
        times.extend(timed_passes(ctx, &passes)?);
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise;
    use crate::testing::*;

    #[test]
    fn each_dispatch_is_timed_and_runs_in_order() {
        let ctx = &ctx();
        let t = poisoned(ctx, &[1000]);
        // fill 1, then add 2 x itself: the order matters to the result.
        let fill = elementwise::plan_fill(ctx, &t, 1.0).unwrap();
        let src = upload(ctx, &[0.5; 1000], &[1000]);
        let add = elementwise::plan_accumulate(ctx, 2.0, &src, &t).unwrap();
        let times = time_each(ctx, &[fill, add]).unwrap();
        assert_eq!(times.len(), 2);
        assert_close("fill then add", &download(ctx, &t), &[2.0; 1000], 1e-7);
    }
}
