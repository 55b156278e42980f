//! GELU, residual add and first-token selection: forward builders and backward rules.

use crate::error::{Error, Result};
use crate::ops::{elementwise as ew, gelu};

use super::{layout_check, Graph, StageKind, Storage, TensorId};

impl Graph {
    /// `gelu(x)` (the exact erf form).
    pub fn gelu(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let shape = self.shape(x).to_vec();
        let out = self.output(name, &shape, &[x]);
        self.call(
            false,
            format!("{name}: gelu"),
            vec![x],
            vec![out],
            Box::new(move |ctx, t| Ok(vec![gelu::plan_forward(ctx, t.get(x)?, t.get(out)?)?])),
        );
        self.stage(StageKind::Gelu, vec![x], out);
        Ok(out)
    }

    /// `dx = dy · gelu'(x)`.
    pub(super) fn gelu_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
    ) -> Result<()> {
        let x = inputs[0];
        if let Some((dst, add_to)) = self.overwrite_target(x) {
            self.call(
                true,
                format!("{label}: gelu backward"),
                vec![x, dy],
                vec![dst],
                Box::new(move |ctx, t| {
                    Ok(vec![gelu::plan_backward(
                        ctx,
                        t.get(x)?,
                        t.get(dy)?,
                        t.get(dst)?,
                    )?])
                }),
            );
            if let Some(g) = add_to {
                self.add_into(label, dst, g);
            }
        }
        Ok(())
    }

    /// `a + b`, same shapes.
    pub fn add(&mut self, name: &str, a: TensorId, b: TensorId) -> Result<TensorId> {
        if a == b {
            return Err(Error::invalid(format!(
                "{name}: adding a tensor to itself is not supported"
            )));
        }
        let shape = self.shape(a).to_vec();
        layout_check("add", "b", self.shape(b), &shape)?;
        let out = self.output(name, &shape, &[a, b]);
        self.call(
            false,
            format!("{name}: add"),
            vec![a, b],
            vec![out],
            Box::new(move |ctx, t| {
                Ok(vec![ew::plan_axpby(
                    ctx,
                    1.0,
                    t.get(a)?,
                    1.0,
                    Some(t.get(b)?),
                    t.get(out)?,
                )?])
            }),
        );
        self.stage(StageKind::Add, vec![a, b], out);
        Ok(out)
    }

    /// Both inputs get dy.
    pub(super) fn add_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
    ) -> Result<()> {
        for (i, &x) in inputs.iter().enumerate() {
            if !self.tensors[x.0].requires_grad {
                continue;
            }
            // The first input may take dy itself as its gradient: nothing reads dy after
            // this stage, so later contributions can add to it in place.
            if i == 0
                && !self.grads.contains_key(&x)
                && matches!(self.tensors[x.0].storage, Storage::Pooled)
            {
                self.grads.insert(x, dy);
                continue;
            }
            let Some((g, accumulate)) = self.grad_target(x) else {
                continue;
            };
            self.call(
                true,
                format!("{label}: add backward"),
                vec![dy],
                vec![g],
                Box::new(move |ctx, t| {
                    Ok(vec![if accumulate {
                        ew::plan_accumulate(ctx, 1.0, t.get(dy)?, t.get(g)?)?
                    } else {
                        ew::plan_axpby(ctx, 1.0, t.get(dy)?, 0.0, None, t.get(g)?)?
                    }])
                }),
            );
        }
        Ok(())
    }

    /// `x[:, 0, :]` of a `[B, T, H]` tensor (the classifier's CLS token).
    pub fn first_token(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        if s.len() != 3 {
            return Err(Error::shape("first_token", "x", "[batch, seq, hidden]", &s));
        }
        let out = self.output(name, &[s[0], s[2]], &[x]);
        self.call(
            false,
            format!("{name}: first token"),
            vec![x],
            vec![out],
            Box::new(move |ctx, t| Ok(vec![ew::plan_gather_first(ctx, t.get(x)?, t.get(out)?)?])),
        );
        self.stage(StageKind::FirstToken, vec![x], out);
        Ok(out)
    }

    /// dy goes back to position 0; the other positions get 0.
    pub(super) fn first_token_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
    ) -> Result<()> {
        let x = inputs[0];
        if let Some((g, accumulate)) = self.grad_target(x) {
            self.call(
                true,
                format!("{label}: first token backward"),
                vec![dy],
                vec![g],
                Box::new(move |ctx, t| {
                    let mut d = Vec::new();
                    if !accumulate {
                        d.push(ew::plan_fill(ctx, t.get(g)?, 0.0)?);
                    }
                    d.push(ew::plan_scatter_first(
                        ctx,
                        t.get(dy)?,
                        t.get(g)?,
                        accumulate,
                    )?);
                    Ok(d)
                }),
            );
        }
        Ok(())
    }
}
