//! GPU tensors: a storage buffer (or a range of one) with a shape and an element type.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::readback::Pending;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float (WGSL `f16`): needs the device feature `SHADER_F16`. Kernels
    /// accumulate in f32 whatever their tensors store.
    F16,
    /// Token ids and other indices.
    U32,
    /// Labels (where -100 means "ignore").
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 => 2,
            DType::F32 | DType::U32 | DType::I32 => 4,
        }
    }

    /// Its WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }

    /// A floating-point type (what activations, weights and gradients may be stored in).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16)
    }
}

/// Bytes a tensor of `n` elements of `dtype` takes in a buffer: storage bindings and copies
/// come in multiples of 4 bytes, so an odd number of f16 values gets 2 bytes of padding.
pub(crate) fn padded_bytes(n: usize, dtype: DType) -> u64 {
    let bytes = (n as u64).saturating_mul(dtype.size() as u64);
    // Saturating, like `numel`: an absurd shape fails the size checks instead of wrapping.
    bytes.checked_next_multiple_of(4).unwrap_or(u64::MAX)
}

/// Host element types that map to a [`DType`].
pub trait Element: bytemuck::Pod {
    /// The element type.
    const DTYPE: DType;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
}

/// A tensor on the GPU. Cloning is cheap and shares the data.
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    /// Byte offset of element 0 in `buffer` (a multiple of the storage offset alignment).
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

/// Element count of a shape, saturating: an absurd shape gives `usize::MAX`, which then
/// fails every size check instead of wrapping around.
pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

