//! A [`Dispatch`] is one kernel launch with everything bound: pipeline, bind group (uniform
//! parameters + tensors) and workgroup count. Ops build them once with a [`DispatchBuilder`];
//! running them again costs only the encoding. The eager functions of each op build and run
//! in one go; a planned graph keeps them and replays them every step.
//!
//! The builder is public, so a kernel of your own runs the same way as ours, eagerly or as a
//! stage of a [`crate::graph::Graph`] (`Graph::custom`):
//!
//! ```
//! use roformer_wgpu::{Context, DispatchBuilder, Shader, Tensor};
//!
//! static SQUARE: Shader = Shader {
//!     name: "square",
//!     source: "
//!         struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }
//!         @group(0) @binding(0) var<uniform> p: Params;
//!         @group(0) @binding(1) var<storage, read> x: array<f32>;
//!         @group(0) @binding(2) var<storage, read_write> y: array<f32>;
//!         @compute @workgroup_size(64)
//!         fn main(@builtin(global_invocation_id) id: vec3<u32>) {
//!             if (id.x < p.n) { y[id.x] = x[id.x] * x[id.x]; }
//!         }",
//! };
//!
//! let ctx = Context::new()?;
//! let x = Tensor::from_slice(&ctx, &[1.0f32, 2.0, 3.0], &[3])?;
//! let y = Tensor::zeros(&ctx, &[3], roformer_wgpu::DType::F32)?;
//! let square = DispatchBuilder::new(&ctx, &SQUARE, "main")
//!     .params(&[3u32, 0, 0, 0])          // the bytes of `Params`
//!     .read("x", &x)                     // bound by the names the WGSL gives them
//!     .write("y", &y)
//!     .build([1, 1, 1])?;                // workgroups
//! ctx.run(&[square])?;
//! assert_eq!(y.to_vec::<f32>(&ctx)?, [1.0, 4.0, 9.0]);
//! # Ok::<(), roformer_wgpu::Error>(())
//! ```

use crate::context::Context;
use crate::error::{Error, Result};
use crate::family::{KernelFamily, Variant};
use crate::shader::{Access, BindingKind, Shader, WorkgroupDim};
use crate::tensor::{DType, Tensor};

/// What a launch does, for a cost model (`bench step --model`): its shape and memory traffic
/// come from the shader and the bound tensors; the arithmetic and any serial loop are what
/// its op declares ([`DispatchBuilder::flops`], [`DispatchBuilder::serial_steps`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Invocations per workgroup.
    pub threads_per_workgroup: u32,
    /// Workgroup (shared) memory per workgroup, bytes.
    pub workgroup_memory: u64,
    /// Bytes of the tensors its code loads (each once: a lower bound on its traffic). A
    /// `read_write` tensor counts here only where the entry point loads it (naga's
    /// analysis) and the launch has not switched those loads off
    /// ([`DispatchBuilder::write_only`]); a tensor of which the data picks the parts it
    /// touches ([`DispatchBuilder::read_sparse`]) does not count.
    pub bytes_read: u64,
    /// Bytes of the tensors its code stores to (a tensor it loads and stores, as AdamW's
    /// parameters and moments, counts in both).
    pub bytes_written: u64,
    /// Floating-point operations (0: not declared; the kernel moves data more than it
    /// computes).
    pub flops: u64,
    /// Whether those run on tensor cores (cooperative matrices).
    pub tensor_cores: bool,
    /// Dependent iterations of the longest serial loop one invocation runs over the data
    /// (rows, tokens, positions), where that loop grows with the batch or the length;
    /// 0 when there is none.
    pub serial_steps: u64,
    /// Independent accumulations each invocation keeps in flight (a matmul's register
    /// block: 64 for 8 × 8); 0 or 1: one. A GPU hides arithmetic latency with these as with
    /// more threads.
    pub accumulators: u32,
}

/// One kernel launch, ready to encode into a compute pass.
#[derive(Clone, Debug)]
pub struct Dispatch {
    shader: &'static str,
    entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    work: Work,
    /// Kept so a graph can rewrite per-step parameters (learning rate, step) in place.
    params: Option<wgpu::Buffer>,
}

impl Dispatch {
    /// Records the launch into a compute pass.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The kernel: shader (family) name and entry point.
    pub fn kernel(&self) -> (&'static str, &'static str) {
        (self.shader, self.entry)
    }

    /// The workgroup counts it launches.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    /// What it does, for a cost model.
    pub fn work(&self) -> &Work {
        &self.work
    }

