//! A training step as a graph of pipeline stages.
//!
//! **Building.** A model adds forward stages in data-flow order ([`Graph::embedding`],
//! [`Graph::linear`], [`Graph::layer_norm`], ...). Each stage records its kind, its input
//! tensors and its output, and emits *calls*: kernel launches on graph tensors, with the
//! tensors they read and write. [`Graph::backward`] walks the stages in reverse and lets
//! each kind emit the calls of its backward pass. A tensor used by several stages gets the
//! sum of their gradients: the first contribution writes the gradient, later ones add to
//! it (the tied word embeddings of the MLM head are summed this way). A kernel of your own
//! joins a graph as a stage too ([`Graph::custom`]).
//!
//! **Planning.** [`Graph::plan`] takes the call list (forward only, or forward + backward),
//! and the planner gives tensors whose lifetimes do not overlap the same buffer (best fit,
//! growing an idle buffer when none fits). Parameters and their gradients are views of a
//! [`ParamStore`]. Then every call builds its dispatches, bind groups included, once. Running
//! a step is encoding the dispatches into one compute pass: no allocation, no bind group
//! creation, no read-back.
//!
//! Where things are: each kind of stage has one file holding its forward builder and its
//! backward rule (`embedding.rs`, `linear.rs`, `layer_norm.rs`, `elementwise.rs` for GELU,
//! add and first token, `attention.rs` for the attention forms, `loss.rs`,
//! `custom.rs`); `planner.rs` is the buffer assignment (a pure function of the call list);
//! `plan.rs` is the executable [`Plan`].

mod attention;
mod custom;
mod elementwise;
mod embedding;
mod layer_norm;
mod linear;
mod loss;
mod plan;
mod planner;

use std::collections::HashMap;

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::ops::bce_mse::Targets;
use crate::ops::cross_entropy::Labels;
use crate::ops::elementwise as ew;
use crate::ops::embedding::TokenIds;
use crate::params::ParamStore;
use crate::tensor::{DType, Tensor};

pub use attention::AttentionSpec;
pub use custom::{CustomBackward, CustomForward, CustomGrads};
pub use plan::{MemoryReport, Plan, PlanOptions, PlannedCall};
pub use planner::Assignment;

/// A tensor of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(usize);

#[derive(Clone, Debug)]
enum Storage {
    /// Parameter i of the store.
    Param(usize),
    /// The gradient of parameter i.
    Grad(usize),
    /// Allocated by the planner from its pool.
    Pooled,
}

#[derive(Clone, Debug)]
struct TensorInfo {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
    requires_grad: bool,
}

/// Graph tensors resolved to GPU tensors, for building dispatches.
pub struct Resolved(Vec<Option<Tensor>>);

impl Resolved {
    /// The GPU tensor of a graph tensor.
    pub fn get(&self, id: TensorId) -> Result<&Tensor> {
        self.0[id.0]
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("graph tensor {} was not planned", id.0)))
    }
}

/// Builds a call's dispatches once its tensors have buffers.
type Build = Box<dyn Fn(&Context, &Resolved) -> Result<Vec<Dispatch>>>;

/// Kernel launches over graph tensors, with what they read and write.
struct Call {
    label: String,
    reads: Vec<TensorId>,
    writes: Vec<TensorId>,
    build: Build,
}

/// What a stage is, with what its backward rule needs (saved tensors, settings). Each
/// kind's forward builder and backward rule live in one file (see the module docs).
#[derive(Clone)]
enum StageKind {
    Embedding {
        ids: TokenIds,
    },
    Linear,
    LayerNorm {
        stats: TensorId,
    },
    Gelu,
    Add,
    FirstToken,
    Attention {
        spec: AttentionSpec,
        q_rot: Option<TensorId>,
        k_rot: Option<TensorId>,
        v_rot: Option<TensorId>,
        probs: TensorId,
    },
    /// Fused softmax attention over every key (`window` None) or a local window.
    FusedAttention {
        spec: AttentionSpec,
        window: Option<crate::ops::attention::local::LocalWindow>,
        rot: [Option<TensorId>; 3],
        stats: TensorId,
    },
    LinearAttention {
        spec: AttentionSpec,
        saved: TensorId,
    },
    ChunkedLinearAttention {
        spec: AttentionSpec,
        /// Features, chunk states, per-token denominators.
        saved: [TensorId; 3],
    },
    PerformerAttention {
        spec: AttentionSpec,
        /// The layer's random projection `[m, head_dim]` (not a graph tensor: never trained).
        projection: Tensor,
        saved: attention::PerformerTensors,
    },
    CrossEntropy {
        labels: Labels,
        row_stats: TensorId,
    },
    BceMse {
        targets: Targets,
    },
    Custom {
        backward: Option<std::rc::Rc<CustomBackward>>,
    },
}

