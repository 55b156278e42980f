"""The text fixtures: tokenizers and pipeline outputs from HuggingFace tokenizers/transformers, for the
crate's tokenizer and pipeline tests (tests/text_pipelines.rs).

Usage, with torch, transformers, tokenizers and rjieba installed
(pip install torch transformers tokenizers rjieba safetensors):

    python3 tools/make_text_fixtures.py tests/fixtures/text

Writes, under OUTDIR:
  wordpiece/          a WordPiece vocabulary built here from CORPUS (see make_tokenizers), as
                      transformers 5's BertTokenizer saves it (tokenizer.json, tokenizer_config.json)
  jieba/              the same vocabulary as RoFormerTokenizer saves it (its tokenizer.json has a BERT
                      pre-tokenizer; transformers puts jieba back when it loads the folder)
  jieba_vocab_only/   vocab.txt + tokenizer_config.json only (RoFormer's Chinese checkpoints' layout)
  tokenization.json   the inputs ("texts", "pairs") and, per folder, AutoTokenizer's ids, attention
                      mask, token types, offsets, tokens and word ids for them, plus truncated and
                      padded batches
  <task>/             a small random RoFormer of that task saved with save_pretrained beside a tokenizer,
                      and expected.json: the inputs and what transformers' pipeline returned for each
                      (question answering: transformers 5 has no such pipeline, so expected.json holds
                      the model's start/end logits and the answer transformers 4's pipeline computes
                      from them, reimplemented in qa_answer below)
Deterministic: two runs write identical files (torch on the CPU with OMP_NUM_THREADS=1, float32 models,
as pipelines run them).
"""
import json, os, shutil, sys
import numpy as np
import torch
from tokenizers import normalizers, pre_tokenizers
from transformers import (AutoTokenizer, BertTokenizer, RoFormerConfig, RoFormerForCausalLM,
                          RoFormerForMaskedLM, RoFormerForQuestionAnswering,
                          RoFormerForSequenceClassification, RoFormerForTokenClassification,
                          RoFormerModel, RoFormerTokenizer, pipeline)

CORPUS = [
    "今天天气非常好，我们去公园散步吧。",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "我喜欢学习机器学习和自然语言处理。",
    "The quick brown fox jumps over the lazy dog.",
    "Transformers with rotary position embeddings handle long sequences well.",
    "RoFormer encodes relative positions by rotating queries and keys.",
    "GPU kernels written in WGSL run on Vulkan, Metal and DirectX.",
    "我们的模型在浏览器里也能训练。",
    "Hello world! Hello GPU! 你好，世界！",
    "天气预报说明天会下雨，记得带伞。",
    "Attention is all you need, but memory is what you pay.",
    "中文分词使用结巴，英文使用词片。",
    "Café, naïve, résumé: accents are stripped when lowercasing.",
    "Emoji too 😀🚀 and numbers 12345 and symbols #@%!",
    "深度学习需要大量的数据和计算资源。",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "小明在清华大学读书，他的专业是计算机科学。",
    "Linear attention scales linearly with the sequence length.",
]

TEXTS = [
    "今天天气非常好。",
    "Hello World, the quick brown fox!",
    "我喜欢 RoFormer 和 GPU 😀 kernels",
    "Café naïve résumé",
    "北京是中国的首都",
    "  spaces   around\ttabs\nand newlines  ",
    "unknownword qwertyzxcv 龘",
    "a",
]
PAIRS = [
    ("今天天气怎么样？", "今天天气非常好。"),
    ("What is the capital of France?", "Paris is the capital of France."),
]


def tok_record(tok, text, pair=None, **kw):
    enc = tok(text, pair, return_offsets_mapping=True, return_token_type_ids=True, return_attention_mask=True, **kw)
    batch = isinstance(text, list)
    def one(i):
        e = enc.encodings[i] if batch else enc.encodings[0]
        return {"input_ids": list(e.ids), "attention_mask": list(e.attention_mask),
                "token_type_ids": list(e.type_ids), "offsets": [list(o) for o in e.offsets],
                "tokens": list(e.tokens), "word_ids": [-1 if w is None else w for w in e.word_ids]}
    return [one(i) for i in range(len(text))] if batch else one(0)


