//! What the trainer feeds the model, update by update: a window of
//! `gradient_accumulation_steps` batches, collated (padded to a session length) and masked
//! (fill-mask data masked at batch time), from training data held in memory or streamed from
//! a file ([`super::stream`]). The trainer takes windows from a [`super::prefetch::Feed`],
//! which prepares them ahead on a background thread natively.
//!
//! Everything here is a function of the data, the arguments and the update's number (a
//! streamed window also of the windows before it in its pass), so windows prepared on a
//! thread are the windows prepared in place, and a resumed run gets the uninterrupted run's.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::dataset::{example_rng, Dataset, Example, Masking, Task};
use crate::error::Result;
use crate::model::Batch;
use crate::ops::cross_entropy::IGNORE_INDEX;

/// Where a run that streams its training data stands in the stream, saved in each
/// checkpoint's `trainer_state.json` so that a resumed run skips what was used (as
/// transformers' Trainer skips the batches already consumed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The pass over the file the next update reads from (0: the first).
    pub epoch: u64,
    /// Updates already taken from that pass.
    pub updates: u64,
    /// Epochs done, as a fraction: passes done plus the share of the file's bytes read so
    /// far in this one (the `epoch` of the run's log entries).
    pub progress: f64,
}

/// How examples become batches: the same for every batch of a run.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The model's padding token.
    pub pad: u32,
    /// The task (one label per sequence for text classification, one per token otherwise).
    pub task: Task,
    /// Masks are drawn from it, the epoch and the example's index.
    pub seed: u64,
    /// Batches are padded to a multiple of this...
    pub pad_to_multiple_of: usize,
    /// ...but not beyond this (unless an example is longer).
    pub max_len: usize,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Batches per update.
    pub accumulation: usize,
    /// Data-parallel training: this rank and the count of ranks (`0, 1`: one process). Each
    /// batch is this rank's shard of a global batch of `ranks × batch_size`, as PyTorch's
    /// `DistributedSampler` deals it (see [`super::distributed`]).
    pub rank: usize,
    /// The count of ranks.
    pub ranks: usize,
}

/// One batch, ready for a session of shape `(rows, seq)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PreparedBatch {
    pub batch: Batch,
    pub rows: usize,
    pub seq: usize,
    /// Its labelled positions (a causal LM's shifted by one), transformers' share of
    /// `num_items_in_batch` under gradient accumulation.
    pub labelled: usize,
}

/// The batches of one update.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Window {
    /// The update (1-based).
    pub step: u64,
    /// The epoch its batches come from.
    pub epoch: u64,
    /// One or more batches (fewer than `gradient_accumulation_steps` at an epoch's end).
    pub batches: Vec<PreparedBatch>,
    /// Streamed data: where the stream stands after this update.
    pub position: Option<StreamPosition>,
}

/// The session length for a batch whose longest example has `n` tokens: a multiple of
/// `multiple` (at most `max`, unless the example is longer).
fn bucket(n: usize, multiple: usize, max: usize) -> usize {
    n.next_multiple_of(multiple.max(1)).min(max).max(n)
}

impl Layout {
    /// A batch of `examples` (each with its index in its epoch's data, which draws its
    /// mask), fill-mask examples masked by `masking` as in epoch `epoch`.
    pub fn collate(
        &self,
        examples: &[(&Example, usize)],
        masking: Option<&Masking>,
        epoch: u64,
    ) -> PreparedBatch {
        let rows = examples.len();
        let longest = examples.iter().map(|(e, _)| e.len()).max().unwrap_or(1);
        let seq = bucket(longest, self.pad_to_multiple_of, self.max_len);
        let per_sequence = self.task == Task::TextClassification;
        let causal = self.task == Task::TextGeneration;
        let pad = self.pad;
        let mut b = Batch::default();
        let mut labelled = 0;
        for &(e, index) in examples {
            // transformers' count of labelled tokens, from the data's labels (a causal LM's
            // shifted: its first token predicts nothing).
            labelled += e
                .labels
                .iter()
                .skip(usize::from(causal))
                .filter(|&&l| l != IGNORE_INDEX)
                .count();
            let (ids, labels) = match masking {
                Some(m) => m.apply(e, &mut example_rng(self.seed, epoch, index)),
                None => (e.input_ids.clone(), e.labels.clone()),
            };
            let n = ids.len().min(seq);
            b.input_ids.extend(&ids[..n]);
            b.input_ids.extend(std::iter::repeat_n(pad, seq - n));
            b.token_type_ids.extend(&e.token_type_ids[..n]);
            b.token_type_ids.extend(std::iter::repeat_n(0, seq - n));
            b.attention_mask.extend(std::iter::repeat_n(1, n));
            b.attention_mask.extend(std::iter::repeat_n(0, seq - n));
            if !e.float_labels.is_empty() {
                b.float_labels.extend(&e.float_labels);
            } else if per_sequence {
                b.labels.push(labels[0]);
            } else {
                b.labels.extend(&labels[..n]);
                b.labels.extend(std::iter::repeat_n(IGNORE_INDEX, seq - n));
            }
        }
        PreparedBatch {
            batch: b,
            rows,
            seq,
            labelled,
        }
    }
}

