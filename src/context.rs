//! The GPU context: which adapter we run on, what it can do, and the compiled pipelines.
//!
//! A [`Context`] either opens its own device (following wgpu's environment conventions) or
//! wraps a `Device` and `Queue` an application already has. It holds no global state:
//! every cache lives in the context, and two contexts never share anything.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::family::{KernelFamily, TextKey, Variant};
use crate::shader::{self, Access, BindingKind, EntryInterface, Shader};

/// How to pick an adapter and open a device. `Default` follows wgpu's environment variables.
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Backends to consider. `None`: `WGPU_BACKEND` if set, else every backend built in.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter's name. `None`: `WGPU_ADAPTER_NAME` if set.
    pub adapter_name: Option<String>,
    /// `None`: `WGPU_POWER_PREF` if set, else high performance.
    pub power_preference: Option<wgpu::PowerPreference>,
    /// Ask for wgpu's experimental cooperative-matrix feature when the adapter offers it.
    pub cooperative_matrix: bool,
    /// Longest a blocking wait (a read-back, `Context::wait`) may take before it fails.
    pub wait_timeout: Option<Duration>,
    /// A context that only plans, to inspect plans for a GPU larger than this adapter (the
    /// cost model of `bench step --model`): storage-binding size limits are not enforced and
    /// a binding over the limit is cut to it, so nothing planned on it may run; submitting
    /// work on it is an error.
    pub plan_only: bool,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            backends: None,
            adapter_name: None,
            power_preference: None,
            cooperative_matrix: true,
            wait_timeout: Some(Duration::from_secs(600)),
            plan_only: false,
        }
    }
}

/// What the adapter and device offer, as far as our kernels care.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// Vulkan, Metal, DX12, GL or the browser's WebGPU.
    pub backend: wgpu::Backend,
    /// The adapter's name as the driver reports it.
    pub adapter_name: String,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version information.
    pub driver: String,
    /// Subgroup size range, when subgroup operations are enabled on the device.
    pub subgroup_sizes: Option<(u32, u32)>,
    /// WGSL `f16` in shaders.
    pub shader_f16: bool,
    /// Timestamp queries at pass boundaries.
    pub timestamp_query: bool,
    /// Timestamp queries between dispatches inside a pass.
    pub timestamp_inside_passes: bool,
    /// Cooperative-matrix shapes the device can run (empty when the feature is off).
    pub cooperative_matrices: Vec<wgpu::CooperativeMatrixProperties>,
    /// Largest storage buffer binding, in bytes: the largest tensor one kernel can see.
    pub max_storage_binding: u64,
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Workgroup memory per workgroup, in bytes.
    pub max_workgroup_storage: u32,
    /// Threads per workgroup.
    pub max_invocations_per_workgroup: u32,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dimension: u32,
    /// Storage buffers one kernel may bind.
    pub max_storage_buffers_per_stage: u32,
    /// Alignment of a storage binding's offset, in bytes (views of a buffer start on it).
    pub storage_offset_alignment: u32,
}

impl Capabilities {
    /// True for software adapters (llvmpipe, WARP, SwiftShader): pick small defaults there.
    pub fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "adapter            {} ({:?}, {:?})",
            self.adapter_name, self.backend, self.device_type
        )?;
        writeln!(f, "driver             {}", self.driver)?;
        match self.subgroup_sizes {
            Some((lo, hi)) => writeln!(f, "subgroups          {lo}..={hi}")?,
            None => writeln!(f, "subgroups          no")?,
        }
        writeln!(f, "shader-f16         {}", yes(self.shader_f16))?;
        writeln!(
            f,
            "timestamp queries  {} (inside passes: {})",
            yes(self.timestamp_query),
            yes(self.timestamp_inside_passes)
        )?;
        if self.cooperative_matrices.is_empty() {
            writeln!(f, "cooperative matrix no")?;
        } else {
            let shapes: Vec<String> = self
                .cooperative_matrices
                .iter()
                .map(|c| {
                    format!(
                        "{}x{}x{} {:?}->{:?}",
                        c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
                    )
                })
                .collect();
            writeln!(f, "cooperative matrix {}", shapes.join(", "))?;
        }
        writeln!(
            f,
            "storage binding    {} MiB (buffer {} MiB)",
            self.max_storage_binding >> 20,
            self.max_buffer_size >> 20
        )?;
        write!(
            f,
            "workgroup memory   {} KiB, {} invocations",
            self.max_workgroup_storage >> 10,
            self.max_invocations_per_workgroup
        )
    }
}

