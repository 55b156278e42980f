//! The losses of transformers' multi-label and regression sequence classifiers, forward and
//! backward: binary cross-entropy with logits (torch's `BCEWithLogitsLoss`) and the squared
//! error (torch's `MSELoss`), each the mean over every element of logits `[rows, labels]`
//! against float targets of the same shape.
//!
//! Targets arrive as [`Targets`], checked on upload: finite, and for binary cross-entropy
//! in `[0, 1]`. The loss stays on the GPU in the block cross-entropy writes (`[4]`: the mean,
//! the rows, the rows whose every label the logits get right, 0; see [`LossState`]) until
//! somebody reads it.

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
    name: "bce_mse",
    source: concat!(
        include_str!("../../shaders/bce_mse.wgsl"),
        include_str!("../../shaders/lib/rows.wgsl")
    ),
};

/// The family: its shader, the variants it is compiled in, its parameter blocks.
pub static FAMILY: KernelFamily = KernelFamily {
    shader: &SHADER,
    variants: rows::variants,
    params: param_blocks,
};

/// Which loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `BCEWithLogitsLoss`: `max(x, 0) − x·y + log(1 + exp(−|x|))` per element, targets in
    /// `[0, 1]` (transformers' `multi_label_classification`).
    BinaryCrossEntropy,
    /// `MSELoss`: `(x − y)²` per element (transformers' `regression`).
    MeanSquaredError,
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::BinaryCrossEntropy => 0,
            Kind::MeanSquaredError => 1,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    labels: u32,
    kind: u32,
    grad_scale: f32,
}

/// Float targets on the GPU, `[rows, labels]` row-major, with the loss they are for.
#[derive(Clone, Debug)]
pub struct Targets {
    targets: Tensor,
    rows: usize,
    labels: usize,
    kind: Kind,
}

impl Targets {
    /// Uploads and checks `rows · labels` targets (finite; in `[0, 1]` for binary
    /// cross-entropy).
    pub fn new(
        ctx: &Context,
        targets: &[f32],
        rows: usize,
        labels: usize,
        kind: Kind,
    ) -> Result<Targets> {
        if rows == 0 || labels == 0 {
            return Err(Error::invalid(format!(
                "bce_mse: targets of shape [{rows}, {labels}]: a loss needs at least one \
                 element"
            )));
        }
        Self::check(targets, rows, labels, kind)?;
        Ok(Targets {
            targets: Tensor::from_slice(ctx, targets, &[rows, labels])?,
            rows,
            labels,
            kind,
        })
    }

    fn check(targets: &[f32], rows: usize, labels: usize, kind: Kind) -> Result<()> {
        if targets.len() != rows * labels {
            return Err(Error::DataLength {
                what: "targets",
                len: targets.len(),
                shape: vec![rows, labels],
                expected: rows * labels,
            });
        }
        let bad = |y: f32| match kind {
            Kind::BinaryCrossEntropy => !(0.0..=1.0).contains(&y),
            Kind::MeanSquaredError => !y.is_finite(),
        };
        match targets.iter().position(|&y| bad(y)) {
            Some(i) => Err(Error::invalid(match kind {
                Kind::BinaryCrossEntropy => format!(
                    "float label {i} is {}: binary cross-entropy takes probabilities in \
                     [0, 1] (1: the label applies)",
                    targets[i]
                ),
                Kind::MeanSquaredError => {
                    format!(
                        "float label {i} is {}: regression targets must be finite",
                        targets[i]
                    )
                }
            })),
            None => Ok(()),
        }
    }

    /// Replaces the targets (same count) in place, keeping dispatches built on them valid.
    pub fn write(&self, ctx: &Context, targets: &[f32]) -> Result<()> {
        Self::check(targets, self.rows, self.labels, self.kind)?;
        self.targets.write(ctx, targets)
    }

    /// The targets on the GPU.
    pub fn tensor(&self) -> &Tensor {
        &self.targets
    }

