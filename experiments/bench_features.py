"""Benchmark: per-sample LoRA gradients on SmolLM2-135M, ML-100K SeqRec samples (issue 4).

Samples per second of, all in this process, on the same samples, model and batches:

* (a)  reference, one backward per sample, as a standard PEFT training setup runs it (every LoRA matrix trainable,
       so autograd records the whole network; this is what the official code's int8 preparation amounts to);
* (a') lean reference, one forward+backward per sample with only the chosen matrix trainable;
* (b)  our batched extraction: one forward + one backward per batch, exact per-sample gradients via hooks
       (dropout off, and again with the official per-sample-seeded dropout on: b_drop);
* (c)  a plain batched forward + backward of the summed loss, same trainable matrix, no per-sample work.

Prints the ratios b/a, b/a' and b/c, the peak memory of each mode (CUDA: max allocated; CPU: peak RSS growth over the
process baseline, sampled every 5 ms) and the largest relative difference between (b) and (a') gradients.

    python experiments/bench_features.py --n 256                # real SmolLM2 weights (outputs/cache/models)
    python experiments/bench_features.py --n 256 --random-weights   # same architecture, random weights (timing only)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig

from goracs.data.instructions import domain_text, seqrec_fields
from goracs.features.gradients import GradientExtractor, encode_split, select_lora_params
from goracs.models.lora import attach_lora
from goracs.tasks import SeqRecTask

SEQREC = SeqRecTask()

log = logging.getLogger("bench_features")
PATTERN = r"layers\.{last}\.self_attn\.v_proj\.lora_B\."
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], bias="none",
            task_type="CAUSAL_LM")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="samples timed for (b), (c)")
    p.add_argument("--n-ref", type=int, default=None, help="samples timed for the per-sample references (default n)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"))
    p.add_argument("--samples", default="outputs/bench/ml100k_seqrec_samples.json",
                   help="JSON cache of the built samples (read when present, so the data need not travel)")
    p.add_argument("--model-dir", default="outputs/cache/models/smollm2-135m-instruct")
    p.add_argument("--random-weights", action="store_true", help="architecture from --model-dir, random weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)

    df = ml100k_seqrec(args.data_dir, Path(args.samples), args.n)
    model, tok = load_smollm2(args.model_dir, random_weights=args.random_weights)
    model = attach_lora(model, LoraConfig(**LORA))
    items = encode_split(df, SEQREC, tok, cutoff_len=512, faithful=True)
    n_ref = min(args.n_ref or args.n, len(items))
    lengths = [len(it["input_ids"]) for it in items]
    log.info("%d samples, tokens per sample: mean %.0f, max %d; device %s", len(items), np.mean(lengths),
             max(lengths), dev)

    def extractor(dropout: bool) -> GradientExtractor:
        fn = GradientExtractor(model, SEQREC, PATTERN, pad_id=tok.pad_token_id, yes_no=None, dropout=dropout,
                               dropout_seed=0, projection=None, want=["grad_proj", "grad_norm"])
        fn.prepare(dev)
        return fn

    results, grads = {}, {}
    fn = extractor(False)
    batches = [fn.collate(items[i:i + args.batch_size]) for i in range(0, len(items), args.batch_size)]
    results["b"], out = timed(lambda: [fn(b)["grad_proj"] for b in batches], len(items), dev, warm=lambda: fn(batches[0]))
    grads["b"] = np.concatenate(out)
    fn.release()
    fn = extractor(True)
    results["b_drop"], _ = timed(lambda: [fn(b) for b in batches], len(items), dev, warm=lambda: fn(batches[0]))
    fn.release()

    chosen = select_lora_params(model, PATTERN)
    results["c"], _ = timed(lambda: [plain_step(model, b, dev) for b in batches], len(items), dev,
                            warm=lambda: plain_step(model, batches[0], dev))
    singles = [fn.collate([it]) for it in items[:n_ref]]
    results["a_lean"], out = timed(lambda: [single_step(model, s, dev, chosen) for s in singles], n_ref, dev,
                                   warm=lambda: single_step(model, singles[0], dev, chosen))
    grads["a_lean"] = np.stack(out)
    for name, prm in model.named_parameters():  # as in training: every LoRA matrix trainable
        prm.requires_grad_("lora_" in name)
    results["a"], out = timed(lambda: [single_step(model, s, dev, chosen) for s in singles], n_ref, dev,
                              warm=lambda: single_step(model, singles[0], dev, chosen))
    err = np.abs(grads["b"][:n_ref] - np.stack(out)).max() / np.abs(np.stack(out)).max()

    summary = {"device": str(dev), "n": len(items), "n_ref": n_ref, "batch_size": args.batch_size,
               "mean_tokens": float(np.mean(lengths)), "weights": "random" if args.random_weights else "smollm2",
               **{f"{k}/samples_per_s": v["rate"] for k, v in results.items()},
               **{f"{k}/peak_mem_mb": v["peak_mb"] for k, v in results.items()},
               "ratio_b_over_a": results["b"]["rate"] / results["a"]["rate"],
               "ratio_b_over_a_lean": results["b"]["rate"] / results["a_lean"]["rate"],
               "ratio_b_over_c": results["b"]["rate"] / results["c"]["rate"],
               "ratio_b_drop_over_c": results["b_drop"]["rate"] / results["c"]["rate"],
               "max_rel_diff_b_vs_a": float(err)}
    for k, v in results.items():
        print(f"{k:7s} {v['rate']:9.2f} samples/s   peak memory {v['peak_mb']:9.1f} MB")
    print(f"b/a = {summary['ratio_b_over_a']:.2f}   b/a' = {summary['ratio_b_over_a_lean']:.2f}   "
          f"b/c = {summary['ratio_b_over_c']:.2f}   b_drop/c = {summary['ratio_b_drop_over_c']:.2f}   "
          f"max |b - a| / max |a| = {err:.2e}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(summary, indent=1))


def plain_step(model, batch, dev) -> None:
    """(c): forward, summed per-sample loss, backward into the chosen parameter's .grad; nothing per sample."""
    batch = {k: v.to(dev) for k, v in batch.items()}
    mask = batch["attention_mask"]
    out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=False)
    SEQREC.logits_losses(out.logits, batch, answer_ids=None)[0].sum().backward()
    model.zero_grad(set_to_none=True)