/// Identifies a compiled pipeline: shader, entry point, variant text and `override` values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: (&'static str, usize),
    entry: &'static str,
    /// What the variant's source text depends on.
    text: TextKey,
    /// WGSL `override` constants, as (name, value bits).
    constants: Vec<(&'static str, u64)>,
}

/// Identifies a parsed shader source: the shader and its variant's text.
type ModuleKey = ((&'static str, usize), TextKey);

/// A shader variant parsed by naga, for reading its entry points' bindings.
type ParsedModule = Arc<(naga::Module, naga::valid::ModuleInfo)>;

/// What a bind group layout is made from: each binding's number and kind.
type LayoutKey = Vec<(u32, LayoutSlot)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LayoutSlot {
    Uniform,
    Storage(Access),
}

/// A compiled kernel: its pipeline, the layout of its bind group and the bindings its entry
/// point uses (read from the WGSL).
#[derive(Clone, Debug)]
pub(crate) struct CompiledKernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub interface: Arc<EntryInterface>,
}

/// An error scope's answer if it has one now (native wgpu answers at once; a browser
/// later), else the future that will give it.
fn answered<F: std::future::Future<Output = Option<wgpu::Error>>>(
    pop: F,
) -> std::result::Result<Option<wgpu::Error>, std::pin::Pin<Box<F>>> {
    let mut pop = Box::pin(pop);
    match pop
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(e) => Ok(e),
        std::task::Poll::Pending => Err(pop),
    }
}

/// What [`Context::scoped_async`]'s error scopes caught, when the device says.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type ScopeFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>;
/// What [`Context::scoped_async`]'s error scopes caught, when the device says.
#[cfg(target_arch = "wasm32")]
pub(crate) type ScopeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>>>>;

/// Everything in `log`, joined, and the log emptied; `None` when it is empty.
pub(crate) fn take_all(log: &ErrorLog) -> Option<String> {
    let mut log = log.lock().unwrap();
    (!log.is_empty()).then(|| {
        let message = log.join("; ");
        log.clear();
        message
    })
}

/// Errors the device reported outside any scope of ours (only for devices we opened).
pub(crate) type ErrorLog = Arc<Mutex<Vec<String>>>;

/// Bind group layout and pipeline layout for one list of bindings.
type Layouts = (wgpu::BindGroupLayout, wgpu::PipelineLayout);

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
    pipelines: Mutex<HashMap<PipelineKey, CompiledKernel>>,
    modules: Mutex<HashMap<ModuleKey, ParsedModule>>,
    layouts: Mutex<HashMap<LayoutKey, Layouts>>,
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

fn no_adapter_hint() -> String {
    "Install a Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` gives the \
     software llvmpipe device; or your GPU vendor's driver), or try WGPU_BACKEND=gl."
        .to_string()
}

fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

/// Rank adapters: the wanted kind of device first, then native backends before GL.
fn adapter_rank(info: &wgpu::AdapterInfo, pref: wgpu::PowerPreference) -> (u8, u8) {
    use wgpu::DeviceType::*;
    let kind = match (pref, info.device_type) {
        (wgpu::PowerPreference::LowPower, IntegratedGpu) => 0,
        (wgpu::PowerPreference::LowPower, DiscreteGpu) => 1,
        (_, DiscreteGpu) => 0,
        (_, IntegratedGpu) => 1,
        (_, VirtualGpu) => 2,
        (_, Cpu) => 3,
        (_, Other) => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, backend)
}