    /// Workgroups launched in all.
    pub fn workgroup_count(&self) -> u64 {
        self.workgroups.iter().map(|&w| w as u64).product()
    }

    /// Overwrites the uniform parameters (same layout as at build time).
    pub(crate) fn write_params<P: bytemuck::Pod>(&self, ctx: &Context, params: &P) {
        if let Some(buffer) = &self.params {
            ctx.queue()
                .write_buffer(buffer, 0, bytemuck::bytes_of(params));
        }
    }
}

/// A tensor bound to a name of the shader, or `None` for an absent optional one.
struct Bound<'a> {
    name: &'a str,
    access: Access,
    tensor: Option<&'a Tensor>,
    /// This launch does not load what the tensor held ([`DispatchBuilder::write_only`]).
    write_only: bool,
    /// The data picks what it touches ([`DispatchBuilder::read_sparse`]).
    sparse: bool,
}

/// Builds a [`Dispatch`]: a shader's entry point, its [`Variant`] (`override` constants,
/// marked sizes and blocks, element types), its parameter block, and a tensor for each
/// storage buffer the entry point uses, bound by the name the WGSL gives it. What the entry
/// point uses is read from the WGSL, and [`DispatchBuilder::build`] checks the two agree (see
/// [`Error::Kernel`]).
pub struct DispatchBuilder<'a> {
    ctx: &'a Context,
    shader: &'static Shader,
    /// Set for the library's kernels: the variant must be one the family lists.
    family: Option<&'static KernelFamily>,
    entry: &'static str,
    variant: Variant,
    params: Vec<u8>,
    bindings: Vec<Bound<'a>>,
    flops: u64,
    tensor_cores: bool,
    serial_steps: u64,
    accumulators: u32,
    /// An `element_type` call this builder cannot honour (reported by `build`).
    bad_alias: Option<(&'static str, DType)>,
}

impl<'a> DispatchBuilder<'a> {
    /// A launch of `entry` from `shader` (a kernel of your own; any variant).
    pub fn new(ctx: &'a Context, shader: &'static Shader, entry: &'static str) -> Self {
        DispatchBuilder {
            ctx,
            shader,
            family: None,
            entry,
            variant: Variant::default(),
            params: Vec::new(),
            bindings: Vec::new(),
            flops: 0,
            tensor_cores: false,
            serial_steps: 0,
            accumulators: 1,
            bad_alias: None,
        }
    }

    /// A launch of `entry` from `family`'s shader, whose variant must be one the family
    /// lists ([`KernelFamily::check_variant`], when the pipeline is first compiled).
    pub fn family(ctx: &'a Context, family: &'static KernelFamily, entry: &'static str) -> Self {
        DispatchBuilder {
            family: Some(family),
            ..DispatchBuilder::new(ctx, family.shader, entry)
        }
    }

    /// Declares the floating-point operations the launch does (for [`Work`]).
    pub fn flops(mut self, flops: u64) -> Self {
        self.flops = flops;
        self
    }

    /// Declares that its FLOPs run on tensor cores.
    pub fn on_tensor_cores(mut self) -> Self {
        self.tensor_cores = true;
        self
    }

    /// Declares the longest serial loop an invocation runs that grows with the data (for
    /// [`Work`]): a cost model flags such launches.
    pub fn serial_steps(mut self, steps: u64) -> Self {
        self.serial_steps = steps;
        self
    }

    /// Declares the independent accumulations each invocation keeps in flight (for
    /// [`Work`]: a register-blocked kernel needs fewer threads to keep a GPU busy).
    pub fn accumulators(mut self, per_invocation: u32) -> Self {
        self.accumulators = per_invocation;
        self
    }

    /// Adds `variant`'s sizes, blocks, f16 aliases and constants to the launch's (a kernel
    /// family's choice for the shapes at hand).
    pub fn variant(mut self, variant: Variant) -> Self {
        let v = &mut self.variant;
        v.sizes.extend(variant.sizes);
        v.blocks.extend(variant.blocks);
        for a in variant.f16 {
            if !v.f16.contains(&a) {
                v.f16.push(a);
            }
        }
        v.constants.extend(variant.constants);
        v.native_only |= variant.native_only;
        self
    }

