//! Data-parallel training's step (see `train::Distributed`): the session's step split at the
//! gradients, so that they can be averaged over the ranks before clipping and AdamW see them.
//!
//! The backward pass finishes the last layers' gradients first. They are cut into buckets in
//! that order, about `bucket_bytes` each (as PyTorch's `DistributedDataParallel` buckets
//! them), and the step goes to the GPU as one submission per bucket: the dispatches up to the
//! one after which the bucket's gradients are final, then a copy of them into a read-back
//! buffer. Everything is submitted at once, so while the host reads bucket k back and reduces
//! it, the GPU runs the rest of the backward pass. Each reduced bucket is written back (a
//! queued write lands before any later submission), and the optimizer's submission (clipping,
//! AdamW, the loss scale's update) runs last, on the reduced gradients.

use web_time::Instant;

use super::{Session, StepMetrics};
use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::readback::Pending;

/// The gradient buckets of a session, in the order the backward pass finishes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct GradientBuckets {
    buckets: Vec<Bucket>,
}

/// Gradients read back and reduced together.
#[derive(Clone, Debug, Default, PartialEq)]
struct Bucket {
    /// How many of the step's graph dispatches (the mixed-precision refresh first, then the
    /// plan's) must have run for every gradient in it to be final.
    ready: usize,
    /// Ranges `(offset, len)` of the flat gradient buffer, in elements.
    ranges: Vec<(usize, usize)>,
    /// Elements in all.
    len: usize,
}

impl GradientBuckets {
    /// Buckets of at least `bucket_bytes` (the last may be smaller) over `finals`: per
    /// parameter, `(dispatches before its gradient is final, offset, elements)`.
    fn new(mut finals: Vec<(usize, usize, usize)>, bucket_bytes: usize) -> GradientBuckets {
        finals.sort_unstable();
        let cap = bucket_bytes.div_ceil(4).max(1);
        let mut buckets = Vec::new();
        let mut current = Bucket::default();
        for (ready, offset, n) in finals {
            current.ready = current.ready.max(ready);
            match current.ranges.last_mut() {
                Some((o, len)) if *o + *len == offset => *len += n,
                _ => current.ranges.push((offset, n)),
            }
            current.len += n;
            if current.len >= cap {
                buckets.push(std::mem::take(&mut current));
            }
        }
        if current.len > 0 {
            buckets.push(current);
        }
        GradientBuckets { buckets }
    }

    /// The buckets of `session`'s step.
    pub(super) fn of(session: &Session<'_>, bucket_bytes: usize) -> GradientBuckets {
        let before = session.refresh.len();
        let finals = session.plan.gradients_final();
        let params = session.model.store.specs().iter().enumerate();
        let finals = params
            .map(|(i, s)| (finals[i].map_or(0, |d| before + d), s.offset, s.numel()))
            .collect();
        GradientBuckets::new(finals, bucket_bytes)
    }

    /// Elements per bucket, in the order they are reduced.
    pub(super) fn sizes(&self) -> Vec<usize> {
        self.buckets.iter().map(|b| b.len).collect()
    }
}

impl<'m> Session<'m> {
    /// The gradient buckets [`Session::step_reduced`] cuts for `bucket_bytes`: elements per
    /// bucket, in the order they are reduced.
    pub fn gradient_buckets(&self, bucket_bytes: usize) -> Vec<usize> {
        GradientBuckets::of(self, bucket_bytes).sizes()
    }

