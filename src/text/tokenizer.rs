//! A model folder's tokenizer, read as transformers' `AutoTokenizer` reads it, running on
//! HuggingFace's own `tokenizers` crate.
//!
//! - `tokenizer.json` (any `tokenizers` pipeline: WordPiece, BPE, Unigram): used as it is.
//! - `tokenizer_config.json` naming `RoFormerTokenizer` (RoFormer's Chinese checkpoints): a
//!   BERT WordPiece over the vocabulary (`tokenizer.json`'s, else `vocab.txt`'s) with jieba
//!   word segmentation before it, built as transformers' `RoFormerTokenizer.__init__` builds
//!   it (`tokenizer.json` saved by transformers holds a BERT pre-tokenizer in jieba's place).
//! - `vocab.txt` alone, or with a BERT `tokenizer_config.json`: a BERT WordPiece.
//!
//! Offsets are in characters (Unicode scalar values) of the input, as Python's are.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::tokenizer::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessor,
    PostProcessorWrapper, PreTokenizedString, PreTokenizer, PreTokenizerWrapper, TokenizerImpl,
};
use tokenizers::utils::padding::{pad_encodings, PaddingParams, PaddingStrategy};
use tokenizers::utils::truncation::{truncate_encodings, TruncationParams, TruncationStrategy};
use tokenizers::{Decoder, Model};

#[cfg(not(target_arch = "wasm32"))]
use super::jieba::JiebaPreTokenizer;
use crate::error::{Error, Result};

/// The pre-tokenizer: a `tokenizer.json`'s own, or jieba.
#[derive(Clone)]
enum Splitter {
    Standard(Option<PreTokenizerWrapper>),
    #[cfg(not(target_arch = "wasm32"))]
    Jieba(JiebaPreTokenizer),
}

impl PreTokenizer for Splitter {
    fn pre_tokenize(&self, p: &mut PreTokenizedString) -> tokenizers::Result<()> {
        match self {
            Splitter::Standard(Some(s)) => s.pre_tokenize(p),
            Splitter::Standard(None) => Ok(()),
            #[cfg(not(target_arch = "wasm32"))]
            Splitter::Jieba(j) => j.pre_tokenize(p),
        }
    }
}

type Backend =
    TokenizerImpl<ModelWrapper, NormalizerWrapper, Splitter, PostProcessorWrapper, DecoderWrapper>;

/// Which tokenizer a folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// A `tokenizer.json` pipeline, used as written.
    TokenizerJson,
    /// BERT WordPiece from `vocab.txt`.
    WordPiece,
    /// RoFormer's `RoFormerTokenizer`: jieba, then BERT WordPiece.
    RoFormerJieba,
}

/// How to cut a text (or pair) longer than a maximum, as transformers' `truncation=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// Take tokens from the longer sequence first (`True`, `"longest_first"`).
    LongestFirst,
    /// Only from the first sequence.
    OnlyFirst,
    /// Only from the second sequence (question answering's contexts).
    OnlySecond,
}

/// Options of one encoding call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Cut to `max_length` tokens (special tokens included) this way; `None`: never cut.
    pub truncation: Option<Truncation>,
    /// The most tokens (when truncating); `None` means the tokenizer's `model_max_length`.
    pub max_length: Option<usize>,
    /// Overlap, in tokens, of consecutive overflowing windows ([`Encoding::overflowing`]).
    pub stride: usize,
    /// Pad a batch to its longest sequence (after the tokens, with the pad token).
    pub pad_to_longest: bool,
}

/// One tokenized text (or pair), with transformers' fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// 0 for the first sequence (and its special tokens), 1 for the second.
    pub token_type_ids: Vec<u32>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Each token's `(start, end)` in characters of its own text; `(0, 0)` for special
    /// tokens and padding.
    pub offsets: Vec<(usize, usize)>,
    /// The token strings.
    pub tokens: Vec<String>,
    /// Which pre-tokenized word of its sequence each token comes from.
    pub word_ids: Vec<Option<u32>>,
    /// Which sequence (0 or 1) each token comes from; `None` for special tokens.
    pub sequence_ids: Vec<Option<usize>>,
    /// 1 for special tokens (added or padding).
    pub special_tokens_mask: Vec<u32>,
    /// The windows past `max_length`, when truncation cut this one (with `stride` overlap).
    pub overflowing: Vec<Encoding>,
}