    /// The loss they are for.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `(rows, labels)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.labels)
    }

    /// Number of targets (`rows · labels`).
    pub fn len(&self) -> usize {
        self.rows * self.labels
    }

    /// Whether there are none (never: [`Targets::new`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Buffers the forward pass fills.
#[derive(Clone, Debug)]
pub struct LossState {
    /// `[rows, 2]`: each row's summed loss and whether it is right (binary cross-entropy:
    /// every label's `sigmoid(x) > 0.5` agrees with `y > 0.5`; always 0 for the squared
    /// error).
    pub row_stats: Tensor,
    /// `[4]`: the mean loss over every element, the number of rows, how many rows are right
    /// (as in `row_stats`), and 0.
    pub loss: Tensor,
}

impl LossState {
    /// Zeroed buffers for `rows` rows.
    pub fn new(ctx: &Context, rows: usize) -> Result<LossState> {
        Ok(LossState {
            row_stats: Tensor::zeros(ctx, &[rows, 2], DType::F32)?,
            loss: Tensor::zeros(ctx, &[4], DType::F32)?,
        })
    }
}

/// Checks `logits` against `targets`: float, `[..., labels]` with the same elements.
fn check_logits(op: &'static str, logits: &Tensor, targets: &Targets) -> Result<()> {
    logits.expect_float(op, "logits")?;
    let labels = logits.row_len(op, "logits")?;
    if labels != targets.labels || logits.numel() != targets.len() {
        return Err(Error::shape(
            op,
            "logits",
            format!("[{} rows..., {} labels]", targets.rows, targets.labels),
            logits.shape(),
        ));
    }
    Ok(())
}

fn params(targets: &Targets, grad_scale: f32) -> Params {
    Params {
        rows: targets.rows as u32,
        labels: targets.labels as u32,
        kind: targets.kind.code(),
        grad_scale,
    }
}

/// Loss of `logits` (`[..., labels]`) against `targets` into `state.loss`.
pub fn plan_forward(
    ctx: &Context,
    logits: &Tensor,
    targets: &Targets,
    state: &LossState,
) -> Result<Vec<Dispatch>> {
    let op = "bce_mse";
    check_logits(op, logits, targets)?;
    state
        .row_stats
        .expect_shape(op, "row_stats", &[targets.rows, 2])?;
    state.loss.expect_shape(op, "loss", &[4])?;
    let p = params(targets, 1.0);
    Ok(vec![
        DispatchBuilder::family(ctx, &FAMILY, "rows")
            .element_type("T", logits.dtype())
            .variant(rows::variant(ctx, targets.labels))
            .params(&p)
            .read("logits", logits)
            .read("targets", &targets.targets)
            .write("row_stats", &state.row_stats)
            .build(ctx.grid_1d(targets.rows as u64)?)?,
        DispatchBuilder::family(ctx, &FAMILY, "finish")
            .constant("WG", 256.0) // threads over the rows, not a row's labels
            .params(&p)
            .write("row_stats", &state.row_stats)
            .write("loss", &state.loss)
            // one workgroup sums the rows' statistics
            .serial_steps(targets.rows.div_ceil(256) as u64)
            .build([1, 1, 1])?,
    ])
}

