//! WGSL shaders: a kernel's source and what each entry point binds, read from the source
//! itself (with naga) so host code binds tensors by name. (The forms a family is compiled
//! in are [`crate::Variant`]s.)
//!
//! A kernel's bindings are never listed twice: the WGSL declares them
//! (`@group(0) @binding(3) var<storage, read> gamma: array<f32>;`), the host names the tensor
//! for each (`.read("gamma", &g)`), and the bind group layout is made from the declarations
//! the entry point uses. A name the entry point does not use, a binding left out, or a tensor
//! bound read-only where the shader writes is an [`Error::Kernel`] in every build.

use crate::error::{Error, Result};

/// A WGSL shader: one kernel family (a file in `shaders/`, with any shared snippets from
/// `shaders/lib/` appended), or a kernel of your own (see [`crate::DispatchBuilder`]).
#[derive(Debug)]
pub struct Shader {
    /// A short name, for errors and profiles (the file's stem for the library's kernels).
    pub name: &'static str,
    /// The WGSL source.
    pub source: &'static str,
}

impl Shader {
    /// Identifies the shader in caches: its name and where its source lives, so a kernel of
    /// an application's that happens to share a name with one of ours never shares its
    /// pipelines.
    pub(crate) fn key(&self) -> (&'static str, usize) {
        (self.name, self.source.as_ptr() as usize)
    }
}

/// How a kernel uses a storage buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// What a binding of an entry point is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// `var<uniform>`: the kernel's parameter block, of this many bytes.
    Uniform {
        /// The struct's size as WGSL lays it out.
        size: u64,
    },
    /// `var<storage>`: a tensor.
    Storage(Access),
}

/// One resource an entry point uses, as the shader declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingInfo {
    /// The variable's name in the WGSL.
    pub name: String,
    /// Its `@binding` number (every binding is in `@group(0)`).
    pub binding: u32,
    /// Uniform block or storage buffer.
    pub kind: BindingKind,
    /// A storage buffer's element type (of its scalars: `array<vec4<f16>>` holds f16), as
    /// this variant of the shader declares it; `None` for uniforms and anything else.
    pub element: Option<crate::DType>,
    /// Whether the entry point's code loads from it (naga's analysis; atomics load and
    /// store). WGSL has no write-only storage, so an output is `read_write` whether or not
    /// the kernel reads it: this says which. A load behind a branch counts.
    pub loads: bool,
    /// Whether the entry point's code stores to it.
    pub stores: bool,
}

/// The tensor element type a storage variable of type `ty` holds, if it is an array of
/// scalars, vectors or atomics of one.
fn element_type(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<crate::DType> {
    use crate::DType;
    use naga::{ScalarKind as K, TypeInner as T};
    let T::Array { base, .. } = module.types[ty].inner else {
        return None;
    };
    let scalar = match module.types[base].inner {
        T::Scalar(s) | T::Vector { scalar: s, .. } | T::Atomic(s) => s,
        _ => return None,
    };
    match (scalar.kind, scalar.width) {
        (K::Float, 4) => Some(DType::F32),
        (K::Float, 2) => Some(DType::F16),
        (K::Uint, 4) => Some(DType::U32),
        (K::Sint, 4) => Some(DType::I32),
        _ => None,
    }
}

/// One dimension of an entry point's `@workgroup_size`.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkgroupDim {
    /// A number in the WGSL.
    Fixed(u32),
    /// An `override` expression (its value comes with the pipeline's constants).
    Override(OverrideExpr),
}

/// An `override` constant's value as the WGSL computes it from other overrides.
#[derive(Clone, Debug, PartialEq)]
pub enum OverrideExpr {
    /// A literal.
    Value(f64),
    /// An `override` by name, with its default.
    Named(String, Option<Box<OverrideExpr>>),
    /// `left op right` for `+ - * /`.
    Binary(char, Box<OverrideExpr>, Box<OverrideExpr>),
}