impl Encoding {
    fn from_hf(e: tokenizers::Encoding) -> Encoding {
        let overflowing = e
            .get_overflowing()
            .iter()
            .cloned()
            .map(Encoding::from_hf)
            .collect();
        Encoding {
            input_ids: e.get_ids().to_vec(),
            token_type_ids: e.get_type_ids().to_vec(),
            attention_mask: e.get_attention_mask().to_vec(),
            offsets: e.get_offsets().to_vec(),
            tokens: e.get_tokens().to_vec(),
            word_ids: e.get_word_ids().to_vec(),
            sequence_ids: e.get_sequence_ids(),
            special_tokens_mask: e.get_special_tokens_mask().to_vec(),
            overflowing,
        }
    }

    /// Number of tokens (padding included).
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Drops tokens from the front until at most `n` are left: truncation from the left, as
    /// transformers' text-generation pipeline cuts a prompt to leave room for new tokens
    /// (`handle_long_generation="hole"`). Windows in `overflowing` are left as they are.
    pub fn keep_last(&mut self, n: usize) {
        fn cut<T>(v: &mut Vec<T>, n: usize) {
            v.drain(..v.len().saturating_sub(n));
        }
        cut(&mut self.input_ids, n);
        cut(&mut self.token_type_ids, n);
        cut(&mut self.attention_mask, n);
        cut(&mut self.offsets, n);
        cut(&mut self.tokens, n);
        cut(&mut self.word_ids, n);
        cut(&mut self.sequence_ids, n);
        cut(&mut self.special_tokens_mask, n);
    }

    /// The character span of word `word` of sequence `sequence`: from its first token's
    /// start to its last token's end (`tokenizers`' `word_to_chars`).
    pub fn word_to_chars(&self, word: u32, sequence: usize) -> Option<(usize, usize)> {
        let mut span: Option<(usize, usize)> = None;
        for i in 0..self.len() {
            if self.word_ids[i] == Some(word) && self.sequence_ids[i] == Some(sequence) {
                let (s, e) = self.offsets[i];
                span = Some(span.map_or((s, e), |(a, _)| (a, e)));
            }
        }
        span
    }
}

/// The special tokens a pipeline needs, by id where the vocabulary has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `[CLS]` (or the `cls_token`).
    pub cls: Option<u32>,
    /// `[SEP]`.
    pub sep: Option<u32>,
    /// `[PAD]`.
    pub pad: Option<u32>,
    /// `[MASK]`.
    pub mask: Option<u32>,
    /// `[UNK]`.
    pub unk: Option<u32>,
    /// The mask token's text (fill-mask looks for it in the input).
    pub mask_token: Option<String>,
}

/// A text tokenizer. See the module documentation. (Cloning copies its vocabulary: a
/// training stream's background thread holds its own.)
#[derive(Clone)]
pub struct Tokenizer {
    inner: Backend,
    kind: TokenizerKind,
    special: SpecialTokens,
    model_max_length: Option<usize>,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn format_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| format_error(path, e))
}

/// A special token's text in `tokenizer_config.json`: a string or an `AddedToken` object.
fn config_token(config: &Value, key: &str, default: &str) -> String {
    match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    }
}

