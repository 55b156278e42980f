//! What the adapter and device offer, as far as the kernels care.

use std::fmt;

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
    /// What `adapter` and the `device` opened on it offer: the device's own features and
    /// limits, which decide which kernels run.
    pub(crate) fn of(adapter: &wgpu::Adapter, device: &wgpu::Device) -> Capabilities {
        let info = adapter.get_info();
        let features = device.features();
        let limits = device.limits();
        Capabilities {
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
        }
    }

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