impl OverrideExpr {
    /// Its value given the pipeline's constants (`None` where the WGSL does something this
    /// reader does not follow).
    pub fn eval(&self, constants: &[(&str, f64)]) -> Option<f64> {
        match self {
            OverrideExpr::Value(v) => Some(*v),
            OverrideExpr::Named(name, default) => constants
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, v)| v)
                .or_else(|| default.as_ref()?.eval(constants)),
            OverrideExpr::Binary(op, a, b) => {
                let (a, b) = (a.eval(constants)?, b.eval(constants)?);
                Some(match op {
                    '+' => a + b,
                    '-' => a - b,
                    '*' => a * b,
                    // WGSL's u32 division
                    _ => (a / b).trunc(),
                })
            }
        }
    }

    fn of(module: &naga::Module, h: naga::Handle<naga::Expression>) -> Option<OverrideExpr> {
        use naga::{BinaryOperator as B, Expression as E, Literal as L};
        Some(match &module.global_expressions[h] {
            E::Literal(L::U32(v)) => OverrideExpr::Value(*v as f64),
            E::Literal(L::I32(v)) => OverrideExpr::Value(*v as f64),
            E::Literal(L::AbstractInt(v)) => OverrideExpr::Value(*v as f64),
            E::Literal(L::F32(v)) => OverrideExpr::Value(*v as f64),
            E::Constant(c) => OverrideExpr::of(module, module.constants[*c].init)?,
            E::Override(o) => {
                let o = &module.overrides[*o];
                let default = o
                    .init
                    .and_then(|i| OverrideExpr::of(module, i))
                    .map(Box::new);
                OverrideExpr::Named(o.name.clone()?, default)
            }
            E::Binary { op, left, right } => {
                let op = match op {
                    B::Add => '+',
                    B::Subtract => '-',
                    B::Multiply => '*',
                    B::Divide => '/',
                    _ => return None,
                };
                let (l, r) = (
                    OverrideExpr::of(module, *left)?,
                    OverrideExpr::of(module, *right)?,
                );
                OverrideExpr::Binary(op, Box::new(l), Box::new(r))
            }
            _ => return None,
        })
    }
}

/// The resources one entry point uses, in binding order: exactly what its bind group holds.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryInterface {
    /// Every used binding, sorted by number.
    pub bindings: Vec<BindingInfo>,
    /// Its `@workgroup_size`.
    pub workgroup_size: [WorkgroupDim; 3],
    /// The `var<workgroup>` memory it uses.
    pub workgroup_memory: WorkgroupMemory,
}

/// An entry point's `var<workgroup>` memory: what the WGSL fixes, plus the arrays whose
/// length is an `override` expression (matmul's tiles), which the pipeline's constants fix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkgroupMemory {
    /// Bytes of the variables whose size the WGSL fixes.
    pub fixed: u64,
    /// `(length, bytes per element)` of each array sized by an `override` expression.
    pub sized_by_overrides: Vec<(OverrideExpr, u64)>,
}

impl WorkgroupMemory {
    /// Bytes given the pipeline's constants; an array whose length this reader cannot
    /// follow counts 0 (so the figure stays a lower bound).
    pub fn bytes(&self, constants: &[(&str, f64)]) -> u64 {
        let sized: f64 = self
            .sized_by_overrides
            .iter()
            .map(|(len, stride)| len.eval(constants).unwrap_or(0.0) * *stride as f64)
            .sum();
        self.fixed + sized as u64
    }
}

/// Parses and validates `source` with naga: the module and its analysis.
pub(crate) fn parse(name: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let kernel_error = |message: String| Error::Kernel {
        kernel: name.to_string(),
        message,
    };
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| kernel_error(format!("WGSL does not parse: {}", e.emit_to_string(source))))?;
    // Every capability: the device, not this analysis, decides what may run.
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| {
        kernel_error(format!(
            "WGSL does not validate: {}",
            e.emit_to_string(source)
        ))
    })?;
    Ok((module, info))
}

