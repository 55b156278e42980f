//! The GPU context: which adapter we run on, what it can do, and the compiled pipelines.
//!
//! A [`Context`] either opens its own device (following wgpu's environment conventions) or
//! wraps a `Device` and `Queue` an application already has. It holds no global state:
//! every cache lives in the context, and two contexts never share anything.
//!
//! One file per job: `open.rs` (choosing an adapter, opening or borrowing a device),
//! `capabilities.rs` (what it offers), `errors.rs` (error scopes, device loss, late errors),
//! `pipelines.rs` (compiled pipelines and layouts, once per context), `submit.rs`
//! (submitting dispatches and waiting for them); here the context itself, its per-op state,
//! one-time costs and planning for another adapter.

mod capabilities;
mod errors;
mod open;
mod pipelines;
mod submit;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

pub use capabilities::Capabilities;
pub(crate) use errors::{take_all, ErrorLog, ScopeFuture};
pub use open::ContextOptions;
use pipelines::PipelineCache;

/// One-time costs a context has paid so far (see [`Context::setup_costs`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SetupCosts {
    /// Pipelines compiled (each shader variant and entry point once per context).
    pub pipelines: usize,
    /// Time spent creating them (shader translation and the driver's compiler).
    pub compiling: Duration,
    /// Choices made by timing kernel variants on this device (matmul: one per kind of
    /// product shape, see `ops::matmul::TilingChoice`).
    pub tunings: usize,
    /// Time spent on that timing, the compilation of the variants tried included.
    pub tuning: Duration,
}

