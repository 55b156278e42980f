//! Kernels of your own as graph stages: forward dispatches from the stage's inputs to its
//! output, and optionally a backward rule, both built from [`crate::DispatchBuilder`]s once
//! the planner has given the tensors their buffers. A gradient that reaches a stage without
//! a backward rule, on its way to an input that needs one, is an error at
//! [`Graph::backward`], never a silently missing gradient.

use std::rc::Rc;

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::tensor::{numel, Tensor};

use super::{Graph, StageKind, TensorId};

/// Builds a custom stage's forward dispatches from its inputs and output tensors.
pub type CustomForward = dyn Fn(&Context, &[&Tensor], &Tensor) -> Result<Vec<Dispatch>>;

/// Builds a custom stage's backward dispatches (see [`CustomGrads`]).
pub type CustomBackward = dyn Fn(&Context, &CustomGrads<'_>) -> Result<Vec<Dispatch>>;

/// What a custom stage's backward rule works with.
pub struct CustomGrads<'a> {
    /// The stage's inputs, as in the forward pass.
    pub inputs: &'a [&'a Tensor],
    /// Its output.
    pub output: &'a Tensor,
    /// The loss's gradient with respect to the output.
    pub grad_output: &'a Tensor,
    /// Where each input's gradient goes, to be overwritten (the graph adds it to other
    /// contributions); `None` for an input that needs no gradient.
    pub grad_inputs: &'a [Option<&'a Tensor>],
}

impl Graph {
    /// A stage running kernels of your own: `forward` builds the dispatches that write the
    /// output (`output_shape`, f32) from the inputs. It has no backward rule: use
    /// [`Graph::custom_with_backward`] when gradients must flow through it.
    pub fn custom(
        &mut self,
        name: &str,
        inputs: &[TensorId],
        output_shape: &[usize],
        forward: impl Fn(&Context, &[&Tensor], &Tensor) -> Result<Vec<Dispatch>> + 'static,
    ) -> Result<TensorId> {
        self.add_custom(name, inputs, output_shape, Rc::new(forward), None)
    }

    /// [`Graph::custom`] with a backward rule: `backward` builds the dispatches that write
    /// each input's gradient from the gradient of the output (see [`CustomGrads`]).
    pub fn custom_with_backward(
        &mut self,
        name: &str,
        inputs: &[TensorId],
        output_shape: &[usize],
        forward: impl Fn(&Context, &[&Tensor], &Tensor) -> Result<Vec<Dispatch>> + 'static,
        backward: impl Fn(&Context, &CustomGrads<'_>) -> Result<Vec<Dispatch>> + 'static,
    ) -> Result<TensorId> {
        self.add_custom(
            name,
            inputs,
            output_shape,
            Rc::new(forward),
            Some(Rc::new(backward)),
        )
    }

    fn add_custom(
        &mut self,
        name: &str,
        inputs: &[TensorId],
        output_shape: &[usize],
        forward: Rc<CustomForward>,
        backward: Option<Rc<CustomBackward>>,
    ) -> Result<TensorId> {
        if output_shape.is_empty() || numel(output_shape) == 0 {
            return Err(Error::invalid(format!(
                "{name}: a custom stage's output needs a non-empty shape, got {output_shape:?}"
            )));
        }
        if let Some(bad) = inputs.iter().find(|i| i.0 >= self.tensors.len()) {
            return Err(Error::invalid(format!(
                "{name}: input {} is not a tensor of this graph",
                bad.0
            )));
        }
        let out = self.output(name, output_shape, inputs);
        let ins = inputs.to_vec();
        self.call(
            false,
            format!("{name}: custom"),
            ins.clone(),
            vec![out],
            Box::new(move |ctx, t| {
                let tensors = ins.iter().map(|&i| t.get(i)).collect::<Result<Vec<_>>>()?;
                forward(ctx, &tensors, t.get(out)?)
            }),
        );
        self.stage(StageKind::Custom { backward }, inputs.to_vec(), out);
        Ok(out)
    }

    /// Runs the stage's backward rule, or fails when it has none and an input needs a
    /// gradient.
    pub(super) fn custom_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        backward: Option<Rc<CustomBackward>>,
    ) -> Result<()> {
        if !self.requires_grad(inputs) {
            return Ok(());
        }
        let Some(backward) = backward else {
            return Err(Error::invalid(format!(
                "{label}: the gradient reaches this custom stage, which has no backward rule \
                 (use Graph::custom_with_backward)"
            )));
        };
        let mut targets = Vec::with_capacity(inputs.len());
        let mut adds = Vec::new();
        for &x in inputs {
            match self.overwrite_target(x) {
                Some((dst, add_to)) => {
                    targets.push(Some(dst));
                    adds.extend(add_to.map(|g| (dst, g)));
                }
                None => targets.push(None),
            }
        }
        let mut reads = inputs.to_vec();
        reads.extend([y, dy]);
        let ins = inputs.to_vec();
        let tgts = targets.clone();
        self.call(
            true,
            format!("{label}: custom backward"),
            reads,
            targets.into_iter().flatten().collect(),
            Box::new(move |ctx, t| {
                let inputs = ins.iter().map(|&i| t.get(i)).collect::<Result<Vec<_>>>()?;
                let grad_inputs = tgts
                    .iter()
                    .map(|g| g.map(|g| t.get(g)).transpose())
                    .collect::<Result<Vec<_>>>()?;
                backward(
                    ctx,
                    &CustomGrads {
                        inputs: &inputs,
                        output: t.get(y)?,
                        grad_output: t.get(dy)?,
                        grad_inputs: &grad_inputs,
                    },
                )
            }),
        );
        for (part, g) in adds {
            self.add_into(label, part, g);
        }
        Ok(())
    }
}