    /// Compiles the variant whose tensors of type `alias` are `dtype` (f32 or f16). A kernel
    /// family written for both declares, at the top of its WGSL, `alias T = f32;` (or `In` /
    /// `Out` where inputs and outputs differ), reads through `f32(x[i])`, accumulates in f32
    /// and stores `T(v)`; the f16 variant is that source with `alias T = f16;` and `enable
    /// f16;`. [`DispatchBuilder::build`] then checks each tensor against the variant's
    /// declarations, so a kernel never reads f16 bytes as f32.
    pub fn element_type(mut self, alias: &'static str, dtype: DType) -> Self {
        let declared = self
            .shader
            .source
            .lines()
            .any(|l| l.trim() == format!("alias {alias} = f32;"));
        match (declared, dtype) {
            (true, DType::F32) => {}
            (true, DType::F16) => self.variant = std::mem::take(&mut self.variant).f16(alias),
            _ => self.bad_alias = Some((alias, dtype)),
        }
        self
    }

    /// Sets a WGSL `override` constant (booleans as 0 or 1).
    pub fn constant(mut self, name: &'static str, value: f64) -> Self {
        self.variant.constants.push((name, value));
        self
    }

    /// The uniform parameter block: a `#[repr(C)]` mirror of the WGSL struct, whose size
    /// must be the WGSL struct's.
    pub fn params<P: bytemuck::Pod>(mut self, params: &P) -> Self {
        self.params = bytemuck::bytes_of(params).to_vec();
        self
    }

    fn bind(mut self, name: &'a str, access: Access, tensor: Option<&'a Tensor>) -> Self {
        self.bindings.push(Bound {
            name,
            access,
            tensor,
            write_only: false,
            sparse: false,
        });
        self
    }

    /// Binds `t` to the shader's `var<storage, read>` named `name`.
    pub fn read(self, name: &'a str, t: &'a Tensor) -> Self {
        self.bind(name, Access::Read, Some(t))
    }

    /// An optional input: with `None` a small placeholder buffer is bound, which the kernel
    /// must be told (through its parameters) not to read.
    pub fn read_opt(self, name: &'a str, t: Option<&'a Tensor>) -> Self {
        self.bind(name, Access::Read, t)
    }

    /// Binds `t` to the shader's `var<storage, read_write>` named `name`.
    pub fn write(self, name: &'a str, t: &'a Tensor) -> Self {
        self.bind(name, Access::ReadWrite, Some(t))
    }

    /// Binds `t` to the `var<storage, read_write>` named `name` for a launch that does not
    /// read what `t` held: the kernel's loads of it are switched off by its parameters (a
    /// matmul's C with beta 0), or reread only what the invocation itself stored. Runs as
    /// [`DispatchBuilder::write`] does; [`Work`] counts the tensor as written only.
    pub fn write_only(mut self, name: &'a str, t: &'a Tensor) -> Self {
        self = self.bind(name, Access::ReadWrite, Some(t));
        if let Some(b) = self.bindings.last_mut() {
            b.write_only = true;
        }
        self
    }

    /// Binds `t` to the `var<storage, read>` named `name` for a kernel that reads only the
    /// parts of it the data picks (an embedding table's rows for the batch's tokens): the
    /// bytes it moves are not known when planning, and may be few, so [`Work`] does not count
    /// them (the launch's other tensors bound its traffic).
    pub fn read_sparse(self, name: &'a str, t: &'a Tensor) -> Self {
        self.bind(name, Access::Read, Some(t)).sparse()
    }

    /// [`DispatchBuilder::read_sparse`] for a `var<storage, read_write>`: a kernel that
    /// adds into the rows the data picks (an embedding table's gradient).
    pub fn write_sparse(self, name: &'a str, t: &'a Tensor) -> Self {
        self.bind(name, Access::ReadWrite, Some(t)).sparse()
    }

    /// Marks the binding just made as touched where the data says.
    fn sparse(mut self) -> Self {
        if let Some(b) = self.bindings.last_mut() {
            b.sparse = true;
        }
        self
    }

    /// An optional output: with `None` a placeholder is bound, which the kernel must be told
    /// not to write.
    pub fn write_opt(self, name: &'a str, t: Option<&'a Tensor>) -> Self {
        self.bind(name, Access::ReadWrite, t)
    }

    fn kernel_error(&self, message: String) -> Error {
        Error::Kernel {
            kernel: format!("{}::{}", self.shader.name, self.entry),
            message,
        }
    }

