//! Cross-entropy, the loss every graph ends in: forward builder and the start of the
//! backward pass.

use crate::error::{Error, Result};
use crate::ops::cross_entropy::{self, Labels, LossState};
use crate::tensor::numel;

use super::{Graph, StageKind, TensorId};

impl Graph {
    /// Mean cross-entropy of `logits` (`[..., classes]`) against `labels`: a `[4]` tensor
    /// `(loss, counted rows, correct rows, 0)`.
    pub fn cross_entropy(
        &mut self,
        name: &str,
        logits: TensorId,
        labels: &Labels,
    ) -> Result<TensorId> {
        let s = self.shape(logits).to_vec();
        let classes = *s.last().unwrap_or(&0);
        let rows = numel(&s).checked_div(classes).unwrap_or(0);
        if rows != labels.len() {
            return Err(Error::shape(
                "cross_entropy",
                "logits",
                format!("{} rows (one per label)", labels.len()),
                &s,
            ));
        }
        let loss = self.pooled_f32(name, &[4]);
        let row_stats = self.pooled_f32(format!("{name}.rows"), &[rows, 3]);
        self.input_bytes += 4 * labels.len() as u64;
        let lab = labels.clone();
        self.call(
            false,
            format!("{name}: cross entropy"),
            vec![logits],
            vec![loss, row_stats],
            Box::new(move |ctx, t| {
                let state = LossState {
                    row_stats: t.get(row_stats)?.clone(),
                    loss: t.get(loss)?.clone(),
                };
                cross_entropy::plan_forward(ctx, t.get(logits)?, &lab, &state)
            }),
        );
        self.stage(
            StageKind::CrossEntropy {
                labels: labels.clone(),
                row_stats,
            },
            vec![logits],
            loss,
        );
        Ok(loss)
    }

    /// d loss / d logits, from the saved log-sum-exp of each row.
    pub(super) fn cross_entropy_backward(
        &mut self,
        label: &str,
        logits: TensorId,
        loss: TensorId,
        labels: &Labels,
        row_stats: TensorId,
    ) -> Result<()> {
        let Some((dst, add_to)) = self.overwrite_target(logits) else {
            return Ok(());
        };
        let labels = labels.clone();
        let loss_scale = self.loss_scale.clone();
        self.call(
            true,
            format!("{label}: cross entropy backward"),
            vec![logits, loss, row_stats],
            vec![dst],
            Box::new(move |ctx, t| {
                let state = LossState {
                    row_stats: t.get(row_stats)?.clone(),
                    loss: t.get(loss)?.clone(),
                };
                Ok(vec![cross_entropy::plan_backward(
                    ctx,
                    t.get(logits)?,
                    &labels,
                    &state,
                    1.0,
                    loss_scale.as_ref(),
                    t.get(dst)?,
                )?])
            }),
        );
        if let Some(g) = add_to {
            self.add_into(label, dst, g);
        }
        Ok(())
    }
}
