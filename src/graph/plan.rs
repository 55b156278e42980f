//! The executable plan: buffers allocated as the planner laid them out, every dispatch and
//! bind group built once, replayed by encoding.

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::tensor::{numel, DType, Tensor};

use super::planner::{assign_buffers, pooled_bytes, Assignment, BufferLayout};
use super::{Call, Graph, Resolved, Storage, TensorId};

/// Memory a planned step holds on the GPU, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Parameters, their gradients and both AdamW moments.
    pub params: u64,
    /// The planner's pooled buffers (activations, saved tensors, activation gradients, scratch).
    pub pooled: u64,
    /// How many pooled buffers.
    pub buffers: usize,
    /// What the pooled tensors would take with a buffer each: the cost without reuse.
    pub unpooled: u64,
    /// Per-step inputs and constants the stages hold (ids, masks, labels, tables).
    pub inputs: u64,
    /// An inference encoder's generations in progress: their key/value caches and
    /// activations (0 elsewhere).
    pub generation: u64,
}

impl MemoryReport {
    /// Everything the step keeps allocated at once: its peak.
    pub fn peak(&self) -> u64 {
        self.params + self.pooled + self.inputs + self.generation
    }
}

/// How [`Graph::plan`] lays out memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Tensors whose lifetimes do not overlap share buffers (the default); without it every
    /// tensor has a buffer of its own (for checking the planner, or debugging a kernel that
    /// writes outside its tensor).
    pub reuse_buffers: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            reuse_buffers: true,
        }
    }
}

/// One call of a plan: its dispatches and the graph tensors it writes.
#[derive(Clone, Debug)]
pub struct PlannedCall {
    /// What the call does, e.g. `roformer.encoder.layer.0.attention.self.query: linear`.
    pub label: String,
    /// Its dispatches, as indices into [`Plan::dispatches`].
    pub dispatches: std::ops::Range<usize>,
    /// The graph tensors it writes.
    pub writes: Vec<TensorId>,
}

/// A planned graph: every dispatch built, every buffer allocated.
pub struct Plan {
    dispatches: Vec<Dispatch>,
    calls: Vec<PlannedCall>,
    /// Per parameter of the store: the end of the dispatches after which its gradient is
    /// final (the last call that writes it), or `None` when no call does.
    gradients_final: Vec<Option<usize>>,
    names: Vec<String>,
    resolved: Resolved,
    assignments: Vec<Assignment>,
    pool: Vec<Tensor>,
    memory: MemoryReport,
}

impl Graph {
    /// Assigns buffers and builds every dispatch of the forward pass, and of the backward
    /// pass too with `with_backward`.
    pub fn plan(&self, ctx: &Context, store: &ParamStore, with_backward: bool) -> Result<Plan> {
        self.plan_with(ctx, store, with_backward, PlanOptions::default())
    }

    /// [`Graph::plan`] with explicit options.
    pub fn plan_with(
        &self,
        ctx: &Context,
        store: &ParamStore,
        with_backward: bool,
        options: PlanOptions,
    ) -> Result<Plan> {
        let (calls, bytes, layout) = self.layout(with_backward, options.reuse_buffers);
        self.check_buffer_sizes(ctx, &bytes, &layout)?;
        let pool = layout
            .sizes
            .iter()
            .map(|&size| Tensor::zeros(ctx, &[(size / 4) as usize], DType::F32))
            .collect::<Result<Vec<_>>>()?;
        self.build(ctx, store, &calls, layout, pool)
    }

