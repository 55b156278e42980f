"""The trainer fixtures: small RoFormers trained by transformers' Trainer on small data files, for
the crate's trainer to reproduce step for step (tests/trainer_parity.rs).

Usage, with torch and transformers installed (pip install torch transformers safetensors tokenizers):

    python3 tools/make_trainer_fixtures.py tests/fixtures/trainer

Each case is a folder:
  initial/        the model before training (save_pretrained) with the WordPiece tokenizer of
                  tests/fixtures/text/wordpiece
  train.*         the training file, in the format the crate reads (CSV, TSV or JSON Lines)
  args.json       the task and the training arguments, by TrainingArguments' names
  expected.json   Trainer's log_history with logging_steps=1 (every step's loss, grad_norm and
                  learning_rate; eval_loss at the end), and the label names
  trained/        the model after training (save_pretrained)

Every run: CPU, float32, dropout 0, train_sampling_strategy "sequential" (file order: the crate's
--no-shuffle), no evaluation during training, one evaluation on the training file at the end.
Text classification, text pairs and token classification are tokenized here as transformers'
run_classification.py / run_ner.py examples do (truncation to 64; words split as given, the
first sub-token of a word labelled and the rest -100); fill-mask and causal LM data are given
as token ids with their labels (the masks and the blocks come from the data, since the two
sides' random generators differ).
"""
import json, os, shutil, sys

import numpy as np
import torch
from transformers import (AutoTokenizer, DataCollatorForTokenClassification, DataCollatorWithPadding,
                          RoFormerConfig, RoFormerForCausalLM, RoFormerForMaskedLM,
                          RoFormerForSequenceClassification, RoFormerForTokenClassification, Trainer,
                          TrainingArguments, default_data_collator)

WORDS = ["the", "weather", "is", "very", "good", "bad", "today", "i", "like", "gpu", "kernels", "we",
         "go", "to", "the", "park", "quick", "brown", "fox", "lazy", "dog", "attention", "memory",
         "beijing", "china", "city", "rain", "learning", "data", "model", "fast", "slow", "happy", "sad"]
POSITIVE = ["good", "like", "happy", "fast"]
NEGATIVE = ["bad", "sad", "slow", "lazy"]


def sentences(rng, n, lo=3, hi=14):
    return [" ".join(rng.choice(WORDS, size=rng.integers(lo, hi))) for _ in range(n)]


def sentiment(s):
    words = s.split()
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return "pos" if score > 0 else "neg" if score < 0 else "neu"


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def small_config(tok, **kw):
    return RoFormerConfig(vocab_size=len(tok), hidden_size=32, embedding_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                          initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          pad_token_id=tok.pad_token_id, **kw)


def run_case(outdir, name, tok, model, rows, collator, args, data_file, data_text, labels=None):
    case = os.path.join(outdir, name)
    shutil.rmtree(case, ignore_errors=True)
    os.makedirs(case)
    model.save_pretrained(os.path.join(case, "initial"))
    tok.save_pretrained(os.path.join(case, "initial"))
    with open(os.path.join(case, data_file), "w", encoding="utf-8") as f:
        f.write(data_text)
    targs = TrainingArguments(
        output_dir=os.path.join(case, "_hf"), report_to=[], logging_steps=1, save_strategy="no",
        eval_strategy="no", train_sampling_strategy="sequential", use_cpu=True, seed=args["seed"],
        learning_rate=args["learning_rate"], weight_decay=args["weight_decay"],
        warmup_steps=args["warmup_steps"], lr_scheduler_type=args["lr_scheduler_type"],
        per_device_train_batch_size=args["per_device_train_batch_size"],
        per_device_eval_batch_size=args["per_device_eval_batch_size"],
        gradient_accumulation_steps=args["gradient_accumulation_steps"], max_steps=args["max_steps"],
        max_grad_norm=args["max_grad_norm"], dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=Rows(rows), eval_dataset=Rows(rows),
                      data_collator=collator)
    trainer.train()
    metrics = trainer.evaluate()
    model.save_pretrained(os.path.join(case, "trained"))
    shutil.rmtree(os.path.join(case, "_hf"), ignore_errors=True)
    with open(os.path.join(case, "args.json"), "w") as f:
        json.dump({**args, "train": data_file}, f, indent=1)
    with open(os.path.join(case, "expected.json"), "w") as f:
        json.dump({"log_history": trainer.state.log_history, "eval_loss": metrics["eval_loss"],
                   "labels": labels}, f, indent=1)