/// `dlogits = grad_scale · loss_scale[0] · d loss / d logits`: grad_scale is
/// d(objective)/d(loss), usually 1; `loss_scale` is mixed precision's dynamic loss scale,
/// read on the GPU when the step runs (its first element; `None`: 1). Elementwise: it reads
/// nothing the forward pass wrote.
pub fn plan_backward(
    ctx: &Context,
    logits: &Tensor,
    targets: &Targets,
    grad_scale: f32,
    loss_scale: Option<&Tensor>,
    dlogits: &Tensor,
) -> Result<Dispatch> {
    let op = "bce_mse backward";
    check_logits(op, logits, targets)?;
    dlogits.expect_shape(op, "dlogits", logits.shape())?;
    dlogits.expect_dtype(op, "dlogits", logits.dtype())?;
    if targets.len() > u32::MAX as usize {
        return Err(Error::invalid(format!(
            "{op}: {} elements; at most {} are supported",
            targets.len(),
            u32::MAX
        )));
    }
    let loss_scale = &super::factors_or(ctx, loss_scale, &[1.0], op, "loss_scale")?;
    DispatchBuilder::family(ctx, &FAMILY, "backward")
        .element_type("T", logits.dtype())
        .constant("WG", 256.0)
        .params(&params(targets, grad_scale))
        .read("logits", logits)
        .read("targets", &targets.targets)
        .read("loss_scale", loss_scale)
        .write("dlogits", dlogits)
        .build(ctx.grid_1d(targets.len().div_ceil(256) as u64)?)
}

/// Forward pass in new buffers; read the loss with `state.loss.to_vec::<f32>(ctx)?[0]`.
pub fn forward(ctx: &Context, logits: &Tensor, targets: &Targets) -> Result<LossState> {
    let state = LossState::new(ctx, targets.rows)?;
    ctx.submit(&plan_forward(ctx, logits, targets, &state)?)?;
    Ok(state)
}

/// `d loss / d logits` in a new tensor.
pub fn backward(ctx: &Context, logits: &Tensor, targets: &Targets) -> Result<Tensor> {
    let d = Tensor::zeros(ctx, logits.shape(), logits.dtype())?;
    ctx.submit(&[plan_backward(ctx, logits, targets, 1.0, None, &d)?])?;
    Ok(d)
}

/// CPU reference, in f64.
pub mod reference {
    use super::Kind;

    /// `(mean loss over every element, d loss / d logits)` of logits `x` against targets
    /// `y`, both `[rows, labels]`.
    pub fn forward_backward(x: &[f64], y: &[f64], kind: Kind) -> (f64, Vec<f64>) {
        let n = x.len() as f64;
        let mut loss = 0.0;
        let mut dx = Vec::with_capacity(x.len());
        for (&x, &y) in x.iter().zip(y) {
            match kind {
                Kind::BinaryCrossEntropy => {
                    loss += x.max(0.0) - x * y + (-x.abs()).exp().ln_1p();
                    dx.push((1.0 / (1.0 + (-x).exp()) - y) / n);
                }
                Kind::MeanSquaredError => {
                    loss += (x - y) * (x - y);
                    dx.push(2.0 * (x - y) / n);
                }
            }
        }
        (loss / n, dx)
    }

    /// Rows every label of which is right: `x > 0` (sigmoid above one half) exactly where
    /// `y > 0.5` (binary cross-entropy); none for the squared error.
    pub fn correct_rows(x: &[f64], y: &[f64], labels: usize, kind: Kind) -> usize {
        if kind == Kind::MeanSquaredError {
            return 0;
        }
        x.chunks(labels)
            .zip(y.chunks(labels))
            .filter(|(x, y)| x.iter().zip(*y).all(|(&x, &y)| (x > 0.0) == (y > 0.5)))
            .count()
    }
}