def single_step(model, batch, dev, chosen) -> np.ndarray:
    """(a): one sample, forward + backward, read the chosen parameters' .grad."""
    batch = {k: v.to(dev) for k, v in batch.items()}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    SEQREC.logits_losses(out.logits, batch, answer_ids=None)[0][0].backward()
    g = torch.cat([m.weight.grad.flatten() for m in chosen.values()]).float().cpu().numpy()
    model.zero_grad(set_to_none=True)
    return g


def timed(work, n: int, dev: torch.device, *, warm) -> tuple[dict, object]:
    warm()
    _sync(dev)
    with PeakMemory(dev) as mem:
        start = time.perf_counter()
        out = work()
        _sync(dev)
        seconds = time.perf_counter() - start
    log.info("%d samples in %.2f s", n, seconds)
    return {"rate": n / seconds, "seconds": seconds, "peak_mb": mem.peak_mb}, out


class PeakMemory:
    """CUDA: peak allocated bytes; CPU: peak resident-set growth over the start (sampled by a thread)."""

    def __init__(self, dev: torch.device):
        self.dev, self.peak_mb, self._stop = dev, 0.0, threading.Event()

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
            self._base = torch.cuda.memory_allocated(self.dev)
        else:
            self._base = self._peak = _rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.dev) - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = (self._peak - self._base) / 2**20

    def _watch(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def load_smollm2(folder: str, *, random_weights: bool):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from goracs.models.backbone import SmolLM2Backbone

    if not random_weights:
        return SmolLM2Backbone(cache_dir=str(Path(folder).parent)).load()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    return LlamaForCausalLM(AutoConfig.from_pretrained(folder)), tok


def ml100k_seqrec(data_dir: str, cache: Path, n: int) -> pd.DataFrame:
    """``n`` SeqRec samples from ML-100K (movies wording, faithful prompts): per user, ratings by time, sliding
    window of up to 10 previous titles -> next title; users in id order, one window every 10 interactions."""
    if cache.is_file():
        df = pd.DataFrame(json.loads(cache.read_text()))
        if len(df) >= n:
            return df.iloc[:n].reset_index(drop=True)
    ratings = pd.read_csv(Path(data_dir) / "u.data", sep="\t", names=["user", "item", "rating", "timestamp"])
    titles = pd.read_csv(Path(data_dir) / "u.item", sep="|", header=None, encoding="latin-1", usecols=[0, 1],
                         names=["item", "title"]).set_index("item")["title"]
    text, rows = domain_text("movies"), []
    for user, g in ratings.sort_values(["user", "timestamp", "item"]).groupby("user", sort=True):
        seq = [titles[i] for i in g["item"]]
        for t in range(10, len(seq), 10):
            instruction, inp, out = seqrec_fields(text, seq[t - 10:t], seq[t], faithful=True)
            rows.append({"user": str(user), "instruction": instruction, "input": inp, "output": out, "label": 1})
        if len(rows) >= max(n, 256):
            break
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows))
    return pd.DataFrame(rows).iloc[:n].reset_index(drop=True)


if __name__ == "__main__":
    main()
