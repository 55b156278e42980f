//! A plain-text corpus read and tokenized as training goes, for the tasks that learn from
//! raw text (fill-mask, text-generation): what `datasets`' streaming mode gives transformers
//! users (`load_dataset("text", data_files=..., streaming=True)`, an `IterableDataset`, then
//! `.shuffle(seed, buffer_size)`). Memory holds a shuffle buffer of examples, whatever the
//! size of the file.
//!
//! - **Examples**: fill-mask, a line a document, as [`super::Dataset::load`] makes them
//!   (blank lines skipped, cut to `max_length`, masked at batch time); text generation, the
//!   lines' tokens concatenated and cut into blocks of `max_length` (`group_texts`), the
//!   remainder carried to the next line (only the file's last partial block is dropped, as in
//!   memory; `run_clm.py`'s batched `map` also drops one every 1000 texts).
//! - **Shuffling**: `datasets`' buffer shuffle: the first `buffer_size` examples fill a
//!   buffer; then each new one takes the place of one drawn at random from it, which is
//!   yielded; at the end of the file the rest come out in a random order. So an example comes
//!   out at most `buffer_size - 1` places before its place in the file. Each pass over the
//!   file draws from a new generator (the seed and the pass: `datasets`' `set_epoch`).
//!   Without shuffling, or with a buffer of 1, the file's order: then the batches and the
//!   masks are exactly the in-memory dataset's.
//! - **Epochs**: at the end of the file the stream starts again at its start; the last
//!   batch of a pass may be smaller, and its last update may have fewer batches, as in
//!   memory. The number of updates is unknown before the file has been read, so a run
//!   needs `max_steps` (as transformers' Trainer asks of a dataset without a length).
//! - **Resuming** replays the pass it stopped in up to the update it stopped at (reading
//!   and tokenizing, not masking or collating), as transformers' Trainer skips the batches
//!   already consumed: the same batches as the uninterrupted run, at the cost of reading
//!   that part of the file again.
//! - **Progress**: the `epoch` of the log entries is the passes done plus the share of the
//!   file's bytes read (transformers logs `step / max_steps` for a dataset without a
//!   length, which says nothing of the file).
//! - **Errors**: a line that is not UTF-8 is an error naming file and line when the
//!   reader reaches it, which is up to a buffer ahead of the update it would be in: that
//!   update fails (an in-memory dataset finds it before training).
//!
//! Memory: the buffer's examples, the next updates' batches (two ahead, on the background
//! thread) and the longest line, whatever the file's length. The file must not change
//! during a run (nor between a run and its resumption).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::batches::{Layout, PreparedBatch, StreamPosition, Window};
use super::data::{at_line, Format};
use super::dataset::{
    block_example, encode_options, example_of, example_rng, DataOptions, Example, Masking, Task,
};
use crate::error::{Error, Result};
use crate::text::Tokenizer;

/// `datasets`' default shuffle buffer (`IterableDataset.shuffle(buffer_size=1000)`).
pub const DEFAULT_SHUFFLE_BUFFER_SIZE: usize = 1000;

/// A plain-text training file (`.txt`, a document a line) read as training goes, for
/// fill-mask or text-generation (see the module documentation). Give it to
/// [`super::Trainer::new`] in place of a [`super::Dataset`].
#[derive(Clone, Debug)]
pub struct TextStream(Arc<Spec>);

/// What a [`TextStream`] reads, and how (shared by its clones: the trainer's, its thread's).
#[derive(Debug)]
struct Spec {
    path: PathBuf,
    options: DataOptions,
    tokenizer: Tokenizer,
    masking: Option<Masking>,
    buffer_size: usize,
    bytes: u64,
}

