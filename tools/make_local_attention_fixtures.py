"""Fixtures for attention_kind "local" (sliding-window softmax attention with global tokens):
transformers' RoFormer (float64 on the CPU, stored as float32) given the equivalent prepared
4-D additive mask, which transformers 5 passes through as it is.

Usage, with torch, transformers and safetensors installed:

    python3 tools/make_local_attention_fixtures.py tests/fixtures

Query i sees key j when |i - j| <= w, or i < g, or j < g; causal (is_decoder): when j <= i and
(i - j <= w or j < g). The mask given to transformers is 0 where a query sees an unpadded key,
finfo(float64).min where it sees a padded one (as transformers' own padding mask) and -inf where
the window hides the key. Each file holds what tools/make_fixtures.py's do (weights, input.*,
output.*, grad.*, train.adamw_losses); input.attention_mask is the [B, T] padding mask, and
the config carries attention_kind "local", attention_window and global_tokens, which
transformers keeps as extra attributes and this library reads. The shapes keep every padded
query in sight of an unpadded key (a global one, or one in its window), so no row's softmax
runs over padding alone.
"""
import os, sys, torch
from transformers import (RoFormerConfig, RoFormerForCausalLM, RoFormerForMaskedLM,
                          RoFormerForSequenceClassification)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import save  # noqa: E402


def sees(i, j, w, g, causal):
    if causal:
        return j <= i and (i - j <= w or j < g)
    return abs(i - j) <= w or i < g or j < g


def local_mask(pad_mask, w, g, causal):
    """[B, 1, T, T] float64 additive mask: the window's pattern and the padding."""
    B, T = pad_mask.shape
    band = torch.tensor([[sees(i, j, w, g, causal) for j in range(T)] for i in range(T)])
    m = torch.zeros(B, 1, T, T, dtype=torch.float64)
    m.masked_fill_(pad_mask[:, None, None, :] == 0, torch.finfo(torch.float64).min)
    m.masked_fill_(~band[None, None], float("-inf"))
    # every row sees an unpadded key (see the docstring)
    ok = ((pad_mask[:, None, :] == 1) & band[None]).any(-1)
    assert bool(ok.all()), "a query sees only padding: pick another shape"
    return m


CLASSES = {"cls": RoFormerForSequenceClassification, "causal_lm": RoFormerForCausalLM,
           "mlm": RoFormerForMaskedLM}


def adamw_losses(model, ids, mask4, tt, labels):
    """Ten AdamW steps on the same batch: the loss before each step (as make_fixtures.py)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        l = model(input_ids=ids, attention_mask=mask4, token_type_ids=tt, labels=labels).loss
        losses.append(float(l)); l.backward(); opt.step()
    return torch.tensor(losses, dtype=torch.float32)


def make(name, cfg_kwargs, head, B, T, pad_tail, w, g, seed, outdir):
    torch.manual_seed(seed)
    causal = bool(cfg_kwargs.get("is_decoder", False))
    cfg = RoFormerConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         attention_kind="local", attention_window=w, global_tokens=g, **cfg_kwargs)
    cfg._attn_implementation = "eager"
    model = CLASSES[head](cfg).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(0.05 * torch.randn_like(p))
    model.train()  # dropout is 0, so train == eval; keeps grads
    ids = torch.randint(1, cfg.vocab_size, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate(pad_tail):
        if n: mask[b, -n:] = 0; ids[b, -n:] = cfg.pad_token_id
    tt = torch.randint(0, cfg.type_vocab_size, (B, T))
    if head == "mlm":
        labels = torch.full((B, T), -100)
        sel = (torch.rand(B, T) < 0.3) & mask.bool()
        sel[0, 0] = True
        labels[sel] = torch.randint(0, cfg.vocab_size, (int(sel.sum()),))
    elif head == "causal_lm":
        labels = ids.masked_fill(mask == 0, -100)
    else:
        labels = torch.randint(0, cfg.num_labels, (B,))
    mask4 = local_mask(mask, w, g, causal)
    # the 4-D mask goes through unchanged: with a window past the length it gives what
    # transformers' own 2-D padding mask does
    with torch.no_grad():
        full = local_mask(mask, T, 0, causal)
        a = model(input_ids=ids, attention_mask=full, token_type_ids=tt).logits
        b = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
        assert (a - b).abs().max().item() < 1e-10, "transformers changed the 4-D mask"
    out = model(input_ids=ids, attention_mask=mask4, token_type_ids=tt, labels=labels,
                output_hidden_states=True)
    out.loss.backward()
    t = {}
    for k, v in model.state_dict().items():
        t[k] = v.detach().float().contiguous().clone()
    t["input.input_ids"] = ids.contiguous(); t["input.attention_mask"] = mask.contiguous()
    t["input.token_type_ids"] = tt.contiguous(); t["input.labels"] = labels.contiguous()
    t["output.loss"] = out.loss.detach().float().reshape(1)
    t["output.logits"] = out.logits.detach().float().contiguous()
    hs = out.hidden_states
    t["output.last_hidden_state"] = hs[-1].detach().float().contiguous()
    for i, h in enumerate(hs): t[f"output.hidden_states.{i}"] = h.detach().float().contiguous()
    for n, p in model.named_parameters():
        if p.grad is not None: t["grad." + n] = p.grad.detach().float().contiguous()
    t["train.adamw_losses"] = adamw_losses(model, ids, mask4, tt, labels)
    save(t, name, head, cfg, model, outdir)
    print(name, head, f"w={w} g={g} causal={causal}", "loss", float(out.loss),
          "params", sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    import transformers; print("transformers", transformers.__version__, "torch", torch.__version__)
    out = sys.argv[1]
    small = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64)
    # bidirectional, a global first token ([CLS], which the classifier reads), padding
    make("roformer_local_cls", dict(small, num_labels=3), "cls", 2, 13, [0, 4], 2, 1, 31, out)
    # causal with a window, padding no longer than the window
    make("roformer_local_causal_lm", dict(small, is_decoder=True), "causal_lm", 2, 17, [0, 3], 3, 0, 32, out)
    # awkward length 33, three global tokens, rotary_value, three sequences, head width 6
    make("roformer_local_mlm", dict(small, hidden_size=24, rotary_value=True), "mlm", 3, 33,
         [0, 5, 1], 4, 3, 33, out)
    # causal with two global tokens (only seen) and a one-position window, odd length 7
    make("roformer_local_causal_global", dict(small, is_decoder=True, num_hidden_layers=1), "causal_lm",
         2, 7, [0, 1], 1, 2, 34, out)
