//! Compiled pipelines, parsed shader modules and bind group layouts: each made once per
//! context and kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Context;
use crate::error::Result;
use crate::family::{KernelFamily, TextKey, Variant};
use crate::shader::{self, Access, BindingKind, EntryInterface, Shader};

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

/// What a context compiles once and keeps.
#[derive(Default)]
pub(super) struct PipelineCache {
    pipelines: Mutex<HashMap<PipelineKey, CompiledKernel>>,
    modules: Mutex<HashMap<ModuleKey, ParsedModule>>,
    layouts: Mutex<HashMap<LayoutKey, Layouts>>,
}

/// Bind group layout and pipeline layout for one list of bindings.
type Layouts = (wgpu::BindGroupLayout, wgpu::PipelineLayout);

impl Context {
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
        let mut layouts = self.cache.layouts.lock().unwrap();
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
        if let Some(m) = self.cache.modules.lock().unwrap().get(&key) {
            return Ok((source, m.clone()));
        }
        let parsed: ParsedModule = Arc::new(shader::parse(shader.name, &source)?);
        self.cache
            .modules
            .lock()
            .unwrap()
            .insert(key, parsed.clone());
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
        if let Some(k) = self.cache.pipelines.lock().unwrap().get(&key) {
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
        self.cache
            .pipelines
            .lock()
            .unwrap()
            .insert(key, kernel.clone());
        Ok(kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