impl Context {
    /// Opens a device on the best adapter, following `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`
    /// and `WGPU_POWER_PREF`. Blocks until the device is ready (native only; in a browser,
    /// await [`Context::new_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Context> {
        Self::with_options(ContextOptions::default())
    }

    /// Like [`Context::new`], with explicit options (unset ones still follow the environment).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(options: ContextOptions) -> Result<Context> {
        pollster::block_on(Self::new_async(options))
    }

    /// Opens a device as [`Context::with_options`] does, without blocking: the one way in a
    /// browser (there the environment is not read and the browser picks the adapter).
    pub async fn new_async(options: ContextOptions) -> Result<Context> {
        let backends = options.backends.unwrap_or_else(backends_from_env);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        desc.flags = wgpu::InstanceFlags::from_env_or_default();
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
        if adapters.is_empty() {
            return Err(Error::NoAdapter {
                backends: format!("{backends:?}"),
                hint: no_adapter_hint(),
            });
        }
        let wanted_name = options
            .adapter_name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .map(|s| s.to_lowercase());
        let pref = options
            .power_preference
            .or_else(wgpu::PowerPreference::from_env)
            .unwrap_or(wgpu::PowerPreference::HighPerformance);
        let available: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        let adapter = adapters
            .into_iter()
            .filter(|a| {
                let info = a.get_info();
                let name_ok = wanted_name
                    .as_ref()
                    .is_none_or(|w| info.name.to_lowercase().contains(w.as_str()));
                let compute_ok = a
                    .get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
                name_ok && compute_ok
            })
            .min_by_key(|a| adapter_rank(&a.get_info(), pref));
        let adapter = match adapter {
            Some(a) => a,
            None => {
                return Err(match wanted_name {
                    Some(w) => Error::AdapterNotFound {
                        wanted: w,
                        available: available.join(", "),
                    },
                    None => Error::NoAdapter {
                        backends: format!("{backends:?} (none with compute shaders)"),
                        hint: no_adapter_hint(),
                    },
                })
            }
        };
        Self::open(&adapter, options).await
    }

    async fn open(adapter: &wgpu::Adapter, options: ContextOptions) -> Result<Context> {
        let offered = adapter.features();
        let mut wanted = wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let coop = options.cooperative_matrix
            && offered.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        if coop {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let info = adapter.get_info();
        let desc = wgpu::DeviceDescriptor {
            label: Some("roformer-wgpu"),
            required_features: offered & wanted,
            // The adapter's real limits: wgpu's defaults cap storage bindings at 128 MiB
            // and workgroup memory at 16 KiB.
            required_limits: adapter.limits(),
            experimental_features: if coop {
                // SAFETY: cooperative matrices are only used by kernels written for them,
                // and only with the shapes the adapter reports.
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            adapter
                .request_device(&desc)
                .await
                .map_err(|e| Error::RequestDevice {
                    adapter: info.name.clone(),
                    message: e.to_string(),
                })?;
        // Our own device: errors outside our scopes are recorded, never a panic.
        let log: ErrorLog = Arc::default();
        let sink = log.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let mut ctx = Self::build(adapter, device, queue, options.wait_timeout);
        // wgpu keeps one device-lost callback: on our own device, ours.
        let lost = ctx.device_lost_hook();
        ctx.device.set_device_lost_callback(move |reason, message| {
            lost(&format!("{reason:?}: {message}"))
        });
        ctx.uncaptured = Some(log);
        ctx.owns_device = true;
        ctx.plan_only = options.plan_only;
        Ok(ctx)
    }

    /// Wraps a device an application already has, as a guest: the adapter is only asked
    /// what it offers, and the device's own features and limits decide which kernels run.
    ///
    /// What the library leaves alone on a borrowed device: its uncaptured-error handler
    /// (errors in the library's work are caught with error scopes) and its device-lost
    /// callback (wgpu keeps only one: call [`Context::device_lost_hook`]'s function from
    /// yours, and the library's calls fail with the reason from then on instead of handing
    /// work to a lost device). It submits nothing until asked to run something, and matmul
    /// tilings are chosen by shape rather than timed on the device
    /// (`TilingChoice::Heuristic`) unless the application sets otherwise. Waits are for the
    /// library's own submissions, never the whole device.
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::build(
            adapter,
            device,
            queue,
            ContextOptions::default().wait_timeout,
        )
    }

    /// For an application's own device-lost callback: a function to call with the reason
    /// when its device is lost, after which the library reports the loss instead of using
    /// the device. (A context that opened its device registers this itself.)
    pub fn device_lost_hook(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let lost = self.lost.clone();
        move |reason: &str| {
            *lost.lock().unwrap() = Some(reason.to_string());
        }
    }

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
        let info = adapter.get_info();
        let features = device.features();
        let limits = device.limits();
        let caps = Capabilities {
            backend: info.backend,
            adapter_name: info.name.clone(),
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            subgroup_sizes: features
                .contains(wgpu::Features::SUBGROUP)
                .then_some((info.subgroup_min_size, info.subgroup_max_size)),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamp_inside_passes: features
                .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            cooperative_matrices: if features
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            {
                adapter.cooperative_matrix_properties()
            } else {
                Vec::new()
            },
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
        };
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
            pipelines: Mutex::default(),
            modules: Mutex::default(),
            layouts: Mutex::default(),
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

    /// Runs `f` inside validation, out-of-memory and internal error scopes, so a GPU error
    /// comes back as `Err` instead of reaching the uncaptured-error handler. Never blocks.
    pub(crate) fn scoped<T>(&self, during: &'static str, f: impl FnOnce() -> T) -> Result<T> {
        // A lost device stays lost: refuse the work instead of handing it to wgpu.
        self.refuse_if_lost(during)?;
        let (out, caught) = self.in_error_scopes(f);
        match answered(caught) {
            Ok(Some(e)) => {
                return Err(Error::Gpu {
                    during,
                    message: e.to_string(),
                })
            }
            Ok(None) => {}
            Err(later) => self.answer_later(during, later),
        }
        self.check_health(during)?;
        Ok(out)
    }

    /// Runs `f` inside out-of-memory, validation and internal error scopes; the future
    /// resolves to the first error they caught.
    fn in_error_scopes<T>(
        &self,
        f: impl FnOnce() -> T,
    ) -> (
        T,
        impl std::future::Future<Output = Option<wgpu::Error>> + 'static,
    ) {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let out = f();
        let (internal, validation, oom) = (internal.pop(), validation.pop(), oom.pop());
        let caught = async move { internal.await.or(validation.await).or(oom.await) };
        (out, caught)
    }

    /// [`Context::scoped`] without blocking: `f` runs inside the same error scopes, and the
    /// returned future resolves to the first error they caught (at once on native wgpu; in a
    /// browser when the device answers). For work whose results are read back
    /// asynchronously, which awaits it first.
    pub(crate) fn scoped_async<T>(
        &self,
        during: &'static str,
        f: impl FnOnce() -> T,
    ) -> Result<(T, ScopeFuture)> {
        self.check_health(during)?;
        let (out, caught) = self.in_error_scopes(f);
        let caught: ScopeFuture =
            Box::pin(async move { caught.await.map(|e| format!("{during}: {e}")) });
        Ok((out, caught))
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

    /// `Err` once the device is lost.
    fn refuse_if_lost(&self, during: &'static str) -> Result<()> {
        match self.lost.lock().unwrap().clone() {
            Some(reason) => Err(Error::Gpu {
                during,
                message: format!("device lost ({reason})"),
            }),
            None => Ok(()),
        }
    }

    /// Keeps an error scope's late answer (a browser's) for the next health check: the
    /// scope's work went on, and what it caught must not be lost.
    #[cfg(target_arch = "wasm32")]
    fn answer_later(
        &self,
        during: &'static str,
        answer: impl std::future::Future<Output = Option<wgpu::Error>> + 'static,
    ) {
        let late = self.late.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Some(e) = answer.await {
                late.lock().unwrap().push(format!("{during}: {e}"));
            }
        });
    }

    /// Native wgpu answers error scopes at once, so nothing comes later.
    #[cfg(not(target_arch = "wasm32"))]
    fn answer_later(&self, _during: &'static str, _answer: impl std::future::Future) {}

    /// Errors caught earlier but answered late, for a read-back to report with its own.
    pub(crate) fn late_errors(&self) -> ErrorLog {
        self.late.clone()
    }

    /// Reports device loss, or an error the device raised outside our scopes.
    pub fn check_health(&self, during: &'static str) -> Result<()> {
        self.refuse_if_lost(during)?;
        if let Some(message) = take_all(&self.late) {
            return Err(Error::Gpu { during, message });
        }
        if let Some(message) = self.uncaptured.as_ref().and_then(take_all) {
            return Err(Error::Gpu { during, message });
        }
        Ok(())
    }

    /// The bind group layout (and pipeline layout) for these bindings, made once.
    fn layout(&self, interface: &EntryInterface) -> Layouts {
        let key: LayoutKey = interface
            .bindings
            .iter()
            .map(|b| {
                let slot = match b.kind {
                    BindingKind::Uniform { .. } => LayoutSlot::Uniform,
                    BindingKind::Storage(access) => LayoutSlot::Storage(access),
                };
                (b.binding, slot)
            })
            .collect();
        let mut layouts = self.layouts.lock().unwrap();
        layouts
            .entry(key.clone())
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = key
                    .iter()
                    .map(|&(binding, slot)| wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: match slot {
                                LayoutSlot::Uniform => wgpu::BufferBindingType::Uniform,
                                LayoutSlot::Storage(access) => wgpu::BufferBindingType::Storage {
                                    read_only: access == Access::Read,
                                },
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                let bgl = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: None,
                        entries: &entries,
                    });
                let pl = self
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: None,
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                (bgl, pl)
            })
            .clone()
    }

    /// `shader` as `variant` writes it, parsed by naga (once per context and variant text).
    fn module(&self, shader: &'static Shader, variant: &Variant) -> Result<(String, ParsedModule)> {
        let source = variant.source(shader)?;
        let key = (shader.key(), variant.text_key());
        if let Some(m) = self.modules.lock().unwrap().get(&key) {
            return Ok((source, m.clone()));
        }
        let parsed: ParsedModule = Arc::new(shader::parse(shader.name, &source)?);
        self.modules.lock().unwrap().insert(key, parsed.clone());
        Ok((source, parsed))
    }

    /// The pipeline for `shader`'s `entry` in `variant` (compiled once per context, variant
    /// text and constant values), with the bindings the entry point uses. A kernel of a
    /// `family` must be in a variant the family lists.
    pub(crate) fn kernel(
        &self,
        shader: &'static Shader,
        family: Option<&'static KernelFamily>,
        entry: &'static str,
        variant: &Variant,
    ) -> Result<CompiledKernel> {
        let key = PipelineKey {
            shader: shader.key(),
            entry,
            text: variant.text_key(),
            constants: variant
                .constants
                .iter()
                .map(|&(n, v)| (n, v.to_bits()))
                .collect(),
        };
        if let Some(k) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        if let Some(family) = family {
            family.check_variant(variant)?;
        }
        let (source, parsed) = self.module(shader, variant)?;
        let interface = Arc::new(shader::entry_interface(
            shader.name,
            &parsed.0,
            &parsed.1,
            entry,
        )?);
        let (bgl, pl) = self.layout(&interface);
        let started = web_time::Instant::now();
        let pipeline = self.scoped("shader compilation", || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &variant.constants,
                        // Every kernel writes workgroup memory before reading it. Zeroing it
                        // costs time on every launch, and naga's GL backend emits it as huge
                        // array initialisers that Mesa takes minutes to compile.
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        {
            let mut setup = self.setup.lock().unwrap();
            setup.pipelines += 1;
            setup.compiling += started.elapsed();
        }
        let kernel = CompiledKernel {
            pipeline,
            layout: bgl,
            interface,
        };
        self.pipelines.lock().unwrap().insert(key, kernel.clone());
        Ok(kernel)
    }

    /// Blocks until `index` (or all work, with `None`) has finished on the GPU,
    /// at most the context's wait timeout (native only: a browser's device cannot be waited
    /// for, only awaited through a [`crate::readback::Pending`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let r = self.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: self.wait_timeout,
        });
        match r {
            Ok(_) => self.check_health("wait"),
            Err(wgpu::PollError::Timeout) => {
                Err(Error::Timeout(self.wait_timeout.unwrap_or(Duration::MAX)))
            }
            Err(e) => Err(Error::Gpu {
                during: "wait",
                message: e.to_string(),
            }),
        }
    }

    /// Runs a future of this library's (a read-back, a pipeline) to its end on this thread,
    /// sleeping in the device's own wait while the GPU works: the executor of the blocking
    /// wrappers (native only). On a device an app handed over, that wait also covers the
    /// app's own submitted work; an app that must not wait for it awaits the futures from its
    /// own loop instead.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn block_on<T>(&self, future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let mut future = std::pin::pin!(future);
        let mut task = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut task) {
                return out;
            }
            self.wait(None)?;
        }
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

    #[test]
    fn no_adapter_is_a_clear_error() {
        let opts = ContextOptions {
            backends: Some(wgpu::Backends::empty()),
            ..Default::default()
        };
        let err = Context::with_options(opts).unwrap_err();
        assert!(matches!(err, Error::NoAdapter { .. }), "{err}");
        assert!(err.to_string().contains("mesa-vulkan-drivers"), "{err}");
    }

    #[test]
    fn unknown_adapter_name_lists_the_available_ones() {
        let opts = ContextOptions {
            adapter_name: Some("no such gpu 9000".into()),
            ..Default::default()
        };
        let err = Context::with_options(opts).unwrap_err();
        match &err {
            Error::AdapterNotFound { wanted, available } => {
                assert_eq!(wanted, "no such gpu 9000");
                assert!(!available.is_empty(), "{err}");
            }
            other => panic!("expected AdapterNotFound, got {other}"),
        }
    }

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
    fn pipelines_are_compiled_once_per_context() {
        let ctx = crate::testing::ctx();
        let shader = &crate::ops::elementwise::SHADER;
        let before = ctx.setup_costs().pipelines;
        let a = ctx
            .kernel(shader, None, "axpby", &Variant::default())
            .unwrap();
        let b = ctx
            .kernel(shader, None, "axpby", &Variant::default())
            .unwrap();
        assert_eq!(
            a.pipeline, b.pipeline,
            "the second request must come from the cache"
        );
        assert!(ctx.setup_costs().pipelines <= before + 1);
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
