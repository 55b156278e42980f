"""Issue 30's runs on real text: Debian's fortune cookies (packages `fortunes` and
`fortunes-min`, installed by `apt-get install fortunes fortunes-min`), text that neither
transformers nor this library wrote. Not part of CI (tens of minutes on llvmpipe); the figures
in NOTES.md ("Training on real data (issue 30)") come from it.

    python3 tools/real_data.py prepare DIR      # data, tokenizer and config into DIR
    python3 tools/real_data.py run DIR          # prepare, then the trainings (slow)
    python3 tools/real_data.py run DIR --finetune-lr 1e-3 --tag _lr1e-3   # reuses DIR/mlm
    python3 tools/real_data.py check DIR/OUT    # the saved folder in transformers vs ours

`prepare` is deterministic (fixed seed, files read in sorted order):
- `train.csv`, `test.csv` (columns text,label): the fortunes of four files (categories)
  computers, politics, science and songs-poems, each fortune's lines joined by spaces; a
  text found in more than one of them dropped; 20% of each category held out (seed 0).
- `corpus.txt`: every other fortune of both packages, a fortune a line (unlabelled: the
  other files, and the four categories' training texts; never a test text), for masked-LM
  pre-training; `ascii-art` left out (pictures).
  The first 256 of them (shuffled, seed 0) are `corpus_eval.txt` instead, the masked LM's
  evaluation file.
- `tokenizer/`: a lower-cased BERT WordPiece of 4000 tokens trained (HF `tokenizers`) on
  corpus.txt, saved by transformers' `BertTokenizerFast`. The trainer breaks ties in hash
  order (a new vocabulary each run), so the one trained for the NOTES runs is kept in
  `tools/real_data_vocab.txt` and used; `prepare --new-vocab` trains a fresh one.
- `config.json`: a small RoFormer (2 layers, hidden 128, 4 heads, 512 intermediate, 64
  positions: texts cut to 64 tokens), dropout 0.1: small enough for llvmpipe.
"""
import argparse, csv, json, os, random, re, subprocess, sys, time

FORTUNES = "/usr/share/games/fortunes"
CATEGORIES = ["computers", "politics", "science", "songs-poems"]
SKIP = {"ascii-art"}
VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_data_vocab.txt")


def read_fortunes(path):
    with open(path, encoding="utf-8", errors="strict") as f:
        raw = f.read()
    out = []
    for chunk in re.split(r"^%\s*$", raw, flags=re.M):
        text = " ".join(chunk.split())
        if text:
            out.append(text)
    return out


def package_version(name):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name],
                              capture_output=True, text=True, check=True).stdout
    except Exception:
        return "?"