/// The GPU context. Cheap to share by reference across threads.
pub struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    caps: Capabilities,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    wait_timeout: Option<Duration>,
    cache: PipelineCache,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Option<ErrorLog>,
    /// Errors that scopes of ours caught but answered only after the work went on (a
    /// browser's): reported by the next health check or read-back.
    late: ErrorLog,
    /// Opened by this context (else an application's, borrowed: see `from_device`).
    owns_device: bool,
    /// See [`ContextOptions::plan_only`].
    plan_only: bool,
    /// What ops keep for the context's life (matmul's settings and tuned tilings), one value
    /// per type: the op owns its state, the context only holds it.
    op_state: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    setup: Mutex<SetupCosts>,
    /// Bound in place of an optional input that is absent (never read by the kernel).
    pub(crate) dummy: wgpu::Buffer,
    /// The same for an absent optional output: a buffer may not be bound both read-only and
    /// writable in one dispatch, so it cannot share `dummy`.
    pub(crate) dummy_writable: wgpu::Buffer,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.caps.adapter_name)
            .field("backend", &self.caps.backend)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Whether this context opened its device (rather than borrowing an application's).
    pub fn owns_device(&self) -> bool {
        self.owns_device
    }

    fn build(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        wait_timeout: Option<Duration>,
    ) -> Context {
        let caps = Capabilities::of(adapter, &device);
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused optional input"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy_writable = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused optional output"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Context {
            device,
            queue,
            caps,
            wait_timeout,
            cache: PipelineCache::default(),
            lost: Arc::default(),
            uncaptured: None,
            late: ErrorLog::default(),
            owns_device: false,
            plan_only: false,
            op_state: Mutex::default(),
            setup: Mutex::default(),
            dummy,
            dummy_writable,
        }
    }

    /// The state an op keeps in this context, created with `T::default()` on first use:
    /// one value per type, shared by every caller (matmul keeps its settings and tuned
    /// tilings this way; a custom op may keep its own).
    pub fn op_state<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut states = self.op_state.lock().unwrap();
        let state = states
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        state
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("op states are keyed by their type"))
    }

    /// Records time an op spent timing kernel variants to choose one (see [`SetupCosts`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn record_tuning(&self, took: Duration) {
        let mut setup = self.setup.lock().unwrap();
        setup.tunings += 1;
        setup.tuning += took;
    }

    /// What this context has spent so far on one-time work: compiling pipelines and timing
    /// matmul tilings (the cost of a first step, beyond the step itself).
    pub fn setup_costs(&self) -> SetupCosts {
        *self.setup.lock().unwrap()
    }

    /// The device (the application's, for a context made with [`Context::from_device`]).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// What the adapter offers (backend, name, subgroups, f16, timestamps, limits, ...).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether this context only plans (see [`ContextOptions::plan_only`]).
    pub fn plan_only(&self) -> bool {
        self.plan_only
    }

    /// Plans from here on as if on an adapter with `caps` (a context that only plans; the
    /// cost model plans for the GPU it predicts): variant choices (row layouts, matmul
    /// tilings) follow `caps`. Pipelines are still compiled by this adapter, so keep its
    /// workgroup limits.
    pub fn plan_as(&mut self, caps: Capabilities) -> Result<()> {
        self.refuse_unless_plan_only("plan_as")?;
        self.caps = caps;
        Ok(())
    }

    fn refuse_unless_plan_only(&self, during: &'static str) -> Result<()> {
        if !self.plan_only {
            return Err(Error::invalid(format!(
                "{during}: only a context that only plans (ContextOptions::plan_only) may \
                 take another adapter's capabilities"
            )));
        }
        Ok(())
    }

    /// `Err` on a context that only plans: what it planned may not run.
    pub(crate) fn refuse_if_plan_only(&self, during: &'static str) -> Result<()> {
        if self.plan_only {
            return Err(Error::invalid(format!(
                "{during}: this context only plans (ContextOptions::plan_only); its plans may \
                 hold bindings cut to the adapter's limits and must not run"
            )));
        }
        Ok(())
    }

    /// Splits a count of workgroups over x and y so neither exceeds the per-dimension limit
    /// (65535 on many adapters). Kernels recover the flat index as
    /// `wid.x + wid.y * num_workgroups.x`.
    pub fn grid_1d(&self, groups: u64) -> Result<[u32; 3]> {
        let max = self.caps.max_workgroups_per_dimension as u64;
        let groups = groups.max(1);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::OverLimit {
                what: format!("a dispatch of {groups} workgroups"),
                needed: groups,
                limit: max * max,
                limit_name: "max_compute_workgroups_per_dimension squared",
            });
        }
        Ok([x as u32, y as u32, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context that only plans takes a GPU's capabilities, and the variants follow them
    /// (a warp per row, the GPU's matmul tilings); a context that runs refuses them.
    #[test]
    fn only_a_planning_context_plans_as_another_adapter() {
        use crate::ops::rows::{row_layout, RowLayout};
        let mut ctx = Context::new().unwrap();
        let mut gpu = ctx.capabilities().clone();
        gpu.device_type = wgpu::DeviceType::DiscreteGpu;
        gpu.subgroup_sizes = Some((32, 32));
        let err = ctx.plan_as(gpu.clone()).unwrap_err();
        assert!(err.to_string().contains("plan_only"), "{err}");
        let mut ctx = Context::with_options(ContextOptions {
            plan_only: true,
            ..Default::default()
        })
        .unwrap();
        ctx.plan_as(gpu.clone()).unwrap();
        assert_eq!(row_layout(&ctx, 768), RowLayout::Subgroup(32));
        assert_eq!(row_layout(&ctx, 4096), RowLayout::Workgroup(256));
        gpu.subgroup_sizes = Some((32, 64));
        ctx.plan_as(gpu).unwrap();
        assert_eq!(row_layout(&ctx, 768), RowLayout::Workgroup(256));
    }

    #[test]
    fn op_state_is_one_value_per_type() {
        #[derive(Default)]
        struct Counter(Mutex<u32>);
        let ctx = crate::testing::ctx();
        *ctx.op_state::<Counter>().0.lock().unwrap() += 2;
        *ctx.op_state::<Counter>().0.lock().unwrap() += 3;
        assert_eq!(*ctx.op_state::<Counter>().0.lock().unwrap(), 5);
    }
}
