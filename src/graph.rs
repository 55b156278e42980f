//! A training step as a graph of pipeline stages.
//!
//! **Building.** A model adds forward stages in data-flow order ([`Graph::embedding`],
//! [`Graph::linear`], [`Graph::layer_norm`], ...). Each stage records its kind, its input
//! tensors and its output, and emits *calls*: kernel launches on graph tensors, with the
//! tensors they read and write. [`Graph::backward`] walks the stages in reverse and lets
//! each kind emit the calls of its backward pass. A tensor used by several stages gets the
//! sum of their gradients: the first contribution writes the gradient, later ones add to
//! it (the tied word embeddings of the MLM head are summed this way).
//!
//! **Planning.** [`Graph::plan`] takes the call list (forward only, or forward + backward),
//! finds each tensor's first and last use, and gives tensors whose lifetimes do not
//! overlap the same buffer (best fit, growing an idle buffer when none fits). Parameters
//! and their gradients are views of a [`ParamStore`]. Then every call builds its
//! dispatches, bind groups included, once. Running a step is encoding the dispatches into
//! one compute pass: no allocation, no bind group creation, no read-back.

use std::collections::HashMap;

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::ops::attention::{self, AttentionOptions, BackwardBuffers, BufferShapes, Saved};
use crate::ops::chunked_linear_attention::{self as chunked, ChunkedSaved};
use crate::ops::cross_entropy::{self, Labels, LossState};
use crate::ops::embedding::{self, TokenIds};
use crate::ops::flash_attention::{self, FlashSaved, FlashScratch};
use crate::ops::heads::HeadLayout;
use crate::ops::linear_attention::{self, LinearAttentionOptions};
use crate::ops::matmul::{self, GradTarget, GradTargets, MatmulOptions};
use crate::ops::{elementwise, gelu, layernorm};
use crate::params::ParamStore;
use crate::tensor::{numel, DType, Tensor};

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
    storage: Storage,
    requires_grad: bool,
}

/// Graph tensors resolved to GPU tensors, for building dispatches.
pub struct Resolved(Vec<Option<Tensor>>);

impl Resolved {
    pub fn get(&self, id: TensorId) -> Result<&Tensor> {
        self.0[id.0]
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("graph tensor {} was not planned", id.0)))
    }
}

type Build = Box<dyn Fn(&Context, &Resolved) -> Result<Vec<Dispatch>>>;

/// Kernel launches over graph tensors, with what they read and write.
struct Call {
    label: String,
    reads: Vec<TensorId>,
    writes: Vec<TensorId>,
    build: Build,
}

/// Settings of a softmax or linear attention stage.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    pub heads: usize,
    pub causal: bool,
    /// Rotate v as well as q and k (HF `rotary_value`; softmax attention only).
    pub rotary_value: bool,
    /// Softmax: additive `[B, T]` mask. Linear: `[B, T]` key weights (1 token, 0 padding).
    pub mask: Option<Tensor>,
    /// RoPE sin/cos table `[positions, head_dim]`.
    pub rope: Option<Tensor>,
}

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
    Attention {
        spec: AttentionSpec,
        q_rot: Option<TensorId>,
        k_rot: Option<TensorId>,
        v_rot: Option<TensorId>,
        probs: TensorId,
    },
    FusedAttention {
        spec: AttentionSpec,
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
    FirstToken,
    CrossEntropy {
        labels: Labels,
        row_stats: TensorId,
    },
}

#[derive(Clone)]
struct Stage {
    kind: StageKind,
    inputs: Vec<TensorId>,
    output: TensorId,
}

/// Memory a planned step holds on the GPU, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Parameters, their gradients and both AdamW moments.
    pub params: u64,
    /// The planner's pooled buffers (activations, saved tensors, activation gradients, scratch).
    pub pooled: u64,
    /// How many pooled buffers.
    pub buffers: usize,
    /// What the pooled tensors would take with a buffer each: the cost without reuse.
    pub unpooled: u64,
    /// Per-step inputs and constants the stages hold (ids, masks, labels, tables).
    pub inputs: u64,
}

