"""The crate's test fixtures: golden RoFormer outputs and gradients from HuggingFace transformers
(float64 on the CPU, stored as float32), and the attention kernels' torch references.

Usage, with torch, transformers and safetensors installed (pip install torch transformers safetensors):

    python3 tools/make_fixtures.py tests/fixtures

Deterministic: transformers 5.17 / torch 2.11 and transformers 5.24 / torch 2.15 wrote the same bytes
for every tensor (only the config's transformers_version differs). tests/fixtures/README.md
describes what each file holds.

Each fixture is one safetensors file holding:
  weights:  the model's own state_dict names (HF layout), e.g. roformer.encoder.layer.0.attention.self.query.weight
            (a RoFormerModel's without the roformer. prefix, as it saves them)
  inputs:   input.input_ids, input.attention_mask, input.token_type_ids (int64; [B, C, T] for multiple
            choice), input.labels (int64 class labels; float32 for the multi-label [B, num_labels] and
            regression [B] or [B, num_labels] classifiers)
  outputs:  output.last_hidden_state, output.hidden_states.N, and the head's: output.logits, or
            output.start_logits and output.end_logits; output.loss where there are labels
  grads:    grad.<parameter name> (d loss / d parameter; tied parameters appear once), for the heads this
            library trains (masked LM, sequence classification of every problem type, token
            classification, causal LM)
and a JSON config beside it (HF config.json).
"""
import json, os, sys, torch
from safetensors.torch import save_file
from transformers import (RoFormerConfig, RoFormerModel, RoFormerForMaskedLM, RoFormerForCausalLM,
                          RoFormerForSequenceClassification, RoFormerForTokenClassification,
                          RoFormerForQuestionAnswering, RoFormerForMultipleChoice)