def main(outdir):
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(outdir.rstrip("/")), "text", "wordpiece"))
    rng = np.random.default_rng(7)
    base = dict(seed=0, learning_rate=3e-3, weight_decay=0.01, warmup_steps=3, lr_scheduler_type="linear",
                per_device_train_batch_size=4, per_device_eval_batch_size=8, gradient_accumulation_steps=1,
                max_steps=32, max_grad_norm=1.0)

    # text classification: a CSV of single texts, three label names
    texts = sentences(rng, 40)
    labels = [sentiment(t) for t in texts]
    names = sorted(set(labels))
    label2id = {n: i for i, n in enumerate(names)}
    rows = [{**tok(t, truncation=True, max_length=64), "labels": label2id[l]} for t, l in zip(texts, labels)]
    csv = "text,label\n" + "".join(f"{t},{l}\n" for t, l in zip(texts, labels))
    for name, ga, steps in [("text_classification", 1, 32), ("text_classification_ga2", 2, 16)]:
        torch.manual_seed(1)
        model = RoFormerForSequenceClassification(small_config(
            tok, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)).eval()
        run_case(outdir, name, tok, model, rows, DataCollatorWithPadding(tok),
                 {**base, "task": "text-classification", "gradient_accumulation_steps": ga, "max_steps": steps},
                 "train.csv", csv, names)

    # text pairs: a TSV of two texts and whether they share a word
    firsts, seconds = sentences(rng, 40, 2, 8), sentences(rng, 40, 2, 8)
    pair_labels = ["same" if set(a.split()) & set(b.split()) else "different" for a, b in zip(firsts, seconds)]
    names = sorted(set(pair_labels))
    label2id = {n: i for i, n in enumerate(names)}
    rows = [{**tok(a, b, truncation=True, max_length=64), "labels": label2id[l]}
            for a, b, l in zip(firsts, seconds, pair_labels)]
    tsv = "text\ttext_pair\tlabel\n" + "".join(f"{a}\t{b}\t{l}\n" for a, b, l in zip(firsts, seconds, pair_labels))
    torch.manual_seed(2)
    model = RoFormerForSequenceClassification(small_config(
        tok, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)).eval()
    run_case(outdir, "text_pair_classification", tok, model, rows, DataCollatorWithPadding(tok),
             {**base, "task": "text-classification"}, "train.tsv", tsv, names)

    # token classification: JSON Lines of words and tags; the first sub-token of a word labelled
    places, people = ["beijing", "china", "park", "city"], ["fox", "dog", "i", "we"]
    examples = []
    for s in sentences(rng, 40, 3, 10):
        words = s.split()
        tags = ["B-LOC" if w in places else "B-PER" if w in people else "O" for w in words]
        examples.append((words, tags))
    names = sorted({t for _, tags in examples for t in tags})
    label2id = {n: i for i, n in enumerate(names)}
    rows = []
    for words, tags in examples:
        enc = tok(words, is_split_into_words=True, truncation=True, max_length=64)
        labels, previous = [], None
        for w in enc.word_ids():
            labels.append(-100 if w is None or w == previous else label2id[tags[w]])
            previous = w
        rows.append({**enc, "labels": labels})
    jsonl = "".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in examples)
    torch.manual_seed(3)
    model = RoFormerForTokenClassification(small_config(
        tok, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)).eval()
    run_case(outdir, "token_classification", tok, model, rows, DataCollatorForTokenClassification(tok),
             {**base, "task": "token-classification"}, "train.jsonl", jsonl, names)

    # fill-mask: token ids with the masks already chosen (15%, 80/10/10, by this script's generator)
    rows = []
    for s in sentences(rng, 40, 4, 14):
        ids = tok(s, truncation=True, max_length=64)["input_ids"]
        labels = [-100] * len(ids)
        for p in range(1, len(ids) - 1):
            if rng.random() < 0.15:
                labels[p] = ids[p]
                r = rng.random()
                ids[p] = tok.mask_token_id if r < 0.8 else int(rng.integers(len(tok))) if r < 0.9 else ids[p]
        if all(l == -100 for l in labels):
            labels[1], ids[1] = ids[1], tok.mask_token_id
        rows.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "attention_mask": [1] * len(ids),
                     "labels": labels})
    jsonl = "".join(json.dumps({"input_ids": r["input_ids"], "labels": r["labels"]}) + "\n" for r in rows)
    torch.manual_seed(4)
    model = RoFormerForMaskedLM(small_config(tok)).eval()
    run_case(outdir, "fill_mask", tok, model, rows, DataCollatorForTokenClassification(tok),
             {**base, "task": "fill-mask"}, "train.jsonl", jsonl)

    # causal LM: the texts tokenized, concatenated and cut into blocks of 16, as run_clm.py does
    stream = []
    for s in sentences(rng, 60, 4, 14):
        stream.extend(tok(s)["input_ids"])
    blocks = [stream[i:i + 16] for i in range(0, len(stream) - 15, 16)]
    rows = [{"input_ids": b, "token_type_ids": [0] * 16, "attention_mask": [1] * 16, "labels": list(b)}
            for b in blocks]
    jsonl = "".join(json.dumps({"input_ids": b}) + "\n" for b in blocks)
    for name, ga, steps in [("text_generation", 1, 32), ("text_generation_ga2", 2, 16)]:
        torch.manual_seed(5)
        model = RoFormerForCausalLM(small_config(tok, is_decoder=True)).eval()
        run_case(outdir, name, tok, model, rows, default_data_collator,
                 {**base, "task": "text-generation", "gradient_accumulation_steps": ga, "max_steps": steps},
                 "train.jsonl", jsonl)


    # multi-label: JSON Lines, each text's label names a list (which of the sentiment words
    # it holds); BCE over every (text, label)
    names = sorted(set(POSITIVE + NEGATIVE))
    label2id = {n: i for i, n in enumerate(names)}
    texts_ml = sentences(rng, 40)
    which = [[w for w in names if w in t.split()] for t in texts_ml]
    rows = [{**tok(t, truncation=True, max_length=64),
             "labels": [1.0 if n in ws else 0.0 for n in names]} for t, ws in zip(texts_ml, which)]
    jsonl = "".join(json.dumps({"text": t, "label": ws}) + "\n" for t, ws in zip(texts_ml, which))
    torch.manual_seed(6)
    model = RoFormerForSequenceClassification(small_config(
        tok, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id,
        problem_type="multi_label_classification")).eval()
    run_case(outdir, "multi_label_classification", tok, model, rows, DataCollatorWithPadding(tok),
             {**base, "task": "text-classification", "problem_type": "multi_label_classification"},
             "train.jsonl", jsonl, names)

    # regression: a CSV of texts and a score (the sentiment words' balance)
    texts_r = sentences(rng, 40)
    scores = [float(sum(w in POSITIVE for w in t.split()) - sum(w in NEGATIVE for w in t.split()))
              for t in texts_r]
    rows = [{**tok(t, truncation=True, max_length=64), "labels": y} for t, y in zip(texts_r, scores)]
    csv_r = "text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts_r, scores))
    torch.manual_seed(7)
    model = RoFormerForSequenceClassification(small_config(tok, num_labels=1, problem_type="regression")).eval()
    run_case(outdir, "regression", tok, model, rows, DataCollatorWithPadding(tok),
             {**base, "task": "text-classification", "problem_type": "regression"}, "train.csv", csv_r)

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/trainer")
