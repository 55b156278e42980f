//! Generation with a causal RoFormer over a key/value cache (or, for linear attention, a
//! recurrent state): the prompts run once (a prefill pass that fills each layer's cache; for
//! a local model with a ring, in chunks), then each step runs one new token per sequence,
//! attending to the cached keys and values, RoPE at each token's true position. A step's
//! cost does not grow with the tokens before it beyond one dot product and one weighted add
//! per cached key (local attention: per key of its window and its global tokens); its
//! dispatches are the same at every position. A linear-attention model keeps instead each
//! layer's recurrent state (`Σ R φ(k) vᵀ` and `Σ φ(k)`, RoFormer eq. 19), whose size and
//! cost per token do not grow at all.
//!
//! A [`Generation`] holds its caches (`[sequences, slots, heads, head dim]` per layer, keys
//! and values, in the encoder's precision; or the f32 states) and two plans: the prefill,
//! sized to the longest prompt (or to a chunk), and the one-token step. A cache has a slot
//! per position up to the capacity, except a local-attention model's where fewer do: it
//! keeps the global tokens and a ring of `window + chunk` slots that later positions take in
//! turn, `chunk` being the longest prompt or [`PREFILL_CHUNK`] if less, and its prompts then
//! run `chunk` tokens at a time. Its memory too then stays flat. Sequences may have prompts
//! of different lengths and finish at different times; each sits at its own position. Only
//! the logits of each sequence's newest token come back. Choosing the next token (greedy,
//! sampling, penalties, stopping) is the caller's: see `pipelines::generate`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::graph::{self, CachedInputs};
use super::{AttentionKind, Encoder, Head};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::graph::{Graph, Plan, TensorId};
use crate::ops::attention::cached::{self, KvCache};
use crate::ops::attention::recurrent::{self, LinearState};
use crate::readback::Pending;
use crate::tensor::Tensor;

/// The logits of each sequence's newest token, `[vocab]` each, in the order of the prompts.
pub type NextLogits = Vec<Vec<f32>>;

/// Prompt tokens a local-attention model's prefill runs at a time: its cache's ring holds the
/// window and one such chunk.
pub const PREFILL_CHUNK: usize = 256;

/// A generation in progress (see the module documentation). Made by [`Encoder::generate`].
pub struct Generation<'a> {
    encoder: &'a Encoder,
    caches: Vec<LayerCache>,
    capacity: usize,
    /// Each sequence's length so far (prompt and generated tokens in its cache).
    lengths: Vec<usize>,
    step: Planned,
    /// Bytes of caches and activations, counted in the encoder's memory report while this
    /// generation lives.
    bytes: u64,
    live: Arc<AtomicU64>,
}

/// What one layer keeps of the tokens before: softmax and local attention their keys and
/// values; linear attention its recurrent state, which does not grow.
#[derive(Clone, Debug)]
pub(crate) enum LayerCache {
    /// Keys and values, `[sequences, slots, heads, head dim]` each.
    KeysValues(KvCache),
    /// `Σ R φ(k) vᵀ` and `Σ φ(k)` per sequence and head.
    Linear(LinearState),
}

impl LayerCache {
    /// Bytes held.
    fn byte_size(&self) -> u64 {
        match self {
            LayerCache::KeysValues(c) => c.byte_size(),
            LayerCache::Linear(s) => s.byte_size(),
        }
    }
}

/// One planned pass: its inputs, its plan, its logits.
struct Planned {
    inputs: CachedInputs,
    plan: Plan,
    logits: TensorId,
}

impl Planned {
    fn new(
        ctx: &Context,
        encoder: &Encoder,
        caches: &[LayerCache],
        batch: usize,
        new_tokens: usize,
        pool: &mut Vec<Tensor>,
    ) -> Result<Planned> {
        let (c, store, table) = encoder.parts();
        let inputs = CachedInputs::new(ctx, c, batch, new_tokens)?;
        let mut g = Graph::with_activations(store.dtype());
        let logits = graph::build_cached(c, store, table, &mut g, &inputs, caches)?;
        g.keep(logits);
        let (plan, _) = g.plan_in(ctx, store, false, pool)?;
        Ok(Planned {
            inputs,
            plan,
            logits,
        })
    }

