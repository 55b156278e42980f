"""Loads a checkpoint our library saved in transformers' own class and compares its outputs with
the fixture it came from: the round trip of `RoFormer::save`.

    cargo run --release --example verify -- tests/fixtures/NAME.config.json \
        tests/fixtures/NAME.safetensors --save /tmp/saved/NAME
    python3 tools/check_saved_in_transformers.py /tmp/saved/NAME tests/fixtures/NAME.safetensors

Prints the class config.json names, the keys transformers found missing or unexpected (both must
be empty), and the relative L2 error of each output the fixture holds, the model run in float64
on the fixture's inputs. Exits with status 1 on a missing or unexpected key or an error over
--tolerance (default 1e-6: the saved weights are the fixture's float32 values).
"""
import argparse, json, os, sys

import torch
import transformers
from safetensors.torch import load_file

parser = argparse.ArgumentParser()
parser.add_argument("saved", help="a folder written by RoFormer::save (config.json, model.safetensors)")
parser.add_argument("fixture", help="the fixture the checkpoint was loaded from")
parser.add_argument("--tolerance", type=float, default=1e-6)
args = parser.parse_args()

with open(os.path.join(args.saved, "config.json")) as f:
    cls = getattr(transformers, json.load(f)["architectures"][0])
model, info = cls.from_pretrained(args.saved, output_loading_info=True)
model = model.double().eval()
fx = load_file(args.fixture)
with torch.no_grad():
    out = model(input_ids=fx["input.input_ids"], attention_mask=fx["input.attention_mask"],
                token_type_ids=fx["input.token_type_ids"])
errors = {}
for field in ("logits", "start_logits", "end_logits", "last_hidden_state"):
    if f"output.{field}" in fx and getattr(out, field, None) is not None:
        ref, got = fx[f"output.{field}"].double(), getattr(out, field).double()
        errors[field] = float((got - ref).norm() / ref.norm())
print(cls.__name__, "missing", info["missing_keys"], "unexpected", info["unexpected_keys"])
for field, e in errors.items():
    print(f"  {field:<18} {e:.2e}")
ok = not info["missing_keys"] and not info["unexpected_keys"] and errors and max(errors.values()) < args.tolerance
sys.exit(0 if ok else 1)
