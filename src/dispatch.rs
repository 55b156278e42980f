//! A [`Dispatch`] is one kernel launch with everything bound: pipeline, bind group (uniform
//! parameters + tensors) and workgroup count. Ops build them once; running them again costs
//! only the encoding. The eager functions of each op build and run in one go; a planned
//! graph keeps them and replays them every step.

use crate::context::{Access, Context, Shader};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One kernel launch, ready to encode into a compute pass.
#[derive(Clone, Debug)]
pub struct Dispatch {
    shader: &'static str,
    entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    /// Kept so a graph can rewrite per-step parameters (learning rate, step) in place.
    params: wgpu::Buffer,
}

impl Dispatch {
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

    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    /// Overwrites the uniform parameters (same layout as at build time).
    pub(crate) fn write_params<P: bytemuck::Pod>(&self, ctx: &Context, params: &P) {
        ctx.queue()
            .write_buffer(&self.params, 0, bytemuck::bytes_of(params));
    }
}

/// The line of a row kernel's source that sets its threads per row.
pub(crate) const ROW_WG: &str = "const WG: u32 = 256u;";

/// Threads per row for rows of `n`: the next power of two, from 32 to 256.
pub(crate) fn row_workgroup(n: usize) -> u32 {
    n.next_power_of_two().clamp(32, 256) as u32
}

enum Binding<'a> {
    Tensor(&'a Tensor),
    /// An absent optional input the shader refers to but is told not to read: a dummy
    /// buffer is bound.
    Unused,
    /// A binding number this entry point never refers to: left out of the layout.
    Skipped,
}

/// Builds a [`Dispatch`]: binding 0 is the uniform parameter block, then storage
/// bindings 1, 2, ... in the order they are added.
pub(crate) struct DispatchBuilder<'a> {
    ctx: &'a Context,
    shader: &'static Shader,
    entry: &'static str,
    variant: Vec<(&'static str, String)>,
    constants: Vec<(&'static str, f64)>,
    params: Vec<u8>,
    bindings: Vec<(Option<Access>, Binding<'a>)>,
}

impl<'a> DispatchBuilder<'a> {
    pub fn new(ctx: &'a Context, shader: &'static Shader, entry: &'static str) -> Self {
        DispatchBuilder {
            ctx,
            shader,
            entry,
            variant: Vec::new(),
            constants: Vec::new(),
            params: Vec::new(),
            bindings: Vec::new(),
        }
    }

    /// Replaces `needle` in the shader source (selects a compiled variant).
    pub fn variant(mut self, needle: &'static str, replacement: String) -> Self {
        self.variant.push((needle, replacement));
        self
    }

    /// Several substitutions at once (a kernel family's sizing constants).
    pub fn variants(
        mut self,
        substitutions: impl IntoIterator<Item = (&'static str, String)>,
    ) -> Self {
        self.variant.extend(substitutions);
        self
    }

    /// Sets a WGSL `override` constant (booleans as 0 or 1).
    pub fn constant(mut self, name: &'static str, value: f64) -> Self {
        self.constants.push((name, value));
        self
    }

    /// For one-workgroup-per-row kernels: threads per row matched to the row length.
    pub fn row_threads(self, row_len: usize) -> Self {
        let wg = row_workgroup(row_len);
        self.variant(ROW_WG, format!("const WG: u32 = {wg}u;"))
    }

    pub fn params<P: bytemuck::Pod>(mut self, params: &P) -> Self {
        debug_assert!(
            std::mem::size_of::<P>() % 16 == 0,
            "uniform blocks are padded to 16 bytes"
        );
        self.params = bytemuck::bytes_of(params).to_vec();
        self
    }

    pub fn read(mut self, t: &'a Tensor) -> Self {
        self.bindings.push((Some(Access::Read), Binding::Tensor(t)));
        self
    }

    pub fn read_opt(mut self, t: Option<&'a Tensor>) -> Self {
        let b = t.map_or(Binding::Unused, Binding::Tensor);
        self.bindings.push((Some(Access::Read), b));
        self
    }

    pub fn write(mut self, t: &'a Tensor) -> Self {
        self.bindings
            .push((Some(Access::ReadWrite), Binding::Tensor(t)));
        self
    }

    /// A writable binding that may be absent: the dummy buffer is bound, and the kernel is
    /// told not to write it.
    pub fn write_opt(mut self, t: Option<&'a Tensor>) -> Self {
        let b = t.map_or(Binding::Unused, Binding::Tensor);
        self.bindings.push((Some(Access::ReadWrite), b));
        self
    }

    /// Passes over a binding number the entry point does not use, keeping it out of the
    /// layout (which counts against the adapter's storage buffers per stage).
    pub fn skip(mut self) -> Self {
        self.bindings.push((None, Binding::Skipped));
        self
    }

    pub fn build(self, workgroups: [u32; 3]) -> Result<Dispatch> {
        let ctx = self.ctx;
        let caps = ctx.capabilities();
        for (_, b) in &self.bindings {
            if let Binding::Tensor(t) = b {
                if t.byte_size() > caps.max_storage_binding {
                    return Err(Error::OverLimit {
                        what: format!(
                            "{}: a tensor of shape {:?} bound to one kernel",
                            self.entry,
                            t.shape()
                        ),
                        needed: t.byte_size(),
                        limit: caps.max_storage_binding,
                        limit_name: "max_storage_buffer_binding_size",
                    });
                }
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
        let access: Vec<Option<Access>> = self.bindings.iter().map(|(a, _)| *a).collect();
        let (pipeline, layout) = ctx.pipeline(
            self.shader,
            self.entry,
            &self.variant,
            &self.constants,
            &access,
        )?;
        let params = if self.params.is_empty() {
            vec![0u8; 16]
        } else {
            self.params
        };
        ctx.scoped("bind group creation", || {
            // Not create_buffer_init: it panics when the device is lost.
            let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(self.entry),
                size: params.len() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue().write_buffer(&buffer, 0, &params);
            let params = buffer;
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            }];
            for (i, (access, b)) in self.bindings.iter().enumerate() {
                let resource = match b {
                    Binding::Tensor(t) => t.binding(),
                    Binding::Unused if *access == Some(Access::ReadWrite) => {
                        ctx.dummy_writable.as_entire_binding()
                    }
                    Binding::Unused => ctx.dummy.as_entire_binding(),
                    Binding::Skipped => continue,
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource,
                });
            }
            let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(self.entry),
                layout: &layout,
                entries: &entries,
            });
            Dispatch {
                shader: self.shader.name,
                entry: self.entry,
                pipeline,
                bind_group,
                workgroups,
                params,
            }
        })
    }
}
