//! A performer model's random projections (`attention_kind` `performer`): one `[m, d]`
//! matrix per layer, shared by its heads, as Performer's reference implementations keep one
//! per attention layer. They are buffers, not parameters: never trained (no gradient, the
//! optimizer never sees them), stored with the weights under
//! [`performer_projection_name`] so a checkpoint reproduces its outputs, drawn from
//! `performer_seed` when a model is made, and drawn again only when asked
//! ([`super::RoFormer::redraw_performer_projections`]). The host keeps a copy (what is
//! saved); the GPU holds the tensors the attention reads, written in place so planned
//! sessions keep working across a redraw.

use std::sync::Mutex;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::io::{HostTensor, NamedTensor};
use crate::ops::attention::performer::draw_projection;
use crate::tensor::{DType, Tensor};

use super::{AttentionKind, RoFormerConfig};

/// The checkpoint name of layer `layer`'s projection (`[performer_features, head_dim]`,
/// f32): `roformer.encoder.layer.{layer}.attention.self.performer_projection`.
pub fn performer_projection_name(layer: usize) -> String {
    format!("roformer.encoder.layer.{layer}.attention.self.performer_projection")
}

/// The projections of one model (none unless its attention is performer).
pub(crate) struct Projections {
    /// `[m, d]`.
    shape: [usize; 2],
    /// Per layer, on the GPU.
    tensors: Vec<Tensor>,
    /// Per layer, the values the GPU tensors hold.
    host: Mutex<Vec<Vec<f32>>>,
}

impl Projections {
    /// The projections `config` asks for, drawn from its `performer_seed`.
    pub(crate) fn new(ctx: &Context, config: &RoFormerConfig) -> Result<Projections> {
        let layers = if config.attention == AttentionKind::Performer {
            config.num_hidden_layers
        } else {
            0
        };
        let shape = [config.performer_features.unwrap_or(0), config.head_dim()];
        let tensors = (0..layers)
            .map(|_| Tensor::zeros(ctx, &shape, DType::F32))
            .collect::<Result<Vec<_>>>()?;
        let p = Projections {
            shape,
            tensors,
            host: Mutex::new(Vec::new()),
        };
        p.draw(ctx, config.performer_seed.unwrap_or(0))?;
        Ok(p)
    }

    /// Layer `layer`'s projection on the GPU (`None` for another attention kind).
    pub(crate) fn layer(&self, layer: usize) -> Option<&Tensor> {
        self.tensors.get(layer)
    }

    /// Draws every layer's projection again: layer `l` from `seed + l`.
    pub(crate) fn draw(&self, ctx: &Context, seed: u64) -> Result<()> {
        let [m, d] = self.shape;
        let values = (0..self.tensors.len())
            .map(|l| draw_projection(m, d, seed.wrapping_add(l as u64)))
            .collect();
        self.write(ctx, values)
    }

    /// Every layer's projection from `lookup` (a checkpoint's tensors by name), checked
    /// before anything is written: present, `[m, d]`, finite.
    pub(crate) fn read<'t>(
        &self,
        lookup: impl Fn(&str) -> Option<&'t HostTensor>,
    ) -> Result<Vec<Vec<f32>>> {
        let format = |message: String| Error::Format {
            path: "checkpoint".into(),
            message,
        };
        (0..self.tensors.len())
            .map(|l| {
                let name = performer_projection_name(l);
                let t = lookup(&name).ok_or_else(|| {
                    format(format!(
                        "missing tensor {name:?} (shape {:?}): a performer checkpoint stores \
                         each layer's random projection, and without it the outputs cannot be \
                         reproduced. To start from weights without them (another attention \
                         kind's, say), load the parameters alone (RoFormer::params().load) \
                         and keep the projections drawn from performer_seed",
                        self.shape
                    ))
                })?;
                if t.shape != self.shape {
                    return Err(format(format!(
                        "tensor {name:?} has shape {:?}, but the config expects {:?} \
                         (performer_features, head dimension)",
                        t.shape, self.shape
                    )));
                }
                let values = t.to_f32();
                if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                    return Err(format(format!(
                        "tensor {name:?} holds {} at element {bad}: every weight must be finite",
                        values[bad]
                    )));
                }
                Ok(values)
            })
            .collect()
    }

    /// Uploads per-layer values (as [`Projections::read`] returns them).
    pub(crate) fn write(&self, ctx: &Context, values: Vec<Vec<f32>>) -> Result<()> {
        for (t, v) in self.tensors.iter().zip(&values) {
            t.write(ctx, v)?;
        }
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = values;
        Ok(())
    }

    /// The projections as checkpoint tensors.
    pub(crate) fn named(&self) -> Vec<NamedTensor> {
        let host = self.host.lock().unwrap_or_else(|e| e.into_inner());
        host.iter()
            .enumerate()
            .map(|(l, v)| (performer_projection_name(l), self.shape.to_vec(), v.clone()))
            .collect()
    }

    /// The host's copy of every layer's values.
    pub(crate) fn values(&self) -> Vec<Vec<f32>> {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bytes on the GPU.
    pub(crate) fn memory(&self) -> u64 {
        self.tensors.iter().map(Tensor::byte_size).sum()
    }
}
