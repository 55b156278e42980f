//! Softmax cross-entropy with an ignore index (torch's `CrossEntropyLoss`, mean over the rows
//! that are not ignored), forward and backward.
//!
//! Labels arrive as [`Labels`], checked on upload: each is a class or the ignore index.
//! The loss stays on the GPU (`[mean, count]`) until somebody reads it.

use bytemuck::{Pod, Zeroable};

use crate::context::Context;
use crate::dispatch::{Dispatch, DispatchBuilder};
use crate::error::{Error, Result};
use crate::family::{KernelFamily, ParamBlock};
use crate::ops::rows;
use crate::shader::Shader;
use crate::tensor::{DType, Tensor};

/// The family's kernels.
pub static SHADER: Shader = Shader {
    name: "cross_entropy",
    source: concat!(
        include_str!("../../shaders/cross_entropy.wgsl"),
        include_str!("../../shaders/lib/rows.wgsl")
    ),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: rows::variants,
    params: param_blocks,
};

/// HuggingFace's (and torch's) default ignore index.
pub const IGNORE_INDEX: i32 = -100;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    ignore_index: i32,
    grad_scale: f32,
}

/// Class labels on the GPU, each in `0..classes` or equal to the ignore index.
#[derive(Clone, Debug)]
pub struct Labels {
    labels: Tensor,
    classes: usize,
    ignore_index: i32,
}

impl Labels {
    /// Uploads and checks labels (each a class below `classes`, or `ignore_index`).
    pub fn new(
        ctx: &Context,
        labels: &[i32],
        shape: &[usize],
        classes: usize,
        ignore_index: i32,
    ) -> Result<Labels> {
        Self::check(labels, classes, ignore_index)?;
        Ok(Labels {
            labels: Tensor::from_slice(ctx, labels, shape)?,
            classes,
            ignore_index,
        })
    }

    fn check(labels: &[i32], classes: usize, ignore_index: i32) -> Result<()> {
        let bad = labels
            .iter()
            .position(|&l| l != ignore_index && (l < 0 || l as usize >= classes));
        match bad {
            Some(position) => Err(Error::LabelOutOfRange {
                label: labels[position],
                position,
                classes,
                ignore_index,
            }),
            None => Ok(()),
        }
    }

    /// Replaces the labels (same count) in place, keeping dispatches built on them valid.
    pub fn write(&self, ctx: &Context, labels: &[i32]) -> Result<()> {
        Self::check(labels, self.classes, self.ignore_index)?;
        self.labels.write(ctx, labels)
    }

    /// The labels on the GPU.
    pub fn tensor(&self) -> &Tensor {
        &self.labels
    }