/// Updates in an epoch of `examples` examples: global batches of `ranks × batch_size` (the
/// last one smaller), `accumulation` of them an update (the last window of an epoch
/// shorter).
pub(crate) fn updates_per_epoch(
    examples: usize,
    batch_size: usize,
    accumulation: usize,
    ranks: usize,
) -> u64 {
    super::distributed::batches_per_epoch(examples, batch_size, ranks)
        .div_ceil(accumulation as u64)
        .max(1)
}

/// The windows of a dataset held in memory: each epoch visits the examples in file order
/// or in a new random order (from the seed and the epoch alone), grouped by length when
/// asked, in batches of `batch_size`.
pub(crate) struct MemoryWindows {
    data: Arc<Dataset>,
    layout: Layout,
    shuffle: bool,
    group_by_length: bool,
    next_step: u64,
    /// The visiting order of one epoch, kept while its updates are prepared.
    order: Option<(u64, Vec<usize>)>,
}

impl MemoryWindows {
    /// The windows of `data` from update `first_step` on.
    pub fn new(
        data: Arc<Dataset>,
        layout: Layout,
        shuffle: bool,
        group_by_length: bool,
        first_step: u64,
    ) -> MemoryWindows {
        MemoryWindows {
            data,
            layout,
            shuffle,
            group_by_length,
            next_step: first_step,
            order: None,
        }
    }

    /// The example indices of epoch `epoch` in visiting order.
    fn order(&mut self, epoch: u64) -> &[usize] {
        if self.order.as_ref().map(|o| o.0) != Some(epoch) {
            let mut order: Vec<usize> = (0..self.data.examples.len()).collect();
            if self.shuffle {
                use rand::seq::SliceRandom;
                let mut rng = example_rng(self.layout.seed, epoch, usize::MAX);
                order.shuffle(&mut rng);
            }
            if self.group_by_length {
                // As transformers' LengthGroupedSampler: groups of 50 batches, each sorted
                // longest first.
                let group = 50 * self.layout.batch_size * self.layout.ranks;
                let examples = &self.data.examples;
                for chunk in order.chunks_mut(group) {
                    chunk.sort_by_key(|&i| std::cmp::Reverse(examples[i].len()));
                }
            }
            super::distributed::pad_order(&mut order, self.layout.ranks);
            self.order = Some((epoch, order));
        }
        &self.order.as_ref().expect("set above").1
    }

    /// The next update's window.
    pub fn next_window(&mut self) -> Window {
        let step = self.next_step;
        self.next_step += 1;
        let (rank, ranks) = (self.layout.rank, self.layout.ranks);
        let (b, g) = (self.layout.batch_size, self.layout.accumulation);
        let per_epoch = updates_per_epoch(self.data.examples.len(), b, g, ranks);
        // (A global batch; one process's when `ranks` is 1.)
        let b = b * ranks;
        let epoch = (step - 1) / per_epoch;
        let index = ((step - 1) % per_epoch) as usize;
        let data = Arc::clone(&self.data);
        let layout = self.layout.clone();
        let order = self.order(epoch);
        let start = (index * g * b).min(order.len());
        let batches = order[start..]
            .chunks(b)
            .take(g)
            .map(|global| {
                let indices = super::distributed::shard(global, rank, ranks);
                let rows: Vec<(&Example, usize)> =
                    indices.iter().map(|&i| (&data.examples[i], i)).collect();
                layout.collate(&rows, data.masking.as_ref(), epoch)
            })
            .collect();
        Window {
            step,
            epoch,
            batches,
            position: None,
        }
    }
}