    /// Writes the inputs of the next pass (a write is ordered before later submissions, after
    /// earlier ones).
    fn write(
        &self,
        ctx: &Context,
        ids: &[u32],
        starts: &[u32],
        counts: &[u32],
        last: &[u32],
    ) -> Result<()> {
        self.inputs.ids.write(ctx, ids)?;
        self.inputs.starts.write(ctx, starts)?;
        self.inputs.counts.write(ctx, counts)?;
        self.inputs.last.write(ctx, last)
    }

    /// Writes the inputs and submits the pass, reading nothing back (a prompt's chunk before
    /// its last).
    fn submit(&self, ctx: &Context, ids: &[u32], starts: &[u32], counts: &[u32]) -> Result<()> {
        ctx.refuse_if_plan_only("generation prefill")?;
        self.write(ctx, ids, starts, counts, &vec![0; starts.len()])?;
        ctx.scoped("generation prefill", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("generation prefill"),
                    });
            self.encode(&mut encoder);
            ctx.queue().submit([encoder.finish()]);
        })
    }

    /// The pass, in one compute pass of `encoder`.
    fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("generation"),
            timestamp_writes: None,
        });
        self.plan.encode(&mut pass);
    }

    /// Writes the inputs, submits the pass and reads back the wanted rows' logits.
    fn run(
        &self,
        ctx: &Context,
        ids: &[u32],
        starts: &[u32],
        counts: &[u32],
        last: &[u32],
        rows: usize,
    ) -> Result<Pending<NextLogits>> {
        self.write(ctx, ids, starts, counts, last)?;
        let logits = self.plan.tensor(self.logits)?.clone();
        let vocab = logits.shape()[1];
        let dtype = logits.dtype();
        let size = logits.binding_size();
        Pending::submit(
            ctx,
            "generation",
            size,
            |encoder, readback| {
                self.encode(encoder);
                encoder.copy_buffer_to_buffer(logits.buffer(), logits.offset(), readback, 0, size);
            },
            move |bytes| {
                let values = super::encoder::to_f32(bytes, &[(0, rows * vocab, dtype)]);
                Ok(values.chunks(vocab).map(<[f32]>::to_vec).collect())
            },
        )
    }
}

impl Encoder {
    /// Starts generating from `prompts` (token ids, each at least one) with room for
    /// `capacity` tokens per sequence, prompt included (at most `max_position_embeddings`):
    /// plans the passes, runs the prompts, and returns the generation and the logits of each
    /// prompt's last token. Needs a causal language model (`RoFormerForCausalLM`) with
    /// softmax attention (materialised or fused: the cache is the same), local attention
    /// (each step then reads only its window and the global tokens of the cache) or linear
    /// attention (a recurrent state per layer instead of the cache).
    pub fn generate(
        &self,
        ctx: &Context,
        prompts: &[Vec<u32>],
        capacity: usize,
    ) -> Result<(Generation<'_>, Pending<NextLogits>)> {
        self.generate_in_chunks(ctx, prompts, capacity, PREFILL_CHUNK)
    }

