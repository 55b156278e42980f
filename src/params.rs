//! Model parameters in flat GPU buffers: values, gradients and the two AdamW moments are one
//! buffer each, every parameter at the same aligned offset in all four. Kernels see one
//! parameter as a view; gradient clipping and the optimizer see everything at once, in a few
//! dispatches instead of one per parameter. An inference model holds the values only.
//! A training store in mixed precision adds an f16 copy of the values, which the forward
//! and backward passes read, and the dynamic loss scale's state.

use std::collections::HashMap;

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::io::{HostTensor, HostTensors, NamedTensor};
use crate::ops::loss_scale::{self, LossScaling};
use crate::readback::Pending;
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
    /// The values' element type (f32, or f16 for an inference model in half precision).
    dtype: DType,
    values: Tensor,
    /// Gradients and moments; `None` for a store of weights only.
    training: Option<TrainingBuffers>,
    /// Mixed precision's f16 copy and loss scale (a training store, after
    /// [`ParamStore::use_mixed_precision`]).
    mixed: Option<MixedBuffers>,
    /// Sub-ranges `(offset, len)` that each fit one storage binding.
    chunks: Vec<(usize, usize)>,
}

/// What training adds to the weights: their gradients and both AdamW moments.
#[derive(Debug)]
struct TrainingBuffers {
    grads: Tensor,
    m: Tensor,
    v: Tensor,
}

/// What mixed-precision training adds (as PyTorch's autocast + GradScaler practise it): the
/// f32 values stay the master weights AdamW updates, with f32 gradients and moments; the
/// passes read `half`, an f16 copy cast from them at the start of every step; the loss
/// scale's state is shared by every session of the model.
#[derive(Debug)]
struct MixedBuffers {
    half: Tensor,
    loss_scale: Tensor,
    scaling: LossScaling,
}

impl ParamStore {
    /// Lays out `params` (name, shape) and allocates the four flat buffers, zeroed.
    pub fn new(ctx: &Context, params: &[(String, Vec<usize>)]) -> Result<ParamStore> {
        Self::allocate(ctx, params, true, DType::F32)
    }

    /// Lays out `params` and allocates their values only: a quarter of [`ParamStore::new`]'s
    /// memory, for inference (no gradients, no optimizer).
    pub fn weights_only(ctx: &Context, params: &[(String, Vec<usize>)]) -> Result<ParamStore> {
        Self::allocate(ctx, params, false, DType::F32)
    }

    /// [`ParamStore::weights_only`] with the values stored as `dtype`: f16 halves the
    /// weights' memory (values are rounded to nearest when loaded or copied in; f32 weights
    /// beyond ±65504 become ±inf, which [`ParamStore::load`] refuses).
    pub fn weights_only_as(
        ctx: &Context,
        params: &[(String, Vec<usize>)],
        dtype: DType,
    ) -> Result<ParamStore> {
        if !dtype.is_float() {
            return Err(Error::invalid(format!(
                "parameters are stored as f32 or f16, not {dtype:?}"
            )));
        }
        Self::allocate(ctx, params, false, dtype)
    }

