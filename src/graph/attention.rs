//! Attention in its six forms (softmax with the `[B, H, T, T]` probabilities, fused
//! softmax, sliding-window local softmax, linear attention as a scan, causal linear attention
//! in chunks, Performer's random features), each with RoPE: forward builders and backward
//! rules.

use crate::context::Context;
use crate::dispatch::Dispatch;
use crate::error::{Error, Result};
use crate::ops::attention::chunked_linear::{self as chunked, ChunkedSaved};
use crate::ops::attention::flash::{self, FlashSaved, FlashScratch};
use crate::ops::attention::heads::HeadLayout;
use crate::ops::attention::linear::{self, LinearAttentionOptions};
use crate::ops::attention::local::{self as local_attn, LocalWindow};
use crate::ops::attention::performer::{
    self, LinearSaved, PerformerOptions, PerformerSaved, PerformerScratch, Sums,
};
use crate::ops::attention::{self, AttentionOptions, BackwardBuffers, BufferShapes, Saved};
use crate::tensor::{DType, Tensor};

use super::{layout_check, Graph, Resolved, StageKind, TensorId};

/// The graph tensors a performer attention stage saves for its backward pass (see
/// [`PerformerSaved`]).
#[derive(Clone, Debug)]
pub(super) struct PerformerTensors {
    rot: [Option<TensorId>; 2],
    features: [TensorId; 2],
    key_rows: TensorId,
    key_max: TensorId,
    causal: bool,
    /// Non-causal: the sums' values, state, rows; causal: the chunked form's features,
    /// states, tokens. Either way the backward pass's states are shaped like the second.
    linear: [TensorId; 3],
}

/// Settings of a softmax or linear attention stage.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    /// Number of heads the projections split into.
    pub heads: usize,
    /// Position t attends to positions up to t only.
    pub causal: bool,
    /// Rotate v as well as q and k (HF `rotary_value`; softmax attention only).
    pub rotary_value: bool,
    /// Softmax: additive `[B, T]` mask. Linear: `[B, T]` key weights (1 token, 0 padding).
    pub mask: Option<Tensor>,
    /// RoPE sin/cos table `[positions, head_dim]`.
    pub rope: Option<Tensor>,
}

/// What an attention backward kernel works on, each as a `[B, T, heads, d]` view: q, k, v,
/// the stage's output `y` (`None` where the kernel does not read it) and its gradient `dy`,
/// and where dq, dk, dv go.
struct BackwardViews {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    y: Option<Tensor>,
    dy: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
}

impl BackwardViews {
    /// The views of the plan's tensors.
    #[allow(clippy::too_many_arguments)]
    fn of(
        t: &Resolved,
        [q, k, v]: [TensorId; 3],
        y: Option<TensorId>,
        dy: TensorId,
        [dq, dk, dv]: [TensorId; 3],
        qh: &[usize],
        vh: &[usize],
    ) -> Result<BackwardViews> {
        Ok(BackwardViews {
            q: t.get(q)?.reshape(qh)?,
            k: t.get(k)?.reshape(qh)?,
            v: t.get(v)?.reshape(vh)?,
            y: y.map(|y| t.get(y)?.reshape(vh)).transpose()?,
            dy: t.get(dy)?.reshape(vh)?,
            dq: t.get(dq)?.reshape(qh)?,
            dk: t.get(dk)?.reshape(qh)?,
            dv: t.get(dv)?.reshape(vh)?,
        })
    }

    /// The output, for the kernels that read it.
    fn y(&self) -> Result<&Tensor> {
        self.y
            .as_ref()
            .ok_or_else(|| Error::invalid("attention backward: the output is not read here"))
    }
}

impl Graph {
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

