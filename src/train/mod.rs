//! Training on your own data, as transformers' `Trainer` does: files in ([`data`]), a task
//! and training arguments, logs, evaluations, checkpoints and a saved model out.

mod args;
pub mod data;

pub use args::{Precision, SchedulerType, TrainingArguments};