    /// One training step whose gradients pass through `reduce` before clipping and AdamW:
    /// data-parallel training's all-reduce. `reduce` is given the gradients bucket by bucket
    /// (about `bucket_bytes` each) in the order the backward pass finishes them, as f32
    /// slices of the flat gradient buffer, while the GPU computes the rest; what it leaves
    /// in each is written back. Blocks until the step is done (native only). A `Train`
    /// session only; the step is [`Session::step`]'s, split.
    pub fn step_reduced(
        &mut self,
        ctx: &Context,
        bucket_bytes: usize,
        reduce: &mut dyn FnMut(&mut [f32]) -> Result<()>,
    ) -> Result<StepMetrics> {
        let optimizer = self
            .optimizer
            .as_mut()
            .ok_or_else(|| Error::invalid("step_reduced needs a Train session"))?;
        let lr = optimizer.prepare(ctx)?;
        if self
            .buckets
            .as_ref()
            .is_none_or(|(b, _)| *b != bucket_bytes)
        {
            self.buckets = Some((bucket_bytes, GradientBuckets::of(self, bucket_bytes)));
        }
        let start = Instant::now();
        let buckets = &self.buckets.as_ref().expect("set above").1.buckets;
        let graph: Vec<&Dispatch> = self.refresh.iter().chain(self.plan.dispatches()).collect();
        let grads = self.model.store.flat_grads()?;
        let mut from = 0;
        let mut pending = Vec::with_capacity(buckets.len());
        for b in buckets {
            let to = b.ready.clamp(from, graph.len());
            let run = &graph[from..to];
            let bytes = 4 * b.len as u64;
            let copy = |encoder: &mut wgpu::CommandEncoder, readback: &wgpu::Buffer| {
                if !run.is_empty() {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("step up to a gradient bucket"),
                        timestamp_writes: None,
                    });
                    for d in run {
                        d.encode(&mut pass);
                    }
                }
                let mut at = 0;
                for &(offset, n) in &b.ranges {
                    let from = grads.offset() + 4 * offset as u64;
                    encoder.copy_buffer_to_buffer(grads.buffer(), from, readback, at, 4 * n as u64);
                    at += 4 * n as u64;
                }
            };
            let finish = move |raw: &[u8]| Ok(bytemuck::pod_collect_to_vec(&raw[..bytes as usize]));
            pending.push(Pending::submit(
                ctx,
                "gradient bucket",
                bytes,
                copy,
                finish,
            )?);
            from = to;
        }
        let encode = start.elapsed();
        for (b, p) in buckets.iter().zip(pending) {
            let mut values: Vec<f32> = p.wait(ctx)?;
            reduce(&mut values)?;
            let mut at = 0;
            for &(offset, n) in &b.ranges {
                ctx.queue().write_buffer(
                    grads.buffer(),
                    grads.offset() + 4 * offset as u64,
                    bytemuck::cast_slice(&values[at..at + n]),
                );
                at += n;
            }
        }
        // What is left of the graph writes no gradient; then the unscaling (none in a Train
        // session) and the optimizer.
        let rest = graph[from..]
            .iter()
            .copied()
            .chain(&self.unscale)
            .chain(self.optimizer.iter().flat_map(|o| o.dispatches()));
        let metrics = self
            .submit_with_metrics(ctx, rest, false, Some(lr))?
            .wait(ctx)?;
        Ok(StepMetrics { encode, ..metrics })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_backward_pass_and_merge_neighbouring_ranges() {
        // (ready after dispatch, offset, elements): the head's gradient is final first,
        // then layer 1's two (neighbours in the flat buffer), then the embeddings'; one
        // parameter nothing writes (after 2 elements of alignment) is ready from the start.
        let finals = vec![
            (9, 0, 100),
            (5, 100, 50),
            (5, 150, 30),
            (2, 180, 20),
            (0, 202, 6),
        ];
        let b = GradientBuckets::new(finals.clone(), 4 * 100);
        assert_eq!(b.sizes(), [106, 100]);
        assert_eq!(b.buckets[0].ready, 5);
        assert_eq!(b.buckets[0].ranges, [(202, 6), (180, 20), (100, 80)]);
        assert_eq!(b.buckets[1].ready, 9);
        assert_eq!(b.buckets[1].ranges, [(0, 100)]);
        // One bucket for everything: ready when the last gradient is.
        let one = GradientBuckets::new(finals, 1 << 30);
        assert_eq!(one.sizes(), [206]);
        assert_eq!(one.buckets[0].ready, 9);
    }
}
