"""More RoFormer fixtures, made with the shared script's own make() (HF transformers, float64):
shapes the two shared ones do not cover. Usage, with torch and transformers installed:

    python3 tools/make_more_fixtures.py tests/fixtures

The files land in tests/fixtures/ and are tested by tests/more_fixtures.rs and `verify`.
"""
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "shared", "tools"))
from make_fixtures import make  # noqa: E402

out = sys.argv[1]
# embedding_size != hidden_size (embeddings_project), rotary_value, 6 heads, odd length, padding
make("roformer_proj_rotv_mlm", dict(vocab_size=120, embedding_size=24, hidden_size=48, num_hidden_layers=2,
     num_attention_heads=6, intermediate_size=53, max_position_embeddings=80, type_vocab_size=2,
     rotary_value=True), "mlm", 3, 13, [0, 3, 6], 11, out)
# 8 heads, 3 layers, 5 labels, 3 token types, longer odd length with heavy padding
make("roformer_8heads_cls", dict(vocab_size=77, hidden_size=64, num_hidden_layers=3, num_attention_heads=8,
     intermediate_size=96, max_position_embeddings=40, type_vocab_size=3, num_labels=5),
     "cls", 2, 21, [0, 9], 12, out)
# one layer, one sequence, no padding, layer_norm_eps 1e-5
make("roformer_single_mlm", dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
     intermediate_size=20, max_position_embeddings=16, layer_norm_eps=1e-5), "mlm", 1, 7, [0], 13, out)
