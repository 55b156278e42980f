//! Linear layers (PyTorch `Linear`, optionally with GELU fused into the product's epilogue):
//! forward builders and backward rule.

use crate::error::Result;
use crate::ops::matmul::{self, GradTarget, GradTargets, MatmulOptions};

use super::{layout_check, Graph, StageKind, TensorId};

/// The product a Linear is: `x · wᵀ`.
fn linear_options() -> MatmulOptions {
    MatmulOptions {
        trans_b: true,
        ..Default::default()
    }
}

impl Graph {
    /// A Linear's output shape and inputs, shapes checked.
    fn linear_operands(
        &self,
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
    ) -> Result<(Vec<usize>, Vec<TensorId>)> {
        let shape = matmul::output_shape(self.shape(x), self.shape(w), &linear_options())?;
        if let Some(b) = b {
            // output_shape never returns fewer than two dimensions.
            layout_check("linear", "bias", self.shape(b), &shape[shape.len() - 1..])?;
        }
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok((shape, inputs))
    }

    /// `x · wᵀ (+ b)` for x `[..., in]`, w `[out, in]` (PyTorch `Linear`).
    pub fn linear(
        &mut self,
        name: &str,
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
    ) -> Result<TensorId> {
        let (shape, inputs) = self.linear_operands(x, w, b)?;
        let out = self.output(name, &shape, &inputs);
        self.call(
            false,
            format!("{name}: linear"),
            inputs.clone(),
            vec![out],
            Box::new(move |ctx, t| {
                let bias = b.map(|b| t.get(b)).transpose()?;
                Ok(vec![matmul::plan(
                    ctx,
                    t.get(x)?,
                    t.get(w)?,
                    bias,
                    t.get(out)?,
                    &linear_options(),
                )?])
            }),
        );
        self.stage(StageKind::Linear, inputs, out);
        Ok(out)
    }

    /// `gelu(x · wᵀ + b)` as one kernel (the matmul's epilogue applies GELU). Returns the
    /// activation; the pre-activation, named `name`, is kept for the backward pass, which
    /// sees a Linear stage then a GELU stage named `act_name`.
    pub fn linear_gelu(
        &mut self,
        name: &str,
        act_name: &str,
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
    ) -> Result<TensorId> {
        let (shape, inputs) = self.linear_operands(x, w, b)?;
        let pre = self.output(name, &shape, &inputs);
        let act = self.output(act_name, &shape, &[pre]);
        self.call(
            false,
            format!("{name}: linear + gelu"),
            inputs.clone(),
            vec![pre, act],
            Box::new(move |ctx, t| {
                let bias = b.map(|b| t.get(b)).transpose()?;
                Ok(vec![matmul::plan_gelu(
                    ctx,
                    t.get(x)?,
                    t.get(w)?,
                    bias,
                    t.get(pre)?,
                    t.get(act)?,
                    &linear_options(),
                )?])
            }),
        );
        self.stage(StageKind::Linear, inputs, pre);
        self.stage(StageKind::Gelu, vec![pre], act);
        Ok(act)
    }

    /// dx, dw and db of a Linear, in one call of the matmul's backward.
    pub(super) fn linear_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
    ) -> Result<()> {
        let (x, w, b) = (inputs[0], inputs[1], inputs.get(2).copied());
        let gx = self.grad_target(x);
        let gw = self.grad_target(w);
        let gb = b.and_then(|b| self.grad_target(b));
        let writes: Vec<TensorId> = [gx, gw, gb].iter().flatten().map(|g| g.0).collect();
        self.call(
            true,
            format!("{label}: linear backward"),
            vec![x, w, dy],
            writes,
            Box::new(move |ctx, t| {
                let target = |g: Option<(TensorId, bool)>| -> Result<Option<GradTarget<'_>>> {
                    g.map(|(id, accumulate)| {
                        Ok(GradTarget {
                            tensor: t.get(id)?,
                            accumulate,
                        })
                    })
                    .transpose()
                };
                let targets = GradTargets {
                    a: target(gx)?,
                    b: target(gw)?,
                    bias: target(gb)?,
                };
                matmul::plan_backward(
                    ctx,
                    t.get(x)?,
                    t.get(w)?,
                    t.get(dy)?,
                    &linear_options(),
                    targets,
                )
            }),
        );
        Ok(())
    }
}