/// The host's mirrors of the shader's parameter blocks, field by field.
fn param_blocks() -> Vec<ParamBlock> {
    vec![ParamBlock {
        wgsl_struct: "Params",
        host: crate::host_layout!(Params {
            rows,
            labels,
            kind,
            grad_scale
        }),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use rand::Rng;

    const KINDS: [Kind; 2] = [Kind::BinaryCrossEntropy, Kind::MeanSquaredError];

    /// Targets for `kind`: 0/1 labels with a few soft ones (BCE), or values near the
    /// logits' scale (MSE).
    fn targets_for(rng: &mut impl Rng, n: usize, kind: Kind) -> Vec<f32> {
        match kind {
            Kind::BinaryCrossEntropy => (0..n)
                .map(|i| {
                    if i % 5 == 3 {
                        rng.random::<f32>()
                    } else {
                        rng.random_range(0..2) as f32
                    }
                })
                .collect(),
            Kind::MeanSquaredError => randn(rng, n).iter().map(|v| v * 2.0).collect(),
        }
    }

    /// Logits of every magnitude (BCE's large |x| is where a naive log(1 + exp(x)) fails),
    /// with every other row made to agree with its labels so that some rows count as right.
    fn logits_for(rng: &mut impl Rng, y: &[f32], labels: usize, kind: Kind) -> Vec<f32> {
        let mut x: Vec<f32> = randn(rng, y.len()).iter().map(|v| v * 4.0).collect();
        if kind == Kind::BinaryCrossEntropy {
            for (i, v) in x.iter_mut().enumerate() {
                if i % 11 == 5 {
                    *v *= 12.0; // |x| up to ~100: exp(|x|) would overflow f32
                }
                if (i / labels) % 2 == 0 && (*v > 0.0) != (y[i] > 0.5) {
                    *v = -*v;
                }
                if *v == 0.0 {
                    *v = 0.25;
                }
            }
        }
        x
    }

    fn check(ctx: &Context, rows: usize, labels: usize, kind: Kind, dtype: DType, seed: u64) {
        let mut rng = rng(seed);
        let y = targets_for(&mut rng, rows * labels, kind);
        let mut x = logits_for(&mut rng, &y, labels, kind);
        let (tol_grad, scale) = match dtype {
            DType::F16 => {
                x = round_f16(&x);
                (1e-3, 1024.0)
            }
            _ => (1e-5, 1.0),
        };
        let targets = Targets::new(ctx, &y, rows, labels, kind).unwrap();
        let tx = upload_as(ctx, &x, &[rows, labels], dtype);
        let state = LossState {
            row_stats: poisoned(ctx, &[rows, 2]),
            loss: poisoned(ctx, &[4]),
        };
        ctx.run(&plan_forward(ctx, &tx, &targets, &state).unwrap())
            .unwrap();
        let dx = poisoned_as(ctx, &[rows, labels], dtype);
        // f16 runs as mixed precision does: a dynamic loss scale read from the GPU.
        let loss_scale = (dtype == DType::F16).then(|| upload(ctx, &[scale as f32], &[1]));
        ctx.run(&[plan_backward(ctx, &tx, &targets, 1.0, loss_scale.as_ref(), &dx).unwrap()])
            .unwrap();
        let (x64, y64) = (to_f64(&x), to_f64(&y));
        let (want_loss, want_dx) = reference::forward_backward(&x64, &y64, kind);
        let want_dx: Vec<f64> = want_dx.iter().map(|g| g * scale).collect();
        let what = format!("{kind:?} {rows}x{labels} {dtype:?}");
        let loss = download(ctx, &state.loss);
        // The loss is computed in f32 whatever the logits are: f32's accuracy.
        assert_close(&what, &loss[..1], &[want_loss], 1e-5);
        assert_eq!(loss[1], rows as f32, "{what} counted");
        let correct = reference::correct_rows(&x64, &y64, labels, kind);
        assert_eq!(loss[2], correct as f32, "{what} correct");
        if kind == Kind::BinaryCrossEntropy && rows > 1 {
            assert!(correct > 0, "{what}: the test wants rows that are right");
        }
        assert_eq!(loss[3], 0.0, "{what}");
        assert_close(
            &format!("{what} grad"),
            &download_f32(ctx, &dx),
            &want_dx,
            tol_grad,
        );
    }

    const SHAPES: [(usize, usize); 8] = [
        (1, 1),
        (1, 7),
        (7, 1),
        (7, 33),
        (33, 7),
        (33, 129),
        (129, 3),
        (300, 1),
    ];

    #[test]
    fn loss_and_gradient_match_reference() {
        let ctx = &ctx();
        for_each_row_layout(ctx, |_layout| {
            for kind in KINDS {
                for (i, &(rows, labels)) in SHAPES.iter().enumerate() {
                    check(ctx, rows, labels, kind, DType::F32, 40 + i as u64);
                }
            }
        });
    }

    #[test]
    fn f16_logits_give_an_f32_loss_and_f16_gradients() {
        let ctx = &ctx();
        if !has_f16(ctx, "bce_mse f16") {
            return;
        }
        for kind in KINDS {
            for (i, &(rows, labels)) in SHAPES.iter().enumerate() {
                check(ctx, rows, labels, kind, DType::F16, 60 + i as u64);
            }
        }
    }

    /// Confident, right predictions: the loss is tiny, made of log(1 + exp(-|x|)) terms far
    /// below f32's epsilon next to 1, which a plain log(1 + u) would round to 0.
    #[test]
    fn a_tiny_binary_cross_entropy_keeps_its_digits() {
        let ctx = &ctx();
        let (rows, labels) = (5, 9);
        let y: Vec<f32> = (0..rows * labels).map(|i| (i % 2) as f32).collect();
        let x: Vec<f32> = (0..rows * labels)
            .map(|i| {
                let m = 17.0 + (i % 7) as f32;
                if i % 2 == 1 {
                    m
                } else {
                    -m
                }
            })
            .collect();
        let targets = Targets::new(ctx, &y, rows, labels, Kind::BinaryCrossEntropy).unwrap();
        let state = forward(ctx, &upload(ctx, &x, &[rows, labels]), &targets).unwrap();
        let (want, _) =
            reference::forward_backward(&to_f64(&x), &to_f64(&y), Kind::BinaryCrossEntropy);
        assert!(want > 0.0 && want < 1e-7, "{want}");
        let loss = download(ctx, &state.loss);
        assert_close("tiny BCE", &loss[..1], &[want], 1e-5);
        assert_eq!(loss[2], rows as f32);
    }

    #[test]
    fn bad_targets_and_shapes_are_errors() {
        let ctx = &ctx();
        let bce = Kind::BinaryCrossEntropy;
        let e = Targets::new(ctx, &[0.0, 1.5], 1, 2, bce).unwrap_err();
        assert!(e.to_string().contains("float label 1 is 1.5"), "{e}");
        assert!(Targets::new(ctx, &[f32::NAN], 1, 1, bce).is_err());
        let mse = Kind::MeanSquaredError;
        assert!(Targets::new(ctx, &[1.5, -3.0], 2, 1, mse).is_ok());
        assert!(Targets::new(ctx, &[f32::INFINITY], 1, 1, mse).is_err());
        assert!(matches!(
            Targets::new(ctx, &[0.0; 3], 2, 2, mse).unwrap_err(),
            Error::DataLength {
                len: 3,
                expected: 4,
                ..
            }
        ));
        assert!(Targets::new(ctx, &[], 0, 2, mse).is_err());
        let t = Targets::new(ctx, &[0.0; 4], 2, 2, bce).unwrap();
        assert!(t.write(ctx, &[0.0, 0.0, 2.0, 0.0]).is_err());
        // Logits of another shape, a 0-d tensor, integer logits: shape and type errors.
        let state = LossState::new(ctx, 2).unwrap();
        for shape in [&[4, 1][..], &[1, 4], &[]] {
            let x = Tensor::zeros(ctx, shape, DType::F32).unwrap();
            assert!(
                matches!(plan_forward(ctx, &x, &t, &state), Err(Error::Shape { .. })),
                "{shape:?}"
            );
        }
        let x = upload(ctx, &[0.0; 4], &[2, 2]);
        // A gradient of another element type than the logits' (I32: every adapter has it;
        // F16 would need SHADER_F16, which SwiftShader lacks).
        let wrong = Tensor::zeros(ctx, &[2, 2], DType::I32).unwrap();
        assert!(plan_backward(ctx, &x, &t, 1.0, None, &wrong).is_err());
    }
}
