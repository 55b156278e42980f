//! RoFormer's Chinese pre-tokenizer: jieba word segmentation, as transformers'
//! `JiebaPreTokenizer` (`models/roformer/tokenization_utils.py`) does it with `rjieba`, which
//! wraps the same `jieba-rs` (default dictionary, no HMM).
//!
//! A jieba word that is in the vocabulary stays one piece. Any other word is split as BERT's
//! normalizer with `handle_chinese_chars` would split it (each CJK character alone, whitespace
//! dropped), and its pieces are laid end to end from the word's start, as transformers does
//! (so offsets skip no whitespace inside a word: jieba never returns such a word with text
//! on both sides of a space).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use tokenizers::tokenizer::normalizer::Range;
use tokenizers::tokenizer::{NormalizedString, PreTokenizedString, PreTokenizer};

/// jieba's dictionary takes ~100 ms to build: one per process.
fn jieba() -> &'static jieba_rs::Jieba {
    static JIEBA: OnceLock<jieba_rs::Jieba> = OnceLock::new();
    JIEBA.get_or_init(jieba_rs::Jieba::new)
}

/// The jieba pre-tokenizer over a vocabulary.
#[derive(Clone)]
pub(crate) struct JiebaPreTokenizer {
    vocab: Arc<HashSet<String>>,
}

impl JiebaPreTokenizer {
    pub(crate) fn new(vocab: impl IntoIterator<Item = String>) -> JiebaPreTokenizer {
        JiebaPreTokenizer {
            vocab: Arc::new(vocab.into_iter().collect()),
        }
    }

    fn split(&self, normalized: NormalizedString) -> tokenizers::Result<Vec<NormalizedString>> {
        let text = normalized.get();
        let mut splits = Vec::new();
        for word in jieba().tokenize(text, jieba_rs::TokenizeMode::Default, false) {
            if self.vocab.contains(word.word) {
                splits.extend(slice(&normalized, word.byte_start, word.byte_end)?);
                continue;
            }
            let mut start = word.byte_start;
            for piece in bert_chinese_pieces(word.word) {
                splits.extend(slice(&normalized, start, start + piece.len())?);
                start += piece.len();
            }
        }
        Ok(splits)
    }
}

fn slice(
    n: &NormalizedString,
    start: usize,
    end: usize,
) -> tokenizers::Result<Option<NormalizedString>> {
    if start >= end {
        return Ok(None);
    }
    n.slice(Range::Normalized(start..end))
        .map(Some)
        .ok_or_else(|| format!("jieba split {start}..{end} is not on character boundaries").into())
}

impl PreTokenizer for JiebaPreTokenizer {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        pretokenized.split(|_, normalized| self.split(normalized))
    }
}

/// `BertNormalizer(handle_chinese_chars=True).normalize_str(word).split()`: every CJK
/// character alone, the other runs split at whitespace.
fn bert_chinese_pieces(word: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut run: Option<usize> = None;
    for (i, c) in word.char_indices() {
        let alone = is_chinese_char(c);
        if alone || c.is_whitespace() {
            if let Some(s) = run.take() {
                pieces.push(&word[s..i]);
            }
            if alone {
                pieces.push(&word[i..i + c.len_utf8()]);
            }
        } else if run.is_none() {
            run = Some(i);
        }
    }
    if let Some(s) = run {
        pieces.push(&word[s..]);
    }
    pieces
}

/// The CJK Unified Ideographs blocks, as BERT defines "Chinese character".
fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_characters_stand_alone_and_whitespace_goes() {
        assert_eq!(
            bert_chinese_pieces("北京abc 东"),
            vec!["北", "京", "abc", "东"]
        );
        assert_eq!(bert_chinese_pieces(" "), Vec::<&str>::new());
        assert_eq!(bert_chinese_pieces("gpu😀"), vec!["gpu😀"]);
    }
}