    /// [`Encoder::generate`] with a local model's prompts run `chunk` tokens at a time.
    fn generate_in_chunks(
        &self,
        ctx: &Context,
        prompts: &[Vec<u32>],
        capacity: usize,
        chunk: usize,
    ) -> Result<(Generation<'_>, Pending<NextLogits>)> {
        let (c, store, _) = self.parts();
        if self.head() != Head::CausalLm {
            return Err(Error::invalid(format!(
                "generation needs a causal language model (RoFormerForCausalLM), not {}",
                self.head().architecture()
            )));
        }
        if c.attention == AttentionKind::Performer {
            return Err(Error::invalid(
                "generation over a cache needs softmax, local or linear attention \
                 (attention_kind softmax, fused_softmax, local or linear); a \
                 performer-attention model generates by recomputing each step \
                 (pipelines::generate does so)",
            ));
        }
        let head_dim = c.hidden_size / c.num_attention_heads;
        let widest = match c.attention {
            AttentionKind::Linear => recurrent::MAX_HEAD_DIM,
            _ => cached::MAX_HEAD_DIM,
        };
        if head_dim > widest {
            return Err(Error::invalid(format!(
                "generation over a cache takes heads up to {widest} wide with this model's \
                 attention, its are {head_dim}"
            )));
        }
        if prompts.is_empty() {
            return Err(Error::invalid("generation needs at least one prompt"));
        }
        let max = c.max_position_embeddings;
        if capacity == 0 || capacity > max {
            return Err(Error::invalid(format!(
                "a generation's capacity is 1 to max_position_embeddings ({max}) tokens per \
                 sequence, not {capacity}"
            )));
        }
        let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
        if let Some(i) = lengths.iter().position(|&n| n == 0) {
            return Err(Error::invalid(format!("prompt {i} is empty")));
        }
        if let Some(i) = lengths.iter().position(|&n| n > capacity) {
            return Err(Error::invalid(format!(
                "prompt {i} has {} tokens, more than the generation's capacity of {capacity}",
                lengths[i]
            )));
        }
        for (i, p) in prompts.iter().enumerate() {
            if let Some(&id) = p.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(Error::TokenOutOfRange {
                    id,
                    position: i,
                    vocab: c.vocab_size,
                });
            }
        }
        let rows = prompts.len();
        let dtype = store.dtype();
        let heads = c.num_attention_heads;
        let longest = *lengths.iter().max().unwrap_or(&1);
        // A local model's cache: the globals, then a ring for the window and a prompt chunk
        // (KvCache::ring keeps every position instead where that is no larger).
        let chunk = longest.min(chunk.max(1));
        let caches = (0..c.num_hidden_layers)
            .map(|_| match (c.attention, c.local_window()) {
                (AttentionKind::Linear, _) => {
                    LinearState::new(ctx, rows, heads, head_dim, head_dim).map(LayerCache::Linear)
                }
                (_, Some(w)) => {
                    let slots = w.window.saturating_add(chunk);
                    KvCache::ring(
                        ctx, rows, capacity, w.globals, slots, heads, head_dim, dtype,
                    )
                    .map(LayerCache::KeysValues)
                }
                _ => KvCache::new(ctx, rows, capacity, heads, head_dim, dtype)
                    .map(LayerCache::KeysValues),
            })
            .collect::<Result<Vec<_>>>()?;
        // The prefill first: planned after it, the step may take over its buffers. Prompts
        // run in chunks only into a ring.
        let ring = caches
            .iter()
            .any(|c| matches!(c, LayerCache::KeysValues(kv) if kv.ring_slots() > 0));
        let block = if ring { chunk } else { longest };
        let mut pool = Vec::new();
        let prefill = Planned::new(ctx, self, &caches, rows, block, &mut pool)?;
        let first = prefill_prompts(ctx, &prefill, prompts, block, c.pad_token_id.unwrap_or(0))?;
        let step = Planned::new(ctx, self, &caches, rows, 1, &mut pool)?;
        let bytes = caches.iter().map(LayerCache::byte_size).sum::<u64>()
            + pool.iter().map(Tensor::byte_size).sum::<u64>();
        let live = self.generation_bytes();
        live.fetch_add(bytes, Ordering::SeqCst);
        let generation = Generation {
            encoder: self,
            caches,
            capacity,
            lengths,
            step,
            bytes,
            live,
        };
        Ok((generation, first))
    }
}