impl TextStream {
    /// Opens `path` for `options.task` (fill-mask or text-generation), examples of at most
    /// `options.max_length` tokens from `tokenizer`, shuffled (when the run shuffles) in a
    /// buffer of `shuffle_buffer_size` examples. Checks what can be checked without
    /// reading the file through: the task, the format, that it opens and has a line of text.
    pub fn open(
        path: impl AsRef<Path>,
        options: &DataOptions,
        tokenizer: &Tokenizer,
        shuffle_buffer_size: usize,
    ) -> Result<TextStream> {
        let path = path.as_ref();
        if !matches!(options.task, Task::FillMask | Task::TextGeneration) {
            return Err(Error::invalid(format!(
                "{:?} learns from labelled records, which are read into memory: streaming \
                 is for fill-mask and text-generation",
                options.task
            )));
        }
        let format = Format::of(path)?;
        if format != Format::Text {
            return Err(Error::invalid(format!(
                "{}: streaming reads plain text (.txt, a document a line), and this is \
                 {format:?}",
                path.display()
            )));
        }
        if options.columns.text != "text" {
            return Err(Error::Format {
                path: path.display().to_string(),
                message: format!(
                    "no column {:?} (the file's columns: text)",
                    options.columns.text
                ),
            });
        }
        if shuffle_buffer_size == 0 {
            return Err(Error::invalid("shuffle_buffer_size: must be at least 1"));
        }
        if options.max_length == 0 {
            return Err(Error::invalid("max_length: must be at least 1"));
        }
        let masking = (options.task == Task::FillMask)
            .then(|| Masking::of(options, tokenizer))
            .transpose()?;
        let mut lines = Lines::open(path)?;
        if lines.next_text()?.is_none() {
            return Err(Error::Format {
                path: path.display().to_string(),
                message: "no records: the file is empty".into(),
            });
        }
        Ok(TextStream(Arc::new(Spec {
            path: path.to_path_buf(),
            options: options.clone(),
            tokenizer: tokenizer.clone(),
            masking,
            buffer_size: shuffle_buffer_size,
            bytes: lines.length,
        })))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The task its examples are for.
    pub fn task(&self) -> Task {
        self.0.options.task
    }

    /// Fill-mask: how examples are masked at batch time.
    pub fn masking(&self) -> Option<&Masking> {
        self.0.masking.as_ref()
    }

    /// Examples in the shuffle buffer.
    pub fn shuffle_buffer_size(&self) -> usize {
        self.0.buffer_size
    }

    /// The example an item makes.
    fn example(&self, item: Item) -> Result<(Example, usize)> {
        match item {
            Item::Line {
                ordinal,
                line,
                text,
            } => {
                let e =
                    self.0
                        .tokenizer
                        .encode_with(&text, None, &encode_options(&self.0.options))?;
                Ok((example_of(e, Vec::new(), line), ordinal))
            }
            Item::Block { ordinal, ids } => Ok((block_example(&ids), ordinal)),
        }
    }
}

/// The file's lines of text, in order, each with its number.
struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    /// The last line read (1-based).
    line: usize,
    /// Bytes read so far.
    read: u64,
    /// The file's length when opened.
    length: u64,
    buf: Vec<u8>,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        Ok(Lines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            line: 0,
            read: 0,
            length,
            buf: Vec::new(),
        })
    }

    /// The next line that is not blank, and its number; `None` at the end of the file. A
    /// line that is not UTF-8 is an error naming it (as [`super::data::read`] names it).
    fn next_text(&mut self) -> Result<Option<(usize, String)>> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| Error::Io {
                    path: self.path.display().to_string(),
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.read += n as u64;
            self.line += 1;
            let mut bytes = &self.buf[..];
            if self.line == 1 {
                bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes); // a byte-order mark
            }
            bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            let text = std::str::from_utf8(bytes).map_err(|e| {
                at_line(
                    &self.path,
                    self.line,
                    format!("not UTF-8 (byte {})", e.valid_up_to()),
                )
            })?;
            if !text.trim().is_empty() {
                return Ok(Some((self.line, text.to_string())));
            }
        }
    }
}

