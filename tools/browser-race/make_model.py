"""The browser race's model, its ONNX export and PyTorch's logits for the race's inputs.

Usage: make_model.py WORK SHAPES      (SHAPES: e.g. 1x128,8x128,1x512)

Writes, under WORK:
  model/roformer-race/config.json, model.safetensors   a random RoFormerForMaskedLM (4 layers,
                                                       hidden 256, 4 heads, vocab 8000, seed 0),
                                                       as save_pretrained writes it (ours reads it)
  model/roformer-race/onnx/model.onnx                  its ONNX export (transformers.js reads it):
                                                       inputs input_ids, attention_mask,
                                                       token_type_ids; dynamic batch and sequence
  ref/BxL.f32                                          PyTorch's logits of the first sequence of
                                                       each shape's batch, [L, vocab] little-endian
                                                       f32

The inputs are the page's (race.html): ids from a 32-bit LCG seeded with 1000 * B + L, token
types 0 for the first half of each sequence and 1 for the rest, no padding. Both must agree.

Adapted from the transformers.js baseline harness (../shared/tools/tjs-baseline/: make_model.py
and export.py); the tokenizer is left out, since the race feeds ids.
"""
import os
import sys

import torch
from transformers import RoFormerConfig, RoFormerForMaskedLM

VOCAB = 8000


def inputs(batch, length):
    """The race's inputs for one shape (the same formula as race.html's)."""
    s = (1000 * batch + length) & 0xFFFFFFFF
    ids = []
    for _ in range(batch * length):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        ids.append(5 + s % (VOCAB - 5))
    ids = torch.tensor(ids).reshape(batch, length)
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    return ids, torch.ones_like(ids), types


class Logits(torch.nn.Module):
    """The masked LM's logits as the one output (ONNX export)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


def main():
    work, shapes = sys.argv[1], [tuple(map(int, s.split("x"))) for s in sys.argv[2].split(",")]
    out = os.path.join(work, "model", "roformer-race")
    os.makedirs(os.path.join(out, "onnx"), exist_ok=True)
    torch.manual_seed(0)
    config = RoFormerConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        embedding_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    model = RoFormerForMaskedLM(config).eval()
    model.save_pretrained(out)

    wrapped = Logits(model).eval()
    ids, mask, types = inputs(2, 16)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
    dims = {0: batch, 1: sequence}
    torch.onnx.export(
        wrapped,
        (ids, mask, types),
        os.path.join(out, "onnx", "model.onnx"),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": dims, "attention_mask": dims, "token_type_ids": dims},
        dynamo=True,
        opset_version=18,
        external_data=False,
    )

    os.makedirs(os.path.join(work, "ref"), exist_ok=True)
    for b, length in shapes:
        ids, mask, types = inputs(b, length)
        with torch.no_grad():
            logits = wrapped(ids[:1], mask[:1], types[:1])[0].numpy()
        logits.astype("<f4").tofile(os.path.join(work, "ref", f"{b}x{length}.f32"))
    print(f"model, ONNX export and PyTorch's logits for {sys.argv[2]} under {work}")


if __name__ == "__main__":
    main()