    /// Number of labels (rows).
    pub fn len(&self) -> usize {
        self.labels.numel()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Buffers the forward pass fills and the backward pass reads.
#[derive(Clone, Debug)]
pub struct LossState {
    /// `[rows, 3]`: log-sum-exp, loss and correctness (argmax == label) of each row.
    pub row_stats: Tensor,
    /// `[4]`: the mean loss, the number of rows that count, how many of them the argmax
    /// gets right, and 0.
    pub loss: Tensor,
}

impl LossState {
    /// Uploads and checks labels (each a class below `classes`, or `ignore_index`).
    pub fn new(ctx: &Context, rows: usize) -> Result<LossState> {
        Ok(LossState {
            row_stats: Tensor::zeros(ctx, &[rows, 3], DType::F32)?,
            loss: Tensor::zeros(ctx, &[4], DType::F32)?,
        })
    }
}

fn rows_classes(
    op: &'static str,
    logits: &Tensor,
    labels: &Labels,
    state: &LossState,
) -> Result<(usize, usize)> {
    logits.expect_float(op, "logits")?;
    let classes = logits.row_len(op, "logits")?;
    let rows = logits.numel() / classes;
    if classes != labels.classes || rows != labels.len() {
        return Err(Error::shape(
            op,
            "logits",
            format!("[{} labels..., {} classes]", labels.len(), labels.classes),
            logits.shape(),
        ));
    }
    state.row_stats.expect_shape(op, "row_stats", &[rows, 3])?;
    state.loss.expect_shape(op, "loss", &[4])?;
    // The kernel carries the argmax as an f32, exact below 2^24.
    if classes >= 1 << 24 {
        return Err(Error::invalid(format!(
            "{op}: {classes} classes; at most {} are supported",
            (1 << 24) - 1
        )));
    }
    Ok((rows, classes))
}

fn params(rows: usize, classes: usize, labels: &Labels, grad_scale: f32) -> Params {
    Params {
        rows: rows as u32,
        classes: classes as u32,
        ignore_index: labels.ignore_index,
        grad_scale,
    }
}

/// Loss of `logits` (`[..., classes]`) against `labels` into `state.loss[0]`.
pub fn plan_forward(
    ctx: &Context,
    logits: &Tensor,
    labels: &Labels,
    state: &LossState,
) -> Result<Vec<Dispatch>> {
    let (rows, classes) = rows_classes("cross_entropy", logits, labels, state)?;
    let p = params(rows, classes, labels, 1.0);
    let build = |entry: &'static str| {
        DispatchBuilder::family(ctx, &FAMILY, entry)
            .element_type("T", logits.dtype())
            .params(&p)
            .read("labels", &labels.labels)
            .write("row_stats", &state.row_stats)
    };
    Ok(vec![
        build("rows")
            .variant(rows::variant(ctx, classes))
            .read("logits", logits)
            .build(ctx.grid_1d(rows as u64)?)?,
        build("finish")
            .constant("WG", 256.0) // threads over the rows, not a row's classes
            .write("loss", &state.loss)
            // one workgroup sums the rows' statistics
            .serial_steps(rows.div_ceil(256) as u64)
            .build([1, 1, 1])?,
    ])
}

/// `dlogits = grad_scale · loss_scale[0] · d loss / d logits`: grad_scale is
/// d(objective)/d(loss), usually 1; `loss_scale` is mixed precision's dynamic loss scale,
/// read on the GPU when the step runs (its first element; `None`: 1).
pub fn plan_backward(
    ctx: &Context,
    logits: &Tensor,
    labels: &Labels,
    state: &LossState,
    grad_scale: f32,
    loss_scale: Option<&Tensor>,
    dlogits: &Tensor,
) -> Result<Dispatch> {
    let (rows, classes) = rows_classes("cross_entropy backward", logits, labels, state)?;
    dlogits.expect_shape("cross_entropy backward", "dlogits", logits.shape())?;
    dlogits.expect_dtype("cross_entropy backward", "dlogits", logits.dtype())?;
    let op = "cross_entropy backward";
    let loss_scale = &super::factors_or(ctx, loss_scale, &[1.0], op, "loss_scale")?;
    DispatchBuilder::family(ctx, &FAMILY, "backward")
        .element_type("T", logits.dtype())
        .variant(rows::variant(ctx, classes))
        .params(&params(rows, classes, labels, grad_scale))
        .read("logits", logits)
        .read("labels", &labels.labels)
        .write("row_stats", &state.row_stats)
        .write("loss", &state.loss)
        .read("loss_scale", loss_scale)
        .write("dlogits", dlogits)
        .build(ctx.grid_1d(rows as u64)?)
}

/// Forward pass in new buffers; read the loss with `state.loss.to_vec::<f32>(ctx)?[0]`.
pub fn forward(ctx: &Context, logits: &Tensor, labels: &Labels) -> Result<LossState> {
    let state = LossState::new(ctx, labels.len())?;
    ctx.submit(&plan_forward(ctx, logits, labels, &state)?)?;
    Ok(state)
}

/// `d loss / d logits` in a new tensor, from the forward's state.
pub fn backward(
    ctx: &Context,
    logits: &Tensor,
    labels: &Labels,
    state: &LossState,
) -> Result<Tensor> {
    let d = Tensor::zeros(ctx, logits.shape(), logits.dtype())?;
    ctx.submit(&[plan_backward(ctx, logits, labels, state, 1.0, None, &d)?])?;
    Ok(d)
}

/// CPU reference, in f64.
pub mod reference {
    /// `(mean loss, d loss / d logits)`.
    pub fn forward_backward(
        x: &[f64],
        classes: usize,
        labels: &[i32],
        ignore: i32,
    ) -> (f64, Vec<f64>) {
        let count = labels.iter().filter(|&&l| l != ignore).count() as f64;
        let mut loss = 0.0;
        let mut dx = vec![0.0; x.len()];
        for ((row, &l), d) in x.chunks(classes).zip(labels).zip(dx.chunks_mut(classes)) {
            if l == ignore {
                continue;
            }
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            loss += lse - row[l as usize];
            for c in 0..classes {
                d[c] = ((row[c] - lse).exp() - if c == l as usize { 1.0 } else { 0.0 }) / count;
            }
        }
        (loss / count, dx)
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            rows,
            classes,
            ignore_index,
            grad_scale
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use rand::Rng;

    #[test]
    fn loss_and_gradient_match_reference_with_ignored_rows() {
        let ctx = &ctx();
        let mut rng = rng(13);
        for_each_row_layout(ctx, |layout| {
            for &(rows, classes) in &[
                (1, 1),
                (1, 7),
                (7, 33),
                (33, 2),
                (300, 129),
                (5, 1000),
                (3, 1500),
            ] {
                let x: Vec<f32> = randn(&mut rng, rows * classes)
                    .iter()
                    .map(|v| v * 4.0)
                    .collect();
                let labels: Vec<i32> = (0..rows)
                    .map(|r| {
                        if r % 3 == 1 {
                            IGNORE_INDEX
                        } else {
                            rng.random_range(0..classes as i32)
                        }
                    })
                    .collect();
                // Make every other row's label the argmax (just), so the correct count is not ~0
                // and the loss stays well away from 0 (where f32 cancels).
                let mut x = x;
                for (r, &l) in labels
                    .iter()
                    .enumerate()
                    .filter(|(r, &l)| r % 2 == 0 && l >= 0)
                {
                    let row = &mut x[r * classes..(r + 1) * classes];
                    row[l as usize] = row.iter().cloned().fold(f32::MIN, f32::max) + 0.5;
                }
                let tl = Labels::new(ctx, &labels, &[rows], classes, IGNORE_INDEX).unwrap();
                let tx = upload(ctx, &x, &[rows, classes]);
                let state = LossState::new(ctx, rows).unwrap();
                crate::ops::elementwise::fill(ctx, &state.loss, f32::NAN).unwrap();
                ctx.run(&plan_forward(ctx, &tx, &tl, &state).unwrap())
                    .unwrap();
                let dx = poisoned(ctx, &[rows, classes]);
                ctx.run(&[plan_backward(ctx, &tx, &tl, &state, 1.0, None, &dx).unwrap()])
                    .unwrap();
                let (want_loss, want_dx) =
                    reference::forward_backward(&to_f64(&x), classes, &labels, IGNORE_INDEX);
                let loss = download(ctx, &state.loss);
                let what = format!("cross entropy {rows}x{classes}, {layout}");
                assert_close(&what, &loss[..1], &[want_loss], 1e-5);
                assert_eq!(
                    loss[1],
                    labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as f32
                );
                assert_close(&format!("{what} grad"), &download(ctx, &dx), &want_dx, 1e-5);
                assert_eq!(
                    loss[2],
                    correct_count(&x, classes, &labels),
                    "{what} correct"
                );
            }
        });
    }

    #[test]
    fn f16_logits_give_an_f32_loss_and_f16_gradients() {
        let ctx = &ctx();
        if !has_f16(ctx, "cross entropy f16") {
            return;
        }
        let mut rng = rng(15);
        for &(rows, classes) in &[(1, 1), (7, 33), (300, 129), (3, 1500)] {
            let x = round_f16(
                &randn(&mut rng, rows * classes)
                    .iter()
                    .map(|v| v * 4.0)
                    .collect::<Vec<_>>(),
            );
            let labels: Vec<i32> = (0..rows)
                .map(|r| {
                    if r % 3 == 1 {
                        IGNORE_INDEX
                    } else {
                        rng.random_range(0..classes as i32)
                    }
                })
                .collect();
            let tl = Labels::new(ctx, &labels, &[rows], classes, IGNORE_INDEX).unwrap();
            let tx = upload_as(ctx, &x, &[rows, classes], DType::F16);
            let state = LossState::new(ctx, rows).unwrap();
            crate::ops::elementwise::fill(ctx, &state.loss, f32::NAN).unwrap();
            ctx.run(&plan_forward(ctx, &tx, &tl, &state).unwrap())
                .unwrap();
            let dx = poisoned_as(ctx, &[rows, classes], DType::F16);
            // A dynamic loss scale of 1024, read from the GPU, as mixed precision applies it.
            let scale = upload(ctx, &[1024.0], &[1]);
            ctx.run(&[plan_backward(ctx, &tx, &tl, &state, 1.0, Some(&scale), &dx).unwrap()])
                .unwrap();
            let (want_loss, want_dx) =
                reference::forward_backward(&to_f64(&x), classes, &labels, IGNORE_INDEX);
            let what = format!("f16 cross entropy {rows}x{classes}");
            // The loss is computed in f32 from the f16 logits: f32's accuracy.
            assert_close(&what, &download(ctx, &state.loss)[..1], &[want_loss], 1e-5);
            let want_dx: Vec<f64> = want_dx.iter().map(|g| g * 1024.0).collect();
            assert_close(
                &format!("{what} grad"),
                &download_f32(ctx, &dx),
                &want_dx,
                1e-3,
            );
        }
    }

    /// Rows whose label is the first maximum, as torch.argmax picks it.
    fn correct_count(x: &[f32], classes: usize, labels: &[i32]) -> f32 {
        let first_argmax = |row: &[f32]| {
            (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })
        };
        labels
            .iter()
            .enumerate()
            .filter(|&(r, &l)| {
                l != IGNORE_INDEX && first_argmax(&x[r * classes..(r + 1) * classes]) == l as usize
            })
            .count() as f32
    }