    fn allocate(
        ctx: &Context,
        params: &[(String, Vec<usize>)],
        training: bool,
        dtype: DType,
    ) -> Result<ParamStore> {
        let caps = ctx.capabilities();
        // Offsets aligned for views of 2-byte elements: every store of the same parameters
        // has the same layout, f32 or f16 (and mixed precision's f16 copy), so copies
        // between them are whole-buffer copies or casts.
        let align = (caps.storage_offset_alignment as usize / DType::F16.size()).max(1);
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
        // Chunks for the whole-buffer passes, cut at parameter boundaries (sized for f32,
        // so a range of an f16 store's and of an f32 store's both fit a binding).
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
        let training = if training {
            Some(TrainingBuffers {
                grads: flat()?,
                m: flat()?,
                v: flat()?,
            })
        } else {
            None
        };
        Ok(ParamStore {
            specs,
            by_name,
            len,
            dtype,
            values: Tensor::zeros(ctx, &[len], dtype)?,
            training,
            mixed: None,
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

    /// Bytes of GPU memory held: values, for training gradients and both moments, and in
    /// mixed precision the f16 copy and the loss scale.
    pub fn memory(&self) -> u64 {
        let training = if self.training.is_some() { 3 * 4 } else { 0 };
        let (half, scale) = match &self.mixed {
            Some(m) => (2, m.loss_scale.byte_size()),
            None => (0, 0),
        };
        (self.dtype.size() + training + half) as u64 * self.len as u64 + scale
    }

    /// Makes a training store mixed precision: the forward and backward passes then read
    /// an f16 copy of the values (refreshed by [`ParamStore::plan_refresh`] at the start of
    /// each step) with f16 activations, while gradients, AdamW moments and the values
    /// themselves stay f32; training sessions scale the loss as `scaling` says. Needs
    /// `SHADER_F16` (an `Unsupported` error names it where the adapter lacks it). Calling it
    /// again resets the loss scale to `scaling.init_scale`.
    pub fn use_mixed_precision(&mut self, ctx: &Context, scaling: LossScaling) -> Result<()> {
        if self.training.is_none() {
            return Err(Error::invalid(
                "mixed precision is for training: this store holds weights only (for f16 \
                 inference, store the weights as f16)",
            ));
        }
        // Everything fallible first (new_state checks the settings), so a refusal leaves
        // the store as it was.
        let loss_scale = loss_scale::new_state(ctx, &scaling)?;
        let half = match &self.mixed {
            Some(m) => m.half.clone(),
            None => Tensor::zeros(ctx, &[self.len], DType::F16)?,
        };
        self.mixed = Some(MixedBuffers {
            half,
            loss_scale,
            scaling,
        });
        Ok(())
    }

    /// Whether the store trains in mixed precision (see [`ParamStore::use_mixed_precision`]).
    pub fn is_mixed(&self) -> bool {
        self.mixed.is_some()
    }

    /// The element type the forward and backward passes read the weights as: f16 in mixed
    /// precision, else the values' type.
    pub fn compute_dtype(&self) -> DType {
        if self.mixed.is_some() {
            DType::F16
        } else {
            self.dtype
        }
    }

    /// Parameter i as the passes read it: a view of the f16 copy in mixed precision, else
    /// of the values.
    pub fn compute_value(&self, ctx: &Context, i: usize) -> Result<Tensor> {
        match &self.mixed {
            Some(m) => self.view(ctx, &m.half, i),
            None => self.value(ctx, i),
        }
    }

    /// The casts that refresh the f16 copy from the f32 values (one per chunk), for the
    /// start of a step; none outside mixed precision.
    pub fn plan_refresh(&self, ctx: &Context) -> Result<Vec<Dispatch>> {
        let Some(m) = &self.mixed else {
            return Ok(Vec::new());
        };
        self.chunks
            .iter()
            .map(|&(off, n)| {
                let from = self.values.view(ctx, off, &[n])?;
                let to = m.half.view(ctx, off, &[n])?;
                crate::ops::elementwise::plan_axpby(ctx, 1.0, &from, 0.0, None, &to)
            })
            .collect()
    }

    /// Mixed precision's loss scale: its `[4]` state tensor (see [`crate::ops::loss_scale`])
    /// and settings.
    pub fn loss_scale(&self) -> Option<(&Tensor, &LossScaling)> {
        self.mixed.as_ref().map(|m| (&m.loss_scale, &m.scaling))
    }

    /// The loss scale and the count of good steps since it last changed, on their way back
    /// (saved with a checkpoint so that a resumed run scales as the uninterrupted one).
    pub fn read_loss_scale(&self, ctx: &Context) -> Result<Pending<(f32, u32)>> {
        let (state, _) = self
            .loss_scale()
            .ok_or_else(|| Error::invalid("this store does not train in mixed precision"))?;
        loss_scale::read_state(ctx, state)
    }

    /// Restores what [`ParamStore::read_loss_scale`] read.
    pub fn set_loss_scale(&self, ctx: &Context, scale: f32, good_steps: u32) -> Result<()> {
        let (state, scaling) = self
            .loss_scale()
            .ok_or_else(|| Error::invalid("this store does not train in mixed precision"))?;
        loss_scale::write_state(ctx, scaling, state, scale, good_steps)
    }

    /// The values' element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether it holds gradients and moments (see [`ParamStore::weights_only`]).
    pub fn trainable(&self) -> bool {
        self.training.is_some()
    }

    fn training(&self) -> Result<&TrainingBuffers> {
        self.training.as_ref().ok_or_else(|| {
            Error::invalid("this model holds weights only (an inference model): no gradients or optimizer state")
        })
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
        self.view(ctx, &self.training()?.grads, i)
    }

    /// The flat gradient buffer, whole (data-parallel training copies ranges of it out and
    /// back, never binding it).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn flat_grads(&self) -> Result<&Tensor> {
        Ok(&self.training()?.grads)
    }

    /// The flat buffers cut into ranges that each fit a storage binding:
    /// `(values, grads, m, v)` per range.
    pub fn chunk_views(&self, ctx: &Context) -> Result<Vec<[Tensor; 4]>> {
        let t = self.training()?;
        self.chunks
            .iter()
            .map(|&(off, n)| {
                Ok([
                    self.values.view(ctx, off, &[n])?,
                    t.grads.view(ctx, off, &[n])?,
                    t.m.view(ctx, off, &[n])?,
                    t.v.view(ctx, off, &[n])?,
                ])
            })
            .collect()
    }

    /// The flat buffers cut into runs of consecutive parameters on which `keep` agrees, no
    /// run crossing a chunk: `((values, grads, m, v), keep)` per run. A run covers its
    /// parameters and the alignment padding after them.
    pub(crate) fn runs(
        &self,
        ctx: &Context,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<([Tensor; 4], bool)>> {
        let t = self.training()?;
        let mut runs = Vec::new();
        for &(start, n) in &self.chunks {
            let end = start + n;
            // Parameters starting in this chunk, by offset.
            let mut inside: Vec<&ParamSpec> = self
                .specs
                .iter()
                .filter(|p| p.offset >= start && p.offset < end)
                .collect();
            inside.sort_by_key(|p| p.offset);
            let mut at = start;
            let mut current = inside.first().map(|p| keep(&p.name));
            for p in &inside {
                let k = keep(&p.name);
                if Some(k) != current && p.offset > at {
                    runs.push((at, p.offset - at, current.unwrap_or(true)));
                    at = p.offset;
                }
                current = Some(k);
            }
            if end > at {
                runs.push((at, end - at, current.unwrap_or(true)));
            }
        }
        runs.into_iter()
            .map(|(off, n, k)| {
                Ok((
                    [
                        self.values.view(ctx, off, &[n])?,
                        t.grads.view(ctx, off, &[n])?,
                        t.m.view(ctx, off, &[n])?,
                        t.v.view(ctx, off, &[n])?,
                    ],
                    k,
                ))
            })
            .collect()
    }

    /// Uploads every parameter from `tensors` (by name): each must be present with its
    /// exact shape and finite values. Extra tensors are ignored. Resets the optimizer moments.
    pub fn load(&self, ctx: &Context, tensors: &HostTensors) -> Result<()> {
        self.load_by(ctx, |name| tensors.get(name))
    }

    /// [`ParamStore::load`] with the tensor of each parameter name found by `lookup` (a
    /// checkpoint that names them differently, e.g. without a prefix).
    pub fn load_by<'t>(
        &self,
        ctx: &Context,
        lookup: impl Fn(&str) -> Option<&'t HostTensor>,
    ) -> Result<()> {
        let format = |message: String| Error::Format {
            path: "checkpoint".into(),
            message,
        };
        let mut flat = vec![0.0f32; self.len];
        for s in &self.specs {
            let t = lookup(&s.name).ok_or_else(|| {
                format(format!("missing tensor {:?} (shape {:?})", s.name, s.shape))
            })?;
            if t.shape != s.shape {
                return Err(format(format!(
                    "tensor {:?} has shape {:?}, but the config expects {:?}",
                    s.name, t.shape, s.shape
                )));
            }
            let values = t.to_f32();
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(format(format!(
                    "tensor {:?} holds {} at element {bad}: every weight must be finite",
                    s.name, values[bad]
                )));
            }
            if self.dtype == DType::F16 {
                if let Some(bad) = values.iter().position(|v| v.abs() > 65504.0) {
                    return Err(format(format!(
                        "tensor {:?} holds {} at element {bad}, beyond f16's range (±65504): \
                         load this model in f32",
                        s.name, values[bad]
                    )));
                }
            }
            flat[s.offset..s.offset + s.numel()].copy_from_slice(&values);
        }
        match self.dtype {
            DType::F16 => {
                let half: Vec<half::f16> = flat.iter().map(|&v| half::f16::from_f32(v)).collect();
                self.values.write(ctx, &half)?;
            }
            _ => self.values.write(ctx, &flat)?,
        }
        if self.training.is_some() {
            self.reset_optimizer(ctx)?;
        }
        Ok(())
    }

    /// Zeroes both AdamW moments.
    pub fn reset_optimizer(&self, ctx: &Context) -> Result<()> {
        let t = self.training()?;
        let zeros = vec![0.0f32; self.len];
        t.m.write(ctx, &zeros)?;
        t.v.write(ctx, &zeros)
    }

    /// Copies every value of `source`, a store of the same parameters (a training model's
    /// into its inference copy), on the GPU, converting between f32 and f16 where their
    /// types differ.
    pub fn copy_values_from(&self, ctx: &Context, source: &ParamStore) -> Result<()> {
        let names = |s: &ParamStore| -> Vec<(String, Vec<usize>)> {
            s.specs
                .iter()
                .map(|p| (p.name.clone(), p.shape.clone()))
                .collect()
        };
        if names(source) != names(self) {
            return Err(Error::invalid(
                "copy_values_from: the two stores hold different parameters",
            ));
        }
        if source.specs != self.specs || source.dtype != self.dtype {
            // Another layout or type: one conversion per parameter, in one submission.
            let casts = (0..self.specs.len())
                .map(|i| {
                    let (from, to) = (source.value(ctx, i)?, self.value(ctx, i)?);
                    crate::ops::elementwise::plan_axpby(ctx, 1.0, &from, 0.0, None, &to)
                })
                .collect::<Result<Vec<_>>>()?;
            return ctx.submit(&casts).map(drop);
        }
        let (from, to) = (&source.values, &self.values);
        ctx.scoped("copying parameters", || {
            let mut encoder = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            encoder.copy_buffer_to_buffer(
                from.buffer(),
                from.offset(),
                to.buffer(),
                to.offset(),
                to.byte_size(),
            );
            ctx.queue().submit([encoder.finish()]);
        })
    }

    /// `flat` read back and cut into the parameters.
    fn read_flat(&self, ctx: &Context, flat: &Tensor) -> Result<Pending<Vec<NamedTensor>>> {
        let specs: Vec<(String, Vec<usize>, usize)> = self
            .specs
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone(), s.offset))
            .collect();
        let cut = move |all: Vec<f32>| {
            Ok(specs
                .into_iter()
                .map(|(name, shape, offset)| {
                    let n: usize = shape.iter().product();
                    (name, shape, all[offset..offset + n].to_vec())
                })
                .collect())
        };
        flat.read_f32_then(ctx, cut)
    }

    /// Every parameter's value, `(name, shape, data)`, on its way back.
    pub fn read_values(&self, ctx: &Context) -> Result<Pending<Vec<NamedTensor>>> {
        self.read_flat(ctx, &self.values)
    }

    /// Every parameter's gradient from the last backward pass, on its way back.
    pub fn read_grads(&self, ctx: &Context) -> Result<Pending<Vec<NamedTensor>>> {
        self.read_flat(ctx, &self.training()?.grads)
    }

    /// [`ParamStore::read_values`], waiting for them (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download(&self, ctx: &Context) -> Result<Vec<NamedTensor>> {
        self.read_values(ctx)?.wait(ctx)
    }

    /// [`ParamStore::read_grads`], waiting for them (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_grads(&self, ctx: &Context) -> Result<Vec<NamedTensor>> {
        self.read_grads(ctx)?.wait(ctx)
    }

    /// Both moments (for checkpoints that resume training exactly; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_moments(&self, ctx: &Context) -> Result<(Vec<f32>, Vec<f32>)> {
        let t = self.training()?;
        Ok((t.m.to_vec(ctx)?, t.v.to_vec(ctx)?))
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
        let t = self.training()?;
        t.m.write(ctx, m)?;
        t.v.write(ctx, v)
    }
}