/// What the shuffle buffer holds: a fill-mask line, tokenized when it leaves the buffer
/// (so that resuming skips lines without tokenizing them), or a causal LM's block. Each
/// with its index in the unshuffled pass, which draws its mask as an in-memory example's
/// index draws it.
#[derive(Debug)]
enum Item {
    Line {
        ordinal: usize,
        line: usize,
        text: String,
    },
    Block {
        ordinal: usize,
        ids: Vec<u32>,
    },
}

/// One pass over the file: its items in file order, through the shuffle buffer.
struct Pass {
    lines: Lines,
    /// Text generation: tokens read and not yet in a block, from `carry_start` on.
    carry: Vec<u32>,
    carry_start: usize,
    /// Items that entered the buffer.
    entered: usize,
    buffer: Vec<Item>,
    buffer_size: usize,
    rng: StdRng,
    /// The file is read to its end (the buffer then empties in a random order).
    read_all: bool,
    drained_shuffled: bool,
    /// The next pull, done ahead to tell the end of the pass (an error in it is the next
    /// item's: the window before is complete without it).
    peeked: Option<Result<Option<Item>>>,
}

impl Pass {
    fn open(stream: &TextStream, buffer_size: usize, rng: StdRng) -> Result<Pass> {
        Ok(Pass {
            lines: Lines::open(&stream.0.path)?,
            carry: Vec::new(),
            carry_start: 0,
            entered: 0,
            buffer: Vec::with_capacity(buffer_size.min(1 << 16)),
            buffer_size,
            rng,
            read_all: false,
            drained_shuffled: false,
            peeked: None,
        })
    }

    /// The next item in file order, `None` at the end of the file.
    fn read(&mut self, stream: &TextStream) -> Result<Option<Item>> {
        let ordinal = self.entered;
        let item = match stream.0.options.task {
            Task::TextGeneration => {
                let block = stream.0.options.max_length;
                while self.carry.len() - self.carry_start < block {
                    let Some((_, text)) = self.lines.next_text()? else {
                        // The remainder, shorter than a block, is dropped.
                        return Ok(None);
                    };
                    if self.carry_start > 0 {
                        self.carry.drain(..self.carry_start);
                        self.carry_start = 0;
                    }
                    self.carry
                        .extend(stream.0.tokenizer.encode(&text)?.input_ids);
                }
                let ids = self.carry[self.carry_start..self.carry_start + block].to_vec();
                self.carry_start += block;
                Item::Block { ordinal, ids }
            }
            _ => match self.lines.next_text()? {
                Some((line, text)) => Item::Line {
                    ordinal,
                    line,
                    text,
                },
                None => return Ok(None),
            },
        };
        self.entered += 1;
        Ok(Some(item))
    }

    /// The next item out of the shuffle buffer (see the module documentation).
    fn pull(&mut self, stream: &TextStream) -> Result<Option<Item>> {
        while !self.read_all {
            match self.read(stream)? {
                Some(item) if self.buffer.len() == self.buffer_size => {
                    let i = self.rng.random_range(0..self.buffer_size);
                    return Ok(Some(std::mem::replace(&mut self.buffer[i], item)));
                }
                Some(item) => self.buffer.push(item),
                None => self.read_all = true,
            }
        }
        if !self.drained_shuffled {
            self.buffer.shuffle(&mut self.rng);
            self.drained_shuffled = true;
        }
        Ok(self.buffer.pop())
    }

    fn next(&mut self, stream: &TextStream) -> Result<Option<Item>> {
        match self.peeked.take() {
            Some(pulled) => pulled,
            None => self.pull(stream),
        }
    }

    /// Whether the pass has no item left (drawing the next one ahead).
    fn ended(&mut self, stream: &TextStream) -> bool {
        if self.peeked.is_none() {
            self.peeked = Some(self.pull(stream));
        }
        matches!(self.peeked, Some(Ok(None)))
    }

    /// Items held: in the buffer and drawn ahead.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buffer.len() + usize::from(matches!(self.peeked, Some(Ok(Some(_)))))
    }
}

