"""The generation fixture: a small causal RoFormer (RoPE on values too) saved with save_pretrained
beside the WordPiece tokenizer of tests/fixtures/text/wordpiece, and what transformers' `generate`
returns for several prompts of different lengths, each generated alone (batch 1, no padding: a
RoFormer's positions start at 0 for every sequence), under the settings users reach for: greedy,
repetition_penalty, no_repeat_ngram_size, an eos_token_id that stops some sequences early, and
max_length. The crate's KV-cached generation is held to these ids (tests/generation.rs).

Usage, with torch and transformers installed (pip install torch transformers safetensors tokenizers):

    python3 tools/make_generation_fixtures.py tests/fixtures/text

Writes OUTDIR/generate_long/ (config.json, model.safetensors, generation_config.json, the tokenizer's
files, expected.json). Deterministic: torch on the CPU, float32, one thread.
"""
import json, os, shutil, sys

import torch
from transformers import AutoTokenizer, GenerationConfig, RoFormerConfig, RoFormerForCausalLM

PROMPTS = [
    "the quick brown",
    "今天天气",
    "attention is all you need, but memory is what you pay.",
    "a",
    "gpu kernels written in wgsl run on vulkan, metal and directx. transformers with rotary",
]


def main(outdir):
    torch.set_num_threads(1)
    wordpiece = os.path.join(outdir, "wordpiece")
    tok = AutoTokenizer.from_pretrained(wordpiece)
    torch.manual_seed(11)
    config = RoFormerConfig(vocab_size=len(tok), hidden_size=64, embedding_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                            initializer_range=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            pad_token_id=0, is_decoder=True, rotary_value=True)
    model = RoFormerForCausalLM(config).eval()
    ids = [tok(p)["input_ids"] for p in PROMPTS]

    def generate(prompt_ids, **settings):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                 dtype=torch.long), do_sample=False, pad_token_id=0, **settings)
        return out[0].tolist()[len(prompt_ids):]

    cases = []
    for name, settings in [
        ("greedy", {"max_new_tokens": 40}),
        ("repetition_penalty", {"max_new_tokens": 40, "repetition_penalty": 1.5}),
        ("no_repeat_ngram_size", {"max_new_tokens": 40, "no_repeat_ngram_size": 2}),
        ("both", {"max_new_tokens": 30, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3}),
    ]:
        cases.append({"name": name, "settings": settings, "new_ids": [generate(p, **settings) for p in ids]})
    # An end-of-sequence token that stops the first prompt early (the fifth token it would
    # greedily generate) and perhaps others; generate stops each sequence at its first one.
    eos = cases[0]["new_ids"][0][4]
    cases.append({"name": "eos", "settings": {"max_new_tokens": 40, "eos_token_id": eos},
                  "new_ids": [generate(p, max_new_tokens=40, eos_token_id=eos) for p in ids]})
    # max_length counts the prompt's tokens too.
    cases.append({"name": "max_length", "settings": {"max_length": 72},
                  "new_ids": [generate(p, max_length=72) for p in ids]})
    # The whole capacity: the longest prompt continued to max_position_embeddings.
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    cases.append({"name": "to_the_end", "settings": {"max_length": 128}, "prompt": longest,
                  "new_ids": [generate(ids[longest], max_length=128)]})

    out = os.path.join(outdir, "generate_long")
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=eos, max_length=48, pad_token_id=0).save_pretrained(out)
    for f in os.listdir(wordpiece):
        shutil.copy(os.path.join(wordpiece, f), out)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "prompt_ids": ids, "eos_token_id": eos, "cases": cases}, f,
                  indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/text")