impl MemoryReport {
    /// Everything the step keeps allocated at once: its peak.
    pub fn peak(&self) -> u64 {
        self.params + self.pooled + self.inputs
    }
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
}

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
    pub fn new() -> Graph {
        Graph::default()
    }

    fn add_tensor(
        &mut self,
        name: String,
        shape: Vec<usize>,
        storage: Storage,
        requires_grad: bool,
    ) -> TensorId {
        self.tensors.push(TensorInfo {
            name,
            shape,
            storage,
            requires_grad,
        });
        TensorId(self.tensors.len() - 1)
    }

    fn pooled(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        requires_grad: bool,
    ) -> TensorId {
        self.add_tensor(name.into(), shape.to_vec(), Storage::Pooled, requires_grad)
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
        let id = self.add_tensor(name.to_string(), shape, Storage::Param(i), true);
        self.params.insert(i, id);
        Ok(id)
    }

    pub fn shape(&self, id: TensorId) -> &[usize] {
        &self.tensors[id.0].shape
    }

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

    // ---- forward stages, in the order a model uses them ----

    /// `table[ids]`: `[ids.shape..., dim]`.
    pub fn embedding(&mut self, name: &str, table: TensorId, ids: &TokenIds) -> Result<TensorId> {
        let ts = self.shape(table).to_vec();
        if ts.len() != 2 || ts[0] != ids.vocab() {
            return Err(Error::shape(
                "embedding",
                "table",
                format!("[{}, dim]", ids.vocab()),
                &ts,
            ));
        }
        let mut shape = ids.shape().to_vec();
        shape.push(ts[1]);
        let out = self.output(name, &shape, &[table]);
        self.input_bytes += 3 * 4 * ids.len() as u64;
        let ids_c = ids.clone();
        self.call(
            false,
            format!("{name}: embedding"),
            vec![table],
            vec![out],
            Box::new(move |ctx, t| {
                Ok(vec![embedding::plan_forward(
                    ctx,
                    t.get(table)?,
                    &ids_c,
                    t.get(out)?,
                    false,
                )?])
            }),
        );
        self.stage(StageKind::Embedding { ids: ids.clone() }, vec![table], out);
        Ok(out)
    }

    /// A Linear's product options, output shape and inputs, shapes checked.
    fn linear_operands(
        &self,
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
    ) -> Result<(MatmulOptions, Vec<usize>, Vec<TensorId>)> {
        let opts = MatmulOptions {
            trans_b: true,
            ..Default::default()
        };
        let shape = matmul::output_shape(self.shape(x), self.shape(w), &opts)?;
        if let Some(b) = b {
            layout_check("linear", "bias", self.shape(b), &[*shape.last().unwrap()])?;
        }
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok((opts, shape, inputs))
    }

    /// `x · wᵀ (+ b)` for x `[..., in]`, w `[out, in]` (PyTorch `Linear`).
    pub fn linear(
        &mut self,
        name: &str,
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
    ) -> Result<TensorId> {
        let (opts, shape, inputs) = self.linear_operands(x, w, b)?;
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
                    &opts,
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
        let (opts, shape, inputs) = self.linear_operands(x, w, b)?;
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
                    &opts,
                )?])
            }),
        );
        self.stage(StageKind::Linear, inputs, pre);
        self.stage(StageKind::Gelu, vec![pre], act);
        Ok(act)
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
        let shape = self.shape(x).to_vec();
        let n = *shape.last().unwrap();
        layout_check("layer_norm", "gamma", self.shape(gamma), &[n])?;
        layout_check("layer_norm", "beta", self.shape(beta), &[n])?;
        let out = self.output(name, &shape, &[x, gamma, beta]);
        let stats = self.pooled(format!("{name}.stats"), &[numel(&shape) / n, 2], false);
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
        let shape = self.shape(a).to_vec();
        layout_check("add_layer_norm", "b", self.shape(b), &shape)?;
        let n = *shape.last().unwrap();
        layout_check("add_layer_norm", "gamma", self.shape(gamma), &[n])?;
        layout_check("add_layer_norm", "beta", self.shape(beta), &[n])?;
        let sum = self.output(&format!("{name}.sum"), &shape, &[a, b]);
        let out = self.output(name, &shape, &[sum, gamma, beta]);
        let stats = self.pooled(format!("{name}.stats"), &[numel(&shape) / n, 2], false);
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
                Ok(vec![elementwise::plan_axpby(
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

    /// Checks q, k, v are `[B, T, H]` with H a multiple of `heads`; returns the per-head
    /// shape `[B, T, heads, H / heads]` of each.
    fn head_shapes(
        &self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        heads: usize,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        let (qs, ks, vs) = (self.shape(q), self.shape(k), self.shape(v));
        if qs.len() != 3 || heads == 0 || qs[2] % heads != 0 {
            return Err(Error::shape(
                "attention",
                "q",
                format!("[batch, seq, heads·dim] with {heads} heads"),
                qs,
            ));
        }
        layout_check("attention", "k", ks, qs)?;
        if vs.len() != 3 || vs[..2] != qs[..2] || vs[2] % heads != 0 {
            return Err(Error::shape(
                "attention",
                "v",
                format!("[{}, {}, heads·dim]", qs[0], qs[1]),
                vs,
            ));
        }
        Ok((
            vec![qs[0], qs[1], heads, qs[2] / heads],
            vec![vs[0], vs[1], heads, vs[2] / heads],
        ))
    }

    /// Buffers for the RoPE-rotated q, k and (with `rotary_value`) v of attention `name`, or
    /// for their gradients (`prefix` "d"); `None` where `spec` does not rotate.
    fn rotated(
        &mut self,
        name: &str,
        prefix: &str,
        spec: &AttentionSpec,
        qh: &[usize],
        vh: &[usize],
    ) -> [Option<TensorId>; 3] {
        let rope = spec.rope.is_some();
        let mut buffer = |on: bool, x: &str, shape: &[usize]| {
            on.then(|| self.pooled(format!("{name}.{prefix}{x}_rot"), shape, false))
        };
        [
            buffer(rope, "q", qh),
            buffer(rope, "k", qh),
            buffer(rope && spec.rotary_value, "v", vh),
        ]
    }

    /// Softmax attention (RoPE, mask, causal per `spec`) on `[B, T, H]` projections.
    pub fn attention(
        &mut self,
        name: &str,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        spec: AttentionSpec,
    ) -> Result<TensorId> {
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        let opts = attention_options(&spec);
        let shapes = BufferShapes::new(&qh, &vh, HeadLayout::Bthd, &opts)?;
        let vshape = self.shape(v).to_vec();
        let out = self.output(name, &vshape, &[q, k, v]);
        let [q_rot, k_rot, v_rot] = self.rotated(name, "", &spec, &qh, &vh);
        let scores = self.pooled(format!("{name}.scores"), &shapes.square, false);
        let probs = self.pooled(format!("{name}.probs"), &shapes.square, false);
        let mut writes = vec![out, scores, probs];
        writes.extend(q_rot.iter().chain(&k_rot).chain(&v_rot));
        self.input_bytes += spec.mask.as_ref().map_or(0, Tensor::byte_size)
            + spec.rope.as_ref().map_or(0, Tensor::byte_size);
        let sp = spec.clone();
        self.call(
            false,
            format!("{name}: softmax attention"),
            vec![q, k, v],
            writes,
            Box::new(move |ctx, t| {
                let opts = attention_options(&sp);
                let saved = saved_of(t, [q_rot, k_rot, v_rot], probs)?;
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                attention::plan_forward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &opts,
                    &saved,
                    t.get(scores)?,
                    &t.get(out)?.reshape(&vh)?,
                )
            }),
        );
        self.stage(
            StageKind::Attention {
                spec,
                q_rot,
                k_rot,
                v_rot,
                probs,
            },
            vec![q, k, v],
            out,
        );
        Ok(out)
    }

    /// Softmax attention like [`Graph::attention`], fused (no `[B, H, T, T]` tensor).
    pub fn fused_attention(
        &mut self,
        name: &str,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        spec: AttentionSpec,
    ) -> Result<TensorId> {
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        if qh != vh {
            return Err(Error::shape(
                "fused attention",
                "v",
                format!("{:?} (like q)", self.shape(q)),
                self.shape(v),
            ));
        }
        let vshape = self.shape(v).to_vec();
        let out = self.output(name, &vshape, &[q, k, v]);
        let rot = self.rotated(name, "", &spec, &qh, &qh);
        let stats = self.pooled(format!("{name}.stats"), &[qh[0], qh[2], qh[1], 2], false);
        let mut writes = vec![out, stats];
        writes.extend(rot.iter().flatten());
        self.input_bytes += spec.mask.as_ref().map_or(0, Tensor::byte_size)
            + spec.rope.as_ref().map_or(0, Tensor::byte_size);
        let sp = spec.clone();
        self.call(
            false,
            format!("{name}: fused attention"),
            vec![q, k, v],
            writes,
            Box::new(move |ctx, t| {
                let saved = flash_saved(t, rot, stats)?;
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &qh)?;
                flash_attention::plan_forward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &attention_options(&sp),
                    &saved,
                    &t.get(out)?.reshape(&qh)?,
                )
            }),
        );
        self.stage(
            StageKind::FusedAttention { spec, rot, stats },
            vec![q, k, v],
            out,
        );
        Ok(out)
    }

    /// Linear attention (RoFormer eq. 19 with RoPE, causal per `spec`) on `[B, T, H]`
    /// projections: the chunked form when causal, the scan otherwise.
    pub fn linear_attention(
        &mut self,
        name: &str,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        spec: AttentionSpec,
    ) -> Result<TensorId> {
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        let vshape = self.shape(v).to_vec();
        let out = self.output(name, &vshape, &[q, k, v]);
        self.input_bytes += spec.mask.as_ref().map_or(0, Tensor::byte_size)
            + spec.rope.as_ref().map_or(0, Tensor::byte_size);
        let sp = spec.clone();
        if spec.causal {
            // Sizes only: the chunk length depends on the head dimension's variant.
            let (b, t, h) = (qh[0], qh[1], qh[2]);
            let (d, dv) = (qh[3], vh[3]);
            let chunk = chunked::VARIANTS
                .iter()
                .find(|v| d.max(dv) <= v.0)
                .map_or(8, |v| v.1);
            let saved = [
                self.pooled(format!("{name}.features"), &[b, h, t, 6, d], false),
                self.pooled(
                    format!("{name}.states"),
                    &[b, h, t.div_ceil(chunk), d * dv + d],
                    false,
                ),
                self.pooled(format!("{name}.tokens"), &[b, h, t, 2], false),
            ];
            let mut writes = vec![out];
            writes.extend(saved);
            self.call(
                false,
                format!("{name}: chunked linear attention"),
                vec![q, k, v],
                writes,
                Box::new(move |ctx, t| {
                    let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                    let s = chunked_saved(t, saved)?;
                    chunked::plan_forward(
                        ctx,
                        &qv,
                        &kv,
                        &vv,
                        HeadLayout::Bthd,
                        &linear_options(&sp),
                        &s,
                        &t.get(out)?.reshape(&vh)?,
                    )
                }),
            );
            self.stage(
                StageKind::ChunkedLinearAttention { spec, saved },
                vec![q, k, v],
                out,
            );
            return Ok(out);
        }
        let saved = self.pooled(format!("{name}.saved"), &[qh[0], qh[2], qh[1], 2], false);
        self.call(
            false,
            format!("{name}: linear attention"),
            vec![q, k, v],
            vec![out, saved],
            Box::new(move |ctx, t| {
                let opts = linear_options(&sp);
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                Ok(vec![linear_attention::plan_forward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &opts,
                    &t.get(out)?.reshape(&vh)?,
                    t.get(saved)?,
                )?])
            }),
        );
        self.stage(
            StageKind::LinearAttention { spec, saved },
            vec![q, k, v],
            out,
        );
        Ok(out)
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
            Box::new(move |ctx, t| {
                Ok(vec![elementwise::plan_gather_first(
                    ctx,
                    t.get(x)?,
                    t.get(out)?,
                )?])
            }),
        );
        self.stage(StageKind::FirstToken, vec![x], out);
        Ok(out)
    }

    /// Mean cross-entropy of `logits` (`[..., classes]`) against `labels`: a `[4]` tensor
    /// `(loss, counted rows, correct rows, 0)`.
    pub fn cross_entropy(
        &mut self,
        name: &str,
        logits: TensorId,
        labels: &Labels,
    ) -> Result<TensorId> {
        let s = self.shape(logits).to_vec();
        let rows = numel(&s) / s.last().unwrap();
        if rows != labels.len() {
            return Err(Error::shape(
                "cross_entropy",
                "logits",
                format!("{} rows (one per label)", labels.len()),
                &s,
            ));
        }
        let loss = self.pooled(name, &[4], false);
        let row_stats = self.pooled(format!("{name}.rows"), &[rows, 3], false);
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

    // ---- backward ----

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
            Storage::Param(i) => self.add_tensor(
                format!("grad.{}", info.name),
                info.shape,
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
        let shape = self.shape(x).to_vec();
        let part = self.pooled(
            format!("grad.{}.part", self.tensors[x.0].name),
            &shape,
            false,
        );
        Some((part, Some(g)))
    }

    fn add_into(&mut self, label: &str, part: TensorId, grad: TensorId) {
        self.call(
            true,
            format!("{label}: add gradient"),
            vec![part],
            vec![grad],
            Box::new(move |ctx, t| {
                Ok(vec![elementwise::plan_accumulate(
                    ctx,
                    1.0,
                    t.get(part)?,
                    t.get(grad)?,
                )?])
            }),
        );
    }

    /// Emits the backward pass of everything `loss` (a cross-entropy output) depends on.
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
            .rposition(|s| s.output == loss && matches!(s.kind, StageKind::CrossEntropy { .. }))
            .ok_or_else(|| {
                Error::invalid("backward() needs the output of a cross_entropy stage")
            })?;
        for s in (0..=last).rev() {
            let stage = self.stages[s].clone();
            self.backward_stage(&stage)?;
        }
        Ok(())
    }

    fn backward_stage(&mut self, stage: &Stage) -> Result<()> {
        let y = stage.output;
        let label = self.tensors[y.0].name.clone();
        let inputs = stage.inputs.clone();
        if let StageKind::CrossEntropy { labels, row_stats } = &stage.kind {
            let logits = inputs[0];
            if let Some((dst, add_to)) = self.overwrite_target(logits) {
                let (labels, row_stats) = (labels.clone(), *row_stats);
                self.call(
                    true,
                    format!("{label}: cross entropy backward"),
                    vec![logits, y, row_stats],
                    vec![dst],
                    Box::new(move |ctx, t| {
                        let state = LossState {
                            row_stats: t.get(row_stats)?.clone(),
                            loss: t.get(y)?.clone(),
                        };
                        Ok(vec![cross_entropy::plan_backward(
                            ctx,
                            t.get(logits)?,
                            &labels,
                            &state,
                            1.0,
                            t.get(dst)?,
                        )?])
                    }),
                );
                if let Some(g) = add_to {
                    self.add_into(&label, dst, g);
                }
            }
            return Ok(());
        }
        let Some(&dy) = self.grads.get(&y) else {
            return Ok(()); // y does not reach the loss
        };
        match &stage.kind {
            StageKind::CrossEntropy { .. } => unreachable!("handled above"),
            StageKind::Embedding { ids } => {
                let table = inputs[0];
                if let Some((g, accumulate)) = self.grad_target(table) {
                    let ids = ids.clone();
                    self.call(
                        true,
                        format!("{label}: embedding backward"),
                        vec![dy],
                        vec![g],
                        Box::new(move |ctx, t| {
                            embedding::plan_backward(ctx, t.get(dy)?, &ids, t.get(g)?, accumulate)
                        }),
                    );
                }
            }
            StageKind::Linear => {
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
                        let target =
                            |g: Option<(TensorId, bool)>| -> Result<Option<GradTarget<'_>>> {
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
                        let opts = MatmulOptions {
                            trans_b: true,
                            ..Default::default()
                        };
                        matmul::plan_backward(ctx, t.get(x)?, t.get(w)?, t.get(dy)?, &opts, targets)
                    }),
                );
            }
            StageKind::LayerNorm { stats, .. } => {
                let (x, gamma, beta, stats) = (inputs[0], inputs[1], inputs[2], *stats);
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
                        self.add_into(&label, dst, g);
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
                                Ok(vec![layernorm::plan_backward_params(
                                    ctx,
                                    t.get(x)?,
                                    t.get(stats)?,
                                    t.get(dy)?,
                                    t.get(gg)?,
                                    t.get(gb)?,
                                    acc_g,
                                )?])
                            }),
                        );
                    }
                    (None, None) => {}
                    _ => {
                        return Err(Error::invalid(format!(
                        "{label}: LayerNorm weight and bias must be trained (and shared) together"
                    )))
                    }
                }
            }
            StageKind::Gelu => {
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
                        self.add_into(&label, dst, g);
                    }
                }
            }
            StageKind::Add => {
                for (i, &x) in inputs.iter().enumerate() {
                    if !self.tensors[x.0].requires_grad {
                        continue;
                    }
                    // The first input may take dy itself as its gradient: nothing reads dy
                    // after this stage, so later contributions can add to it in place.
                    if i == 0
                        && !self.grads.contains_key(&x)
                        && matches!(self.tensors[x.0].storage, Storage::Pooled)
                    {
                        self.grads.insert(x, dy);
                        continue;
                    }
                    let (g, accumulate) = self.grad_target(x).expect("requires_grad checked");
                    self.call(
                        true,
                        format!("{label}: add backward"),
                        vec![dy],
                        vec![g],
                        Box::new(move |ctx, t| {
                            Ok(vec![if accumulate {
                                elementwise::plan_accumulate(ctx, 1.0, t.get(dy)?, t.get(g)?)?
                            } else {
                                elementwise::plan_axpby(ctx, 1.0, t.get(dy)?, 0.0, None, t.get(g)?)?
                            }])
                        }),
                    );
                }
            }
            StageKind::FirstToken => {
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
                                d.push(elementwise::plan_fill(ctx, t.get(g)?, 0.0)?);
                            }
                            d.push(elementwise::plan_scatter_first(
                                ctx,
                                t.get(dy)?,
                                t.get(g)?,
                                accumulate,
                            )?);
                            Ok(d)
                        }),
                    );
                }
            }
            StageKind::Attention {
                spec,
                q_rot,
                k_rot,
                v_rot,
                probs,
            } => {
                self.attention_backward(
                    &label,
                    &inputs,
                    dy,
                    spec,
                    [*q_rot, *k_rot, *v_rot],
                    *probs,
                )?;
            }
            StageKind::FusedAttention { spec, rot, stats } => {
                self.fused_attention_backward(&label, &inputs, y, dy, spec, *rot, *stats)?;
            }
            StageKind::LinearAttention { spec, saved } => {
                self.linear_attention_backward(&label, &inputs, y, dy, spec, *saved)?;
            }
            StageKind::ChunkedLinearAttention { spec, saved } => {
                self.chunked_attention_backward(&label, &inputs, y, dy, spec, *saved)?;
            }
        }
        Ok(())
    }

    /// Destinations for dq, dk, dv, and the gradients to add them to afterwards.
    #[allow(clippy::type_complexity)]
    fn qkv_targets(
        &mut self,
        inputs: &[TensorId],
    ) -> Result<([TensorId; 3], Vec<(TensorId, TensorId)>)> {
        let mut dst = [inputs[0]; 3];
        let mut adds = Vec::new();
        for (i, &x) in inputs[..3].iter().enumerate() {
            match self.overwrite_target(x) {
                Some((d, add_to)) => {
                    dst[i] = d;
                    adds.extend(add_to.map(|g| (d, g)));
                }
                // The kernel writes all three: give an unused one a scratch tensor.
                None => {
                    dst[i] = self.pooled(
                        format!("{}.unused_grad", self.tensors[x.0].name),
                        &self.tensors[x.0].shape.clone(),
                        false,
                    )
                }
            }
        }
        Ok((dst, adds))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
        spec: &AttentionSpec,
        [q_rot, k_rot, v_rot]: [Option<TensorId>; 3],
        probs: TensorId,
    ) -> Result<()> {
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        let shapes = BufferShapes::new(&qh, &vh, HeadLayout::Bthd, &attention_options(spec))?;
        let ([dq, dk, dv], adds) = self.qkv_targets(inputs)?;
        let dprobs = self.pooled(format!("{label}.dprobs"), &shapes.square, false);
        let dscores = self.pooled(format!("{label}.dscores"), &shapes.square, false);
        let [dq_rot, dk_rot, dv_rot] = self.rotated(label, "d", spec, &qh, &vh);
        let mut reads = vec![q, k, v, probs, dy];
        reads.extend(q_rot.iter().chain(&k_rot).chain(&v_rot));
        let mut writes = vec![dq, dk, dv, dprobs, dscores];
        writes.extend(dq_rot.iter().chain(&dk_rot).chain(&dv_rot));
        let sp = spec.clone();
        self.call(
            true,
            format!("{label}: softmax attention backward"),
            reads,
            writes,
            Box::new(move |ctx, t| {
                let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
                let saved = saved_of(t, [q_rot, k_rot, v_rot], probs)?;
                let bwd = BackwardBuffers {
                    dprobs: t.get(dprobs)?.clone(),
                    dscores: t.get(dscores)?.clone(),
                    dq_rot: opt(dq_rot)?,
                    dk_rot: opt(dk_rot)?,
                    dv_rot: opt(dv_rot)?,
                };
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                let (dqv, dkv, dvv) = heads_views(t, dq, dk, dv, &qh, &vh)?;
                let g = t.get(dy)?.reshape(&vh)?;
                attention::plan_backward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &attention_options(&sp),
                    &saved,
                    &bwd,
                    &g,
                    &dqv,
                    &dkv,
                    &dvv,
                )
            }),
        );
        for (part, g) in adds {
            self.add_into(label, part, g);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        spec: &AttentionSpec,
        rot: [Option<TensorId>; 3],
        stats: TensorId,
    ) -> Result<()> {
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let (qh, _) = self.head_shapes(q, k, v, spec.heads)?;
        let ([dq, dk, dv], adds) = self.qkv_targets(inputs)?;
        let scratch = self.rotated(label, "d", spec, &qh, &qh);
        let mut reads = vec![q, k, v, y, stats, dy];
        reads.extend(rot.iter().flatten());
        let mut writes = vec![stats, dq, dk, dv];
        writes.extend(scratch.iter().flatten());
        let sp = spec.clone();
        self.call(
            true,
            format!("{label}: fused attention backward"),
            reads,
            writes,
            Box::new(move |ctx, t| {
                let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
                let saved = flash_saved(t, rot, stats)?;
                let scr = FlashScratch {
                    dq_rot: opt(scratch[0])?,
                    dk_rot: opt(scratch[1])?,
                    dv_rot: opt(scratch[2])?,
                };
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &qh)?;
                let (dqv, dkv, dvv) = heads_views(t, dq, dk, dv, &qh, &qh)?;
                let (out, g) = (t.get(y)?.reshape(&qh)?, t.get(dy)?.reshape(&qh)?);
                flash_attention::plan_backward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &attention_options(&sp),
                    &saved,
                    &out,
                    &g,
                    &scr,
                    &dqv,
                    &dkv,
                    &dvv,
                )
            }),
        );
        for (part, g) in adds {
            self.add_into(label, part, g);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        spec: &AttentionSpec,
        saved: TensorId,
    ) -> Result<()> {
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        let (d, adds) = self.qkv_targets(inputs)?;
        let [dq, dk, dv] = d;
        let sp = spec.clone();
        self.call(
            true,
            format!("{label}: linear attention backward"),
            vec![q, k, v, y, saved, dy],
            vec![saved, dq, dk, dv],
            Box::new(move |ctx, t| {
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                let (dqv, dkv, dvv) = heads_views(t, dq, dk, dv, &qh, &vh)?;
                let (out, g) = (t.get(y)?.reshape(&vh)?, t.get(dy)?.reshape(&vh)?);
                linear_attention::plan_backward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &linear_options(&sp),
                    &out,
                    t.get(saved)?,
                    &g,
                    &dqv,
                    &dkv,
                    &dvv,
                )
            }),
        );
        for (part, g) in adds {
            self.add_into(label, part, g);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn chunked_attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        spec: &AttentionSpec,
        saved: [TensorId; 3],
    ) -> Result<()> {
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        let ([dq, dk, dv], adds) = self.qkv_targets(inputs)?;
        let states_shape = self.shape(saved[1]).to_vec();
        let reverse = self.pooled(format!("{label}.reverse_states"), &states_shape, false);
        let mut reads = vec![q, k, v, y, dy];
        reads.extend(saved);
        let writes = vec![saved[0], saved[1], saved[2], reverse, dq, dk, dv];
        let sp = spec.clone();
        self.call(
            true,
            format!("{label}: chunked linear attention backward"),
            reads,
            writes,
            Box::new(move |ctx, t| {
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                let (dqv, dkv, dvv) = heads_views(t, dq, dk, dv, &qh, &vh)?;
                let (out, g) = (t.get(y)?.reshape(&vh)?, t.get(dy)?.reshape(&vh)?);
                let s = chunked_saved(t, saved)?;
                chunked::plan_backward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &linear_options(&sp),
                    &s,
                    &out,
                    &g,
                    t.get(reverse)?,
                    &dqv,
                    &dkv,
                    &dvv,
                )
            }),
        );
        for (part, g) in adds {
            self.add_into(label, part, g);
        }
        Ok(())
    }

    /// The gradient tensor of `x`, once [`Graph::backward`] has run.
    pub fn grad(&self, x: TensorId) -> Option<TensorId> {
        self.grads.get(&x).copied()
    }

    /// Number of calls (stage kernels) in the forward and backward passes.
    pub fn call_counts(&self) -> (usize, usize) {
        (self.forward.len(), self.backward.len())
    }

    // ---- planning ----

    /// Assigns buffers and builds every dispatch of the forward pass, and of the backward
    /// pass too with `with_backward`.
    pub fn plan(&self, ctx: &Context, store: &ParamStore, with_backward: bool) -> Result<Plan> {
        let calls: Vec<&Call> = self
            .forward
            .iter()
            .chain(self.backward.iter().filter(|_| with_backward))
            .collect();
        let n = self.tensors.len();
        let (mut first, mut last) = (vec![usize::MAX; n], vec![0usize; n]);
        for (c, call) in calls.iter().enumerate() {
            for id in call.reads.iter().chain(&call.writes) {
                first[id.0] = first[id.0].min(c);
                last[id.0] = last[id.0].max(c);
            }
        }
        for id in &self.keep {
            last[id.0] = calls.len();
        }
        // Pool: in order of first use, release what is dead, then take the best-fitting
        // free buffer (or grow the largest free one, or add a buffer).
        let mut order: Vec<usize> = (0..n)
            .filter(|&i| {
                matches!(self.tensors[i].storage, Storage::Pooled) && first[i] != usize::MAX
            })
            .collect();
        order.sort_by_key(|&i| (first[i], i));
        let mut sizes: Vec<u64> = Vec::new();
        let mut assigned = vec![usize::MAX; n];
        let mut active: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut unpooled = 0u64;
        for &i in &order {
            let need = (4 * numel(&self.tensors[i].shape) as u64).next_multiple_of(256);
            unpooled += need;
            active.retain(|&a| {
                let dead = last[a] < first[i];
                if dead {
                    free.push(assigned[a]);
                }
                !dead
            });
            let fit = free
                .iter()
                .enumerate()
                .filter(|(_, &b)| sizes[b] >= need)
                .min_by_key(|(_, &b)| sizes[b])
                .map(|(k, _)| k);
            let k = fit.or_else(|| {
                free.iter()
                    .enumerate()
                    .max_by_key(|(_, &b)| sizes[b])
                    .map(|(k, _)| k)
            });
            let buffer = match k {
                Some(k) => free.swap_remove(k),
                None => {
                    sizes.push(0);
                    sizes.len() - 1
                }
            };
            sizes[buffer] = sizes[buffer].max(need);
            assigned[i] = buffer;
            active.push(i);
        }
        let caps = ctx.capabilities();
        let mut buffers = Vec::with_capacity(sizes.len());
        for &size in &sizes {
            let elems = (size / 4) as usize;
            if size > caps.max_storage_binding {
                // Name the tensors too large by themselves, not the small ones sharing
                // their buffers.
                let who: Vec<&str> = order
                    .iter()
                    .filter(|&&i| {
                        (4 * numel(&self.tensors[i].shape) as u64).next_multiple_of(256)
                            > caps.max_storage_binding
                    })
                    .map(|&i| self.tensors[i].name.as_str())
                    .collect();
                return Err(Error::OverLimit {
                    what: format!(
                        "intermediate tensor(s) {} of this batch shape",
                        who.join(", ")
                    ),
                    needed: size,
                    limit: caps.max_storage_binding,
                    limit_name: "max_storage_buffer_binding_size (use a smaller batch or sequence)",
                });
            }
            buffers.push(Tensor::zeros(ctx, &[elems], DType::F32)?);
        }
        let mut resolved = Vec::with_capacity(n);
        for (i, info) in self.tensors.iter().enumerate() {
            resolved.push(match info.storage {
                Storage::Param(p) => Some(store.value(ctx, p)?),
                Storage::Grad(p) => Some(store.grad(ctx, p)?),
                Storage::Pooled if assigned[i] != usize::MAX => {
                    Some(buffers[assigned[i]].view(ctx, 0, &info.shape)?)
                }
                Storage::Pooled => None,
            });
        }
        let resolved = Resolved(resolved);
        let assignments = order
            .iter()
            .map(|&i| Assignment {
                tensor: TensorId(i),
                first: first[i],
                last: last[i],
                buffer: assigned[i],
            })
            .collect();
        let mut dispatches = Vec::new();
        let mut planned = Vec::new();
        for call in &calls {
            let d = (call.build)(ctx, &resolved).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", call.label)),
                other => other,
            })?;
            let start = dispatches.len();
            dispatches.extend(d);
            planned.push(PlannedCall {
                label: call.label.clone(),
                dispatches: start..dispatches.len(),
                writes: call.writes.clone(),
            });
        }
        Ok(Plan {
            dispatches,
            calls: planned,
            names: self.tensors.iter().map(|t| t.name.clone()).collect(),
            resolved,
            assignments,
            memory: MemoryReport {
                params: store.memory(),
                pooled: sizes.iter().sum(),
                buffers: sizes.len(),
                unpooled,
                inputs: self.input_bytes,
            },
        })
    }
}

