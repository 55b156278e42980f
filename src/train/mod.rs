//! Training on your own data, as transformers' `Trainer` does: a task, data files read into
//! examples ([`data`], [`Dataset`]) or a text corpus of any size streamed from its file
//! ([`TextStream`]), training arguments by transformers' names ([`TrainingArguments`]), and
//! out of it logs with transformers' `log_history` keys, evaluations with the task's
//! [`metrics`], checkpoints that resume bit for bit, and the trained model saved as a
//! transformers folder ([`Trainer`]).
//!
//! ```no_run
//! use roformer_wgpu::model::RoFormerConfig;
//! use roformer_wgpu::text::Tokenizer;
//! use roformer_wgpu::train::{model_for, DataOptions, Dataset, LabelNames, Task, Trainer, TrainingArguments};
//! use roformer_wgpu::Context;
//!
//! let ctx = Context::new()?;
//! let tokenizer = Tokenizer::from_dir("my-roformer")?;
//! let options = DataOptions::new(Task::TextClassification, 128);
//! let mut labels = LabelNames::default();
//! let train = Dataset::load("train.csv", &options, &tokenizer, &mut labels)?;
//! let args = TrainingArguments { learning_rate: 3e-5, ..Default::default() };
//! let config = RoFormerConfig::from_file("my-roformer/config.json")?;
//! let weights = roformer_wgpu::io::read_checkpoint("my-roformer/model.safetensors")?;
//! let (model, _new) = model_for(&ctx, config, Task::TextClassification, &labels, &args, Some(&weights))?;
//! let mut trainer = Trainer::new(&ctx, &model, Task::TextClassification, args, train, None,
//!                                &labels, "out", vec![])?;
//! trainer.train(|event| println!("{event:?}"))?;
//! # Ok::<(), roformer_wgpu::Error>(())
//! ```
//!
//! Pre-training on a corpus larger than memory: the same, with the training data a
//! [`TextStream`] (and `max_steps` set):
//!
//! ```no_run
//! # use roformer_wgpu::text::Tokenizer;
//! # use roformer_wgpu::train::{DataOptions, Task, TextStream};
//! # let tokenizer = Tokenizer::from_dir("my-roformer")?;
//! let options = DataOptions::new(Task::FillMask, 128);
//! let train = TextStream::open("corpus.txt", &options, &tokenizer, 1000)?;
//! # Ok::<(), roformer_wgpu::Error>(())
//! ```

mod args;
mod batches;
#[cfg(feature = "text")]
pub mod data;
mod dataset;
pub mod distributed;
pub mod metrics;
mod prefetch;
#[cfg(feature = "text")]
mod stream;
mod trainer;

pub use args::{Precision, SchedulerType, TrainingArguments};
pub use batches::StreamPosition;
pub use dataset::{Columns, DataOptions, Dataset, Example, LabelNames, Masking, Task};
pub use distributed::Distributed;
#[cfg(feature = "text")]
pub use stream::{TextStream, DEFAULT_SHUFFLE_BUFFER_SIZE};
#[cfg(not(target_arch = "wasm32"))]
pub use trainer::{checkpoints, model_for};
pub use trainer::{
    model_for_async, read_state, LogEntry, TrainData, TrainEvent, Trainer, TrainerState,
};