    /// Ties everywhere (logits from {0, 1, 2}): the accuracy counts only labels that are the
    /// first maximum, wherever in the row (and in which thread's share) the ties fall.
    #[test]
    fn ties_count_the_first_maximum_only() {
        let ctx = &ctx();
        let mut rng = rng(14);
        let (rows, classes) = (64, 600);
        let x: Vec<f32> = (0..rows * classes)
            .map(|_| rng.random_range(0..3) as f32)
            .collect();
        // Labels: the first maximum, a later tied maximum, or anything.
        let labels: Vec<i32> = (0..rows)
            .map(|r| {
                let row = &x[r * classes..(r + 1) * classes];
                let maxima: Vec<usize> = (0..classes).filter(|&c| row[c] == 2.0).collect();
                match r % 3 {
                    0 => maxima[0] as i32,
                    1 => maxima[rng.random_range(1..maxima.len())] as i32,
                    _ => rng.random_range(0..classes as i32),
                }
            })
            .collect();
        let tl = Labels::new(ctx, &labels, &[rows], classes, IGNORE_INDEX).unwrap();
        let state = forward(ctx, &upload(ctx, &x, &[rows, classes]), &tl).unwrap();
        let want = correct_count(&x, classes, &labels);
        assert!(
            want >= (rows / 3) as f32,
            "the test needs correct rows: {want}"
        );
        assert_eq!(download(ctx, &state.loss)[2], want);
    }

    #[test]
    fn all_ignored_gives_nan_loss_and_zero_gradient() {
        let ctx = &ctx();
        let tl = Labels::new(ctx, &[IGNORE_INDEX; 2], &[2], 3, IGNORE_INDEX).unwrap();
        let x = upload(ctx, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let state = forward(ctx, &x, &tl).unwrap();
        assert!(download(ctx, &state.loss)[0].is_nan());
        assert!(download(ctx, &backward(ctx, &x, &tl, &state).unwrap())
            .iter()
            .all(|&g| g == 0.0));
    }

    #[test]
    fn bad_labels_are_errors() {
        let ctx = &ctx();
        let err = Labels::new(ctx, &[0, 3], &[2], 3, IGNORE_INDEX).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LabelOutOfRange {
                    label: 3,
                    position: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(Labels::new(ctx, &[-1], &[1], 3, IGNORE_INDEX).is_err());
    }
}