fn attention_options(spec: &AttentionSpec) -> AttentionOptions<'_> {
    AttentionOptions {
        causal: spec.causal,
        mask: spec.mask.as_ref(),
        rope: spec.rope.as_ref(),
        rotary_value: spec.rotary_value,
        scale: None,
    }
}

fn linear_options(spec: &AttentionSpec) -> LinearAttentionOptions<'_> {
    LinearAttentionOptions {
        causal: spec.causal,
        rope: spec.rope.as_ref(),
        key_mask: spec.mask.as_ref(),
        eps: linear_attention::EPS,
    }
}

/// The saved tensors of a softmax attention stage.
fn saved_of(
    t: &Resolved,
    [q_rot, k_rot, v_rot]: [Option<TensorId>; 3],
    probs: TensorId,
) -> Result<Saved> {
    let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
    Ok(Saved {
        q_rot: opt(q_rot)?,
        k_rot: opt(k_rot)?,
        v_rot: opt(v_rot)?,
        probs: t.get(probs)?.clone(),
    })
}

/// The saved tensors of a chunked linear attention stage.
fn chunked_saved(t: &Resolved, [features, states, tokens]: [TensorId; 3]) -> Result<ChunkedSaved> {
    Ok(ChunkedSaved {
        features: t.get(features)?.clone(),
        states: t.get(states)?.clone(),
        tokens: t.get(tokens)?.clone(),
    })
}

