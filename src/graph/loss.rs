//! The losses a graph ends in (cross-entropy over class labels; binary cross-entropy or
//! squared error against float targets): forward builders and the start of the backward
//! pass.

use crate::error::{Error, Result};
use crate::ops::bce_mse::{self, Targets};
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

    /// Mean binary cross-entropy with logits or squared error (as `targets` says) of
    /// `logits` (`[..., labels]`) against `targets`, over every element: a `[4]` tensor
    /// `(loss, rows, rows right, 0)` in cross-entropy's layout (see [`bce_mse::LossState`]).
    pub fn bce_mse(&mut self, name: &str, logits: TensorId, targets: &Targets) -> Result<TensorId> {
        let s = self.shape(logits).to_vec();
        let (rows, labels) = targets.shape();
        if s.last() != Some(&labels) || numel(&s) != targets.len() {
            return Err(Error::shape(
                "bce_mse",
                "logits",
                format!("[{rows} rows..., {labels} labels] (one per target)"),
                &s,
            ));
        }
        let loss = self.pooled_f32(name, &[4]);
        let row_stats = self.pooled_f32(format!("{name}.rows"), &[rows, 2]);
        self.input_bytes += 4 * targets.len() as u64;
        let t = targets.clone();
        self.call(
            false,
            format!("{name}: {:?}", targets.kind()),
            vec![logits],
            vec![loss, row_stats],
            Box::new(move |ctx, r| {
                let state = bce_mse::LossState {
                    row_stats: r.get(row_stats)?.clone(),
                    loss: r.get(loss)?.clone(),
                };
                bce_mse::plan_forward(ctx, r.get(logits)?, &t, &state)
            }),
        );
        self.stage(
            StageKind::BceMse {
                targets: targets.clone(),
            },
            vec![logits],
            loss,
        );
        Ok(loss)
    }

    /// d loss / d logits, elementwise from the logits and targets.
    pub(super) fn bce_mse_backward(
        &mut self,
        label: &str,
        logits: TensorId,
        targets: &Targets,
    ) -> Result<()> {
        let Some((dst, add_to)) = self.overwrite_target(logits) else {
            return Ok(());
        };
        let targets = targets.clone();
        let loss_scale = self.loss_scale.clone();
        self.call(
            true,
            format!("{label}: {:?} backward", targets.kind()),
            vec![logits],
            vec![dst],
            Box::new(move |ctx, t| {
                Ok(vec![bce_mse::plan_backward(
                    ctx,
                    t.get(logits)?,
                    &targets,
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