/// Runs the prompts through `prefill` in blocks of `block` tokens (one block unless the
/// cache is a ring) and returns the logits of each prompt's last token. A prompt that has
/// ended runs its last token again at its position (the same key and value, the same
/// logits) in the blocks after, so the last block's logits are every prompt's; the padding
/// behind a prompt lands past its end, where the next tokens overwrite it.
fn prefill_prompts(
    ctx: &Context,
    prefill: &Planned,
    prompts: &[Vec<u32>],
    block: usize,
    pad: u32,
) -> Result<Pending<NextLogits>> {
    let rows = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let blocks = longest.div_ceil(block);
    for n in 0..blocks {
        let from = n * block;
        let mut ids = vec![pad; rows * block];
        let (mut starts, mut counts, mut last) = (vec![0; rows], vec![0; rows], vec![0; rows]);
        for (r, p) in prompts.iter().enumerate() {
            let row = &mut ids[r * block..][..block];
            if from < p.len() {
                let part = &p[from..p.len().min(from + block)];
                row[..part.len()].copy_from_slice(part);
                (starts[r], counts[r], last[r]) = (from, part.len(), part.len() - 1);
            } else {
                row[0] = p[p.len() - 1];
                starts[r] = p.len() - 1;
            }
        }
        let u32s = |v: Vec<usize>| -> Vec<u32> { v.into_iter().map(|x| x as u32).collect() };
        let (starts, counts) = (u32s(starts), u32s(counts));
        if n + 1 < blocks {
            prefill.submit(ctx, &ids, &starts, &counts)?;
        } else {
            return prefill.run(ctx, &ids, &starts, &counts, &u32s(last), rows);
        }
    }
    Err(Error::invalid("generation needs at least one prompt"))
}

impl Generation<'_> {
    /// Appends one token to each sequence (`None` for a sequence that has finished: it
    /// stays where it is, and its logits are not meaningful) and runs the step: the logits
    /// of each sequence's new token. A sequence whose cache is full takes no more tokens.
    pub fn append(&mut self, ctx: &Context, tokens: &[Option<u32>]) -> Result<Pending<NextLogits>> {
        let rows = self.lengths.len();
        if tokens.len() != rows {
            return Err(Error::invalid(format!(
                "a generation step takes one token per sequence: {rows}, not {}",
                tokens.len()
            )));
        }
        let vocab = self.encoder.config().vocab_size;
        let pad = self.encoder.config().pad_token_id.unwrap_or(0);
        let mut ids = Vec::with_capacity(rows);
        let mut starts = Vec::with_capacity(rows);
        for (r, token) in tokens.iter().enumerate() {
            match *token {
                Some(id) if id as usize >= vocab => {
                    return Err(Error::TokenOutOfRange {
                        id,
                        position: r,
                        vocab,
                    })
                }
                Some(_) if self.lengths[r] >= self.capacity => {
                    return Err(Error::invalid(format!(
                        "sequence {r} fills the generation's capacity of {} tokens",
                        self.capacity
                    )))
                }
                Some(id) => {
                    ids.push(id);
                    starts.push(self.lengths[r] as u32);
                }
                // A finished sequence still runs (the batch is one pass), writing past its
                // content or over its last position, which nothing reads again.
                None => {
                    ids.push(pad);
                    starts.push(self.lengths[r].min(self.capacity - 1) as u32);
                }
            }
        }
        // A finished sequence's token does not count: its state stays as it is.
        let counts: Vec<u32> = tokens.iter().map(|t| u32::from(t.is_some())).collect();
        let pending = self
            .step
            .run(ctx, &ids, &starts, &counts, &vec![0; rows], rows)?;
        for (r, token) in tokens.iter().enumerate() {
            if token.is_some() {
                self.lengths[r] += 1;
            }
        }
        Ok(pending)
    }

    /// Each sequence's length so far: its prompt and the tokens appended.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Tokens each sequence may hold, prompt included.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of the key/value caches (`2 × layers × sequences × capacity × hidden` values;
    /// a local model's ring: `globals + window + min(longest prompt, PREFILL_CHUNK)` slots
    /// in place of the capacity, when fewer), or of a linear-attention model's states
    /// (`layers × sequences × heads × (d² + d)` f32).
    pub fn cache_bytes(&self) -> u64 {
        self.caches.iter().map(LayerCache::byte_size).sum()
    }

    /// The dispatches of one step (the same at every position).
    pub fn step_dispatches(&self) -> usize {
        self.step.plan.dispatches().len()
    }
}