    /// What a row-wise attention stage (fused or local: one pass over a query's keys, no
    /// `[B, H, T, T]` tensor) writes: its output, the rotated q and k (and v), and
    /// `stats_width` f32 statistics per query row, with v shaped like q. Returns the heads'
    /// shape, those tensors and the list of them the stage writes; counts the mask and
    /// RoPE table among the inputs.
    #[allow(clippy::type_complexity)]
    fn row_attention_buffers(
        &mut self,
        op: &'static str,
        name: &str,
        [q, k, v]: [TensorId; 3],
        spec: &AttentionSpec,
        stats_width: usize,
    ) -> Result<(
        Vec<usize>,
        TensorId,
        [Option<TensorId>; 3],
        TensorId,
        Vec<TensorId>,
    )> {
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        if qh != vh {
            return Err(Error::shape(
                op,
                "v",
                format!("{:?} (like q)", self.shape(q)),
                self.shape(v),
            ));
        }
        let vshape = self.shape(v).to_vec();
        let out = self.output(name, &vshape, &[q, k, v]);
        let rot = self.rotated(name, "", spec, &qh, &qh);
        let stats = self.pooled_f32(format!("{name}.stats"), &[qh[0], qh[2], qh[1], stats_width]);
        let mut writes = vec![out, stats];
        writes.extend(rot.iter().flatten());
        self.input_bytes += spec.mask.as_ref().map_or(0, Tensor::byte_size)
            + spec.rope.as_ref().map_or(0, Tensor::byte_size);
        Ok((qh, out, rot, stats, writes))
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
        self.row_attention(name, [q, k, v], spec, None)
    }

    /// Softmax attention like [`Graph::fused_attention`] over a sliding window with global
    /// tokens (`window`; [`crate::ops::attention::local`]): no `[B, H, T, T]` tensor, and
    /// work linear in the length.
    pub fn local_attention(
        &mut self,
        name: &str,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        spec: AttentionSpec,
        window: LocalWindow,
    ) -> Result<TensorId> {
        self.row_attention(name, [q, k, v], spec, Some(window))
    }