    /// Compiles the pipeline (once per context), checks the bindings against the entry
    /// point's, and creates the bind group for a launch of `workgroups`.
    pub fn build(self, workgroups: [u32; 3]) -> Result<Dispatch> {
        let ctx = self.ctx;
        if let Some((alias, dtype)) = self.bad_alias {
            return Err(self.kernel_error(format!(
                "element_type({alias:?}, {dtype:?}): the shader declares no `alias {alias} = \
                 f32;`, or the type is not f32 or f16"
            )));
        }
        let caps = ctx.capabilities();
        for b in &self.bindings {
            let Some(t) = b.tensor else { continue };
            if t.binding_size() > caps.max_storage_binding && !ctx.plan_only() {
                return Err(Error::OverLimit {
                    what: format!(
                        "{}: {} of shape {:?} bound to one kernel",
                        self.entry,
                        b.name,
                        t.shape()
                    ),
                    needed: t.byte_size(),
                    limit: caps.max_storage_binding,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
        }
        let max_dim = caps.max_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max_dim) {
            return Err(Error::OverLimit {
                what: format!("{}: a dispatch of {workgroups:?} workgroups", self.entry),
                needed: *workgroups.iter().max().unwrap() as u64,
                limit: max_dim as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        let kernel = ctx.kernel(self.shader, self.family, self.entry, &self.variant)?;
        let interface = &kernel.interface;
        // Every name bound must be one the entry point uses, once.
        for (i, b) in self.bindings.iter().enumerate() {
            if self.bindings[..i].iter().any(|o| o.name == b.name) {
                return Err(self.kernel_error(format!("{} is bound twice", b.name)));
            }
            if !interface.bindings.iter().any(|d| d.name == b.name) {
                let known: Vec<&str> = interface.bindings.iter().map(|d| d.name.as_str()).collect();
                return Err(self.kernel_error(format!(
                    "the entry point uses no binding named {} (it uses: {})",
                    b.name,
                    known.join(", ")
                )));
            }
        }
        // ... and every binding the entry point uses must be given, as the shader declares it.
        let mut params_buffer = None;
        let mut resources = Vec::with_capacity(interface.bindings.len());
        for decl in &interface.bindings {
            match decl.kind {
                BindingKind::Uniform { size } => {
                    if self.params.len() as u64 != size {
                        return Err(self.kernel_error(format!(
                            "its parameter block {} is {size} bytes in the WGSL, but {} bytes \
                             were given",
                            decl.name,
                            self.params.len()
                        )));
                    }
                    params_buffer = Some(decl.binding);
                }
                BindingKind::Storage(access) => {
                    let Some(b) = self.bindings.iter().find(|b| b.name == decl.name) else {
                        return Err(self.kernel_error(format!(
                            "binding {} (@binding({})) was not given a tensor",
                            decl.name, decl.binding
                        )));
                    };
                    if b.access != access {
                        return Err(self.kernel_error(format!(
                            "{} is declared {:?} in the WGSL but bound as {:?}",
                            decl.name, access, b.access
                        )));
                    }
                    // The bytes must be what the kernel reads them as: an f16 tensor bound
                    // where this variant declares f32 would be read as garbage.
                    if let (Some(t), Some(element)) = (b.tensor, decl.element) {
                        if t.dtype() != element {
                            return Err(self.kernel_error(format!(
                                "{} holds {:?} but this variant of the kernel declares it {:?}",
                                decl.name,
                                t.dtype(),
                                element
                            )));
                        }
                    }
                    resources.push((decl.binding, access, b.tensor));
                }
            }
        }
        if params_buffer.is_none() && !self.params.is_empty() {
            return Err(self.kernel_error(
                "parameters were given, but the entry point uses no uniform block".into(),
            ));
        }
        let mut work = Work {
            threads_per_workgroup: interface
                .workgroup_size
                .iter()
                .map(|d| match d {
                    WorkgroupDim::Fixed(n) => *n,
                    WorkgroupDim::Override(e) => {
                        e.eval(&self.variant.constants).map_or(1, |v| v as u32)
                    }
                })
                .product(),
            workgroup_memory: interface.workgroup_memory.bytes(&self.variant.constants),
            flops: self.flops,
            tensor_cores: self.tensor_cores,
            serial_steps: self.serial_steps,
            accumulators: self.accumulators,
            ..Work::default()
        };
        // Bytes as the code moves them: read where the entry point loads a tensor, written
        // where it stores to it (WGSL's `read_write` says neither). Each tensor once per
        // direction: matmul binds its operands a second time as vec4 views.
        let (mut read, mut written): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for b in self.bindings.iter().filter(|b| !b.sparse) {
            let Some(t) = b.tensor else { continue };
            let Some(decl) = interface.bindings.iter().find(|d| d.name == b.name) else {
                continue; // refused above
            };
            let key = (t.buffer(), t.offset());
            if decl.loads && !b.write_only && !read.contains(&key) {
                read.push(key);
                work.bytes_read += t.byte_size();
            }
            if decl.stores && !written.contains(&key) {
                written.push(key);
                work.bytes_written += t.byte_size();
            }
        }
        ctx.scoped("bind group creation", || {
            // Not create_buffer_init: it panics when the device is lost.
            let params = params_buffer.map(|_| {
                let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(self.entry),
                    size: self.params.len() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ctx.queue().write_buffer(&buffer, 0, &self.params);
                buffer
            });
            let mut entries = Vec::with_capacity(resources.len() + 1);
            if let (Some(binding), Some(buffer)) = (params_buffer, &params) {
                entries.push(wgpu::BindGroupEntry {
                    binding,
                    resource: buffer.as_entire_binding(),
                });
            }
            for &(binding, access, tensor) in &resources {
                let resource = match (tensor, access) {
                    // A context that only plans cuts what is over the limit (never run).
                    (Some(t), _) if t.binding_size() > caps.max_storage_binding => {
                        t.binding_cut(caps.max_storage_binding)
                    }
                    (Some(t), _) => t.binding(),
                    // A buffer may not be bound both read-only and writable in one
                    // dispatch, so absent outputs get their own placeholder.
                    (None, Access::ReadWrite) => ctx.dummy_writable.as_entire_binding(),
                    (None, Access::Read) => ctx.dummy.as_entire_binding(),
                };
                entries.push(wgpu::BindGroupEntry { binding, resource });
            }
            let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(self.entry),
                layout: &kernel.layout,
                entries: &entries,
            });
            Dispatch {
                shader: self.shader.name,
                entry: self.entry,
                pipeline: kernel.pipeline.clone(),
                bind_group,
                workgroups,
                work,
                params,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    static DOUBLE: Shader = Shader {
        name: "double",
        source: "
struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < p.n) { y[id.x] = 2.0 * x[id.x]; }
}",
    };

    #[test]
    fn a_kernel_of_ones_own_runs_with_its_tensors_bound_by_name() {
        let ctx = &ctx();
        let data = randn(&mut rng(1), 129);
        let x = upload(ctx, &data, &[129]);
        let y = poisoned(ctx, &[129]);
        // Bound in another order than the WGSL declares them: names decide.
        let d = DispatchBuilder::new(ctx, &DOUBLE, "main")
            .write("y", &y)
            .read("x", &x)
            .params(&[129u32, 0, 0, 0])
            .build([3, 1, 1])
            .unwrap();
        ctx.run(&[d]).unwrap();
        let want: Vec<f64> = data.iter().map(|&v| 2.0 * v as f64).collect();
        assert_close("double", &download(ctx, &y), &want, 1e-7);
    }

    #[test]
    fn bindings_that_disagree_with_the_wgsl_are_errors_naming_them() {
        let ctx = &ctx();
        let x = upload(ctx, &[1.0; 4], &[4]);
        let y = poisoned(ctx, &[4]);
        let p = [4u32, 0, 0, 0];
        let err = |b: DispatchBuilder<'_>| match b.build([1, 1, 1]) {
            Err(Error::Kernel { kernel, message }) => {
                assert_eq!(kernel, "double::main");
                message
            }
            other => panic!("expected a kernel error, got {other:?}"),
        };
        let base = || DispatchBuilder::new(ctx, &DOUBLE, "main").params(&p);
        let typo = err(base().read("xs", &x).write("y", &y));
        assert!(typo.contains("no binding named xs"), "{typo}");
        let missing = err(base().write("y", &y));
        assert!(
            missing.contains("binding x (@binding(1)) was not given"),
            "{missing}"
        );
        let access = err(base().read("x", &x).read("y", &y));
        assert!(access.contains("y is declared ReadWrite"), "{access}");
        let twice = err(base().read("x", &x).read("x", &x).write("y", &y));
        assert!(twice.contains("x is bound twice"), "{twice}");
        let size = err(DispatchBuilder::new(ctx, &DOUBLE, "main")
            .params(&[4u32, 0])
            .read("x", &x)
            .write("y", &y));
        assert!(size.contains("16 bytes in the WGSL, but 8"), "{size}");
        let entry = DispatchBuilder::new(ctx, &DOUBLE, "nope")
            .build([1, 1, 1])
            .unwrap_err();
        assert!(matches!(entry, Error::Kernel { .. }), "{entry}");
    }
}