impl Drop for Generation<'_> {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::rel_l2;
    use crate::model::{EncoderOptions, Request, RoFormerConfig, Sequence, Want};
    use crate::testing::ctx;

    /// A local model (`window`, `globals`) whose prompts run in chunks of `chunk` into a
    /// ring of `window + chunk` slots after the globals, then steps until `capacity`, some
    /// rows sitting steps out (`None`): every active row's logits at every step are the
    /// encoder's over its whole sequence so far (which knows nothing of caches). Returns the
    /// cache's slots.
    fn check_ring(
        window: usize,
        globals: usize,
        chunk: usize,
        prompts: &[usize],
        capacity: usize,
    ) -> usize {
        let ctx = &ctx();
        let json = format!(
            r#"{{"vocab_size": 23, "embedding_size": 16, "hidden_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 24,
                "max_position_embeddings": 64, "is_decoder": true, "attention_kind": "local",
                "attention_window": {window}, "global_tokens": {globals}}}"#
        );
        let config = RoFormerConfig::from_json(&json, "test").unwrap();
        let e = Encoder::new(ctx, config, Head::CausalLm, EncoderOptions::default()).unwrap();
        e.init_random(ctx, 7).unwrap();
        let mut seqs: Vec<Vec<u32>> = prompts
            .iter()
            .enumerate()
            .map(|(r, &n)| (0..n).map(|i| ((i * 5 + r * 3 + 1) % 23) as u32).collect())
            .collect();
        let (mut g, first) = e.generate_in_chunks(ctx, &seqs, capacity, chunk).unwrap();
        let slots = g.cache_bytes() as usize / (2 * 2 * prompts.len() * 16 * 4);
        let mut logits = first.wait(ctx).unwrap();
        let mut active = vec![true; prompts.len()];
        for step in 0.. {
            for (r, seq) in seqs.iter().enumerate().filter(|&(r, _)| active[r]) {
                let request = Request::new(vec![Sequence::new(seq.clone())], Want::logits());
                let all = e.run_blocking(ctx, &request).unwrap();
                let all = &all.logits(0).unwrap().data;
                let want = &all[all.len() - 23..];
                let err = rel_l2(&logits[r], want);
                assert!(
                    err < 1e-5,
                    "window {window}, globals {globals}, chunk {chunk}, step {step}, sequence \
                     {r} at {}: relative error {err:.2e}",
                    seq.len()
                );
            }
            // Every third row sits out every third step; a full row stops.
            let tokens: Vec<Option<u32>> = (0..seqs.len())
                .map(|r| {
                    let sits = (r + step) % 3 == 2 || seqs[r].len() >= capacity;
                    (!sits).then_some(((step * 7 + r * 2 + 5) % 23) as u32)
                })
                .collect();
            if seqs.iter().all(|s| s.len() >= capacity) {
                break;
            }
            for (r, t) in tokens.iter().enumerate() {
                active[r] = t.is_some();
                if let Some(t) = *t {
                    seqs[r].push(t);
                }
            }
            logits = g.append(ctx, &tokens).unwrap().wait(ctx).unwrap();
        }
        slots
    }

    /// A prompt that ends in an earlier chunk re-runs its last token in the later ones; in
    /// the second case chunks of 4 cross the ring's wrap (slots 3..9 take positions 3 on, so
    /// position 9 lands in slot 3 inside the chunk 8..12: an append that offset the block's
    /// first slot fails here), with more globals than the window and a prompt shorter than
    /// the globals; the third has the smallest window and a one-token prompt.
    #[test]
    fn a_ring_cache_and_chunked_prompts_give_the_whole_sequences_logits() {
        assert_eq!(check_ring(4, 2, 3, &[11, 4, 9], 30), 2 + 4 + 3);
        assert_eq!(check_ring(2, 3, 4, &[2, 13, 6], 28), 3 + 2 + 4);
        assert_eq!(check_ring(1, 1, 2, &[5, 1], 16), 1 + 1 + 2);
    }
}