/// The saved tensors of a fused attention stage.
fn flash_saved(
    t: &Resolved,
    [q_rot, k_rot, v_rot]: [Option<TensorId>; 3],
    stats: TensorId,
) -> Result<FlashSaved> {
    let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
    Ok(FlashSaved {
        q_rot: opt(q_rot)?,
        k_rot: opt(k_rot)?,
        v_rot: opt(v_rot)?,
        stats: t.get(stats)?.clone(),
    })
}

/// q, k, v as `[B, T, heads, d]` views.
fn heads_views(
    t: &Resolved,
    q: TensorId,
    k: TensorId,
    v: TensorId,
    qh: &[usize],
    vh: &[usize],
) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        t.get(q)?.reshape(qh)?,
        t.get(k)?.reshape(qh)?,
        t.get(v)?.reshape(vh)?,
    ))
}

/// Where the planner put a pooled tensor: the calls it is live for (inclusive) and its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub tensor: TensorId,
    pub first: usize,
    pub last: usize,
    pub buffer: usize,
}

/// One call of a plan: its dispatches and the graph tensors it writes.
#[derive(Clone, Debug)]
pub struct PlannedCall {
    pub label: String,
    pub dispatches: std::ops::Range<usize>,
    pub writes: Vec<TensorId>,
}

