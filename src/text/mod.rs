//! Text in: the tokenizers of RoFormer checkpoints (see [`Tokenizer`]), on HuggingFace's
//! `tokenizers` crate, with jieba word segmentation for RoFormer's Chinese vocabularies.

// Native only: jieba-rs inflates its dictionary with zstd's C code (see Cargo.toml).
#[cfg(not(target_arch = "wasm32"))]
mod jieba;
mod tokenizer;

pub use tokenizer::{EncodeOptions, Encoding, SpecialTokens, Tokenizer, TokenizerKind, Truncation};

/// The start of a text for a message: its first 60 characters quoted and escaped as Rust's
/// `{:?}` does (newlines and control characters as `\n`, `\u{1b}`, ...), then `…` and its
/// length in characters when it is longer, so that a megabyte of input gives a short line.
pub fn quote(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} characters)", &text[..cut], text.chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::{quote, Encoding};

    #[test]
    fn keep_last_cuts_every_field_from_the_front() {
        let mut e = Encoding {
            input_ids: vec![1, 2, 3, 4],
            token_type_ids: vec![0; 4],
            attention_mask: vec![1; 4],
            offsets: vec![(0, 0), (0, 1), (1, 2), (0, 0)],
            tokens: ["[CLS]", "a", "b", "[SEP]"].map(String::from).to_vec(),
            word_ids: vec![None, Some(0), Some(1), None],
            sequence_ids: vec![None, Some(0), Some(0), None],
            special_tokens_mask: vec![1, 0, 0, 1],
            overflowing: Vec::new(),
        };
        e.keep_last(2);
        assert_eq!(e.input_ids, [3, 4]);
        assert_eq!(e.tokens, ["b", "[SEP]"]);
        assert_eq!(e.offsets, [(1, 2), (0, 0)]);
        assert_eq!(e.special_tokens_mask, [0, 1]);
        e.keep_last(5);
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn quote_keeps_the_start_of_a_long_text_on_a_char_boundary() {
        assert_eq!(quote("short\nline"), "\"short\\nline\"");
        let long = "é".repeat(1000);
        assert_eq!(
            quote(&long),
            format!("{:?}… (1000 characters)", "é".repeat(60))
        );
        assert_eq!(quote(&"x".repeat(60)), format!("{:?}", "x".repeat(60)));
    }
}
