//! HuggingFace `RoFormerConfig` (`config.json`), with this library's two options.
//! Fields HF has and we do not use are kept, so a config round-trips unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How attention is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// `softmax(QKᵀ/√d) V`, as HuggingFace RoFormer, with the `[B, H, T, T]` probabilities
    /// materialised (matmul + softmax kernels).
    #[default]
    Softmax,
    /// The same function, fused FlashAttention-2 style: memory linear in the length.
    FusedSoftmax,
    /// Linear attention with RoPE as in RoFormer eq. (19): linear memory in the length.
    Linear,
    /// Softmax attention over a sliding window with global tokens (Longformer's pattern;
    /// `attention_window`, `global_tokens`): time and memory linear in the length.
    Local,
    /// Performer's FAVOR+: softmax attention estimated with `performer_features` positive
    /// orthogonal random features of RoPE-rotated q and k (RoFormer section 3.3), in time
    /// and memory linear in the length. Each layer's random projection is stored with the
    /// weights (see [`crate::model::performer_projection_name`]).
    Performer,
}

mod defaults {
    pub fn vocab_size() -> usize {
        50000
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn max_position_embeddings() -> usize {
        1536
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn pad_token_id() -> Option<u32> {
        Some(0)
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn yes() -> bool {
        true
    }
}

/// A RoFormer configuration; missing fields take `RoFormerConfig`'s defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoFormerConfig {
    /// Token vocabulary.
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Width of the embeddings; `None` means `hidden_size`. When it differs, a linear
    /// `embeddings_project` maps embeddings to the hidden size.
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// Width of the encoder layers.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// Encoder layers.
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`hidden_size` is a multiple of it).
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Activation of the feed-forward block (`gelu`, the erf form).
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    /// Longest sequence: the size of the RoPE table.
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Token types (segments).
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    /// LayerNorm's epsilon.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Rotate the values too (HF `rotary_value`).
    #[serde(default)]
    pub rotary_value: bool,
    /// The padding token, whose embedding starts at zero.
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: Option<u32>,
    /// Standard deviation of the initial weights.
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    /// Classes of the classification head (else from `id2label`, else 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    /// Class names by index, as HF writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// HF's decoder switch: causal self-attention (each token sees itself and earlier ones),
    /// whatever the head; `RoFormerForCausalLM` checkpoints set it.
    #[serde(default)]
    pub is_decoder: bool,
    /// The masked and causal LM heads' decoder is the word embedding matrix (HF's default);
    /// when false the checkpoint has its own `cls.predictions.decoder.weight`.
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    /// Cross-attention layers for an encoder-decoder model: not implemented, an error.
    #[serde(default)]
    pub add_cross_attention: bool,
    /// The sequence classifier's loss: `single_label_classification` (cross-entropy),
    /// `multi_label_classification` (BCE) or `regression` (MSE); `None` lets transformers
    /// decide from the labels (regression when `num_labels` is 1).
    #[serde(default)]
    pub problem_type: Option<String>,
    /// This library's option: softmax (HF, materialised or fused), linear, local or
    /// performer attention.
    #[serde(default, rename = "attention_kind")]
    pub attention: AttentionKind,
    /// This library's option: causal attention, as `is_decoder` (either turns it on).
    #[serde(default)]
    pub causal: bool,
    /// This library's option, for `attention_kind` `local`: `w`, the positions each side of
    /// a query it sees (causal: the `w` before it), `|i − j| ≤ w`. Required there, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_window: Option<usize>,
    /// This library's option, for `attention_kind` `local`: `g`, the first positions that
    /// see every key and are seen by every query (Longformer's global attention on
    /// `[CLS]`; in a causal model they are only seen). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_tokens: Option<usize>,
    /// This library's option, for `attention_kind` `performer`: `m`, the random features
    /// per head (1 to 256, the kernels' range; Performer's paper uses about `d·ln d`, 266
    /// for heads of 64). Required there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performer_features: Option<usize>,
    /// This library's option, for `attention_kind` `performer`: the seed a new model draws
    /// its random projections from (layer `l` from `seed + l`; default 0). A checkpoint
    /// stores the projections themselves, so loading one does not draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performer_seed: Option<u64>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RoFormerConfig {
    /// HF's defaults (a base-sized model).
    pub fn base() -> RoFormerConfig {
        serde_json::from_str("{}").expect("every field has a default")
    }

    /// Parses and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<RoFormerConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and validates config JSON; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<RoFormerConfig> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: RoFormerConfig =
            serde_path_to_error::deserialize(de).map_err(|e| Error::Format {
                path: origin.to_string(),
                message: match e.path().to_string().as_str() {
                    "." | "?" => e.inner().to_string(),
                    field => format!("{field}: {}", e.inner()),
                },
            })?;
        config.validate().map_err(|message| Error::Format {
            path: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Checks the sizes are usable; the message says which field is wrong and why.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
            ("embedding_size", self.embedding_size()),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.vocab_size > u32::MAX as usize || self.type_vocab_size > u32::MAX as usize {
            return Err("vocab_size and type_vocab_size must fit in 32 bits".into());
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size ({}) is not a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!(
                "the head dimension hidden_size / num_attention_heads = {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\", the exact erf form)",
                self.hidden_act
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!(
                "layer_norm_eps must be positive, got {}",
                self.layer_norm_eps
            ));
        }
        if self.labels() == 0 {
            return Err("num_labels must be at least 1".into());
        }
        if self.attention == AttentionKind::Linear && self.rotary_value {
            return Err(
                "rotary_value is not defined for linear attention (eq. 19 rotates q and k only)"
                    .into(),
            );
        }
        self.validate_local()?;
        self.validate_performer()?;
        if self.add_cross_attention {
            return Err(
                "add_cross_attention: cross-attention layers (an encoder-decoder RoFormer) are not implemented"
                    .into(),
            );
        }
        if let Some(pruned) = self.extra.get("pruned_heads") {
            if pruned.as_object().is_some_and(|o| !o.is_empty()) {
                return Err(
                    "pruned_heads: checkpoints with pruned attention heads are not supported"
                        .into(),
                );
            }
        }
        if let Some(p) = &self.problem_type {
            if ![
                "single_label_classification",
                "multi_label_classification",
                "regression",
            ]
            .contains(&p.as_str())
            {
                return Err(format!(
                    "problem_type {p:?} is not one of single_label_classification, \
                     multi_label_classification, regression"
                ));
            }
        }
        if self
            .pad_token_id
            .is_some_and(|p| p as usize >= self.vocab_size)
        {
            return Err(format!(
                "pad_token_id {:?} is not below vocab_size {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        Ok(())
    }

    /// The local attention keys: set only with `attention_kind` `local`, which needs a
    /// window of 1 to `max_position_embeddings` and at most that many global tokens.
    fn validate_local(&self) -> std::result::Result<(), String> {
        let n = self.max_position_embeddings;
        if self.attention != AttentionKind::Local {
            for (key, value) in [
                ("attention_window", self.attention_window),
                ("global_tokens", self.global_tokens),
            ] {
                if value.is_some() {
                    return Err(format!(
                        "{key} is for attention_kind \"local\", not {:?}",
                        self.attention
                    ));
                }
            }
            return Ok(());
        }
        match self.attention_window {
            None => Err(
                "attention_kind \"local\" needs attention_window (w: query i sees \
                         key j when |i - j| <= w)"
                    .into(),
            ),
            Some(0) => Err(
                "attention_window must be at least 1 (0 would let each token see \
                            only itself)"
                    .into(),
            ),
            Some(w) if w > n => Err(format!(
                "attention_window {w} is over max_position_embeddings {n}: every position \
                 would see every other (use attention_kind softmax or fused_softmax)"
            )),
            Some(_) if self.global_tokens.unwrap_or(0) > n => Err(format!(
                "global_tokens {} is over max_position_embeddings {n}",
                self.global_tokens.unwrap_or(0)
            )),
            Some(_) => Ok(()),
        }
    }

    /// The performer keys: set only with `attention_kind` `performer`, which needs
    /// `performer_features` in the kernels' range and heads no wider than it takes values.
    fn validate_performer(&self) -> std::result::Result<(), String> {
        use crate::ops::attention::performer::MAX_FEATURES;
        if self.attention != AttentionKind::Performer {
            for (key, set) in [
                ("performer_features", self.performer_features.is_some()),
                ("performer_seed", self.performer_seed.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{key} is for attention_kind \"performer\", not {:?}",
                        self.attention
                    ));
                }
            }
            return Ok(());
        }
        if self.rotary_value {
            return Err(
                "rotary_value is not defined for performer attention (RoPE rotates q and k \
                 before the feature map)"
                    .into(),
            );
        }
        if self.head_dim() > MAX_FEATURES {
            return Err(format!(
                "performer attention takes heads up to {MAX_FEATURES} wide, not {}",
                self.head_dim()
            ));
        }
        match self.performer_features {
            None => Err(format!(
                "attention_kind \"performer\" needs performer_features (m, the random \
                 features per head: 1 to {MAX_FEATURES}; about d·ln d = {} for these heads)",
                (self.head_dim() as f64 * (self.head_dim() as f64).ln()).round()
            )),
            Some(m) if m == 0 || m > MAX_FEATURES => Err(format!(
                "performer_features {m} is outside 1 to {MAX_FEATURES}, what the performer \
                 kernels take"
            )),
            Some(_) => Ok(()),
        }
    }

    /// The local attention pattern (`attention_window`, `global_tokens`) of an
    /// `attention_kind` `local` model, else `None`.
    pub fn local_window(&self) -> Option<crate::ops::attention::local::LocalWindow> {
        (self.attention == AttentionKind::Local).then(|| {
            crate::ops::attention::local::LocalWindow {
                window: self.attention_window.unwrap_or(0),
                globals: self.global_tokens.unwrap_or(0),
            }
        })
    }

    /// Whether attention is causal: HF's `is_decoder` or this library's `causal`.
    pub fn is_causal(&self) -> bool {
        self.causal || self.is_decoder
    }

    /// The sequence classifier's problem, as transformers decides it: `problem_type` when
    /// set, else regression for one label and single-label classification otherwise.
    /// (transformers would also pick multi-label for float labels over several classes; a
    /// session is planned before it sees labels, so set `problem_type` to train that way.)
    pub fn classification_problem(&self) -> &str {
        match &self.problem_type {
            Some(p) => p,
            None if self.labels() == 1 => "regression",
            None => "single_label_classification",
        }
    }

    /// Width of the embeddings (`embedding_size`, else `hidden_size`).
    pub fn embedding_size(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Classes of the classification head: `num_labels`, else `id2label`'s size, else 2.
    pub fn labels(&self) -> usize {
        self.num_labels
            .or(self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2)
    }

    /// The config as HF's `config.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_extra_fields_survive() {
        let c = RoFormerConfig::from_json(
            r#"{"hidden_size": 64, "num_attention_heads": 4, "dropout_thing": [1, 2]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.vocab_size, 50000);
        assert_eq!(c.embedding_size(), 64);
        assert_eq!(c.extra["dropout_thing"], serde_json::json!([1, 2]));
        let again = RoFormerConfig::from_json(&c.to_json(), "t").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |j: &str| {
            RoFormerConfig::from_json(j, "c.json")
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"hidden_size": "big"}"#).contains("hidden_size"));
        assert!(err(r#"{"hidden_size": 30, "num_attention_heads": 4}"#).contains("not a multiple"));
        assert!(err(r#"{"vocab_size": 0}"#).contains("vocab_size must be at least 1"));
        assert!(err(r#"{"hidden_act": "relu"}"#).contains("hidden_act"));
        assert!(err(r#"{"hidden_size": 36, "num_attention_heads": 4}"#).contains("even"));
        assert!(err("[1, 2").contains("c.json"));
    }

    #[test]
    fn local_attention_keys_are_checked() {
        let err = |j: &str| {
            RoFormerConfig::from_json(j, "c.json")
                .unwrap_err()
                .to_string()
        };
        let local = |extra: &str| {
            format!(r#"{{"attention_kind": "local", "max_position_embeddings": 64{extra}}}"#)
        };
        assert!(err(&local("")).contains("needs attention_window"));
        assert!(err(&local(r#", "attention_window": 0"#)).contains("at least 1"));
        assert!(err(&local(r#", "attention_window": 65"#)).contains("over max_position"));
        assert!(
            err(&local(r#", "attention_window": 4, "global_tokens": 65"#))
                .contains("global_tokens 65")
        );
        assert!(err(r#"{"attention_window": 4}"#).contains("is for attention_kind"));
        assert!(
            err(r#"{"attention_kind": "linear", "global_tokens": 1}"#).contains("global_tokens")
        );
        let c = RoFormerConfig::from_json(
            &local(r#", "attention_window": 4, "global_tokens": 1"#),
            "c.json",
        )
        .unwrap();
        let w = c.local_window().unwrap();
        assert_eq!((w.window, w.globals), (4, 1));
        assert_eq!(
            RoFormerConfig::from_json(&c.to_json(), "c.json").unwrap(),
            c
        );
        assert!(RoFormerConfig::base().local_window().is_none());
        assert!(err(
            r#"{"attention_kind": "local", "attention_window": 4, "performer_features": 8}"#
        )
        .contains("performer_features is for"));
        assert!(!RoFormerConfig::base()
            .to_json()
            .contains("attention_window"));
    }

    #[test]
    fn performer_keys_are_checked() {
        let err = |j: &str| {
            RoFormerConfig::from_json(j, "c.json")
                .unwrap_err()
                .to_string()
        };
        let performer = |extra: &str| {
            format!(
                r#"{{"attention_kind": "performer", "hidden_size": 64, "num_attention_heads": 4{extra}}}"#
            )
        };
        let e = err(&performer(""));
        assert!(
            e.contains("needs performer_features") && e.contains("44"),
            "{e}"
        );
        assert!(err(&performer(r#", "performer_features": 0"#)).contains("outside 1 to 256"));
        assert!(err(&performer(r#", "performer_features": 257"#)).contains("outside 1 to 256"));
        assert!(err(&performer(r#", "performer_features": -1"#)).contains("performer_features"));
        assert!(err(&performer(
            r#", "performer_features": 8, "rotary_value": true"#
        ))
        .contains("rotary_value"));
        assert!(err(r#"{"attention_kind": "performer", "hidden_size": 600, "num_attention_heads": 2, "performer_features": 8}"#)
            .contains("heads up to 256"));
        assert!(err(r#"{"performer_features": 8}"#).contains("is for attention_kind"));
        assert!(
            err(r#"{"attention_kind": "linear", "performer_seed": 3}"#).contains("performer_seed")
        );
        let c = RoFormerConfig::from_json(
            &performer(r#", "performer_features": 256, "performer_seed": 9"#),
            "c.json",
        )
        .unwrap();
        assert_eq!(
            (c.performer_features, c.performer_seed),
            (Some(256), Some(9))
        );
        assert_eq!(
            RoFormerConfig::from_json(&c.to_json(), "c.json").unwrap(),
            c
        );
        assert!(!RoFormerConfig::base().to_json().contains("performer"));
    }
}