/// A planned graph: every dispatch built, every buffer allocated.
pub struct Plan {
    dispatches: Vec<Dispatch>,
    calls: Vec<PlannedCall>,
    names: Vec<String>,
    resolved: Resolved,
    assignments: Vec<Assignment>,
    memory: MemoryReport,
}

impl Plan {
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// The calls in order, each with its dispatches and the tensors it writes.
    pub fn calls(&self) -> &[PlannedCall] {
        &self.calls
    }

    /// Name of a graph tensor.
    pub fn name(&self, id: TensorId) -> &str {
        &self.names[id.0]
    }

    /// Runs the plan again one call at a time, reading back what each call writes, and
    /// returns the first call (and tensor) holding an infinity or NaN. For diagnosing a step
    /// that went non-finite: slow, and only meaningful with the same inputs.
    pub fn first_non_finite(&self, ctx: &Context) -> Result<Option<(String, String)>> {
        for call in &self.calls {
            ctx.run(&self.dispatches[call.dispatches.clone()])?;
            for &id in &call.writes {
                let t = self.resolved.get(id)?;
                if t.dtype() == DType::F32 && t.to_vec::<f32>(ctx)?.iter().any(|v| !v.is_finite()) {
                    return Ok(Some((call.label.clone(), self.names[id.0].clone())));
                }
            }
        }
        Ok(None)
    }

    pub fn memory(&self) -> &MemoryReport {
        &self.memory
    }

    /// Every pooled tensor's lifetime and buffer, in order of first use.
    pub fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    /// The GPU tensor of a graph tensor (meaningful after a run for kept tensors).
    pub fn tensor(&self, id: TensorId) -> Result<&Tensor> {
        self.resolved.get(id)
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.encode(pass);
        }
    }
}
