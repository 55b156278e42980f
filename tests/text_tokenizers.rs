//! The tokenizers against transformers' `AutoTokenizer` (tests/fixtures/text/tokenization.json,
//! made by tools/make_text_fixtures.py): ids, attention masks, token types, character offsets,
//! tokens and word ids of mixed Chinese/English/emoji texts, pairs, truncated and padded
//! batches, for a `tokenizer.json` WordPiece and RoFormer's jieba tokenizer (both layouts).

#![cfg(feature = "text")]

mod common;

use std::path::PathBuf;

use roformer_wgpu::text::{EncodeOptions, Encoding, Tokenizer, TokenizerKind, Truncation};
use serde_json::Value;

fn text_dir() -> PathBuf {
    common::manifest_dir().join("tests/fixtures/text")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(text_dir().join("tokenization.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The inputs, as the fixture maker tokenized them.
fn texts(want: &Value) -> Vec<&str> {
    want["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

fn pairs(want: &Value) -> Vec<(&str, &str)> {
    want["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(got: &Encoding, want: &Value, what: &str) {
    assert_eq!(got.input_ids, u32s(&want["input_ids"]), "{what}: ids");
    assert_eq!(
        got.attention_mask,
        u32s(&want["attention_mask"]),
        "{what}: mask"
    );
    assert_eq!(
        got.token_type_ids,
        u32s(&want["token_type_ids"]),
        "{what}: types"
    );
    let offsets: Vec<(usize, usize)> = want["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got.offsets, offsets, "{what}: offsets");
    let tokens: Vec<String> = want["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got.tokens, tokens, "{what}: tokens");
    let words: Vec<Option<u32>> = want["word_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| u32::try_from(w.as_i64().unwrap()).ok())
        .collect();
    assert_eq!(got.word_ids, words, "{what}: word ids");
}

fn check_folder(name: &str, kind: TokenizerKind) {
    let all = expected();
    let (texts, pairs) = (texts(&all), pairs(&all));
    assert_eq!((texts.len(), pairs.len()), (8, 2));
    let want = &all[name];
    let tok = Tokenizer::from_dir(text_dir().join(name)).unwrap();
    assert_eq!(tok.kind(), kind, "{name}");
    for (i, text) in texts.iter().enumerate() {
        let what = format!("{name} single {i} {text:?}");
        check(&tok.encode(text).unwrap(), &want["single"][i], &what);
        let truncate = EncodeOptions {
            truncation: Some(Truncation::LongestFirst),
            max_length: Some(6),
            ..EncodeOptions::default()
        };
        let got = tok.encode_with(text, None, &truncate).unwrap();
        check(&got, &want["truncated"][i], &format!("{what} truncated"));
        let ids = tok.encode(text).unwrap().input_ids;
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            want["decoded"][i].as_str().unwrap(),
            "{what} decoded"
        );
    }
    for (i, (a, b)) in pairs.iter().enumerate() {
        let what = format!("{name} pair {i}");
        let got = tok
            .encode_with(a, Some(b), &EncodeOptions::default())
            .unwrap();
        check(&got, &want["pair"][i], &what);
        let only_second = EncodeOptions {
            truncation: Some(Truncation::OnlySecond),
            max_length: Some(24),
            ..EncodeOptions::default()
        };
        let got = tok.encode_with(a, Some(b), &only_second).unwrap();
        check(
            &got,
            &want["pair_truncated"][i],
            &format!("{what} truncated"),
        );
    }
    let padded = tok
        .encode_batch(
            &texts,
            None,
            &EncodeOptions {
                pad_to_longest: true,
                ..EncodeOptions::default()
            },
        )
        .unwrap();
    for (i, got) in padded.iter().enumerate() {
        check(got, &want["padded"][i], &format!("{name} padded {i}"));
    }
}

#[test]
fn tokenizer_json_wordpiece_matches_transformers() {
    check_folder("wordpiece", TokenizerKind::TokenizerJson);
}

#[test]
fn roformer_jieba_from_tokenizer_json_matches_transformers() {
    check_folder("jieba", TokenizerKind::RoFormerJieba);
}

#[test]
fn roformer_jieba_from_vocab_txt_matches_transformers() {
    check_folder("jieba_vocab_only", TokenizerKind::RoFormerJieba);
}

#[test]
fn jieba_keeps_in_vocabulary_words_whole() {
    // Independent of the fixtures: 北京 and 首都 are in the vocabulary, 首 alone too.
    let tok = Tokenizer::from_dir(text_dir().join("jieba")).unwrap();
    let e = tok.encode("北京是中国的首都").unwrap();
    assert_eq!(
        e.tokens,
        ["[CLS]", "北京", "是", "中国", "的", "首都", "[SEP]"]
    );
    assert_eq!(e.offsets[1], (0, 2));
    assert_eq!(e.offsets[5], (6, 8));
}

#[test]
fn bad_tokenizer_folders_are_errors_naming_the_file() {
    let scratch = std::env::temp_dir().join(format!("roformer-tok-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let err = Tokenizer::from_dir(&scratch).unwrap_err().to_string();
    assert!(err.contains("no tokenizer"), "{err}");
    std::fs::write(scratch.join("tokenizer.json"), "{ not json").unwrap();
    let err = Tokenizer::from_dir(&scratch).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_file(scratch.join("tokenizer.json")).unwrap();
    std::fs::write(scratch.join("vocab.txt"), "").unwrap();
    let err = Tokenizer::from_dir(&scratch).unwrap_err().to_string();
    assert!(err.contains("vocab.txt") && err.contains("empty"), "{err}");
    std::fs::write(scratch.join("vocab.txt"), "a\nb\n").unwrap();
    let err = Tokenizer::from_dir(&scratch).unwrap_err().to_string();
    assert!(err.contains("[CLS]"), "{err}");
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn truncation_that_cannot_fit_is_an_error() {
    let tok = Tokenizer::from_dir(text_dir().join("wordpiece")).unwrap();
    let opts = EncodeOptions {
        truncation: Some(Truncation::OnlySecond),
        max_length: Some(5),
        ..EncodeOptions::default()
    };
    let err = tok
        .encode_with("a long question here", Some("ctx"), &opts)
        .unwrap_err();
    assert!(err.to_string().contains("tokenizing"), "{err}");
    let opts = EncodeOptions {
        truncation: Some(Truncation::LongestFirst),
        max_length: Some(1),
        ..EncodeOptions::default()
    };
    assert!(tok.encode_with("a", None, &opts).is_err());
}