def prepare(out, new_vocab=False):
    os.makedirs(out, exist_ok=True)
    files = sorted(f for f in os.listdir(FORTUNES)
                   if not f.endswith((".dat", ".u8")) and f not in SKIP
                   and os.path.isfile(os.path.join(FORTUNES, f)))
    by_file = {f: read_fortunes(os.path.join(FORTUNES, f)) for f in files}
    # Labelled texts: the four categories, a text in two of them dropped.
    owner = {}
    for c in CATEGORIES:
        for t in by_file[c]:
            owner.setdefault(t, set()).add(c)
    rng = random.Random(0)
    train, test = [], []
    for c in CATEGORIES:
        texts = sorted({t for t in by_file[c] if owner[t] == {c}})
        rng.shuffle(texts)
        n_test = len(texts) // 5
        test += [(t, c) for t in texts[:n_test]]
        train += [(t, c) for t in texts[n_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    test_texts = {t for t, _ in test}
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with open(os.path.join(out, name), "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
    # Unlabelled text: everything else, never a test text.
    corpus, seen = [], set()
    for f in files:
        for t in by_file[f]:
            if t not in test_texts and t not in seen:
                seen.add(t)
                corpus.append(t)
    rng.shuffle(corpus)
    with open(os.path.join(out, "corpus_eval.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(corpus[:256]) + "\n")
    corpus = corpus[256:]
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(corpus) + "\n")

    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast
    if new_vocab:
        # Not reproducible: the trainer breaks ties in hash order, which changes per process.
        tok = BertWordPieceTokenizer(lowercase=True)
        tok.train([os.path.join(out, "corpus.txt")], vocab_size=4000, min_frequency=2,
                  special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    else:
        # The vocabulary that training made for the NOTES runs.
        tok = BertWordPieceTokenizer(VOCAB, lowercase=True)
    tdir = os.path.join(out, "tokenizer")
    os.makedirs(tdir, exist_ok=True)
    tok.save_model(tdir)  # vocab.txt
    fast = BertTokenizerFast(tokenizer_object=tok._tokenizer, do_lower_case=True,
                             model_max_length=64)
    fast.save_pretrained(tdir)
    config = {
        "architectures": ["RoFormerForMaskedLM"],
        "model_type": "roformer",
        "vocab_size": fast.vocab_size,
        "embedding_size": 128,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "rotary_value": False,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    counts = {c: sum(1 for _, l in test if l == c) for c in CATEGORIES}
    summary = {
        "fortunes": package_version("fortunes"),
        "fortunes-min": package_version("fortunes-min"),
        "train": len(train), "test": len(test), "corpus": len(corpus),
        "test_counts": counts,
        "majority_rate": max(counts.values()) / len(test),
        "vocab": fast.vocab_size,
    }
    with open(os.path.join(out, "data.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    return summary


ROFORMER = os.environ.get("ROFORMER", "target/release/roformer")


def train(args, log):
    """Runs `roformer train ... --json`; returns (the last evaluation, seconds)."""
    cmd = [ROFORMER, "train", *args, "--json"]
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    with open(log, "w") as out, open(log + ".err", "w") as err:
        p = subprocess.run(cmd, stdout=out, stderr=err, text=True)
    seconds = time.time() - start
    if p.returncode != 0:
        raise RuntimeError(f"failed ({p.returncode}): see {log}.err")
    with open(log) as f:
        lines = [json.loads(l) for l in f if l.startswith("{")]
    evals = [l for l in lines if any(k.startswith("eval_") for k in l)]
    print(f"  {seconds:.0f} s; last: {evals[-1] if evals else lines[-1]}", flush=True)
    return (evals[-1] if evals else lines[-1]), seconds


def run(d, seeds, pretrain_steps, finetune_epochs, finetune_lr, tag):
    """Two chains at once (the CPU has two cores): masked-LM pre-training, then a fine-tune
    from it per seed; and beside it, a fine-tune from scratch per seed with the same
    arguments (the same steps, batches, learning rate and seed). Pre-training cuts texts to
    32 tokens (the corpus's median fortune is 28; RoFormer's positions are rotary, so
    nothing is learnt per position and fine-tuning at 64 loses nothing) for twice the
    updates in the time."""
    from concurrent.futures import ThreadPoolExecutor
    prepare(d)
    results = {}
    common = ["--task", "text-classification", "--train", f"{d}/train.csv",
              "--eval", f"{d}/test.csv", "--max-length", "64",
              "--per-device-train-batch-size", "32", "--per-device-eval-batch-size", "64",
              "--num-train-epochs", str(finetune_epochs), "--learning-rate", str(finetune_lr),
              "--warmup-ratio", "0.1", "--weight-decay", "0.01",
              "--logging-steps", "20", "--save-steps", "0"]
    pre = f"{d}/mlm"

    def pretrained_chain():
        if os.path.exists(f"{pre}/model.safetensors"):  # another fine-tuning variant
            print(f"(pre-trained model {pre} already there)")
        else:
            results["mlm"] = train(
                ["--task", "fill-mask", "--config", f"{d}/config.json",
                 "--tokenizer", f"{d}/tokenizer", "--train", f"{d}/corpus.txt",
                 "--eval", f"{d}/corpus_eval.txt", "--output-dir", pre, "--max-length", "32",
                 "--per-device-train-batch-size", "32", "--per-device-eval-batch-size", "64",
                 "--max-steps", str(pretrain_steps), "--learning-rate", "1e-3",
                 "--warmup-ratio", "0.06", "--weight-decay", "0.01",
                 "--logging-steps", "25", "--save-steps", "0", "--seed", "0"], f"{pre}.log")
        for seed in seeds:
            results[f"pretrained{seed}"] = train(
                common + ["--model", pre, "--output-dir", f"{d}/pretrained{seed}{tag}",
                          "--seed", str(seed)], f"{d}/pretrained{seed}{tag}.log")

    def scratch_chain():
        for seed in seeds:
            results[f"scratch{seed}"] = train(
                common + ["--config", f"{d}/config.json", "--tokenizer", f"{d}/tokenizer",
                          "--output-dir", f"{d}/scratch{seed}{tag}", "--seed", str(seed)],
                f"{d}/scratch{seed}{tag}.log")

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(pretrained_chain), pool.submit(scratch_chain)]:
            f.result()
    with open(f"{d}/results{tag}.json", "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


def check(out, test_csv, n):
    """The saved folder in transformers (float32, AutoTokenizer) against `roformer classify
    --all --json` on the first n test texts: the largest absolute difference of the scores."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    with open(test_csv, encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:n]
    tok = AutoTokenizer.from_pretrained(out)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        out, output_loading_info=True)
    model.eval()
    p = subprocess.run([ROFORMER, "classify", "--model", out, "--all", "--json", "--truncate"],
                       input="\n".join(texts) + "\n", capture_output=True, text=True, check=True)
    ours = [json.loads(l) for l in p.stdout.splitlines()]
    worst, worst_logit, agree = 0.0, 0.0, 0
    for text, mine in zip(texts, ours):
        enc = tok(text, return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            logits = model(**enc).logits[0].double()
        probs = logits.softmax(-1)
        theirs = {model.config.id2label[i]: float(probs[i]) for i in range(len(probs))}
        for entry in mine:
            worst = max(worst, abs(entry["score"] - theirs[entry["label"]]))
        agree += mine[0]["label"] == max(theirs, key=theirs.get)
    print(f"{type(model).__name__} missing {info['missing_keys']} unexpected "
          f"{info['unexpected_keys']}; {len(ours)} texts, top label agrees on {agree}, "
          f"largest |score difference| {worst:.2e}")
    ok = len(ours) == len(texts) and agree == len(texts) and worst < 1e-5 \
        and not info["missing_keys"] and not info["unexpected_keys"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare"); p.add_argument("dir")
    p.add_argument("--new-vocab", action="store_true")
    r = sub.add_parser("run"); r.add_argument("dir")
    r.add_argument("--seeds", default="0,1")
    r.add_argument("--pretrain-steps", type=int, default=150)
    r.add_argument("--finetune-epochs", type=float, default=3)
    r.add_argument("--finetune-lr", type=float, default=2e-4)
    r.add_argument("--tag", default="", help="suffix of the fine-tuned folders")
    c = sub.add_parser("check"); c.add_argument("out")
    c.add_argument("--test", required=True); c.add_argument("-n", type=int, default=100)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.dir, a.new_vocab)
    elif a.cmd == "run":
        run(a.dir, [int(s) for s in a.seeds.split(",")], a.pretrain_steps, a.finetune_epochs,
            a.finetune_lr, a.tag)
    else:
        check(a.out, a.test, a.n)