def tokenization_cases(tok):
    out = {"single": [tok_record(tok, t) for t in TEXTS],
           "pair": [tok_record(tok, a, b) for a, b in PAIRS],
           "truncated": [tok_record(tok, t, truncation=True, max_length=6) for t in TEXTS],
           "pair_truncated": [tok_record(tok, a, b, truncation="only_second", max_length=24) for a, b in PAIRS],
           "padded": tok_record(tok, TEXTS, padding=True),
           "decoded": [tok.decode(tok(t)["input_ids"], skip_special_tokens=True) for t in TEXTS]}
    return out


def make_tokenizers(outdir):
    # A WordPiece vocabulary built from CORPUS by rule (tokenizers' WordPiece trainer breaks
    # ties in hash order, so its vocabulary changes from run to run): the special tokens,
    # every character alone and as a continuation, the words seen twice or more, a few
    # English suffixes, and whole Chinese words, so that jieba's words in the vocabulary stay
    # whole.
    norm = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True, strip_accents=None)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = {}
    for line in CORPUS:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            counts[w] = counts.get(w, 0) + 1
    chars = sorted({c for w in counts for c in w})
    words = sorted(w for w, n in counts.items() if n >= 2 and len(w) > 1)
    suffixes = ["##s", "##es", "##ed", "##ing", "##er", "##ly", "##tion", "##ies", "##ers", "##al"]
    chinese = ["天气", "非常", "今天", "北京", "中国", "首都", "喜欢", "学习", "我们", "公园", "世界", "你好"]
    vocab = {}
    for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + words + suffixes + chinese:
        vocab.setdefault(t, len(vocab))
    os.makedirs(outdir, exist_ok=True)
    tmp = os.path.join(outdir, "_vocab.txt")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in vocab))
    bert = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)
    bert.save_pretrained(os.path.join(outdir, "wordpiece"))
    rof = RoFormerTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)
    rof.save_pretrained(os.path.join(outdir, "jieba"))
    only = os.path.join(outdir, "jieba_vocab_only")
    os.makedirs(only, exist_ok=True)
    shutil.copy(tmp, os.path.join(only, "vocab.txt"))
    with open(os.path.join(outdir, "jieba", "tokenizer_config.json")) as f:
        tc = json.load(f)
    with open(os.path.join(only, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2, ensure_ascii=False)
    os.remove(tmp)
    return len(vocab)


def small_config(vocab, **kw):
    return RoFormerConfig(vocab_size=vocab, hidden_size=32, embedding_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                          initializer_range=0.4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          pad_token_id=0, **kw)


def save_model(model, tokdir, outdir, expected):
    shutil.rmtree(outdir, ignore_errors=True)
    model.save_pretrained(outdir)
    for f in os.listdir(tokdir):
        shutil.copy(os.path.join(tokdir, f), outdir)
    with open(os.path.join(outdir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)


def to_py(x):
    if isinstance(x, dict):
        return {k: to_py(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_py(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def qa_answer(tok, model, question, context, top_k=1, max_answer_len=15, max_len=64):
    """transformers 4's QuestionAnsweringPipeline (fast tokenizer, question first, windows of
    max_len tokens overlapping by max_len // 2, align_to_words, no impossible answer), in
    float64 on the model's float32 logits. Returns the answers and each window's logits."""
    enc = tok(question, context, truncation="only_second", max_length=max_len, stride=max_len // 2,
              return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True)
    answers, windows = [], []
    for w in range(len(enc["input_ids"])):
        ids = enc["input_ids"][w]
        with torch.no_grad():
            r = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([enc["attention_mask"][w]]),
                      token_type_ids=torch.tensor([enc["token_type_ids"][w]]))
        start, end = r.start_logits[0].tolist(), r.end_logits[0].tolist()
        windows.append({"input_ids": ids, "start_logits": start, "end_logits": end})
        p_mask = np.array([s != 1 for s in enc.sequence_ids(w)], dtype=np.int64)
        p_mask[[i for i, t in enumerate(ids) if t == tok.cls_token_id]] = 0
        wanted = np.abs(p_mask - 1) & np.array(enc["attention_mask"][w])
        ps = np.where(wanted == 0, -10000.0, np.asarray(start, dtype=np.float64))
        pe = np.where(wanted == 0, -10000.0, np.asarray(end, dtype=np.float64))
        ps = np.exp(ps - ps.max()); ps /= ps.sum()
        pe = np.exp(pe - pe.max()); pe /= pe.sum()
        ps[0] = pe[0] = 0.0
        cand = np.tril(np.triu(np.outer(ps, pe)), max_answer_len - 1)
        flat = cand.flatten()
        order = np.argsort(-flat, kind="stable")[:top_k * 2 + 10]
        e0 = enc.encodings[w]
        for idx in order:
            s, e = divmod(int(idx), cand.shape[1])
            if not (wanted[s] and wanted[e]):
                continue
            try:
                a = e0.word_to_chars(e0.token_to_word(s), sequence_index=1)[0]
                b = e0.word_to_chars(e0.token_to_word(e), sequence_index=1)[1]
            except Exception:
                a, b = e0.offsets[s][0], e0.offsets[e][1]
            text = context[a:b]
            same = [x for x in answers if x["answer"].lower() == text.lower()]
            if same:
                same[0]["score"] += float(cand[s, e])
            else:
                answers.append({"score": float(cand[s, e]), "start": a, "end": b, "answer": text})
    return sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k], windows


def main(outdir):
    vocab = make_tokenizers(outdir)
    wp, jb = os.path.join(outdir, "wordpiece"), os.path.join(outdir, "jieba")
    cases = {"texts": TEXTS, "pairs": [list(p) for p in PAIRS]}
    for name in ["wordpiece", "jieba"]:
        tok = AutoTokenizer.from_pretrained(os.path.join(outdir, name))
        cases[name] = {"class": type(tok).__name__, **tokenization_cases(tok)}
    # transformers 5.24's AutoTokenizer hands this layout's vocab.txt *path* to the jieba
    # pre-tokenizer as its vocabulary (so `word in vocab` is a substring test on the path); the
    # reference is RoFormerTokenizer given the file's vocabulary, as transformers 4's slow
    # tokenizer and the tokenizer.json layout behave.
    only = os.path.join(outdir, "jieba_vocab_only")
    with open(os.path.join(only, "vocab.txt"), encoding="utf-8") as f:
        vocab_only = {line.rstrip("\n"): i for i, line in enumerate(f)}
    with open(os.path.join(only, "tokenizer_config.json")) as f:
        kw = {k: v for k, v in json.load(f).items() if k not in ("backend", "tokenizer_class")}
    tok = RoFormerTokenizer(vocab=vocab_only, **kw)
    cases["jieba_vocab_only"] = {"class": type(tok).__name__, **tokenization_cases(tok)}
    with open(os.path.join(outdir, "tokenization.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)

    # fill-mask, on both tokenizers
    for name, tokdir, texts in [
        ("fill_mask", wp, ["the quick brown [MASK] jumps.", "hello [MASK]!", "[MASK] is the capital of france."]),
        ("fill_mask_jieba", jb, ["今天天气[MASK]好。", "北京是中国的[MASK]都"]),
    ]:
        torch.manual_seed(1)
        model = RoFormerForMaskedLM(small_config(vocab)).eval()
        tok = AutoTokenizer.from_pretrained(tokdir)
        p = pipeline("fill-mask", model=model, tokenizer=tok)
        out = [to_py(p(t, top_k=5)) for t in texts]
        save_model(model, tokdir, os.path.join(outdir, name), {"inputs": texts, "top_k": 5, "outputs": out})

    # text classification (softmax over 3 labels)
    torch.manual_seed(2)
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    model = RoFormerForSequenceClassification(small_config(vocab, num_labels=3, id2label=labels,
                                                          label2id={v: k for k, v in labels.items()})).eval()
    tok = AutoTokenizer.from_pretrained(wp)
    texts = ["the weather is very good", "i like gpu kernels", "今天天气非常好。"]
    p = pipeline("text-classification", model=model, tokenizer=tok)
    out = [to_py(p(t)) for t in texts]
    out_all = [to_py(p(t, top_k=None)) for t in texts]
    save_model(model, wp, os.path.join(outdir, "classify"), {"inputs": texts, "outputs": out, "outputs_all": out_all})

    # token classification, simple aggregation
    torch.manual_seed(3)
    tags = {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER", 4: "I-PER"}
    model = RoFormerForTokenClassification(small_config(vocab, num_labels=5, id2label=tags,
                                                       label2id={v: k for k, v in tags.items()})).eval()
    tok = AutoTokenizer.from_pretrained(wp)
    texts = ["paris is the capital of france and berlin is in germany", "小明在北京学习机器学习。"]
    p = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple")
    out = [to_py(p(t)) for t in texts]
    p0 = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="none")
    out_none = [to_py(p0(t)) for t in texts]
    save_model(model, wp, os.path.join(outdir, "token_classify"), {"inputs": texts, "outputs": out, "outputs_none": out_none})

    # feature extraction and sentence embeddings
    torch.manual_seed(4)
    model = RoFormerModel(small_config(vocab)).eval()
    tok = AutoTokenizer.from_pretrained(wp)
    texts = ["the quick brown fox", "今天天气非常好。", "hello gpu world, hello again"]
    p = pipeline("feature-extraction", model=model, tokenizer=tok)
    feats = [to_py(p(t))[0] for t in texts]
    mean, cls = [], []
    for t in texts:
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0].double()
        m = enc["attention_mask"][0].double()[:, None]
        mean.append(((h * m).sum(0) / m.sum()).tolist())
        cls.append(h[0].tolist())
    norm = [(np.array(v) / np.linalg.norm(v)).tolist() for v in mean]
    save_model(model, wp, os.path.join(outdir, "embed"),
               {"inputs": texts, "features": feats, "mean": mean, "cls": cls, "mean_normalized": norm})

    # question answering: transformers 4's pipeline logic on transformers' logits
    torch.manual_seed(5)
    model = RoFormerForQuestionAnswering(small_config(vocab)).eval()
    tok = AutoTokenizer.from_pretrained(wp)
    long_context = " ".join(CORPUS[3:7] + CORPUS[10:12] + CORPUS[15:18])
    qas = [("what is the capital of france?", "Paris is the capital of France and Berlin is the capital of Germany."),
           ("where?", "北京是中国的首都，也是一座历史悠久的城市。"),
           ("what scales?", long_context)]
    outs = []
    for q, c in qas:
        best, windows = qa_answer(tok, model, q, c)
        top3, _ = qa_answer(tok, model, q, c, top_k=3)
        outs.append({"question": q, "context": c, "windows": windows, "answer": best[0], "top3": top3})
    save_model(model, wp, os.path.join(outdir, "qa"), {"cases": outs})

    # text generation, greedy, on a causal RoFormer
    torch.manual_seed(6)
    model = RoFormerForCausalLM(small_config(vocab, is_decoder=True)).eval()
    tok = AutoTokenizer.from_pretrained(wp)
    prompts = ["the quick brown", "今天天气"]
    p = pipeline("text-generation", model=model, tokenizer=tok)
    out = [to_py(p(t, max_new_tokens=8, do_sample=False)) for t in prompts]
    ids = [tok(t)["input_ids"] for t in prompts]
    save_model(model, wp, os.path.join(outdir, "generate"), {"inputs": prompts, "max_new_tokens": 8, "outputs": out, "prompt_ids": ids})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/text")