#[derive(Clone)]
struct Stage {
    kind: StageKind,
    inputs: Vec<TensorId>,
    output: TensorId,
}

/// A graph under construction. See the module documentation.
#[derive(Default)]
pub struct Graph {
    tensors: Vec<TensorInfo>,
    stages: Vec<Stage>,
    forward: Vec<Call>,
    backward: Vec<Call>,
    grads: HashMap<TensorId, TensorId>,
    /// One graph tensor per parameter, however often it is used (tied weights).
    params: HashMap<usize, TensorId>,
    keep: Vec<TensorId>,
    input_bytes: u64,
    /// The element type of activations and their gradients (`None`: f32).
    activations: Option<DType>,
    /// Mixed precision's dynamic loss scale (`[1..]` f32, read on the GPU): the backward
    /// pass starts from `loss_scale[0] · d loss`.
    loss_scale: Option<Tensor>,
}

/// `Err(Shape)` unless `found` is `expected`.
fn layout_check(
    op: &'static str,
    what: &'static str,
    found: &[usize],
    expected: &[usize],
) -> Result<()> {
    if found != expected {
        return Err(Error::shape(op, what, format!("{expected:?}"), found));
    }
    Ok(())
}

impl Graph {
    /// An empty graph (activations in f32).
    pub fn new() -> Graph {
        Graph::default()
    }

    /// An empty graph whose activations (and their gradients) are `dtype`: f16 halves their
    /// memory and bytes moved. Kernels still accumulate in f32, and statistics (LayerNorm's,
    /// the loss's, fused attention's) stay f32.
    pub fn with_activations(dtype: DType) -> Graph {
        Graph {
            activations: Some(dtype),
            ..Graph::default()
        }
    }

    /// Scales the loss's gradient by `scale[0]` (f32, read when the step runs), as mixed
    /// precision's dynamic loss scaling does so that small f16 gradients do not flush to
    /// zero; the optimizer divides it out again. Call before [`Graph::backward`].
    pub fn scale_loss(&mut self, scale: &Tensor) -> Result<()> {
        scale.expect_dtype("graph", "loss scale", DType::F32)?;
        if !self.backward.is_empty() {
            return Err(Error::invalid("scale_loss() must come before backward()"));
        }
        self.loss_scale = Some(scale.clone());
        Ok(())
    }

    /// The element type of the graph's activations.
    pub fn activation_dtype(&self) -> DType {
        self.activations.unwrap_or(DType::F32)
    }

    fn add_tensor(
        &mut self,
        name: String,
        shape: Vec<usize>,
        dtype: DType,
        storage: Storage,
        requires_grad: bool,
    ) -> TensorId {
        self.tensors.push(TensorInfo {
            name,
            shape,
            dtype,
            storage,
            requires_grad,
        });
        TensorId(self.tensors.len() - 1)
    }

    /// A pooled activation (of the graph's activation type).
    fn pooled(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        requires_grad: bool,
    ) -> TensorId {
        let dtype = self.activation_dtype();
        self.add_tensor(
            name.into(),
            shape.to_vec(),
            dtype,
            Storage::Pooled,
            requires_grad,
        )
    }

    /// A pooled f32 tensor whatever the activations are: statistics a backward pass
    /// reads, losses.
    fn pooled_f32(&mut self, name: impl Into<String>, shape: &[usize]) -> TensorId {
        self.add_tensor(
            name.into(),
            shape.to_vec(),
            DType::F32,
            Storage::Pooled,
            false,
        )
    }

