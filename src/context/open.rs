//! Choosing an adapter and opening a device on it, or borrowing an application's.

use std::sync::Arc;
use std::time::Duration;

use super::{Context, ErrorLog};
use crate::error::{Error, Result};

/// How to pick an adapter and open a device. `Default` follows wgpu's environment variables.
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Backends to consider. `None`: `WGPU_BACKEND` if set, else every backend built in.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter's name. `None`: `WGPU_ADAPTER_NAME` if set.
    pub adapter_name: Option<String>,
    /// `None`: `WGPU_POWER_PREF` if set, else high performance.
    pub power_preference: Option<wgpu::PowerPreference>,
    /// Which of the equally ranked best adapters to take (those of the preferred kind and
    /// backend, among the ones `adapter_name` admits): the one at this index, modulo their
    /// count, in the order the system lists them. The ranks of a data-parallel run on one
    /// machine pass their local rank, so that each takes a GPU of its own. 0: the first.
    pub adapter_turn: usize,
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
            adapter_turn: 0,
            cooperative_matrix: true,
            wait_timeout: Some(Duration::from_secs(600)),
            plan_only: false,
        }
    }
}

fn no_adapter_hint() -> String {
    "Install a Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` gives the \
     software llvmpipe device; or your GPU vendor's driver), or try WGPU_BACKEND=gl."
        .to_string()
}

/// An environment variable's value; `None` when unset (or empty). A value that is not
/// UTF-8 is an error naming the variable.
fn env_value(name: &str) -> Result<Option<String>> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|v| Error::invalid(format!("{name}={v:?} is not valid UTF-8"))),
    }
}

/// `WGPU_BACKEND`, or every backend built in when it is unset.
fn backends_from_env() -> Result<wgpu::Backends> {
    match env_value("WGPU_BACKEND")? {
        Some(text) => parse_backends("WGPU_BACKEND", &text),
        None => Ok(wgpu::Backends::all()),
    }
}

/// A comma-separated list of backends, as wgpu reads it, except that a name wgpu does not
/// know is an error naming the accepted ones (wgpu skips it, and a list of only unknown
/// names becomes no backend at all).
fn parse_backends(variable: &str, text: &str) -> Result<wgpu::Backends> {
    let mut backends = wgpu::Backends::empty();
    for name in text.split(',').map(|n| n.trim().to_lowercase()) {
        backends |= match name.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "opengl" | "gles" => wgpu::Backends::GL,
            "webgpu" => wgpu::Backends::BROWSER_WEBGPU,
            _ => {
                return Err(Error::invalid(format!(
                    "{variable}={text:?}: {name:?} is not a backend; the backends are vulkan \
                     (or vk), metal (mtl), dx12 (d3d12), gl (opengl, gles) and webgpu, \
                     separated by commas"
                )))
            }
        };
    }
    Ok(backends)
}

/// `WGPU_POWER_PREF`: `low`, `high` or `none` (any case), or `None` when unset.
fn power_preference_from_env() -> Result<Option<wgpu::PowerPreference>> {
    env_value("WGPU_POWER_PREF")?
        .map(|text| parse_power_preference(&text))
        .transpose()
}

/// `low`, `high` or `none`, in any case, as wgpu reads `WGPU_POWER_PREF` (which ignores
/// anything else).
fn parse_power_preference(text: &str) -> Result<wgpu::PowerPreference> {
    match text.trim().to_lowercase().as_str() {
        "low" => Ok(wgpu::PowerPreference::LowPower),
        "high" => Ok(wgpu::PowerPreference::HighPerformance),
        "none" => Ok(wgpu::PowerPreference::None),
        _ => Err(Error::invalid(format!(
            "WGPU_POWER_PREF={text:?} is not a power preference; it is low, high or none"
        ))),
    }
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
        let backends = match options.backends {
            Some(b) => b,
            None => backends_from_env()?,
        };
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
            .map_or_else(power_preference_from_env, |p| Ok(Some(p)))?
            .unwrap_or(wgpu::PowerPreference::HighPerformance);
        let available: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        let suitable: Vec<wgpu::Adapter> = adapters
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
            .collect();
        // The best kind, then its adapters in turn.
        let best = suitable
            .iter()
            .map(|a| adapter_rank(&a.get_info(), pref))
            .min();
        let mut equals: Vec<wgpu::Adapter> = suitable
            .into_iter()
            .filter(|a| Some(adapter_rank(&a.get_info(), pref)) == best)
            .collect();
        let adapter = match equals.len() {
            0 => None,
            n => Some(equals.swap_remove(options.adapter_turn % n)),
        };
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

    #[test]
    fn backend_and_power_names_are_wgpus_and_anything_else_is_an_error_naming_them() {
        assert_eq!(
            parse_backends("WGPU_BACKEND", "Vulkan, gl").unwrap(),
            wgpu::Backends::VULKAN | wgpu::Backends::GL
        );
        assert_eq!(
            parse_backends("WGPU_BACKEND", "mtl").unwrap(),
            wgpu::Backends::METAL
        );
        // wgpu turns "bogus" into no backend at all, and "vulkan,bogus" into vulkan alone.
        for bad in ["bogus", "vulkan,bogus", "vulkan,", ""] {
            let err = parse_backends("WGPU_BACKEND", bad).unwrap_err().to_string();
            assert!(err.contains("WGPU_BACKEND="), "{err}");
            assert!(err.contains("vulkan (or vk)"), "{err}");
        }
        assert_eq!(
            parse_power_preference("LOW").unwrap(),
            wgpu::PowerPreference::LowPower
        );
        let err = parse_power_preference("fast").unwrap_err().to_string();
        assert!(err.contains("low, high or none"), "{err}");
    }
}