/// The bindings entry point `entry` of the parsed module uses.
pub(crate) fn entry_interface(
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<EntryInterface> {
    let kernel_error = |message: String| Error::Kernel {
        kernel: format!("{name}::{entry}"),
        message,
    };
    let index = module
        .entry_points
        .iter()
        .position(|ep| ep.name == entry)
        .ok_or_else(|| kernel_error("the shader has no entry point of this name".into()))?;
    let uses = info.get_entry_point(index);
    let ep = &module.entry_points[index];
    let workgroup_size = std::array::from_fn(|i| {
        let expr = ep
            .workgroup_size_overrides
            .and_then(|o| o[i])
            .and_then(|h| OverrideExpr::of(module, h));
        match expr {
            Some(e) => WorkgroupDim::Override(e),
            None => WorkgroupDim::Fixed(ep.workgroup_size[i]),
        }
    });
    let mut workgroup_memory = WorkgroupMemory::default();
    for (h, v) in module.global_variables.iter() {
        if v.space != naga::AddressSpace::WorkGroup || uses[h].is_empty() {
            continue;
        }
        let ty = &module.types[v.ty].inner;
        // naga sizes an override-length array as empty: its length comes with the pipeline.
        if let naga::TypeInner::Array {
            size: naga::ArraySize::Pending(o),
            stride,
            ..
        } = *ty
        {
            let len = match module.overrides[o].init {
                Some(init) => OverrideExpr::of(module, init),
                None => None,
            };
            if let Some(len) = len {
                workgroup_memory
                    .sized_by_overrides
                    .push((len, stride as u64));
            }
            continue;
        }
        workgroup_memory.fixed += ty.size(module.to_ctx()) as u64;
    }
    let mut bindings = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if uses[handle].is_empty() {
            continue;
        }
        let var_name = var.name.clone().unwrap_or_default();
        if rb.group != 0 {
            return Err(kernel_error(format!(
                "binding {var_name} is in group {}; kernels use group 0 only",
                rb.group
            )));
        }
        let kind = match var.space {
            naga::AddressSpace::Uniform => BindingKind::Uniform {
                size: module.types[var.ty].inner.size(module.to_ctx()) as u64,
            },
            naga::AddressSpace::Storage { access } => {
                BindingKind::Storage(if access.contains(naga::StorageAccess::STORE) {
                    Access::ReadWrite
                } else {
                    Access::Read
                })
            }
            other => {
                return Err(kernel_error(format!(
                    "binding {var_name} is in address space {other:?}; kernels bind uniform \
                     and storage buffers only"
                )))
            }
        };
        let element = match kind {
            BindingKind::Storage(_) => element_type(module, var.ty),
            BindingKind::Uniform { .. } => None,
        };
        let used = uses[handle];
        bindings.push(BindingInfo {
            name: var_name,
            binding: rb.binding,
            kind,
            element,
            loads: used.intersects(naga::valid::GlobalUse::READ | naga::valid::GlobalUse::ATOMIC),
            stores: used.intersects(naga::valid::GlobalUse::WRITE | naga::valid::GlobalUse::ATOMIC),
        });
    }
    bindings.sort_by_key(|b| b.binding);
    if bindings
        .iter()
        .filter(|b| matches!(b.kind, BindingKind::Uniform { .. }))
        .count()
        > 1
    {
        return Err(kernel_error(
            "more than one uniform block; kernels take one parameter block".into(),
        ));
    }
    Ok(EntryInterface {
        bindings,
        workgroup_size,
        workgroup_memory,
    })
}

/// The bindings `entry` of `source` uses (parsing the source: for tests and tools; the
/// context caches what it parses).
pub fn reflect(shader: &Shader, entry: &str) -> Result<EntryInterface> {
    let (module, info) = parse(shader.name, shader.source)?;
    entry_interface(shader.name, &module, &info, entry)
}

/// A uniform struct as WGSL lays it out: its size and each member's name and byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructLayout {
    /// Size in bytes.
    pub size: usize,
    /// `(name, offset)` of each member, in order.
    pub fields: Vec<(String, usize)>,
}

/// The layout of the struct named `type_name` in `shader` (for the tests that hold the
/// host's `#[repr(C)]` mirrors of the parameter blocks to the WGSL).
pub fn struct_layout(shader: &Shader, type_name: &str) -> Result<StructLayout> {
    let (module, _) = parse(shader.name, shader.source)?;
    for (_, ty) in module.types.iter() {
        if ty.name.as_deref() != Some(type_name) {
            continue;
        }
        if let naga::TypeInner::Struct { members, span } = &ty.inner {
            return Ok(StructLayout {
                size: *span as usize,
                fields: members
                    .iter()
                    .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                    .collect(),
            });
        }
    }
    Err(Error::Kernel {
        kernel: shader.name.to_string(),
        message: format!("no struct named {type_name}"),
    })
}