    /// The parameter `name` of `store`, as a graph tensor: the same tensor every time, so
    /// the gradients of a parameter used twice (tied weights) are summed.
    pub fn param(&mut self, store: &ParamStore, name: &str) -> Result<TensorId> {
        let i = store
            .index(name)
            .ok_or_else(|| Error::invalid(format!("the model has no parameter {name:?}")))?;
        if let Some(&id) = self.params.get(&i) {
            return Ok(id);
        }
        let shape = store.specs()[i].shape.clone();
        let id = self.add_tensor(
            name.to_string(),
            shape,
            store.compute_dtype(),
            Storage::Param(i),
            true,
        );
        self.params.insert(i, id);
        Ok(id)
    }

    /// The shape of a graph tensor.
    pub fn shape(&self, id: TensorId) -> &[usize] {
        &self.tensors[id.0].shape
    }

    /// The name of a graph tensor.
    pub fn name(&self, id: TensorId) -> &str {
        &self.tensors[id.0].name
    }

    /// Keeps `id` alive (unshared) until the end of the step, so it can be read afterwards.
    pub fn keep(&mut self, id: TensorId) {
        self.keep.push(id);
    }

    fn requires_grad(&self, ids: &[TensorId]) -> bool {
        ids.iter().any(|i| self.tensors[i.0].requires_grad)
    }

    /// A new pooled output, needing a gradient when any input does.
    fn output(&mut self, name: &str, shape: &[usize], inputs: &[TensorId]) -> TensorId {
        let rg = self.requires_grad(inputs);
        self.pooled(name, shape, rg)
    }

    fn stage(&mut self, kind: StageKind, inputs: Vec<TensorId>, output: TensorId) {
        self.stages.push(Stage {
            kind,
            inputs,
            output,
        });
    }

    fn call(
        &mut self,
        backward: bool,
        label: String,
        reads: Vec<TensorId>,
        writes: Vec<TensorId>,
        build: Build,
    ) {
        let call = Call {
            label,
            reads,
            writes,
            build,
        };
        if backward {
            self.backward.push(call);
        } else {
            self.forward.push(call);
        }
    }

    // ---- backward ----

    /// Emits the backward pass of everything `loss` (the output of a loss stage:
    /// [`Graph::cross_entropy`] or [`Graph::bce_mse`]) depends on.
    /// Parameter gradients land in the store's gradient buffer.
    pub fn backward(&mut self, loss: TensorId) -> Result<()> {
        if !self.backward.is_empty() {
            return Err(Error::invalid(
                "backward() was already called on this graph",
            ));
        }
        let last = self
            .stages
            .iter()
            .rposition(|s| {
                s.output == loss
                    && matches!(
                        s.kind,
                        StageKind::CrossEntropy { .. } | StageKind::BceMse { .. }
                    )
            })
            .ok_or_else(|| {
                Error::invalid(
                    "backward() needs the output of a loss stage (cross_entropy, bce_mse)",
                )
            })?;
        for s in (0..=last).rev() {
            let stage = self.stages[s].clone();
            self.backward_stage(&stage)?;
        }
        Ok(())
    }

