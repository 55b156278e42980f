//! The trainer's supply of windows ([`super::batches`]): natively a background thread
//! prepares the next updates' batches (reading, tokenizing, masking, collating) while the
//! GPU runs this one, a couple of updates ahead through a bounded channel; in place where
//! there are no threads (wasm32: a browser tab), or when the arguments ask for it
//! (`dataloader_num_workers` 0). Both give the same windows in the same order: the source
//! decides what they hold, not the thread.

use super::batches::{Source, Window};
use crate::error::Result;

/// Windows prepared ahead of the update that takes them.
#[cfg(not(target_arch = "wasm32"))]
const PREFETCH_WINDOWS: usize = 2;

/// Where the trainer takes its windows from.
pub(crate) enum Feed {
    /// Prepared when taken, on the caller's thread.
    InPlace(Source),
    /// Prepared ahead on a thread of their own.
    #[cfg(not(target_arch = "wasm32"))]
    Thread(Worker),
}

/// The background thread and its channel. Dropped, the channel closes: the thread ends
/// when it next hands over a window.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) struct Worker {
    windows: std::sync::mpsc::Receiver<Result<Window>>,
}

impl Feed {
    /// Windows from `source`, prepared ahead on a thread when `background` (and the
    /// platform has threads), else in place.
    pub fn start(source: Source, background: bool) -> Result<Feed> {
        #[cfg(not(target_arch = "wasm32"))]
        if background {
            let (sender, windows) = std::sync::mpsc::sync_channel(PREFETCH_WINDOWS);
            let mut source = source;
            std::thread::Builder::new()
                .name("roformer-batches".into())
                .spawn(move || loop {
                    let window = source.next_window();
                    let failed = window.is_err();
                    // (An error ends the supply: the trainer stops at it.)
                    if sender.send(window).is_err() || failed {
                        break;
                    }
                })
                .map_err(|e| {
                    crate::error::Error::invalid(format!("starting the batch thread: {e}"))
                })?;
            return Ok(Feed::Thread(Worker { windows }));
        }
        let _ = background;
        Ok(Feed::InPlace(source))
    }

    /// The next update's window.
    pub fn next_window(&mut self) -> Result<Window> {
        match self {
            Feed::InPlace(source) => source.next_window(),
            #[cfg(not(target_arch = "wasm32"))]
            Feed::Thread(worker) => worker.windows.recv().unwrap_or_else(|_| {
                Err(crate::error::Error::invalid(
                    "the thread preparing batches stopped (it panicked, or an error ended it)",
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::batches::{Layout, MemoryWindows};
    use crate::train::{Dataset, Example, Task};
    use std::sync::Arc;

    #[test]
    fn a_thread_gives_the_windows_prepared_in_place() {
        let examples: Vec<Example> = (0..37u32)
            .map(|i| Example {
                input_ids: (0..1 + i % 9).collect(),
                token_type_ids: vec![0; 1 + (i % 9) as usize],
                labels: vec![(i % 3) as i32],
                ..Example::default()
            })
            .collect();
        let data = Arc::new(Dataset {
            source: "test".into(),
            examples,
            masking: None,
        });
        let layout = Layout {
            pad: 0,
            task: Task::TextClassification,
            seed: 3,
            pad_to_multiple_of: 4,
            max_len: 16,
            batch_size: 4,
            accumulation: 2,
            rank: 0,
            ranks: 1,
        };
        let source = || {
            Source::Memory(MemoryWindows::new(
                Arc::clone(&data),
                layout.clone(),
                true,
                false,
                1,
            ))
        };
        let mut in_place = Feed::start(source(), false).unwrap();
        let mut thread = Feed::start(source(), true).unwrap();
        assert!(matches!(thread, Feed::Thread(_)));
        for step in 1..=30 {
            let (a, b) = (
                in_place.next_window().unwrap(),
                thread.next_window().unwrap(),
            );
            assert_eq!(a.step, step);
            assert_eq!(a, b);
        }
    }
}