    /// Plans into buffers the caller owns instead of buffers of its own: buffer i of the
    /// layout is `pool[i]`, and a buffer too small or missing is replaced or added (so the
    /// pool grows to the largest plan's buffer i). Plans that never run at the same time can
    /// share one pool: GPU work runs in submission order, so one plan's intermediates are
    /// dead before the next plan writes them. (One buffer cut into ranges would not do: a
    /// kernel may not read one range of a buffer while writing another.) Returns the plan
    /// and whether a buffer was replaced, which leaves plans made before bound to the old
    /// one (work in flight keeps it alive until it is done).
    pub fn plan_in(
        &self,
        ctx: &Context,
        store: &ParamStore,
        with_backward: bool,
        pool: &mut Vec<Tensor>,
    ) -> Result<(Plan, bool)> {
        let (calls, bytes, layout) = self.layout(with_backward, true);
        self.check_buffer_sizes(ctx, &bytes, &layout)?;
        let mut replaced = false;
        let mut views = Vec::with_capacity(layout.sizes.len());
        for (i, &size) in layout.sizes.iter().enumerate() {
            let elems = (size / 4) as usize;
            match pool.get_mut(i) {
                Some(b) if b.byte_size() >= size => {}
                Some(b) => {
                    *b = Tensor::zeros(ctx, &[elems], DType::F32)?;
                    replaced = true;
                }
                None => pool.push(Tensor::zeros(ctx, &[elems], DType::F32)?),
            }
            views.push(pool[i].view(ctx, 0, &[elems])?);
        }
        Ok((self.build(ctx, store, &calls, layout, views)?, replaced))
    }

    /// The calls to plan, each pooled tensor's size, and the planner's buffers.
    fn layout(
        &self,
        with_backward: bool,
        reuse: bool,
    ) -> (Vec<&Call>, Vec<Option<u64>>, BufferLayout) {
        let calls: Vec<&Call> = self
            .forward
            .iter()
            .chain(self.backward.iter().filter(|_| with_backward))
            .collect();
        let bytes: Vec<Option<u64>> = self
            .tensors
            .iter()
            .map(|t| {
                matches!(t.storage, Storage::Pooled).then(|| pooled_bytes(numel(&t.shape), t.dtype))
            })
            .collect();
        let touched: Vec<Vec<TensorId>> = calls
            .iter()
            .map(|c| c.reads.iter().chain(&c.writes).copied().collect())
            .collect();
        let layout = assign_buffers(&bytes, &touched, &self.keep, reuse);
        (calls, bytes, layout)
    }

    /// Every buffer must fit one storage binding.
    fn check_buffer_sizes(
        &self,
        ctx: &Context,
        bytes: &[Option<u64>],
        layout: &BufferLayout,
    ) -> Result<()> {
        let caps = ctx.capabilities();
        for &size in &layout.sizes {
            if size > caps.max_storage_binding && !ctx.plan_only() {
                // Name the tensors too large by themselves, not the small ones sharing
                // their buffers.
                let who: Vec<&str> = layout
                    .assignments
                    .iter()
                    .filter(|a| bytes[a.tensor.0].unwrap_or(0) > caps.max_storage_binding)
                    .map(|a| self.tensors[a.tensor.0].name.as_str())
                    .collect();
                return Err(Error::OverLimit {
                    what: format!(
                        "intermediate tensor(s) {} of this batch shape",
                        who.join(", ")
                    ),
                    needed: size,
                    limit: caps.max_storage_binding,
                    limit_name: "max_storage_buffer_binding_size (use a smaller batch or sequence)",
                });
            }
        }
        Ok(())
    }