def adamw_losses(model, ids, mask, tt, labels):
    """Ten AdamW steps on the same batch: the loss before each step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        l = model(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels).loss
        losses.append(float(l)); l.backward(); opt.step()
    return torch.tensor(losses, dtype=torch.float32)

def save(t, name, head, cfg, model, outdir):
    """The tensors as OUTDIR/name.safetensors and the config (with its architecture) beside them."""
    os.makedirs(outdir, exist_ok=True)
    save_file(t, os.path.join(outdir, name + ".safetensors"), metadata={"head": head, "source": "transformers RoFormer, float64 reference"})
    d = cfg.to_dict(); d["architectures"] = [type(model).__name__]
    with open(os.path.join(outdir, name + ".config.json"), "w") as f: json.dump(d, f, indent=2, sort_keys=True)

def make(name, cfg_kwargs, head, B, T, pad_tail, seed, outdir):
    torch.manual_seed(seed)
    cfg = RoFormerConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **cfg_kwargs)
    cfg._attn_implementation = "eager"
    model = (RoFormerForMaskedLM if head == "mlm" else RoFormerForSequenceClassification)(cfg).double()
    # non-trivial LayerNorm and bias values, so that a wrong bias path shows
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(0.05 * torch.randn_like(p))
    model.train()  # dropout is 0, so train == eval; keeps grads
    ids = torch.randint(1, cfg.vocab_size, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    if pad_tail:
        for b in range(B):
            n = pad_tail[b]
            if n: mask[b, -n:] = 0; ids[b, -n:] = cfg.pad_token_id
    tt = torch.randint(0, cfg.type_vocab_size, (B, T))
    if head == "mlm":
        labels = torch.full((B, T), -100)
        sel = torch.rand(B, T) < 0.3
        sel &= mask.bool()
        sel[0, 0] = True
        labels[sel] = torch.randint(0, cfg.vocab_size, (int(sel.sum()),))
    else:
        labels = torch.randint(0, cfg.num_labels, (B,))
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels, output_hidden_states=True)
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
    t["train.adamw_losses"] = adamw_losses(model, ids, mask, tt, labels)
    save(t, name, head, cfg, model, outdir)
    print(name, "loss", float(out.loss), "params", sum(p.numel() for p in model.parameters()))

HEADS = {
    "base": RoFormerModel, "causal_lm": RoFormerForCausalLM, "token_cls": RoFormerForTokenClassification,
    "qa": RoFormerForQuestionAnswering, "multiple_choice": RoFormerForMultipleChoice,
    "multi_label": RoFormerForSequenceClassification, "regression": RoFormerForSequenceClassification,
    "mlm": RoFormerForMaskedLM,
}
TRAINED = {"causal_lm", "token_cls", "multi_label", "regression"}

def make_head(name, cfg_kwargs, head, B, T, pad_tail, seed, outdir, choices=0, f16=False):
    """The heads beyond make()'s two: every other RoFormer class transformers has, and (f16=True) a
    checkpoint whose weights are stored in float16 (the reference runs on those values upcast)."""
    torch.manual_seed(seed)
    cfg = RoFormerConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **cfg_kwargs)
    cfg._attn_implementation = "eager"
    model = HEADS[head](cfg).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(0.05 * torch.randn_like(p))
            if f16:
                p.copy_(p.half().double())
    model.train()
    lead = (B, choices) if choices else (B,)
    ids = torch.randint(1, cfg.vocab_size, lead + (T,))
    mask = torch.ones(lead + (T,), dtype=torch.long)
    flat_ids, flat_mask = ids.view(-1, T), mask.view(-1, T)
    for b, n in enumerate(pad_tail):
        if n: flat_mask[b, -n:] = 0; flat_ids[b, -n:] = cfg.pad_token_id
    tt = torch.randint(0, cfg.type_vocab_size, lead + (T,))
    labels = None
    if head == "token_cls":
        labels = torch.randint(0, cfg.num_labels, (B, T)).masked_fill(mask == 0, -100)
    elif head == "causal_lm":
        labels = ids.masked_fill(mask == 0, -100)
    elif head == "multi_label":
        labels = torch.randint(0, 2, (B, cfg.num_labels)).double()
    elif head == "regression":
        # float32 values (stored as such), so the reference computes on what the file holds;
        # [B] for one label, as transformers squeezes it, else [B, num_labels]
        labels = torch.randn((B,) if cfg.num_labels == 1 else (B, cfg.num_labels)).float().double()
    # transformers writes the problem type it infers (regression for one label) into the config
    # on the first forward pass with labels; the saved config keeps what was asked for
    problem_type = cfg.problem_type
    kwargs = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    if labels is not None: kwargs["labels"] = labels
    out = model(**kwargs)
    t = {}
    for k, v in model.state_dict().items():
        t[k] = (v.detach().half() if f16 else v.detach().float()).contiguous().clone()
    t["input.input_ids"] = ids.contiguous(); t["input.attention_mask"] = mask.contiguous()
    t["input.token_type_ids"] = tt.contiguous()
    if labels is not None: t["input.labels"] = (labels.float() if labels.is_floating_point() else labels).contiguous()
    for field in ("logits", "start_logits", "end_logits"):
        if getattr(out, field, None) is not None: t["output." + field] = getattr(out, field).detach().float().contiguous()
    hs = out.hidden_states
    t["output.last_hidden_state"] = hs[-1].detach().float().contiguous()
    for i, h in enumerate(hs): t[f"output.hidden_states.{i}"] = h.detach().float().contiguous()
    if head in TRAINED:
        out.loss.backward()
        t["output.loss"] = out.loss.detach().float().reshape(1)
        for n, p in model.named_parameters():
            if p.grad is not None: t["grad." + n] = p.grad.detach().float().contiguous()
        t["train.adamw_losses"] = adamw_losses(model, ids, mask, tt, labels)
    cfg.problem_type = problem_type
    save(t, name, head, cfg, model, outdir)
    print(name, head, "params", sum(p.numel() for p in model.parameters()))

def rope(x, base=10000.0):
    """HF RoFormer rotation: pairs (2i, 2i+1), angle pos * base^(-2i/d). x: [B, H, T, d]."""
    T, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=x.dtype) / d)
    ang = torch.arange(T, dtype=x.dtype)[:, None] * inv[None, :]
    sin, cos = ang.sin().repeat_interleave(2, -1), ang.cos().repeat_interleave(2, -1)
    rot = torch.stack([-x[..., 1::2], x[..., 0::2]], -1).reshape(x.shape)
    return x * cos + rot * sin

def linear_attention(q, k, v, causal, rotary, eps=1e-6):
    """elu+1 feature map (Katharopoulos et al.); with rotary, RoFormer eq. (19): rotate phi(q), phi(k)
    in the numerator only, the normaliser stays unrotated."""
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    nq, nk = (rope(fq), rope(fk)) if rotary else (fq, fk)
    scores = nq @ nk.transpose(-1, -2)          # [B,H,T,T]
    norm = fq @ fk.transpose(-1, -2)
    if causal:
        m = torch.ones(q.shape[-2], q.shape[-2], dtype=torch.bool).tril()
        scores, norm = scores * m, norm * m
    return (scores @ v) / (norm.sum(-1, keepdim=True) + eps)

def softmax_attention(q, k, v, causal, rotary):
    if rotary: q, k = rope(q), rope(k)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1) @ v

def make_attention(name, B, H, T, d, seed, outdir):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(3))
    g = torch.randn(B, H, T, d, dtype=torch.float64)
    t = {"input.q": q.float(), "input.k": k.float(), "input.v": v.float(), "input.grad_out": g.float()}
    for kind, fn in (("linear", linear_attention), ("softmax", softmax_attention)):
        for causal in (False, True):
            for rotary in (False, True):
                qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
                o = fn(qq, kk, vv, causal, rotary); o.backward(g)
                tag = f"{kind}.{'causal' if causal else 'full'}.{'rope' if rotary else 'plain'}"
                t[f"{tag}.out"] = o.detach().float()
                for nm, x in (("q", qq), ("k", kk), ("v", vv)): t[f"{tag}.grad_{nm}"] = x.grad.float()
    t["rope.out"] = rope(q).float()
    os.makedirs(outdir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(outdir, name + ".safetensors"),
              metadata={"source": "torch float64 reference", "eps": "1e-6", "feature_map": "elu(x)+1",
                        "rope": "HF RoFormer pairs (2i,2i+1), base 10000"})
    print(name, "ok")

if __name__ == "__main__":
    import transformers; print("transformers", transformers.__version__, "torch", torch.__version__)
    out = sys.argv[1]
    # the rope() above must agree with transformers' own rotation
    from transformers.models.roformer import modeling_roformer as mr
    x = torch.randn(1, 2, 11, 8, dtype=torch.float64)
    cfg = RoFormerConfig(vocab_size=10, hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8, max_position_embeddings=64)
    table = RoFormerForMaskedLM(cfg).roformer.encoder.embed_positions.weight.detach().to(torch.float64)
    th = torch.arange(64, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    formula = torch.cat([th.sin(), th.cos()], -1)
    print("HF position table vs formula max abs diff", (table - formula).abs().max().item())
    pos = formula[:11][None, None]
    hq, hk = mr.RoFormerSelfAttention.apply_rotary_position_embeddings(pos, x, x)
    err = (hq - rope(x)).abs().max().item()
    print("rope vs transformers max abs diff", err); assert err < 1e-5
    # the HF test suite's tiny shape
    make("roformer_tiny_mlm", dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
         intermediate_size=37, max_position_embeddings=64, type_vocab_size=2), "mlm", 2, 16, [0, 5], 0, out)
    make("roformer_tiny_cls", dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
         intermediate_size=37, max_position_embeddings=64, num_labels=3), "cls", 3, 12, [0, 4, 7], 1, out)
    make_attention("attention_small", 2, 3, 19, 8, 2, out)
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
    # every other head transformers has, on one small shape
    small = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
    make_head("roformer_base_model", dict(small), "base", 2, 11, [0, 4], 21, out)
    make_head("roformer_causal_lm", dict(small, is_decoder=True), "causal_lm", 2, 13, [0, 5], 22, out)
    make_head("roformer_token_cls", dict(small, num_labels=4), "token_cls", 2, 12, [0, 3], 23, out)
    make_head("roformer_qa", dict(small), "qa", 2, 14, [0, 6], 24, out)
    make_head("roformer_multiple_choice", dict(small), "multiple_choice", 2, 9, [0, 2, 0, 3, 1, 0], 25, out, choices=3)
    make_head("roformer_multi_label", dict(small, num_labels=3, problem_type="multi_label_classification"), "multi_label", 3, 10, [0, 2, 5], 26, out)
    make_head("roformer_regression", dict(small, num_labels=1), "regression", 2, 10, [0, 4], 27, out)
    make_head("roformer_f16_mlm", dict(small), "mlm", 2, 12, [0, 3], 28, out, f16=True)
    make_head("roformer_regression_multi", dict(small, num_labels=3, problem_type="regression"), "regression", 3, 9, [0, 3, 1], 29, out)