    /// One stage's backward rule: from the gradient of its output to its inputs'.
    fn backward_stage(&mut self, stage: &Stage) -> Result<()> {
        let y = stage.output;
        let label = self.tensors[y.0].name.clone();
        let inputs = &stage.inputs;
        // The loss starts the backward pass: its gradient is 1, implicitly.
        match &stage.kind {
            StageKind::CrossEntropy { labels, row_stats } => {
                return self.cross_entropy_backward(&label, inputs[0], y, labels, *row_stats);
            }
            StageKind::BceMse { targets } => {
                return self.bce_mse_backward(&label, inputs[0], targets);
            }
            _ => {}
        }
        let Some(&dy) = self.grads.get(&y) else {
            return Ok(()); // y does not reach the loss
        };
        match &stage.kind {
            StageKind::CrossEntropy { .. } | StageKind::BceMse { .. } => {
                unreachable!("handled above")
            }
            StageKind::Embedding { ids } => self.embedding_backward(&label, inputs, dy, ids),
            StageKind::Linear => self.linear_backward(&label, inputs, dy),
            StageKind::LayerNorm { stats } => self.layer_norm_backward(&label, inputs, dy, *stats),
            StageKind::Gelu => self.gelu_backward(&label, inputs, dy),
            StageKind::Add => self.add_backward(&label, inputs, dy),
            StageKind::FirstToken => self.first_token_backward(&label, inputs, dy),
            StageKind::Attention {
                spec,
                q_rot,
                k_rot,
                v_rot,
                probs,
            } => {
                self.attention_backward(&label, inputs, dy, spec, [*q_rot, *k_rot, *v_rot], *probs)
            }
            StageKind::FusedAttention {
                spec,
                window,
                rot,
                stats,
            } => self.fused_attention_backward(&label, inputs, y, dy, spec, *window, *rot, *stats),
            StageKind::LinearAttention { spec, saved } => {
                self.linear_attention_backward(&label, inputs, y, dy, spec, *saved)
            }
            StageKind::ChunkedLinearAttention { spec, saved } => {
                self.chunked_attention_backward(&label, inputs, y, dy, spec, *saved)
            }
            StageKind::PerformerAttention {
                spec,
                projection,
                saved,
            } => self.performer_attention_backward(&label, inputs, y, dy, spec, projection, saved),
            StageKind::Custom { backward } => {
                self.custom_backward(&label, inputs, y, dy, backward.clone())
            }
        }
    }

    /// The gradient tensor of `x` for a new contribution, and whether to add to it
    /// (`None` when x needs no gradient).
    fn grad_target(&mut self, x: TensorId) -> Option<(TensorId, bool)> {
        if !self.tensors[x.0].requires_grad {
            return None;
        }
        if let Some(&g) = self.grads.get(&x) {
            return Some((g, true));
        }
        let info = self.tensors[x.0].clone();
        let g = match info.storage {
            // A training store's gradients are f32.
            Storage::Param(i) => self.add_tensor(
                format!("grad.{}", info.name),
                info.shape,
                DType::F32,
                Storage::Grad(i),
                false,
            ),
            _ => self.pooled(format!("grad.{}", info.name), &info.shape, false),
        };
        self.grads.insert(x, g);
        Some((g, false))
    }

    /// For kernels that can only overwrite: the tensor to write x's gradient contribution
    /// to, and the gradient to add it to afterwards (when this is not the first one).
    fn overwrite_target(&mut self, x: TensorId) -> Option<(TensorId, Option<TensorId>)> {
        let (g, accumulate) = self.grad_target(x)?;
        if !accumulate {
            return Some((g, None));
        }
        // The part has the gradient's type: a parameter's f32 even when activations are f16.
        let shape = self.shape(x).to_vec();
        let dtype = self.tensors[g.0].dtype;
        let name = format!("grad.{}.part", self.tensors[x.0].name);
        let part = self.add_tensor(name, shape, dtype, Storage::Pooled, false);
        Some((part, Some(g)))
    }

    /// A backward call that adds a contribution computed into `part` to `grad`.
    fn add_into(&mut self, label: &str, part: TensorId, grad: TensorId) {
        self.call(
            true,
            format!("{label}: add gradient"),
            vec![part],
            vec![grad],
            Box::new(move |ctx, t| {
                Ok(vec![ew::plan_accumulate(
                    ctx,
                    1.0,
                    t.get(part)?,
                    t.get(grad)?,
                )?])
            }),
        );
    }

    /// The gradient tensor of `x`, once [`Graph::backward`] has run.
    pub fn grad(&self, x: TensorId) -> Option<TensorId> {
        self.grads.get(&x).copied()
    }

    /// Number of calls (stage kernels) in the forward and backward passes.
    pub fn call_counts(&self) -> (usize, usize) {
        (self.forward.len(), self.backward.len())
    }
}