/// The windows of a [`TextStream`], pass after pass.
pub(crate) struct StreamWindows {
    stream: TextStream,
    layout: Layout,
    shuffle: bool,
    /// The pass being read, and the updates taken from it.
    epoch: u64,
    updates: u64,
    pass: Option<Box<Pass>>,
    next_step: u64,
    /// Updates of the current pass to skip first (a resumed run).
    skip: u64,
}

impl StreamWindows {
    /// The windows of `stream` from update `first_step` on, `position` being where the
    /// stream stands before it (the start for a new run).
    pub fn new(
        stream: TextStream,
        layout: Layout,
        shuffle: bool,
        position: StreamPosition,
        first_step: u64,
    ) -> StreamWindows {
        StreamWindows {
            stream,
            layout,
            shuffle,
            epoch: position.epoch,
            updates: 0,
            pass: None,
            next_step: first_step,
            skip: position.updates,
        }
    }

    /// The next update's window.
    pub fn next_window(&mut self) -> Result<Window> {
        while self.skip > 0 {
            self.window(false)?;
            self.skip -= 1;
        }
        let mut w = self.window(true)?;
        w.step = self.next_step;
        self.next_step += 1;
        Ok(w)
    }

    /// The pass being read (opened at its start when there is none).
    fn pass(&mut self) -> Result<&mut Pass> {
        if self.pass.is_none() {
            let size = if self.shuffle {
                self.stream.0.buffer_size
            } else {
                1
            };
            let rng = example_rng(self.layout.seed, self.epoch, usize::MAX);
            self.pass = Some(Box::new(Pass::open(&self.stream, size, rng)?));
        }
        Ok(self.pass.as_mut().expect("opened above"))
    }