/// Where windows come from: a dataset in memory, or a file read as training goes.
pub(crate) enum Source {
    Memory(MemoryWindows),
    #[cfg(feature = "text")]
    Stream(super::stream::StreamWindows),
}

impl Source {
    /// The next update's window.
    pub fn next_window(&mut self) -> Result<Window> {
        match self {
            Source::Memory(m) => Ok(m.next_window()),
            #[cfg(feature = "text")]
            Source::Stream(s) => s.next_window(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(ids: &[u32], labels: &[i32]) -> Example {
        Example {
            input_ids: ids.to_vec(),
            token_type_ids: vec![0; ids.len()],
            labels: labels.to_vec(),
            word_ids: (0..ids.len() as u32).map(Some).collect(),
            special: vec![0; ids.len()],
            ..Example::default()
        }
    }

    fn layout(task: Task) -> Layout {
        Layout {
            pad: 0,
            task,
            seed: 1,
            pad_to_multiple_of: 4,
            max_len: 8,
            batch_size: 2,
            accumulation: 1,
            rank: 0,
            ranks: 1,
        }
    }

    #[test]
    fn batches_are_padded_to_the_bucket_and_count_their_labels() {
        let a = example(&[5, 6, 7], &[5, 6, 7]);
        let b = example(&[8, 9, 10, 11, 12], &[8, -100, 10, 11, 12]);
        let p = layout(Task::TextGeneration).collate(&[(&a, 0), (&b, 1)], None, 0);
        assert_eq!((p.rows, p.seq), (2, 8));
        assert_eq!(
            p.batch.input_ids,
            [5, 6, 7, 0, 0, 0, 0, 0, 8, 9, 10, 11, 12, 0, 0, 0]
        );
        assert_eq!(p.batch.attention_mask[..8], [1, 1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(p.batch.labels[8..], [8, -100, 10, 11, 12, -100, -100, -100]);
        // Shifted: 2 of a's, 3 of b's (its second is ignored).
        assert_eq!(p.labelled, 5);
        let c = example(&[1, 2], &[3]);
        let p = layout(Task::TextClassification).collate(&[(&c, 0)], None, 0);
        assert_eq!((p.seq, p.batch.labels.clone()), (4, vec![3]));
        // A longer example than max_len keeps its length.
        let long = example(&[1; 11], &[1; 11]);
        assert_eq!(
            layout(Task::FillMask).collate(&[(&long, 0)], None, 0).seq,
            11
        );
    }

    #[test]
    fn in_memory_windows_visit_every_example_once_an_epoch_and_end_with_it() {
        // 7 examples, batches of 2, 3 batches an update: 4 batches, 2 updates an epoch.
        let examples: Vec<Example> = (0..7u32).map(|i| example(&[i + 1], &[i as i32])).collect();
        let data = Arc::new(Dataset {
            source: "test".into(),
            examples,
            masking: None,
        });
        let layout = Layout {
            accumulation: 3,
            rank: 0,
            ranks: 1,
            ..layout(Task::TokenClassification)
        };
        for shuffle in [false, true] {
            let mut w = MemoryWindows::new(Arc::clone(&data), layout.clone(), shuffle, false, 1);
            let mut seen = Vec::new();
            for step in 1..=4 {
                let window = w.next_window();
                assert_eq!((window.step, window.epoch), (step, (step - 1) / 2));
                assert_eq!(window.batches.len(), if step % 2 == 1 { 3 } else { 1 });
                for p in &window.batches {
                    seen.extend(p.batch.input_ids.iter().step_by(p.seq).copied());
                }
            }
            let (first, second) = seen.split_at(7);
            for epoch in [first, second] {
                let mut sorted = epoch.to_vec();
                sorted.sort();
                assert_eq!(sorted, [1, 2, 3, 4, 5, 6, 7], "shuffle {shuffle}");
            }
            assert_eq!(first == second, !shuffle, "a new order each epoch");
            // Started at update 3, the windows are the same.
            let mut later =
                MemoryWindows::new(Arc::clone(&data), layout.clone(), shuffle, false, 3);
            let mut again =
                MemoryWindows::new(Arc::clone(&data), layout.clone(), shuffle, false, 1);
            again.next_window();
            again.next_window();
            assert_eq!(later.next_window(), again.next_window());
        }
    }
}
