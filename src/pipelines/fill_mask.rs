//! `fill-mask`: the most likely tokens for each mask token of a text, as transformers'
//! `FillMaskPipeline` returns them.

use serde::Serialize;

use super::{at_input, gather, softmax, TextModel};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::model::{Head, Want};
use crate::text::Encoding;

/// One guess for a mask.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FillMaskGuess {
    /// The token's probability at the mask.
    pub score: f64,
    /// The token's id.
    pub token: u32,
    /// The token, decoded.
    pub token_str: String,
    /// The text with the mask filled by this token (decoded, special tokens dropped when the
    /// text has one mask; kept, the other masks with them, when it has several).
    pub sequence: String,
}

/// The guesses for each text: per mask token in it (in order), the `top_k` most likely
/// tokens (every token of the vocabulary when it has fewer), most likely first.
pub async fn run(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
    top_k: usize,
) -> Result<Vec<Vec<Vec<FillMaskGuess>>>> {
    model.need("fill-mask", &[Head::MaskedLm])?;
    if top_k == 0 {
        return Err(Error::invalid("top_k must be at least 1"));
    }
    let vocab = model.config().vocab_size;
    // A guess per token of the vocabulary at most: a huge top_k asks for all of them.
    let top_k = top_k.min(vocab);
    let tok = model.tokenizer();
    let mask = mask_id(model)?;
    let encodings = model.encode(texts, None)?;
    for (i, e) in encodings.iter().enumerate() {
        has_mask(model, e, mask).map_err(|err| at_input(i, texts[i], err))?;
    }
    // Only the masks' rows of logits come back.
    let masks: Vec<Vec<usize>> = encodings
        .iter()
        .map(|e| (0..e.len()).filter(|&t| e.input_ids[t] == mask).collect())
        .collect();
    let results = gather(model.submit(ctx, &encodings, Want::logits(), Some(&masks))?).await?;
    let pad = tok.special_tokens().pad;
    let mut out = Vec::with_capacity(texts.len());
    for (i, e) in encodings.iter().enumerate() {
        let (r, j) = results.locate(i);
        let logits = r.logits(j)?;
        let single = masks[i].len() == 1;
        let mut per_mask = Vec::with_capacity(masks[i].len());
        for (row, &t) in masks[i].iter().enumerate() {
            let probs = softmax(&logits.data[row * vocab..(row + 1) * vocab]);
            let mut order: Vec<usize> = (0..vocab).collect();
            // Stable: equal scores keep the lower id first, as torch.topk does on the CPU.
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let mut guesses = Vec::with_capacity(top_k);
            for &id in order.iter().take(top_k) {
                let id32 = id as u32;
                let filled: Vec<u32> = e
                    .input_ids
                    .iter()
                    .enumerate()
                    .map(|(p, &x)| if p == t { id32 } else { x })
                    .filter(|&x| Some(x) != pad)
                    .collect();
                guesses.push(FillMaskGuess {
                    score: probs[id],
                    token: id32,
                    token_str: tok.decode(&[id32], false)?,
                    sequence: tok.decode(&filled, single)?,
                });
            }
            per_mask.push(guesses);
        }
        out.push(per_mask);
    }
    Ok(out)
}

/// What [`run`] would refuse in one text, found without the GPU: it is empty, too long
/// (unless the model truncates), or has no mask token (in the part truncation keeps). The
/// error says what is wrong, not which input: the caller names it.
pub fn check(model: &TextModel, text: &str) -> Result<()> {
    let mask = mask_id(model)?;
    has_mask(model, &model.encode_one(text, None)?, mask)
}

/// The tokenizer's mask token.
fn mask_id(model: &TextModel) -> Result<u32> {
    model
        .tokenizer()
        .special_tokens()
        .mask
        .ok_or_else(|| Error::invalid("fill-mask needs a mask token, and this tokenizer has none"))
}

/// An error unless the tokenized text holds the mask token.
fn has_mask(model: &TextModel, e: &Encoding, mask: u32) -> Result<()> {
    if e.input_ids.contains(&mask) {
        return Ok(());
    }
    let name = model.tokenizer().special_tokens().mask_token.as_deref();
    // A text cut to the maximum may have lost its mask with the rest.
    let max = model.max_tokens();
    let kept = if model.options().truncate && e.len() >= max {
        format!(" in its first {max} tokens, which truncation keeps")
    } else {
        String::new()
    };
    Err(Error::invalid(format!(
        "no mask token ({}){kept}",
        name.unwrap_or_default()
    )))
}

#[cfg(not(target_arch = "wasm32"))]
/// [`run`], blocking until the answers are back.
pub fn run_blocking(
    ctx: &Context,
    model: &TextModel,
    texts: &[&str],
    top_k: usize,
) -> Result<Vec<Vec<Vec<FillMaskGuess>>>> {
    ctx.block_on(run(ctx, model, texts, top_k))
}