impl Tokenizer {
    /// Reads the tokenizer of a model folder (see the module documentation). A folder with
    /// none of `tokenizer.json` and `vocab.txt`, or with unreadable ones, is an error naming
    /// the file.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let dir = dir.as_ref();
        Tokenizer::from_source(dir, &|name| {
            let path = dir.join(name);
            if !path.exists() {
                return Ok(None);
            }
            std::fs::read(&path).map(Some).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })
        })
    }

    /// The tokenizer of a model folder whose files are in memory (a folder picked in a
    /// browser page, which has no file system): `files` by name (`tokenizer.json`,
    /// `tokenizer_config.json`, `vocab.txt`; others are ignored), read as
    /// [`Tokenizer::from_dir`] reads them from a folder. `dir` names the folder in errors
    /// (`my-model/tokenizer.json: ...`) and in [`Tokenizer::source`].
    pub fn from_files(dir: impl AsRef<Path>, files: &[(&str, &[u8])]) -> Result<Tokenizer> {
        Tokenizer::from_source(dir.as_ref(), &|name| {
            Ok(files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, bytes)| bytes.to_vec()))
        })
    }

    /// [`Tokenizer::from_dir`] over `read`, which gives a file's bytes by its name in `dir`,
    /// or `None` where the folder has no such file.
    fn from_source(
        dir: &Path,
        read: &dyn Fn(&str) -> Result<Option<Vec<u8>>>,
    ) -> Result<Tokenizer> {
        let json = dir.join("tokenizer.json");
        let vocab_txt = dir.join("vocab.txt");
        let config_path = dir.join("tokenizer_config.json");
        let config = match read("tokenizer_config.json")? {
            Some(bytes) => parse_json(&config_path, &bytes)?,
            None => Value::Null,
        };
        let json_bytes = read("tokenizer.json")?;
        let class = config
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .unwrap_or("");
        let roformer = class.starts_with("RoFormerTokenizer");
        let model_max_length = config
            .get("model_max_length")
            .and_then(Value::as_u64)
            // transformers writes a huge number for "no limit"
            .filter(|&n| n < 1 << 40)
            .map(|n| n as usize);

        let hf_tokenizer = |bytes: &[u8]| {
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| format_error(&json, e))
        };
        let (inner, kind, source) = if let (Some(bytes), false) = (&json_bytes, roformer) {
            let hf = hf_tokenizer(bytes)?;
            (
                from_tokenizer_json(hf, &json)?,
                TokenizerKind::TokenizerJson,
                json,
            )
        } else {
            let unk = config_token(&config, "unk_token", "[UNK]");
            let (model, source) = if let Some(bytes) = &json_bytes {
                let hf = hf_tokenizer(bytes)?;
                (hf.get_model().clone(), json)
            } else if let Some(bytes) = read("vocab.txt")? {
                // One token per line, its id the line number; read once, here, so that an
                // unreadable or empty file is an error naming it.
                let vocab =
                    WordPiece::read_bytes(&bytes).map_err(|e| format_error(&vocab_txt, e))?;
                if vocab.is_empty() {
                    return Err(format_error(&vocab_txt, "the vocabulary is empty"));
                }
                let model = WordPiece::builder()
                    .vocab(vocab)
                    .unk_token(unk)
                    .build()
                    .map_err(|e| format_error(&vocab_txt, e))?;
                (model.into(), vocab_txt)
            } else {
                return Err(Error::invalid(format!(
                    "{}: no tokenizer (neither tokenizer.json nor vocab.txt)",
                    dir.display()
                )));
            };
            let kind = if roformer {
                TokenizerKind::RoFormerJieba
            } else {
                TokenizerKind::WordPiece
            };
            (
                bert_wordpiece(model, &config, roformer, &source)?,
                kind,
                source,
            )
        };
        let special =
            |key: &str, default: &str| inner.token_to_id(&config_token(&config, key, default));
        let mask_token = config_token(&config, "mask_token", "[MASK]");
        let special = SpecialTokens {
            cls: special("cls_token", "[CLS]"),
            sep: special("sep_token", "[SEP]"),
            pad: special("pad_token", "[PAD]"),
            mask: special("mask_token", "[MASK]"),
            unk: special("unk_token", "[UNK]"),
            mask_token: inner.token_to_id(&mask_token).map(|_| mask_token),
        };
        Ok(Tokenizer {
            inner,
            kind,
            special,
            model_max_length,
            source,
        })
    }

    /// Which tokenizer this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The file it was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Tokens in the vocabulary, added tokens included (ids are below it).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest token id, plus one.
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// `model_max_length` from `tokenizer_config.json`, if it sets a real limit.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// The special tokens' ids.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// A token's id.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// An id's token.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Tokenizes one text with the special tokens, untruncated.
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        self.encode_with(text, None, &EncodeOptions::default())
    }

    /// Tokenizes a text, or a pair when `pair` is given, with the special tokens.
    pub fn encode_with(
        &self,
        text: &str,
        pair: Option<&str>,
        options: &EncodeOptions,
    ) -> Result<Encoding> {
        let mut e = self.encode_hf(text, pair, options)?;
        if options.pad_to_longest {
            // a batch of one is its own longest
            self.pad(std::slice::from_mut(&mut e))?;
        }
        Ok(Encoding::from_hf(e))
    }

    /// Tokenizes a batch of texts (each with its pair, if `pairs` is given).
    pub fn encode_batch(
        &self,
        texts: &[&str],
        pairs: Option<&[&str]>,
        options: &EncodeOptions,
    ) -> Result<Vec<Encoding>> {
        if let Some(p) = pairs {
            if p.len() != texts.len() {
                return Err(Error::invalid(format!(
                    "{} texts but {} pairs",
                    texts.len(),
                    p.len()
                )));
            }
        }
        let mut out = texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode_hf(t, pairs.map(|p| p[i]), options))
            .collect::<Result<Vec<_>>>()?;
        if options.pad_to_longest {
            self.pad(&mut out)?;
        }
        Ok(out.into_iter().map(Encoding::from_hf).collect())
    }

    /// Token ids back to text (WordPiece `##` joined, special tokens dropped if asked).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::invalid(format!("decoding {} ids: {e}", ids.len())))
    }

    /// Token strings joined as text (the decoder's rule, e.g. WordPiece's `##`): transformers'
    /// `convert_tokens_to_string`.
    pub fn tokens_to_string(&self, tokens: &[String]) -> Result<String> {
        match self.inner.get_decoder() {
            Some(d) => d
                .decode(tokens.to_vec())
                .map_err(|e| Error::invalid(format!("decoding {} tokens: {e}", tokens.len()))),
            None => Ok(tokens.join(" ")),
        }
    }

    /// Tokenizes text already split into words, as transformers' `is_split_into_words`:
    /// each token's `word_ids` entry is the index of the word it comes from, so word-level
    /// labels can be put on tokens (token classification labels a word's first token).
    pub fn encode_words(&self, words: &[&str], options: &EncodeOptions) -> Result<Encoding> {
        let mut e = self.encode_input(words.into(), &words.join(" "), None, options)?;
        if options.pad_to_longest {
            self.pad(std::slice::from_mut(&mut e))?;
        }
        Ok(Encoding::from_hf(e))
    }

    fn encode_hf(
        &self,
        text: &str,
        pair: Option<&str>,
        options: &EncodeOptions,
    ) -> Result<tokenizers::Encoding> {
        self.encode_input(text.into(), text, pair, options)
    }

    /// `first` (a text, or words) with its pair; `shown` is the first as errors quote it.
    fn encode_input(
        &self,
        first: tokenizers::InputSequence<'_>,
        shown: &str,
        pair: Option<&str>,
        options: &EncodeOptions,
    ) -> Result<tokenizers::Encoding> {
        let failed = |e: tokenizers::Error| {
            Error::invalid(format!("tokenizing {}: {e}", super::quote(shown)))
        };
        let first = self
            .inner
            .encode_char_offsets(first, false)
            .map_err(failed)?;
        let second = pair
            .map(|p| {
                let mut e = self.inner.encode_char_offsets(p, false).map_err(failed)?;
                e.set_sequence_id(1);
                e.set_type_ids(vec![1; e.len()]);
                Ok::<_, Error>(e)
            })
            .transpose()?;
        // As TokenizerImpl::post_process, with this call's truncation.
        let (first, second) = match options.truncation {
            None => (first, second),
            Some(t) => {
                let max_length = options
                    .max_length
                    .or(self.model_max_length)
                    .ok_or_else(|| {
                        Error::invalid("truncation needs a max_length (the tokenizer sets none)")
                    })?;
                let added = self
                    .inner
                    .get_post_processor()
                    .map_or(0, |p| p.added_tokens(second.is_some()));
                let params = TruncationParams {
                    max_length: max_length.checked_sub(added).ok_or_else(|| {
                        Error::invalid(format!(
                            "max_length {max_length} leaves no room beside {added} special tokens"
                        ))
                    })?,
                    strategy: match t {
                        Truncation::LongestFirst => TruncationStrategy::LongestFirst,
                        Truncation::OnlyFirst => TruncationStrategy::OnlyFirst,
                        Truncation::OnlySecond => TruncationStrategy::OnlySecond,
                    },
                    stride: options.stride,
                    ..TruncationParams::default()
                };
                truncate_encodings(first, second, &params).map_err(failed)?
            }
        };
        match self.inner.get_post_processor() {
            Some(p) => p.process(first, second, true).map_err(failed),
            None => {
                let mut e = first;
                if let Some(s) = second {
                    e.merge_with(s, false);
                }
                Ok(e)
            }
        }
    }

    fn pad(&self, encodings: &mut [tokenizers::Encoding]) -> Result<()> {
        let pad_id = self.special.pad.ok_or_else(|| {
            Error::invalid("padding needs a pad token, and this tokenizer has none")
        })?;
        let params = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: self.inner.id_to_token(pad_id).unwrap_or_default(),
            ..PaddingParams::default()
        };
        pad_encodings(encodings, &params).map_err(|e| Error::invalid(format!("padding: {e}")))
    }
}