    /// Resolves every graph tensor to its buffer and builds every call's dispatches.
    fn build(
        &self,
        ctx: &Context,
        store: &ParamStore,
        calls: &[&Call],
        layout: BufferLayout,
        pool: Vec<Tensor>,
    ) -> Result<Plan> {
        let mut buffer_of = vec![None; self.tensors.len()];
        for a in &layout.assignments {
            buffer_of[a.tensor.0] = Some(a.buffer);
        }
        let mut resolved = Vec::with_capacity(self.tensors.len());
        for (i, info) in self.tensors.iter().enumerate() {
            resolved.push(match (&info.storage, buffer_of[i]) {
                (Storage::Param(p), _) => Some(store.compute_value(ctx, *p)?),
                (Storage::Grad(p), _) => Some(store.grad(ctx, *p)?),
                // A view of the start of its buffer, as its own element type.
                (Storage::Pooled, Some(b)) => Some(Tensor::from_buffer(
                    ctx,
                    pool[b].buffer().clone(),
                    pool[b].offset(),
                    &info.shape,
                    info.dtype,
                )?),
                (Storage::Pooled, None) => None,
            });
        }
        let resolved = Resolved(resolved);
        let mut dispatches = Vec::new();
        let mut planned = Vec::new();
        let mut gradients_final = vec![None; store.specs().len()];
        for call in calls {
            let d = (call.build)(ctx, &resolved).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", call.label)),
                other => other,
            })?;
            let start = dispatches.len();
            dispatches.extend(d);
            for w in &call.writes {
                if let Storage::Grad(p) = self.tensors[w.0].storage {
                    gradients_final[p] = Some(dispatches.len());
                }
            }
            planned.push(PlannedCall {
                label: call.label.clone(),
                dispatches: start..dispatches.len(),
                writes: call.writes.clone(),
            });
        }
        Ok(Plan {
            dispatches,
            calls: planned,
            gradients_final,
            names: self.tensors.iter().map(|t| t.name.clone()).collect(),
            resolved,
            memory: MemoryReport {
                params: store.memory(),
                pooled: layout.sizes.iter().sum(),
                buffers: layout.sizes.len(),
                unpooled: layout.unpooled,
                inputs: self.input_bytes,
                generation: 0,
            },
            assignments: layout.assignments,
            pool,
        })
    }
}

impl Plan {
    /// Every dispatch, in order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// The calls in order, each with its dispatches and the tensors it writes.
    pub fn calls(&self) -> &[PlannedCall] {
        &self.calls
    }

    /// Per parameter of the store (by index): how many of [`Plan::dispatches`] must have
    /// run for its gradient to be final (the end of the last call that writes it), or
    /// `None` when nothing writes it. Data-parallel training reads a gradient back as soon
    /// as it is final, while the rest of the backward pass runs.
    pub fn gradients_final(&self) -> &[Option<usize>] {
        &self.gradients_final
    }

    /// Name of a graph tensor.
    pub fn name(&self, id: TensorId) -> &str {
        &self.names[id.0]
    }

    /// Runs the plan again one call at a time, reading back what each call writes, and
    /// returns the first call (and tensor) holding an infinity or NaN. For diagnosing a step
    /// that went non-finite: slow, and only meaningful with the same inputs.
    pub async fn first_non_finite(&self, ctx: &Context) -> Result<Option<(String, String)>> {
        for call in &self.calls {
            ctx.submit(&self.dispatches[call.dispatches.clone()])?;
            for &id in &call.writes {
                let t = self.resolved.get(id)?;
                let finite = match t.dtype() {
                    DType::F32 => t.read::<f32>(ctx)?.await?.iter().all(|v| v.is_finite()),
                    DType::F16 => t
                        .read::<half::f16>(ctx)?
                        .await?
                        .iter()
                        .all(|v| v.is_finite()),
                    _ => true,
                };
                if !finite {
                    return Ok(Some((call.label.clone(), self.names[id.0].clone())));
                }
            }
        }
        Ok(None)
    }

    /// What the plan holds on the GPU.
    pub fn memory(&self) -> &MemoryReport {
        &self.memory
    }

    /// Every pooled tensor's lifetime and buffer, in order of first use.
    pub fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    /// The GPU tensor of a graph tensor (meaningful after a run for kept tensors).
    pub fn tensor(&self, id: TensorId) -> Result<&Tensor> {
        self.resolved.get(id)
    }

    /// Fills every pooled buffer with `value` (NaN, to show that nothing reads a pooled
    /// tensor before a kernel of the step wrote it).
    pub fn fill_pool(&self, ctx: &Context, value: f32) -> Result<()> {
        // f16 tensors view these f32 buffers: a NaN whose two halves are f16 NaNs too.
        let value = if value.is_nan() {
            f32::from_bits(0x7fc0_7fc0)
        } else {
            value
        };
        let fills = self
            .pool
            .iter()
            .map(|t| crate::ops::elementwise::plan_fill(ctx, t, value))
            .collect::<Result<Vec<_>>>()?;
        // Whatever is submitted next runs after the fills.
        ctx.submit(&fills).map(drop)
    }

    /// Records every dispatch into a compute pass.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.encode(pass);
        }
    }
}
