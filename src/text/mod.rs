//! Text in: the tokenizers of RoFormer checkpoints (see [`Tokenizer`]), on HuggingFace's
//! `tokenizers` crate, with jieba word segmentation for RoFormer's Chinese vocabularies.

mod jieba;
mod tokenizer;

pub use tokenizer::{EncodeOptions, Encoding, SpecialTokens, Tokenizer, TokenizerKind, Truncation};