/// A `tokenizer.json` pipeline, its pre-tokenizer kept.
fn from_tokenizer_json(hf: tokenizers::Tokenizer, source: &Path) -> Result<Backend> {
    let hf = hf.into_inner();
    let mut t = Backend::new(hf.get_model().clone());
    t.with_normalizer(hf.get_normalizer().cloned())
        .map_err(|e| format_error(source, e))?;
    t.with_pre_tokenizer(Some(Splitter::Standard(hf.get_pre_tokenizer().cloned())));
    t.with_post_processor(hf.get_post_processor().cloned());
    t.with_decoder(hf.get_decoder().cloned());
    add_tokens_in_id_order(&mut t, hf.get_added_tokens_decoder(), source)?;
    Ok(t)
}

fn add_tokens_in_id_order(
    t: &mut Backend,
    added: impl IntoIterator<Item = (u32, AddedToken)>,
    source: &Path,
) -> Result<()> {
    let mut added: Vec<(u32, AddedToken)> = added.into_iter().collect();
    added.sort_by_key(|(id, _)| *id);
    for (_, token) in added {
        // Tokens in the model's vocabulary keep their ids; others are numbered after it.
        let content = token.content.clone();
        let r = if token.special {
            t.add_special_tokens([token])
        } else {
            t.add_tokens([token])
        };
        r.map_err(|e| format_error(source, format!("added token {content:?}: {e}")))?;
    }
    Ok(())
}