/// The layout of a `#[repr(C)]` Rust struct, field by field, for comparing with
/// [`struct_layout`]: `host_layout!(Params { rows, n, eps })`.
#[macro_export]
#[doc(hidden)]
macro_rules! host_layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        $crate::shader::StructLayout {
            size: ::std::mem::size_of::<$ty>(),
            fields: vec![$((stringify!($field).to_string(), ::std::mem::offset_of!($ty, $field))),*],
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    static TOY: Shader = Shader {
        name: "toy",
        source: "
struct Params { n: u32, scale: f32, _p0: u32, _p1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> unused_here: array<f32>;
const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.n) { y[gid.x] = p.scale * x[gid.x]; }
}

@compute @workgroup_size(WG)
fn clear(@builtin(global_invocation_id) gid: vec3<u32>) {
    unused_here[gid.x] = 0.0;
}

@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.n) { y[gid.x] += x[gid.x]; }
}
",
    };

    #[test]
    fn an_entry_point_binds_what_it_uses() {
        let scale = reflect(&TOY, "scale").unwrap();
        let names: Vec<(&str, u32, BindingKind)> = scale
            .bindings
            .iter()
            .map(|b| (b.name.as_str(), b.binding, b.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("p", 0, BindingKind::Uniform { size: 16 }),
                ("x", 1, BindingKind::Storage(Access::Read)),
                ("y", 2, BindingKind::Storage(Access::ReadWrite)),
            ]
        );
        let clear = reflect(&TOY, "clear").unwrap();
        assert_eq!(clear.bindings.len(), 1);
        assert_eq!(clear.bindings[0].name, "unused_here");
        assert!(matches!(reflect(&TOY, "nope"), Err(Error::Kernel { .. })));
    }

    #[test]
    fn the_code_says_which_read_write_buffers_are_loaded_and_which_stored() {
        let uses = |entry: &str| -> Vec<(String, bool, bool)> {
            reflect(&TOY, entry)
                .unwrap()
                .bindings
                .into_iter()
                .map(|b| (b.name, b.loads, b.stores))
                .collect()
        };
        let t = |name: &str, loads, stores| (name.to_string(), loads, stores);
        // `y` is read_write in both: `scale` only stores it, `accumulate` loads it too.
        assert_eq!(
            uses("scale"),
            [
                t("p", true, false),
                t("x", true, false),
                t("y", false, true)
            ]
        );
        assert_eq!(
            uses("accumulate"),
            [t("p", true, false), t("x", true, false), t("y", true, true)]
        );
        assert_eq!(uses("clear"), [t("unused_here", false, true)]);
    }

    #[test]
    fn struct_layouts_come_from_the_wgsl() {
        let l = struct_layout(&TOY, "Params").unwrap();
        assert_eq!(l.size, 16);
        let fields: Vec<(&str, usize)> = l.fields.iter().map(|(n, o)| (n.as_str(), *o)).collect();
        assert_eq!(fields, [("n", 0), ("scale", 4), ("_p0", 8), ("_p1", 12)]);
    }
}

#[cfg(test)]
mod workgroup_size_tests {
    use super::*;

    #[test]
    fn override_sized_workgroups_resolve_from_the_pipeline_constants() {
        let i = reflect(&crate::ops::matmul::SHADER, "matmul").unwrap();
        let [WorkgroupDim::Override(x), WorkgroupDim::Fixed(1), WorkgroupDim::Fixed(1)] =
            &i.workgroup_size
        else {
            panic!("matmul's workgroup size: {:?}", i.workgroup_size);
        };
        // WG = (BM / TM) * (BN / TN): defaults 64, 4, 64, 4 → 256
        assert_eq!(x.eval(&[]), Some(256.0));
        assert_eq!(x.eval(&[("BM", 128.0), ("TN", 8.0)]), Some(256.0));
        assert_eq!(x.eval(&[("BM", 32.0)]), Some(128.0));
    }

    #[test]
    fn override_sized_workgroup_arrays_count_at_the_pipelines_sizes() {
        let i = reflect(&crate::ops::matmul::SHADER, "matmul").unwrap();
        // tile_a: BK × BM floats, tile_b: BK × BN floats; defaults BK 16, BM 64, BN 64
        let bytes = |bk: usize, bm: usize, bn: usize| 4 * (bk * bm + bk * bn) as u64;
        assert_eq!(i.workgroup_memory.bytes(&[]), bytes(16, 64, 64));
        let big = [("BM", 128.0), ("BN", 128.0), ("BK", 32.0)];
        assert_eq!(i.workgroup_memory.bytes(&big), bytes(32, 128, 128));
        // a fixed-size array as the WGSL declares it: the row kernels' 256 vec4s
        let rows = reflect(&crate::ops::softmax::SHADER, "forward").unwrap();
        assert_eq!(rows.workgroup_memory.bytes(&[]), 256 * 16);
    }
}