impl Tensor {
    /// A zero-filled tensor.
    pub fn zeros(ctx: &Context, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = numel(shape);
        if n == 0 {
            return Err(Error::invalid(format!(
                "empty tensor (shape {shape:?}): every dimension must be at least 1"
            )));
        }
        let bytes = padded_bytes(n, dtype);
        let caps = ctx.capabilities();
        if dtype == DType::F16 && !caps.shader_f16 {
            return Err(Error::Unsupported {
                what: format!("an f16 tensor (shape {shape:?})"),
                feature: "SHADER_F16",
                adapter: format!("{} ({:?})", caps.adapter_name, caps.backend),
            });
        }
        if bytes > caps.max_buffer_size {
            return Err(Error::OverLimit {
                what: format!("a tensor of shape {shape:?}"),
                needed: bytes,
                limit: caps.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        let buffer = ctx.scoped("buffer allocation", || {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(Tensor {
            buffer,
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Uploads host data (`data.len()` must equal the shape's element count).
    pub fn from_slice<T: Element>(ctx: &Context, data: &[T], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::DataLength {
                what: "Tensor::from_slice",
                len: data.len(),
                shape: shape.to_vec(),
                expected: numel(shape),
            });
        }
        let t = Tensor::zeros(ctx, shape, T::DTYPE)?;
        t.write(ctx, data)?;
        Ok(t)
    }

    /// A tensor filled with `value`.
    pub fn full(ctx: &Context, shape: &[usize], value: f32) -> Result<Tensor> {
        // Allocate (and check the size against the adapter) before building host data.
        let t = Tensor::zeros(ctx, shape, DType::F32)?;
        t.write(ctx, &vec![value; t.numel()])?;
        Ok(t)
    }

    /// Overwrites the whole tensor with host data (queued; visible to later submissions).
    pub fn write<T: Element>(&self, ctx: &Context, data: &[T]) -> Result<()> {
        self.expect_dtype("Tensor::write", "tensor", T::DTYPE)?;
        if data.len() != self.numel() {
            return Err(Error::DataLength {
                what: "Tensor::write",
                len: data.len(),
                shape: self.shape.clone(),
                expected: self.numel(),
            });
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() % 4 == 0 {
            ctx.queue().write_buffer(&self.buffer, self.offset, bytes);
        } else {
            // An odd number of f16 values: writes come in multiples of 4 bytes, and the
            // allocation has the padding (see `padded_bytes`).
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            ctx.queue().write_buffer(&self.buffer, self.offset, &padded);
        }
        Ok(())
    }

    /// Copies the tensor back to the host after all work queued before: the values arrive
    /// through the returned [`Pending`] (await it, or [`Pending::wait`] natively).
    pub fn read<T: Element>(&self, ctx: &Context) -> Result<Pending<Vec<T>>> {
        self.read_then(ctx, Ok)
    }

    /// [`Tensor::read`] of a float tensor as f32, whether it holds f32 or f16.
    pub fn read_f32(&self, ctx: &Context) -> Result<Pending<Vec<f32>>> {
        self.read_f32_then(ctx, Ok)
    }

    /// [`Tensor::read_f32`], the values handed to `finish` on arrival.
    pub(crate) fn read_f32_then<R>(
        &self,
        ctx: &Context,
        finish: impl FnOnce(Vec<f32>) -> Result<R> + Send + 'static,
    ) -> Result<Pending<R>> {
        match self.dtype {
            DType::F16 => self.read_then(ctx, |v: Vec<half::f16>| {
                finish(v.into_iter().map(half::f16::to_f32).collect())
            }),
            _ => self.read_then(ctx, finish),
        }
    }

    /// [`Tensor::read`], the values handed to `finish` (which makes the result) on arrival.
    pub(crate) fn read_then<T: Element, R>(
        &self,
        ctx: &Context,
        finish: impl FnOnce(Vec<T>) -> Result<R> + Send + 'static,
    ) -> Result<Pending<R>> {
        self.expect_dtype("Tensor::read", "tensor", T::DTYPE)?;
        let bytes = self.byte_size();
        let copied = self.binding_size();
        Pending::submit(
            ctx,
            "read-back",
            copied,
            |encoder, staging| {
                encoder.copy_buffer_to_buffer(&self.buffer, self.offset, staging, 0, copied)
            },
            move |data| finish(bytemuck::pod_collect_to_vec(&data[..bytes as usize])),
        )
    }

    /// [`Tensor::read`], waiting for the values (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec<T: Element>(&self, ctx: &Context) -> Result<Vec<T>> {
        self.read(ctx)?.wait(ctx)
    }

    /// Same data, another shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                "tensor",
                format!("{} elements for shape {shape:?}", numel(shape)),
                &self.shape,
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Size in bytes.
    pub fn byte_size(&self) -> u64 {
        self.numel() as u64 * self.dtype.size() as u64
    }

    /// Bytes bound to a kernel or copied: [`Tensor::byte_size`] rounded up to 4 (an odd
    /// number of f16 values has 2 bytes of padding after it).
    pub(crate) fn binding_size(&self) -> u64 {
        self.byte_size().next_multiple_of(4)
    }

    /// The buffer holding it (shared with other views).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Byte offset of the first element in [`Tensor::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Wraps a range of an existing storage buffer (e.g. one owned by an application).
    /// `offset` must be a multiple of the adapter's storage offset alignment.
    pub fn from_buffer(
        ctx: &Context,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let n = numel(shape);
        let align = ctx.capabilities().storage_offset_alignment as u64;
        let end = offset.saturating_add(padded_bytes(n, dtype));
        if n == 0 || offset % align != 0 || end > buffer.size() {
            return Err(Error::invalid(format!(
                "Tensor::from_buffer: shape {shape:?} at offset {offset} does not fit a buffer of \
                 {} bytes (offset must be a multiple of {align}, shape non-empty)",
                buffer.size()
            )));
        }
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::invalid(
                "Tensor::from_buffer: the buffer lacks STORAGE usage",
            ));
        }
        Ok(Tensor {
            buffer,
            offset,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A view of `numel(shape)` elements starting `offset` elements into this tensor.
    /// The byte offset must keep the adapter's storage offset alignment.
    pub fn view(&self, ctx: &Context, offset: usize, shape: &[usize]) -> Result<Tensor> {
        if offset.saturating_add(numel(shape)) > self.numel() {
            return Err(Error::invalid(format!(
                "view of {shape:?} at element {offset} runs past a tensor of {} elements",
                self.numel()
            )));
        }
        Tensor::from_buffer(
            ctx,
            self.buffer.clone(),
            self.offset + (offset * self.dtype.size()) as u64,
            shape,
            self.dtype,
        )
    }

    pub(crate) fn expect_dtype(
        &self,
        op: &'static str,
        what: &'static str,
        dtype: DType,
    ) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::DType {
                op,
                what,
                expected: dtype,
                found: self.dtype,
            });
        }
        Ok(())
    }

    /// Checks the tensor holds floats (f32 or f16): the kernels that read either.
    pub(crate) fn expect_float(&self, op: &'static str, what: &'static str) -> Result<()> {
        if !self.dtype.is_float() {
            return Err(Error::DType {
                op,
                what,
                expected: DType::F32,
                found: self.dtype,
            });
        }
        Ok(())
    }

    /// The length of the last dimension, which row kernels (softmax, LayerNorm,
    /// cross-entropy) take rows of; a 0-d tensor has none and is a shape error.
    pub(crate) fn row_len(&self, op: &'static str, what: &'static str) -> Result<usize> {
        match self.shape().last() {
            Some(&n) => Ok(n),
            None => Err(Error::shape(
                op,
                what,
                "[..., n] (at least one dimension)",
                &[],
            )),
        }
    }

    /// Checks the exact shape.
    pub(crate) fn expect_shape(
        &self,
        op: &'static str,
        what: &'static str,
        shape: &[usize],
    ) -> Result<()> {
        if self.shape != shape {
            return Err(Error::shape(op, what, format!("{shape:?}"), &self.shape));
        }
        Ok(())
    }

    /// The first `limit` bytes as a binding (for a context that only plans).
    pub(crate) fn binding_cut(&self, limit: u64) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(limit.min(self.binding_size())),
        })
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.binding_size()),
        })
    }
}
