//! Model parameters in flat GPU buffers: values, gradients and the two AdamW moments are one
//! buffer each, every parameter at the same aligned offset in all four. Kernels see one
//! parameter as a view; gradient clipping and the optimizer see everything at once, in a few
//! dispatches instead of one per parameter.

use std::collections::HashMap;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::io::{HostTensors, NamedTensor};
use crate::tensor::{numel, DType, Tensor};

/// A named parameter and where it sits in the flat buffers (in elements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// HF's name, e.g. `roformer.encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its first element in the flat buffers.
    pub offset: usize,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
}

/// The parameters of one model.
#[derive(Debug)]
pub struct ParamStore {
    specs: Vec<ParamSpec>,
    by_name: HashMap<String, usize>,
    len: usize,
    values: Tensor,
    grads: Tensor,
    m: Tensor,
    v: Tensor,
    /// Sub-ranges `(offset, len)` that each fit one storage binding.
    chunks: Vec<(usize, usize)>,
}

impl ParamStore {
    /// Lays out `params` (name, shape) and allocates the four flat buffers, zeroed.
    pub fn new(ctx: &Context, params: &[(String, Vec<usize>)]) -> Result<ParamStore> {
        let caps = ctx.capabilities();
        let align = (caps.storage_offset_alignment as usize / 4).max(1);
        let mut specs = Vec::with_capacity(params.len());
        let mut by_name = HashMap::new();
        let mut len = 0;
        for (name, shape) in params {
            if by_name.insert(name.clone(), specs.len()).is_some() {
                return Err(Error::invalid(format!("parameter {name:?} declared twice")));
            }
            if numel(shape) == 0 {
                return Err(Error::invalid(format!(
                    "parameter {name:?} has empty shape {shape:?}"
                )));
            }
            specs.push(ParamSpec {
                name: name.clone(),
                shape: shape.clone(),
                offset: len,
            });
            len = len.saturating_add(numel(shape)).saturating_add(align - 1) / align * align;
        }
        let len = len.max(align);
        // Chunks for the whole-buffer passes, cut at parameter boundaries.
        let max = (caps.max_storage_binding / 4) as usize;
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for (i, s) in specs.iter().enumerate() {
            let end = specs.get(i + 1).map_or(len, |n| n.offset);
            if s.numel() > max {
                return Err(Error::OverLimit {
                    what: format!("parameter {} of shape {:?}", s.name, s.shape),
                    needed: 4 * s.numel() as u64,
                    limit: caps.max_storage_binding,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
            if end - start > max {
                chunks.push((start, s.offset - start));
                start = s.offset;
            }
        }
        chunks.push((start, len - start));
        let flat = || Tensor::zeros(ctx, &[len], DType::F32);
        Ok(ParamStore {
            specs,
            by_name,
            len,
            values: flat()?,
            grads: flat()?,
            m: flat()?,
            v: flat()?,
            chunks,
        })
    }

    /// Every parameter, in HF's order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The index of the parameter `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Number of parameters (scalars).
    pub fn count(&self) -> usize {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// Bytes of GPU memory held: values, gradients and both moments.
    pub fn memory(&self) -> u64 {
        4 * 4 * self.len as u64
    }

    fn view(&self, ctx: &Context, flat: &Tensor, i: usize) -> Result<Tensor> {
        let s = &self.specs[i];
        flat.view(ctx, s.offset, &s.shape)
    }

    /// Parameter i, as a view of the flat buffer.
    pub fn value(&self, ctx: &Context, i: usize) -> Result<Tensor> {
        self.view(ctx, &self.values, i)
    }

    /// The gradient of parameter i, as a view of the flat gradient buffer.
    pub fn grad(&self, ctx: &Context, i: usize) -> Result<Tensor> {
        self.view(ctx, &self.grads, i)
    }

    /// The flat buffers cut into ranges that each fit a storage binding:
    /// `(values, grads, m, v)` per range.
    pub fn chunk_views(&self, ctx: &Context) -> Result<Vec<[Tensor; 4]>> {
        self.chunks
            .iter()
            .map(|&(off, n)| {
                Ok([
                    self.values.view(ctx, off, &[n])?,
                    self.grads.view(ctx, off, &[n])?,
                    self.m.view(ctx, off, &[n])?,
                    self.v.view(ctx, off, &[n])?,
                ])
            })
            .collect()
    }

    /// Uploads every parameter from `tensors` (by name): each must be present with its
    /// exact shape. Extra tensors are ignored. Resets the optimizer moments.
    pub fn load(&self, ctx: &Context, tensors: &HostTensors) -> Result<()> {
        let mut flat = vec![0.0f32; self.len];
        for s in &self.specs {
            let t = tensors.get(&s.name).ok_or_else(|| Error::Format {
                path: "checkpoint".into(),
                message: format!("missing tensor {:?} (shape {:?})", s.name, s.shape),
            })?;
            if t.shape != s.shape {
                return Err(Error::Format {
                    path: "checkpoint".into(),
                    message: format!(
                        "tensor {:?} has shape {:?}, but the config expects {:?}",
                        s.name, t.shape, s.shape
                    ),
                });
            }
            flat[s.offset..s.offset + s.numel()].copy_from_slice(&t.to_f32());
        }
        self.values.write(ctx, &flat)?;
        self.reset_optimizer(ctx)
    }

    /// Zeroes both AdamW moments.
    pub fn reset_optimizer(&self, ctx: &Context) -> Result<()> {
        let zeros = vec![0.0f32; self.len];
        self.m.write(ctx, &zeros)?;
        self.v.write(ctx, &zeros)
    }

    fn download_flat(&self, ctx: &Context, flat: &Tensor) -> Result<Vec<NamedTensor>> {
        let all = flat.to_vec::<f32>(ctx)?;
        Ok(self
            .specs
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.shape.clone(),
                    all[s.offset..s.offset + s.numel()].to_vec(),
                )
            })
            .collect())
    }

    /// Every parameter's value: `(name, shape, data)`.
    pub fn download(&self, ctx: &Context) -> Result<Vec<NamedTensor>> {
        self.download_flat(ctx, &self.values)
    }

    /// Every parameter's gradient from the last backward pass.
    pub fn download_grads(&self, ctx: &Context) -> Result<Vec<NamedTensor>> {
        self.download_flat(ctx, &self.grads)
    }

    /// Both moments (for checkpoints that resume training exactly).
    pub fn download_moments(&self, ctx: &Context) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.m.to_vec(ctx)?, self.v.to_vec(ctx)?))
    }

    /// Restores both moments (flat, as [`ParamStore::download_moments`] gives them).
    pub fn upload_moments(&self, ctx: &Context, m: &[f32], v: &[f32]) -> Result<()> {
        if m.len() != self.len || v.len() != self.len {
            return Err(Error::invalid(format!(
                "optimizer state has {} / {} values, the model {}",
                m.len(),
                v.len(),
                self.len
            )));
        }
        self.m.write(ctx, m)?;
        self.v.write(ctx, v)
    }
}