    /// The next window of the pass, its batches collated and masked when `prepare` (else
    /// only read past, resuming); the next pass begins when this one ends.
    fn window(&mut self, prepare: bool) -> Result<Window> {
        let (b, g) = (self.layout.batch_size, self.layout.accumulation);
        let epoch = self.epoch;
        self.pass()?;
        let pass = self.pass.as_mut().expect("opened above");
        let stream = &self.stream;
        let mut batches: Vec<PreparedBatch> = Vec::new();
        let mut count = 0;
        for _ in 0..g {
            let mut items = Vec::with_capacity(b);
            while items.len() < b {
                match pass.next(stream)? {
                    Some(item) => items.push(item),
                    None => break,
                }
            }
            if items.is_empty() {
                break;
            }
            count += 1;
            if prepare {
                let examples = items
                    .into_iter()
                    .map(|item| stream.example(item))
                    .collect::<Result<Vec<_>>>()?;
                let rows: Vec<(&Example, usize)> = examples.iter().map(|(e, i)| (e, *i)).collect();
                batches.push(self.layout.collate(&rows, stream.0.masking.as_ref(), epoch));
            }
            if pass.ended(stream) {
                break;
            }
        }
        if count == 0 {
            return Err(Error::Format {
                path: stream.0.path.display().to_string(),
                message: "no examples (for text generation: fewer tokens than one block)".into(),
            });
        }
        let ended = pass.ended(stream);
        let read = pass.lines.read as f64 / stream.0.bytes.max(1) as f64;
        self.updates += 1;
        let progress = if ended {
            self.epoch += 1;
            self.updates = 0;
            self.pass = None;
            (epoch + 1) as f64
        } else {
            epoch as f64 + read.min(1.0)
        };
        Ok(Window {
            step: 0,
            epoch,
            batches,
            position: Some(StreamPosition {
                epoch: self.epoch,
                updates: self.updates,
                progress,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::batches::MemoryWindows;
    use crate::train::{Dataset, LabelNames};

    fn tokenizer() -> Tokenizer {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer/fill_mask/initial");
        Tokenizer::from_dir(dir).unwrap()
    }

    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("roformer-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A corpus of `n` lines of a few words each (some blank), the words from a fixed list.
    fn corpus(n: usize) -> String {
        let words = [
            "the", "park", "good", "learning", "in", "a", "day", "bad", "weather", "walk", "dog",
            "runs", "quickly", "home", "tonight",
        ];
        let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(7);
        (0..n)
            .map(|i| {
                if i % 11 == 5 {
                    return "  \n".to_string();
                }
                let k = rng.random_range(1..12);
                let line: Vec<&str> = (0..k)
                    .map(|_| words[rng.random_range(0..words.len())])
                    .collect();
                line.join(" ") + "\n"
            })
            .collect()
    }

    fn layout(task: Task, batch_size: usize, accumulation: usize) -> Layout {
        Layout {
            pad: 0,
            task,
            seed: 5,
            pad_to_multiple_of: 8,
            max_len: 16,
            batch_size,
            accumulation,
            rank: 0,
            ranks: 1,
        }
    }

    /// The items of one pass, by their ordinals, checking what the pass holds after each.
    fn ordinals(stream: &TextStream, size: usize, seed: u64) -> Vec<usize> {
        let rng = <StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let mut pass = Pass::open(stream, size, rng).unwrap();
        let mut out = Vec::new();
        while let Some(item) = pass.next(stream).unwrap() {
            let (Item::Line { ordinal, .. } | Item::Block { ordinal, .. }) = item;
            out.push(ordinal);
            // Nothing is read before a place frees in the buffer: what the pass holds, and
            // what was read and not yet given out, stay within the buffer (and the one
            // item drawn ahead).
            assert!(pass.held() <= size + 1, "{} held", pass.held());
            assert!(pass.entered - out.len() <= size + 1);
            if out.len() % 3 == 0 {
                pass.ended(stream);
            }
        }
        out
    }

    #[test]
    fn the_buffer_shuffle_is_a_permutation_within_the_buffer_and_deterministic() {
        let tokenizer = tokenizer();
        let path = file("shuffle.txt", corpus(500).as_bytes());
        for task in [Task::FillMask, Task::TextGeneration] {
            let options = DataOptions::new(task, 8);
            let stream = TextStream::open(&path, &options, &tokenizer, 1).unwrap();
            let unshuffled = ordinals(&stream, 1, 0);
            let n = unshuffled.len();
            assert!(n > 200, "{n}");
            assert_eq!(
                unshuffled,
                (0..n).collect::<Vec<_>>(),
                "a buffer of 1 keeps file order"
            );
            for size in [2, 7, 64, 1000] {
                let order = ordinals(&stream, size, 3);
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(
                    sorted, unshuffled,
                    "a permutation ({task:?}, buffer {size})"
                );
                // An item comes out at most size - 1 places before its place in the file.
                for (place, &ordinal) in order.iter().enumerate() {
                    assert!(
                        ordinal < place + size,
                        "item {ordinal} at {place}, buffer {size}"
                    );
                }
                assert_eq!(order, ordinals(&stream, size, 3), "deterministic");
                assert_ne!(
                    order,
                    ordinals(&stream, size, 4),
                    "another seed, another order"
                );
                assert_ne!(order, unshuffled);
            }
        }
    }

    #[test]
    fn memory_holds_the_buffer_whatever_the_file() {
        // 20,000 lines through a buffer of 50, in windows as the trainer takes them: the
        // pass never holds more than the buffer and the item drawn ahead (`ordinals` checks
        // after every item), and every line comes out once per pass.
        let tokenizer = tokenizer();
        let path = file("big.txt", corpus(20_000).as_bytes());
        let options = DataOptions::new(Task::FillMask, 16);
        let stream = TextStream::open(&path, &options, &tokenizer, 50).unwrap();
        let order = ordinals(&stream, 50, 9);
        let text_lines = (0..20_000).filter(|i| i % 11 != 5).count();
        assert_eq!(order.len(), text_lines);
        let mut windows = StreamWindows::new(
            stream,
            layout(Task::FillMask, 32, 2),
            true,
            StreamPosition::default(),
            1,
        );
        let mut rows = 0;
        while windows.epoch == 0 {
            let w = windows.next_window().unwrap();
            rows += w.batches.iter().map(|b| b.rows).sum::<usize>();
            let held = windows.pass.as_ref().map_or(0, |p| p.held());
            assert!(held <= 51, "{held}");
        }
        assert_eq!(rows, order.len());
    }

    #[test]
    fn unshuffled_streams_give_the_in_memory_batches() {
        let tokenizer = tokenizer();
        let path = file("same.txt", corpus(203).as_bytes());
        for (task, whole_word) in [
            (Task::FillMask, false),
            (Task::FillMask, true),
            (Task::TextGeneration, false),
        ] {
            let options = DataOptions {
                whole_word_mask: whole_word,
                ..DataOptions::new(task, 16)
            };
            let data =
                Dataset::load(&path, &options, &tokenizer, &mut LabelNames::default()).unwrap();
            let stream = TextStream::open(&path, &options, &tokenizer, 100).unwrap();
            assert_eq!(stream.masking(), data.masking.as_ref());
            let layout = layout(task, 4, 3);
            let mut memory = MemoryWindows::new(Arc::new(data), layout.clone(), false, false, 1);
            let mut streamed =
                StreamWindows::new(stream, layout, false, StreamPosition::default(), 1);
            // Past the end of the first pass: the windows end with it in both.
            for _ in 0..40 {
                let (m, s) = (memory.next_window(), streamed.next_window().unwrap());
                assert_eq!((m.step, m.epoch), (s.step, s.epoch));
                assert_eq!(m.batches, s.batches, "{task:?} update {}", m.step);
            }
            assert!(streamed.epoch >= 1, "a second pass");
        }
    }

    #[test]
    fn a_resumed_stream_gives_the_uninterrupted_windows() {
        let tokenizer = tokenizer();
        let path = file("resume.txt", corpus(60).as_bytes());
        for task in [Task::FillMask, Task::TextGeneration] {
            let options = DataOptions::new(task, 8);
            let stream = TextStream::open(&path, &options, &tokenizer, 16).unwrap();
            let layout = layout(task, 4, 2);
            let mut whole = StreamWindows::new(
                stream.clone(),
                layout.clone(),
                true,
                StreamPosition::default(),
                1,
            );
            let windows: Vec<Window> = (0..60).map(|_| whole.next_window().unwrap()).collect();
            assert!(windows.last().unwrap().epoch >= 2, "three passes at least");
            assert_ne!(
                windows.iter().find(|w| w.epoch == 1).unwrap().batches,
                windows[0].batches,
                "another order in another pass"
            );
            for stop in [1, 7, 25, 41] {
                let position = windows[stop - 1].position.unwrap();
                let mut resumed = StreamWindows::new(
                    stream.clone(),
                    layout.clone(),
                    true,
                    position,
                    stop as u64 + 1,
                );
                for w in &windows[stop..stop + 6] {
                    assert_eq!(&resumed.next_window().unwrap(), w, "{task:?} from {stop}");
                }
            }
        }
    }

    #[test]
    fn a_thread_gives_the_windows_and_the_error_prepared_in_place() {
        use crate::train::batches::Source;
        use crate::train::prefetch::Feed;
        let tokenizer = tokenizer();
        let mut text = corpus(120).into_bytes();
        text.extend(b"\xff\n");
        let path = file("thread.txt", &text);
        let options = DataOptions {
            whole_word_mask: true,
            ..DataOptions::new(Task::FillMask, 16)
        };
        let stream = TextStream::open(&path, &options, &tokenizer, 9).unwrap();
        let feed = |background| {
            let windows = StreamWindows::new(
                stream.clone(),
                layout(Task::FillMask, 4, 2),
                true,
                StreamPosition::default(),
                1,
            );
            Feed::start(Source::Stream(windows), background).unwrap()
        };
        let (mut in_place, mut thread) = (feed(false), feed(true));
        for step in 1.. {
            match (in_place.next_window(), thread.next_window()) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "update {step}"),
                (Err(a), Err(b)) => {
                    assert!(
                        a.to_string()
                            .ends_with("thread.txt:121: not UTF-8 (byte 0)"),
                        "{a}"
                    );
                    assert_eq!(a.to_string(), b.to_string());
                    assert!(step > 5, "{step}");
                    break;
                }
                (a, b) => panic!("update {step}: {a:?} and {b:?}"),
            }
        }
    }

    #[test]
    fn progress_is_the_share_of_the_file_read() {
        let tokenizer = tokenizer();
        let path = file("progress.txt", corpus(100).as_bytes());
        let options = DataOptions::new(Task::FillMask, 16);
        let stream = TextStream::open(&path, &options, &tokenizer, 10).unwrap();
        let mut w = StreamWindows::new(
            stream,
            layout(Task::FillMask, 8, 1),
            true,
            StreamPosition::default(),
            1,
        );
        let first = w.next_window().unwrap().position.unwrap().progress;
        assert!(first > 0.0 && first < 0.5, "{first}");
        let mut last = first;
        loop {
            let p = w.next_window().unwrap().position.unwrap();
            // (It stays at 1 while the buffer empties once the file is read.)
            assert!(
                p.progress >= last && p.progress <= 1.0,
                "{} after {last}",
                p.progress
            );
            last = p.progress;
            if p.epoch == 1 {
                assert_eq!((p.updates, p.progress), (0, 1.0));
                break;
            }
        }
    }

    #[test]
    fn bad_streams_are_errors_naming_file_and_line() {
        let tokenizer = tokenizer();
        let fill = DataOptions::new(Task::FillMask, 16);
        // A line that is not UTF-8, far into the file: found when the stream reaches it.
        let mut text = corpus(300).into_bytes();
        let at = text
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(199)
            .unwrap()
            .0;
        text.splice(at + 1..at + 1, b"caf\xe9\n".iter().copied());
        let path = file("bad.txt", &text);
        let stream = TextStream::open(&path, &fill, &tokenizer, 10).unwrap();
        let mut w = StreamWindows::new(
            stream,
            layout(Task::FillMask, 8, 1),
            false,
            StreamPosition::default(),
            1,
        );
        let err = (0..100)
            .find_map(|_| w.next_window().err())
            .expect("an error")
            .to_string();
        assert!(err.ends_with("bad.txt:201: not UTF-8 (byte 3)"), "{err}");
        // The same message as the in-memory reader's.
        let memory = Dataset::load(&path, &fill, &tokenizer, &mut LabelNames::default())
            .unwrap_err()
            .to_string();
        assert_eq!(err, memory);
        let open = |name: &str, bytes: &[u8], options: &DataOptions| {
            TextStream::open(file(name, bytes), options, &tokenizer, 10)
                .unwrap_err()
                .to_string()
        };
        assert!(open("empty.txt", b"\n  \n", &fill)
            .ends_with("empty.txt: no records: the file is empty"));
        assert!(open("a.csv", b"text\nhi\n", &fill).contains("streaming reads plain text"));
        let classify = DataOptions::new(Task::TextClassification, 16);
        assert!(open("c.txt", b"hi\n", &classify).contains("fill-mask and text-generation"));
        let column = DataOptions {
            columns: crate::train::Columns {
                text: "body".into(),
                ..Default::default()
            },
            ..fill.clone()
        };
        assert!(open("col.txt", b"hi\n", &column).contains("no column \"body\""));
        // Fewer tokens than one block: found at the first update.
        let clm = DataOptions::new(Task::TextGeneration, 512);
        let stream =
            TextStream::open(file("short.txt", b"a short text\n"), &clm, &tokenizer, 10).unwrap();
        let mut w = StreamWindows::new(
            stream,
            layout(Task::TextGeneration, 8, 1),
            true,
            StreamPosition::default(),
            1,
        );
        assert!(w
            .next_window()
            .unwrap_err()
            .to_string()
            .contains("fewer tokens than one block"));
    }
}