    /// The fused stage over every key (`window` None) or a local window: both save the
    /// same tensors and differ only in their kernels' plan functions.
    fn row_attention(
        &mut self,
        name: &str,
        [q, k, v]: [TensorId; 3],
        spec: AttentionSpec,
        window: Option<LocalWindow>,
    ) -> Result<TensorId> {
        let what = if window.is_some() {
            "local attention"
        } else {
            "fused attention"
        };
        let (qh, out, rot, stats, writes) =
            self.row_attention_buffers(what, name, [q, k, v], &spec, 3)?;
        let sp = spec.clone();
        self.call(
            false,
            format!("{name}: {what}"),
            vec![q, k, v],
            writes,
            Box::new(move |ctx, t| {
                let saved = flash_saved(t, rot, stats)?;
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &qh)?;
                let (opts, out) = (attention_options(&sp), t.get(out)?.reshape(&qh)?);
                let layout = HeadLayout::Bthd;
                match window {
                    None => flash::plan_forward(ctx, &qv, &kv, &vv, layout, &opts, &saved, &out),
                    Some(w) => {
                        local_attn::plan_forward(ctx, &qv, &kv, &vv, layout, &opts, w, &saved, &out)
                    }
                }
            }),
        );
        self.stage(
            StageKind::FusedAttention {
                spec,
                window,
                rot,
                stats,
            },
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
                self.pooled_f32(format!("{name}.features"), &[b, h, t, 6, d]),
                self.pooled_f32(
                    format!("{name}.states"),
                    &[b, h, t.div_ceil(chunk), d * dv + d],
                ),
                self.pooled_f32(format!("{name}.tokens"), &[b, h, t, 2]),
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
        let saved = self.pooled_f32(format!("{name}.saved"), &[qh[0], qh[2], qh[1], 2]);
        self.call(
            false,
            format!("{name}: linear attention"),
            vec![q, k, v],
            vec![out, saved],
            Box::new(move |ctx, t| {
                let opts = linear_options(&sp);
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                linear::plan_forward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &opts,
                    &t.get(out)?.reshape(&vh)?,
                    t.get(saved)?,
                )
            }),
        );
        self.stage(
            StageKind::LinearAttention { spec, saved },
            vec![q, k, v],
            out,
        );
        Ok(out)
    }

    /// Performer attention ([`crate::ops::attention::performer`]: FAVOR+ random features
    /// of RoPE-rotated q and k through `projection`, `[m, head_dim]`; causal per `spec`, its
    /// mask the `[B, T]` key weights) on `[B, T, H]` projections. f32 only.
    pub fn performer_attention(
        &mut self,
        name: &str,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        spec: AttentionSpec,
        projection: &Tensor,
    ) -> Result<TensorId> {
        let (qh, vh) = self.head_shapes(q, k, v, spec.heads)?;
        if self.activation_dtype() != DType::F32 {
            return Err(Error::invalid(format!(
                "{name}: performer attention runs in f32 only (its random features span \
                 orders of magnitude that f16 does not hold), not {:?} activations",
                self.activation_dtype()
            )));
        }
        if spec.rotary_value {
            return Err(Error::invalid(format!(
                "{name}: rotary_value is not defined for performer attention"
            )));
        }
        let m = projection.shape().first().copied().unwrap_or(0);
        let sizes = performer::Sizes::new(&qh, &vh, HeadLayout::Bthd, m, spec.causal)?;
        let vshape = self.shape(v).to_vec();
        let out = self.output(name, &vshape, &[q, k, v]);
        let [q_rot, k_rot, _] = self.rotated(name, "", &spec, &qh, &vh);
        let saved = PerformerTensors {
            rot: [q_rot, k_rot],
            features: [
                self.pooled_f32(format!("{name}.q_features"), &sizes.features()),
                self.pooled_f32(format!("{name}.k_features"), &sizes.features()),
            ],
            key_rows: self.pooled_f32(format!("{name}.key_rows"), &sizes.key_rows()),
            key_max: self.pooled_f32(format!("{name}.key_max"), &sizes.key_max()),
            causal: spec.causal,
            linear: if spec.causal {
                let [features, states, tokens] = sizes.chunked()?;
                [
                    self.pooled_f32(format!("{name}.chunk_features"), &features),
                    self.pooled_f32(format!("{name}.states"), &states),
                    self.pooled_f32(format!("{name}.tokens"), &tokens),
                ]
            } else {
                [
                    self.pooled_f32(format!("{name}.values"), &sizes.sums()),
                    self.pooled_f32(format!("{name}.state"), &sizes.state()),
                    self.pooled_f32(format!("{name}.sums"), &sizes.sums()),
                ]
            },
        };
        let mut writes = vec![
            out,
            saved.features[0],
            saved.features[1],
            saved.key_rows,
            saved.key_max,
        ];
        writes.extend(saved.rot.iter().flatten());
        writes.extend(&saved.linear);
        self.input_bytes += spec.mask.as_ref().map_or(0, Tensor::byte_size)
            + spec.rope.as_ref().map_or(0, Tensor::byte_size)
            + projection.byte_size();
        let (sp, proj, ids) = (spec.clone(), projection.clone(), saved.clone());
        self.call(
            false,
            format!("{name}: performer attention"),
            vec![q, k, v],
            writes,
            Box::new(move |ctx, t| {
                let (qv, kv, vv) = heads_views(t, q, k, v, &qh, &vh)?;
                performer::plan_forward(
                    ctx,
                    &qv,
                    &kv,
                    &vv,
                    HeadLayout::Bthd,
                    &proj,
                    &performer_options(&sp),
                    &performer_saved(t, &ids)?,
                    &t.get(out)?.reshape(&vh)?,
                )
            }),
        );
        self.stage(
            StageKind::PerformerAttention {
                spec,
                projection: projection.clone(),
                saved,
            },
            vec![q, k, v],
            out,
        );
        Ok(out)
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

    /// The call every attention backward rule adds: it reads q, k, v, `y` (where given),
    /// `dy` and `reads`, writes dq, dk, dv (see [`Graph::qkv_targets`]) and `writes`, and
    /// plans `kernel` on the views; then the gradients computed apart are added in.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_call(
        &mut self,
        label: &str,
        what: &str,
        inputs: &[TensorId],
        y: Option<TensorId>,
        dy: TensorId,
        spec: &AttentionSpec,
        reads: Vec<TensorId>,
        writes: Vec<TensorId>,
        kernel: impl Fn(&Context, &Resolved, &BackwardViews) -> Result<Vec<Dispatch>> + 'static,
    ) -> Result<()> {
        let qkv = [inputs[0], inputs[1], inputs[2]];
        let (qh, vh) = self.head_shapes(qkv[0], qkv[1], qkv[2], spec.heads)?;
        let (grads, adds) = self.qkv_targets(inputs)?;
        let mut all_reads = qkv.to_vec();
        all_reads.extend(y);
        all_reads.push(dy);
        all_reads.extend(reads);
        let mut all_writes = grads.to_vec();
        all_writes.extend(writes);
        self.call(
            true,
            format!("{label}: {what}"),
            all_reads,
            all_writes,
            Box::new(move |ctx, t| {
                kernel(ctx, t, &BackwardViews::of(t, qkv, y, dy, grads, &qh, &vh)?)
            }),
        );
        for (part, g) in adds {
            self.add_into(label, part, g);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        dy: TensorId,
        spec: &AttentionSpec,
        [q_rot, k_rot, v_rot]: [Option<TensorId>; 3],
        probs: TensorId,
    ) -> Result<()> {
        let (qh, vh) = self.head_shapes(inputs[0], inputs[1], inputs[2], spec.heads)?;
        let shapes = BufferShapes::new(&qh, &vh, HeadLayout::Bthd, &attention_options(spec))?;
        let dprobs = self.pooled(format!("{label}.dprobs"), &shapes.square, false);
        let dscores = self.pooled(format!("{label}.dscores"), &shapes.square, false);
        let [dq_rot, dk_rot, dv_rot] = self.rotated(label, "d", spec, &qh, &vh);
        let mut reads = vec![probs];
        reads.extend(q_rot.iter().chain(&k_rot).chain(&v_rot));
        let mut writes = vec![dprobs, dscores];
        writes.extend(dq_rot.iter().chain(&dk_rot).chain(&dv_rot));
        let sp = spec.clone();
        self.attention_backward_call(
            label,
            "softmax attention backward",
            inputs,
            None,
            dy,
            spec,
            reads,
            writes,
            move |ctx, t, x| {
                let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
                let bwd = BackwardBuffers {
                    dprobs: t.get(dprobs)?.clone(),
                    dscores: t.get(dscores)?.clone(),
                    dq_rot: opt(dq_rot)?,
                    dk_rot: opt(dk_rot)?,
                    dv_rot: opt(dv_rot)?,
                };
                attention::plan_backward(
                    ctx,
                    &x.q,
                    &x.k,
                    &x.v,
                    HeadLayout::Bthd,
                    &attention_options(&sp),
                    &saved_of(t, [q_rot, k_rot, v_rot], probs)?,
                    &bwd,
                    &x.dy,
                    &x.dq,
                    &x.dk,
                    &x.dv,
                )
            },
        )
    }

    /// The backward rule of [`Graph::fused_attention`] and [`Graph::local_attention`]
    /// (`window`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        spec: &AttentionSpec,
        window: Option<LocalWindow>,
        rot: [Option<TensorId>; 3],
        stats: TensorId,
    ) -> Result<()> {
        let (qh, _) = self.head_shapes(inputs[0], inputs[1], inputs[2], spec.heads)?;
        let scratch = self.rotated(label, "d", spec, &qh, &qh);
        let mut reads = vec![stats];
        reads.extend(rot.iter().flatten());
        let mut writes = vec![stats];
        writes.extend(scratch.iter().flatten());
        let sp = spec.clone();
        let what = if window.is_some() {
            "local attention backward"
        } else {
            "fused attention backward"
        };
        self.attention_backward_call(
            label,
            what,
            inputs,
            Some(y),
            dy,
            spec,
            reads,
            writes,
            move |ctx, t, x| {
                let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
                let scr = FlashScratch {
                    dq_rot: opt(scratch[0])?,
                    dk_rot: opt(scratch[1])?,
                    dv_rot: opt(scratch[2])?,
                };
                let (opts, saved) = (attention_options(&sp), flash_saved(t, rot, stats)?);
                let layout = HeadLayout::Bthd;
                let (q, k, v, y, dy) = (&x.q, &x.k, &x.v, x.y()?, &x.dy);
                let (dq, dk, dv) = (&x.dq, &x.dk, &x.dv);
                match window {
                    None => flash::plan_backward(
                        ctx, q, k, v, layout, &opts, &saved, y, dy, &scr, dq, dk, dv,
                    ),
                    Some(w) => local_attn::plan_backward(
                        ctx, q, k, v, layout, &opts, w, &saved, y, dy, &scr, dq, dk, dv,
                    ),
                }
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear_attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        spec: &AttentionSpec,
        saved: TensorId,
    ) -> Result<()> {
        let sp = spec.clone();
        self.attention_backward_call(
            label,
            "linear attention backward",
            inputs,
            Some(y),
            dy,
            spec,
            vec![saved],
            vec![saved],
            move |ctx, t, x| {
                linear::plan_backward(
                    ctx,
                    &x.q,
                    &x.k,
                    &x.v,
                    HeadLayout::Bthd,
                    &linear_options(&sp),
                    x.y()?,
                    t.get(saved)?,
                    &x.dy,
                    &x.dq,
                    &x.dk,
                    &x.dv,
                )
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn chunked_attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        spec: &AttentionSpec,
        saved: [TensorId; 3],
    ) -> Result<()> {
        let states_shape = self.shape(saved[1]).to_vec();
        let reverse = self.pooled_f32(format!("{label}.reverse_states"), &states_shape);
        let sp = spec.clone();
        self.attention_backward_call(
            label,
            "chunked linear attention backward",
            inputs,
            Some(y),
            dy,
            spec,
            saved.to_vec(),
            vec![saved[0], saved[1], saved[2], reverse],
            move |ctx, t, x| {
                chunked::plan_backward(
                    ctx,
                    &x.q,
                    &x.k,
                    &x.v,
                    HeadLayout::Bthd,
                    &linear_options(&sp),
                    &chunked_saved(t, saved)?,
                    x.y()?,
                    &x.dy,
                    t.get(reverse)?,
                    &x.dq,
                    &x.dk,
                    &x.dv,
                )
            },
        )
    }
}

impl Graph {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn performer_attention_backward(
        &mut self,
        label: &str,
        inputs: &[TensorId],
        y: TensorId,
        dy: TensorId,
        spec: &AttentionSpec,
        projection: &Tensor,
        saved: &PerformerTensors,
    ) -> Result<()> {
        let (qh, vh) = self.head_shapes(inputs[0], inputs[1], inputs[2], spec.heads)?;
        let features = self.shape(saved.features[0]).to_vec();
        let dfeatures = [
            self.pooled_f32(format!("{label}.dq_features"), &features),
            self.pooled_f32(format!("{label}.dk_features"), &features),
        ];
        let [dq_rot, dk_rot, _] = self.rotated(label, "d", spec, &qh, &vh);
        let states_shape = self.shape(saved.linear[1]).to_vec();
        let states = self.pooled_f32(format!("{label}.backward_states"), &states_shape);
        let mut reads = vec![saved.features[0], saved.features[1]];
        reads.extend(saved.rot.iter().flatten());
        reads.extend(&saved.linear);
        // The kernels update the saved denominators (or sums) in place.
        let mut writes = vec![
            dfeatures[0],
            dfeatures[1],
            saved.features[0],
            saved.features[1],
        ];
        writes.extend(&saved.linear);
        writes.push(states);
        writes.extend(dq_rot.iter().chain(&dk_rot));
        let (sp, proj, ids) = (spec.clone(), projection.clone(), saved.clone());
        self.attention_backward_call(
            label,
            "performer attention backward",
            inputs,
            Some(y),
            dy,
            spec,
            reads,
            writes,
            move |ctx, t, x| {
                let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
                let scratch = PerformerScratch {
                    dq_features: t.get(dfeatures[0])?.clone(),
                    dk_features: t.get(dfeatures[1])?.clone(),
                    dq_rot: opt(dq_rot)?,
                    dk_rot: opt(dk_rot)?,
                    states: t.get(states)?.clone(),
                };
                performer::plan_backward(
                    ctx,
                    &x.q,
                    &x.k,
                    &x.v,
                    HeadLayout::Bthd,
                    &proj,
                    &performer_options(&sp),
                    &performer_saved(t, &ids)?,
                    x.y()?,
                    &x.dy,
                    &scratch,
                    &x.dq,
                    &x.dk,
                    &x.dv,
                )
            },
        )
    }
}

fn performer_options(spec: &AttentionSpec) -> PerformerOptions<'_> {
    PerformerOptions {
        causal: spec.causal,
        rope: spec.rope.as_ref(),
        key_mask: spec.mask.as_ref(),
    }
}

/// The saved tensors of a performer attention stage.
fn performer_saved(t: &Resolved, ids: &PerformerTensors) -> Result<PerformerSaved> {
    let opt = |i: Option<TensorId>| i.map(|i| t.get(i).cloned()).transpose();
    let get = |i: TensorId| t.get(i).cloned();
    Ok(PerformerSaved {
        q_rot: opt(ids.rot[0])?,
        k_rot: opt(ids.rot[1])?,
        q_features: get(ids.features[0])?,
        k_features: get(ids.features[1])?,
        key_rows: get(ids.key_rows)?,
        key_max: get(ids.key_max)?,
        linear: match (ids.causal, ids.linear) {
            (true, [features, states, tokens]) => LinearSaved::Causal(ChunkedSaved {
                features: get(features)?,
                states: get(states)?,
                tokens: get(tokens)?,
            }),
            (false, [values, state, rows]) => LinearSaved::NonCausal(Sums {
                values: get(values)?,
                state: get(state)?,
                rows: get(rows)?,
            }),
        },
    })
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
        eps: linear::EPS,
        feature_map: linear::FeatureMap::EluPlusOne,
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

/// The saved tensors of a fused (or local) attention stage.
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
