//! Buffer assignment: which pooled tensors share which buffer. A pure function of the call
//! list (what each call touches) and the tensors' sizes, so it is tested without a GPU.
//!
//! A tensor lives from the first call that touches it to the last (to the end of the step
//! when kept). In order of first use, each tensor takes the smallest free buffer that fits,
//! else grows the largest free one, else gets a new buffer; a buffer is free once every
//! tensor in it is dead.

use super::TensorId;

/// Where the planner put a pooled tensor: the calls it is live for (inclusive) and its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The tensor.
    pub tensor: TensorId,
    /// The first call that touches it.
    pub first: usize,
    /// The last call that touches it (the number of calls when it is kept to the end).
    pub last: usize,
    /// Its buffer.
    pub buffer: usize,
}

/// The planner's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BufferLayout {
    /// Bytes of each buffer.
    pub sizes: Vec<u64>,
    /// Every pooled tensor some call touches, in order of first use.
    pub assignments: Vec<Assignment>,
    /// What those tensors would take with a buffer each.
    pub unpooled: u64,
}

/// Bytes a pooled tensor of `elems` f32 elements takes: buffers are sized in multiples of
/// 256 bytes, the largest storage offset alignment adapters ask for.
pub(crate) fn pooled_bytes(elems: usize, dtype: crate::DType) -> u64 {
    (dtype.size() as u64 * elems as u64).next_multiple_of(256)
}

/// Assigns buffers. `bytes[i]` is the size of tensor i when the planner allocates it
/// (`None`: it lives elsewhere, e.g. a parameter); `calls[c]` lists the tensors call `c`
/// reads or writes; `keep` are alive to the end. With `reuse` false every tensor gets a
/// buffer of its own.
pub(crate) fn assign_buffers(
    bytes: &[Option<u64>],
    calls: &[Vec<TensorId>],
    keep: &[TensorId],
    reuse: bool,
) -> BufferLayout {
    let n = bytes.len();
    let (mut first, mut last) = (vec![usize::MAX; n], vec![0usize; n]);
    for (c, call) in calls.iter().enumerate() {
        for id in call {
            first[id.0] = first[id.0].min(c);
            last[id.0] = last[id.0].max(c);
        }
    }
    for id in keep {
        last[id.0] = calls.len();
    }
    let mut order: Vec<usize> = (0..n)
        .filter(|&i| bytes[i].is_some() && first[i] != usize::MAX)
        .collect();
    order.sort_by_key(|&i| (first[i], i));
    let mut sizes: Vec<u64> = Vec::new();
    let mut assigned = vec![usize::MAX; n];
    let mut active: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut unpooled = 0u64;
    for &i in &order {
        let need = bytes[i].unwrap_or(0);
        unpooled += need;
        if reuse {
            active.retain(|&a| {
                let dead = last[a] < first[i];
                if dead {
                    free.push(assigned[a]);
                }
                !dead
            });
        }
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
    let assignments = order
        .iter()
        .map(|&i| Assignment {
            tensor: TensorId(i),
            first: first[i],
            last: last[i],
            buffer: assigned[i],
        })
        .collect();
    BufferLayout {
        sizes,
        assignments,
        unpooled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random call lists, checked against lifetimes computed here from the calls
    /// themselves: no two tensors whose lifetimes overlap share a buffer, every buffer holds
    /// its largest tensor, and reuse saves memory when lifetimes allow it.
    #[test]
    fn live_tensors_never_share_a_buffer() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for case in 0..200 {
            let n = rng.random_range(1..40);
            let bytes: Vec<Option<u64>> = (0..n)
                .map(|_| {
                    rng.random_bool(0.85)
                        .then(|| pooled_bytes(rng.random_range(1..5000), crate::DType::F32))
                })
                .collect();
            let calls: Vec<Vec<TensorId>> = (0..rng.random_range(1..30))
                .map(|_| {
                    (0..rng.random_range(1..5))
                        .map(|_| TensorId(rng.random_range(0..n)))
                        .collect()
                })
                .collect();
            let keep: Vec<TensorId> = (0..rng.random_range(0..3))
                .map(|_| TensorId(rng.random_range(0..n)))
                .collect();
            let layout = assign_buffers(&bytes, &calls, &keep, true);
            // Lifetimes from the call list, independently of the planner.
            let live = |t: usize| -> Option<(usize, usize)> {
                let uses: Vec<usize> = calls
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.contains(&TensorId(t)))
                    .map(|(i, _)| i)
                    .collect();
                let end = if keep.contains(&TensorId(t)) {
                    calls.len()
                } else {
                    *uses.last()?
                };
                Some((*uses.first()?, end))
            };
            let pooled_used: Vec<usize> = (0..n)
                .filter(|&t| bytes[t].is_some() && live(t).is_some())
                .collect();
            assert_eq!(layout.assignments.len(), pooled_used.len(), "case {case}");
            let buffer_of = |t: usize| {
                layout
                    .assignments
                    .iter()
                    .find(|a| a.tensor == TensorId(t))
                    .map(|a| a.buffer)
            };
            for (i, &a) in pooled_used.iter().enumerate() {
                let ba = buffer_of(a).expect("every used pooled tensor is placed");
                assert!(
                    layout.sizes[ba] >= bytes[a].unwrap(),
                    "case {case}: {a} fits"
                );
                let (fa, la) = live(a).unwrap();
                for &b in &pooled_used[i + 1..] {
                    let (fb, lb) = live(b).unwrap();
                    if fa <= lb && fb <= la {
                        assert_ne!(ba, buffer_of(b).unwrap(), "case {case}: {a} and {b}");
                    }
                }
            }
            let total: u64 = layout.sizes.iter().sum();
            assert!(total <= layout.unpooled, "case {case}");
            let own = assign_buffers(&bytes, &calls, &keep, false);
            assert_eq!(
                own.sizes.len(),
                pooled_used.len(),
                "case {case}: one buffer each"
            );
            assert_eq!(own.sizes.iter().sum::<u64>(), layout.unpooled);
        }
    }

    #[test]
    fn a_chain_reuses_two_buffers() {
        // t0 -> t1 -> t2 -> t3, each call reads one tensor and writes the next.
        let bytes = vec![Some(256); 4];
        let calls: Vec<Vec<TensorId>> =
            (0..3).map(|c| vec![TensorId(c), TensorId(c + 1)]).collect();
        let layout = assign_buffers(&bytes, &calls, &[], true);
        assert_eq!(layout.sizes, vec![256, 256]);
        assert_eq!(layout.unpooled, 1024);
    }
}
