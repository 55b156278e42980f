//! LayerNorm, alone or fused with the residual add before it: forward builders and
//! backward rule.

use crate::error::{Error, Result};
use crate::ops::layernorm;
use crate::tensor::numel;

use super::{layout_check, Graph, StageKind, TensorId};

impl Graph {
    /// The row width of x (`[..., n]`), checking gamma and beta are `[n]`.
    fn layer_norm_width(
        &self,
        op: &'static str,
        x: TensorId,
        gamma: TensorId,
        beta: TensorId,
    ) -> Result<usize> {
        let n = *self
            .shape(x)
            .last()
            .ok_or_else(|| Error::shape(op, "x", "[..., n]", self.shape(x)))?;
        layout_check(op, "gamma", self.shape(gamma), &[n])?;
        layout_check(op, "beta", self.shape(beta), &[n])?;
        Ok(n)
    }

    /// LayerNorm over the last dimension.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: TensorId,
        gamma: TensorId,
        beta: TensorId,
        eps: f32,
    ) -> Result<TensorId> {
        let n = self.layer_norm_width("layer_norm", x, gamma, beta)?;
        let shape = self.shape(x).to_vec();
        let out = self.output(name, &shape, &[x, gamma, beta]);
        let stats = self.pooled_f32(format!("{name}.stats"), &[numel(&shape) / n, 2]);
        self.call(
            false,
            format!("{name}: layernorm"),
            vec![x, gamma, beta],
            vec![out, stats],
            Box::new(move |ctx, t| {
                Ok(vec![layernorm::plan_forward(
                    ctx,
                    t.get(x)?,
                    t.get(gamma)?,
                    t.get(beta)?,
                    eps,
                    t.get(out)?,
                    t.get(stats)?,
                )?])
            }),
        );
        self.stage(StageKind::LayerNorm { stats }, vec![x, gamma, beta], out);
        Ok(out)
    }

    /// `layer_norm(a + b)` with the add and the normalisation in one kernel (a post-LN
    /// block's residual). For the backward pass it is the Add stage then the LayerNorm stage.
    #[allow(clippy::too_many_arguments)]
    pub fn add_layer_norm(
        &mut self,
        name: &str,
        a: TensorId,
        b: TensorId,
        gamma: TensorId,
        beta: TensorId,
        eps: f32,
    ) -> Result<TensorId> {
        if a == b {
            return Err(Error::invalid(format!(
                "{name}: adding a tensor to itself is not supported"
            )));
        }
        let n = self.layer_norm_width("add_layer_norm", a, gamma, beta)?;
        let shape = self.shape(a).to_vec();
        layout_check("add_layer_norm", "b", self.shape(b), &shape)?;
        let sum = self.output(&format!("{name}.sum"), &shape, &[a, b]);
        let out = self.output(name, &shape, &[sum, gamma, beta]);
        let stats = self.pooled_f32(format!("{name}.stats"), &[numel(&shape) / n, 2]);
        self.call(
            false,
            format!("{name}: add + layernorm"),
            vec![a, b, gamma, beta],
            vec![sum, out, stats],
            Box::new(move |ctx, t| {
                Ok(vec![layernorm::plan_forward_residual(
                    ctx,
                    t.get(a)?,
                    t.get(b)?,
                    t.get(gamma)?,
                    t.get(beta)?,
                    eps,
                    t.get(sum)?,
                    t.get(out)?,
                    t.get(stats)?,
                )?])
            }),
        );
        self.stage(StageKind::Add, vec![a, b], sum);
        self.stage(StageKind::LayerNorm { stats }, vec![sum, gamma, beta], out);
        Ok(out)
    }

    /// dx from the saved statistics, and dγ, dβ in a second kernel.
    pub(super) fn layer_norm_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
        stats: TensorId,
    ) -> Result<()> {
        let (x, gamma, beta) = (inputs[0], inputs[1], inputs[2]);
        if let Some((dst, add_to)) = self.overwrite_target(x) {
            self.call(
                true,
                format!("{label}: layernorm backward"),
                vec![x, gamma, stats, dy],
                vec![dst],
                Box::new(move |ctx, t| {
                    Ok(vec![layernorm::plan_backward(
                        ctx,
                        t.get(x)?,
                        t.get(gamma)?,
                        t.get(stats)?,
                        t.get(dy)?,
                        t.get(dst)?,
                    )?])
                }),
            );
            if let Some(g) = add_to {
                self.add_into(label, dst, g);
            }
        }
        match (self.grad_target(gamma), self.grad_target(beta)) {
            (Some((gg, acc_g)), Some((gb, acc_b))) if acc_g == acc_b => {
                self.call(
                    true,
                    format!("{label}: layernorm parameter gradients"),
                    vec![x, stats, dy],
                    vec![gg, gb],
                    Box::new(move |ctx, t| {
                        layernorm::plan_backward_params(
                            ctx,
                            t.get(x)?,
                            t.get(stats)?,
                            t.get(dy)?,
                            t.get(gg)?,
                            t.get(gb)?,
                            acc_g,
                        )
                    }),
                );
                Ok(())
            }
            (None, None) => Ok(()),
            _ => Err(Error::invalid(format!(
                "{label}: LayerNorm weight and bias must be trained (and shared) together"
            ))),
        }
    }
}