/// BERT WordPiece as transformers builds it for `BertTokenizer` (BERT pre-tokenizer) and
/// `RoFormerTokenizer` (jieba, no CJK spacing in the normalizer).
fn bert_wordpiece(
    model: ModelWrapper,
    config: &Value,
    jieba: bool,
    source: &Path,
) -> Result<Backend> {
    let flag =
        |key: &str, default: bool| config.get(key).and_then(Value::as_bool).unwrap_or(default);
    let lowercase = flag("do_lower_case", true);
    let strip_accents = config.get("strip_accents").and_then(Value::as_bool);
    let chinese = flag("tokenize_chinese_chars", true) && !jieba;
    let vocab = model.get_vocab();
    let cls = config_token(config, "cls_token", "[CLS]");
    let sep = config_token(config, "sep_token", "[SEP]");
    let id = |token: &str| {
        vocab.get(token).copied().ok_or_else(|| {
            format_error(
                source,
                format!("the special token {token:?} is not in the vocabulary"),
            )
        })
    };
    let (cls_id, sep_id) = (id(&cls)?, id(&sep)?);
    let mut t = Backend::new(model);
    t.with_normalizer(Some(BertNormalizer::new(
        true,
        chinese,
        strip_accents,
        lowercase,
    )))
    .map_err(|e| format_error(source, e))?;
    #[cfg(not(target_arch = "wasm32"))]
    let splitter = if jieba {
        Splitter::Jieba(JiebaPreTokenizer::new(vocab.keys().cloned()))
    } else {
        Splitter::Standard(Some(BertPreTokenizer.into()))
    };
    // jieba-rs's dictionary is inflated by zstd's C code, which the browser build does not
    // compile: RoFormer's Chinese tokenizer is native only.
    #[cfg(target_arch = "wasm32")]
    let splitter = if jieba {
        return Err(format_error(
            source,
            "RoFormerTokenizer (jieba word segmentation) is not in the browser build; use a \
             model whose tokenizer.json has its own pre-tokenizer",
        ));
    } else {
        Splitter::Standard(Some(BertPreTokenizer.into()))
    };
    t.with_pre_tokenizer(Some(splitter));
    let template = TemplateProcessing::builder()
        .try_single(format!("{cls}:0 $A:0 {sep}:0"))
        .and_then(|b| b.try_pair(format!("{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1")))
        .map_err(|e| format_error(source, e))?
        .special_tokens(vec![(cls.clone(), cls_id), (sep.clone(), sep_id)])
        .build()
        .map_err(|e| format_error(source, e))?;
    t.with_post_processor(Some(template));
    t.with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
    let specials = [
        "pad_token",
        "unk_token",
        "cls_token",
        "sep_token",
        "mask_token",
    ]
    .iter()
    .map(|k| {
        config_token(
            config,
            k,
            &format!("[{}]", k.trim_end_matches("_token").to_uppercase()),
        )
    })
    .filter_map(|s| vocab.get(&s).map(|&id| (id, AddedToken::from(s, true))));
    add_tokens_in_id_order(&mut t, specials.collect::<Vec<_>>(), source)?;
    Ok(t)
}
