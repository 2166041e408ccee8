"""Benchmark: every LLM stage of a job against its hardware floor, measured in the same process (issue 12).

For each stage, on the run's real samples (the demo's ML-100K slice by default), the throughput in real tokens per
second (padding excluded) of **the code path a job runs**, next to a **floor**: a plain batched forward (scoring,
embedding, one per generated token) or forward + backward (training, gradient features) of the same model on the
same tokens, *packed*: every stage's token stream is concatenated and cut into rows of its mean length, so the floor
pays no padding, no masks and none of our per-sample work. The ratio stage / floor says how much of the hardware the
stage leaves unused (≥ 1 means the stage beats the plain forward, e.g. by avoiding the full logits).

| stage | code path (as a job runs it) | floor on the packed tokens |
|---|---|---|
| gradients | ``FeatureStore`` gradient pass: ``run_batches(GradientExtractor)``, loss + EL2N + grad norm, dropout on | HF ``model(ids, labels=ids).loss``, ``autograd.grad`` w.r.t. the same chosen LoRA matrix |
| text_emb_llm | ``run_batches(LastTokenEncoder)`` (``features.text_encoder=llm``) | no-grad forward, 1 logit row |
| text_emb_minilm | ``run_batches(MeanPoolEncoder)`` (the default encoder, MiniLM) | no-grad MiniLM forward |
| train_step | ``fine_tune`` (Lightning, ``trainer`` config): time inside the training batches | HF ``loss.backward()`` + AdamW step, LoRA in train mode |
| validation | ``fine_tune``'s validation loop | no-grad HF ``model(ids, labels=ids)`` |
| test_loss | ``response_losses`` (teacher-forced response CE) | no-grad forward, every position's logits |
| likelihood | ``candidate_scores`` (prompt KV cache shared by 100 candidates) | prompt forward + candidates' own tokens, every position's logits |
| generation | ``grounding.generate`` (HF beam search) | prefill + the same number of cached one-token steps, greedy |
| title_emb | ``embed_texts`` over catalogue titles (adapter off) | no-grad forward, adapter off, 1 logit row |

Each stage runs in every dtype of ``--dtypes`` (default bfloat16 and float32, the backbone loaded in each in turn),
so the table shows on the machine it runs on what bf16 buys or costs per stage, and the line above it says which
dtype ``model.backbone.dtype=auto`` chose here and why (``goracs.models.arithmetic``). Every row also records the
process CPU time and the load average, since wall times on a shared machine are only figures next to them.

    python experiments/bench_pipeline.py                      # all stages, SmolLM2, CPU, bf16 and fp32
    python experiments/bench_pipeline.py --stages gradients,train_step --n-train 32 --dtypes float32
    python experiments/bench_pipeline.py --device cuda --override trainer=gpu   # a GPU with the converted weights
    # an AVX2-only CPU reproduced on an AVX512-BF16 one (docs/bench_pipeline.md, "Both kinds of CPU"):
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 python experiments/bench_pipeline.py
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from bench_common import add_common_args, load_model, load_samples, plain, setup, sync, timed
from goracs.data.instructions import seqrec_response
from goracs.evaluation.grounding import clean_text, embed_texts, generate
from goracs.evaluation.likelihood import candidate_scores, candidate_tokens, response_losses
from goracs.features.gradients import GradientExtractor, encode_split, select_lora_params
from goracs.features.sharded import run_batches
from goracs.features.text_embedding import LastTokenEncoder, embedding_texts, sentence_encoder
from goracs.models.arithmetic import cached_bf16_speedup, cpu_capability, resolve_dtype
from goracs.models.encoding import encode_lm, encode_prompt
from goracs.models.finetune import fine_tune
from goracs.models.kv_cache import cache_keyword
from goracs.tasks import SeqRecTask

log = logging.getLogger("bench_pipeline")
SEQREC = SeqRecTask()
STAGES = ("gradients", "text_emb_llm", "text_emb_minilm", "train_step", "validation", "test_loss", "likelihood",
          "generation", "title_emb")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--n-train", type=int, default=64, help="train samples (gradients, text embeddings, training)")
    p.add_argument("--n-valid", type=int, default=48, help="validation samples")
    p.add_argument("--n-test", type=int, default=24, help="test rows (test loss, generation)")
    p.add_argument("--rank-rows", type=int, default=2, help="test rows ranked by likelihood (100 candidates each)")
    p.add_argument("--n-titles", type=int, default=512, help="catalogue titles embedded")
    p.add_argument("--n-numerics", type=int, default=64,
                   help="train samples whose gradient features are compared with the fp32 reference (0: skip)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each stage and floor; the fastest of each counts")
    p.add_argument("--dtypes", default="bfloat16,float32",
                   help="backbone dtypes to run every stage in, in turn (comma list of bfloat16, float32, float16)")
    add_common_args(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"--stages: unknown {unknown}; expected some of {list(STAGES)}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or set(dtypes) - {"bfloat16", "float32", "float16"}:
        p.error(f"--dtypes {args.dtypes!r}: expected a comma list of bfloat16, float32, float16")
    cfg, device = setup(args)
    auto = resolve_dtype("auto", device=device)
    speed = cached_bf16_speedup() if device == "cpu" else None
    log.info("dtype auto here: %s (%s)", auto.dtype, auto.reason)
    samples = load_samples(cfg)
    rows, numerics = [], {}
    for dtype in dtypes:
        cfg, _ = setup(argparse.Namespace(**{**vars(args), "override": [*args.override,
                                                                         f"model.backbone.dtype={dtype}"]}))
        model, tok = load_model(cfg, samples, device)
        bench = Bench(cfg, samples, model, tok, device, args)
        bench.warm_up()
        if args.n_numerics and dtype != "float32":
            log.info("numerics: gradient features, %s and fp32 vs the fp32 full-logits reference", dtype)
            numerics[dtype] = bench.numerics()
            print(json.dumps(numerics[dtype], indent=1))
        for stage in stages:
            log.info("stage %s (%s)", stage, dtype)
            runs, cpu0 = [], time.process_time()
            for _ in range(args.repeats):
                if stage == "train_step":
                    bench.__dict__.pop("_clock", None)  # a new fit per repeat (validation reuses the last one)
                runs.append(getattr(bench, stage)())
            # The fastest of the repeats, for the stage and the floor each: the least disturbed by other processes.
            row = {**max(runs, key=lambda r: r["stage_tok_s"]),
                   "floor_tok_s": max(r["floor_tok_s"] for r in runs), "repeats": len(runs)}
            row.update(stage=stage, dtype=dtype, ratio=row["stage_tok_s"] / row["floor_tok_s"],
                       cpu_s=time.process_time() - cpu0, load=os.getloadavg()[0])
            log.info("%s (%s): %.0f tok/s, floor %.0f tok/s, ratio %.2f", stage, dtype, row["stage_tok_s"],
                     row["floor_tok_s"], row["ratio"])
            rows.append(row)
        del bench, model
    result = {"device": device, "threads": torch.get_num_threads(), "dtypes": dtypes, "model": args.model,
              "overrides": args.override, "cpu": _cpu_name(), "cpu_capability": cpu_capability(),
              "isa_env": {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                                      "ATEN_CPU_CAPABILITY") if k in os.environ},
              "auto": {"dtype": auto.dtype, "reason": auto.reason,
                       "probe": None if speed is None else vars(speed)},
              "stages": rows, "numerics": numerics or None}
    print(f"dtype auto on this machine: {auto.dtype} ({auto.reason})")
    print(table(rows))
    if len(dtypes) > 1:
        print(dtype_table(rows, dtypes))
    print(json.dumps({k: v for k, v in result.items() if k not in ("stages", "numerics")}))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")


def table(rows: list[dict]) -> str:
    lines = ["| stage | dtype | tokens | stage tok/s | floor tok/s | **stage / floor** | stage s | CPU s | load "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['dtype']} | {r['tokens']:,} | {r['stage_tok_s']:,.0f} | "
                     f"{r['floor_tok_s']:,.0f} | **{r['ratio']:.2f}** | {r['stage_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['load']:.1f} | {r.get('note', '')} |")
    return "\n".join(lines)


def dtype_table(rows: list[dict], dtypes: list[str]) -> str:
    """Per stage: each dtype's stage throughput and its floor, and the time of each relative to the first dtype."""
    by = {(r["stage"], r["dtype"]): r for r in rows}
    head = " | ".join(f"{d} tok/s (floor)" for d in dtypes)
    lines = [f"| stage | {head} | " + " | ".join(f"{d} time / {dtypes[0]}" for d in dtypes[1:]) + " |",
             "|---" * (2 + len(dtypes) - 1 + 1) + "|"]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        cells = [by.get((stage, d)) for d in dtypes]
        tput = " | ".join(f"{c['stage_tok_s']:,.0f} ({c['floor_tok_s']:,.0f})" if c else "-" for c in cells)
        rel = " | ".join(f"{cells[0]['stage_tok_s'] / c['stage_tok_s']:.2f}" if c and cells[0] else "-"
                         for c in cells[1:])
        lines.append(f"| {stage} | {tput} | {rel} |")
    return "\n".join(lines)


class Bench:
    """One method per stage; each returns tokens, stage_tok_s, floor_tok_s, stage_s (and a note)."""

    def __init__(self, cfg, samples, model, tok, device, args):
        self.cfg, self.samples, self.model, self.tok, self.device, self.args = cfg, samples, model, tok, device, args
        self.train = samples.train.iloc[:args.n_train].reset_index(drop=True)
        self.valid = samples.valid.iloc[:args.n_valid].reset_index(drop=True)
        self.test = samples.test.iloc[:args.n_test].reset_index(drop=True)
        self.faithful = bool(cfg.task.faithful_prompts)
        self.ev = plain(cfg.eval)

    def warm_up(self) -> None:
        """One forward and backward, so that no stage pays the process's first-call costs."""
        ids = torch.randint(0, self.tok.vocab_size, (2, 64), device=self.device)
        for name, prm in self.model.named_parameters():
            prm.requires_grad_("lora_" in name)
        self.model(input_ids=ids, labels=ids).loss.backward()
        self.model.zero_grad(set_to_none=True)

    # -- features ------------------------------------------------------------------------------------------------

    def gradients(self) -> dict:
        fc = self.cfg.features
        items = encode_split(self.train, SEQREC, self.tok, cutoff_len=int(fc.cutoff_len), faithful=self.faithful)
        fn = GradientExtractor(self.model, SEQREC, fc.grad_params, pad_id=self.tok.pad_token_id, yes_no=None,
                               dropout=bool(fc.dropout), dropout_seed=0, projection=None,
                               want=["loss", "el2n", "grad_norm"])
        _, seconds = timed(lambda: run_batches(fn, items, batch_size=int(fc.batch_size), device=self.device,
                                               desc="gradients"), self.device)
        fn.release()
        chosen = [m.weight for m in select_lora_params(self.model, fc.grad_params).values()]
        for name, prm in self.model.named_parameters():
            prm.requires_grad_(any(prm is c for c in chosen))
        self.model.eval()

        def floor(ids):
            with torch.enable_grad():
                torch.autograd.grad(self.model(input_ids=ids, labels=ids, use_cache=False).loss, chosen)

        return self._row([it["input_ids"] for it in items], seconds, floor, int(fc.batch_size),
                         note=f"batch {fc.batch_size}, dropout {'on' if fc.dropout else 'off'}")

    def text_emb_llm(self) -> dict:
        texts = embedding_texts(self.train, SEQREC, faithful=self.faithful)
        fn = LastTokenEncoder(self.model, self.tok, max_length=int(self.cfg.features.cutoff_len))
        items = [{"text": t, "index": i} for i, t in enumerate(texts)]
        bs = int(self.cfg.features.embed_batch_size)
        _, seconds = timed(lambda: run_batches(fn, items, batch_size=bs, device=self.device, desc="text_emb"),
                           self.device)
        tokens = [encode_prompt(self.tok, t, cutoff_len=int(self.cfg.features.cutoff_len))["input_ids"] for t in texts]
        return self._row(tokens, seconds, self._no_grad_forward(self.model), bs, note=f"batch {bs}")

    def text_emb_minilm(self) -> dict:
        texts = embedding_texts(self.train, SEQREC, faithful=self.faithful)
        fn = sentence_encoder("minilm", None, self.cfg.features.embed_max_length)
        fn.prepare(torch.device(self.device))
        items = [{"text": t, "index": i} for i, t in enumerate(texts)]
        bs = int(self.cfg.features.embed_batch_size)
        _, seconds = timed(lambda: run_batches(fn, items, batch_size=bs, device=self.device, desc="minilm"),
                           self.device)
        tokens = [fn.tokenizer(t, truncation=True, max_length=fn.max_length)["input_ids"] for t in texts]
        encoder = fn._model

        @torch.no_grad()
        def floor(ids):
            encoder(input_ids=ids)

        return self._row(tokens, seconds, floor, bs, note=f"batch {bs}, MiniLM-L6 fp32")

    def numerics(self) -> dict:
        """Gradient features of the first ``--n-numerics`` train samples: the job's path in the model's dtype and in
        fp32, against the fp32 full-logits reference (the head loss not chunked, batches in input order)."""
        from unittest import mock

        fc = self.cfg.features
        n = self.args.n_numerics
        items = encode_split(self.train.iloc[:n], SEQREC, self.tok, cutoff_len=int(fc.cutoff_len),
                             faithful=self.faithful)
        want = ["loss", "el2n", "grad_norm", "grad_proj"]

        def extract(model, sort: bool = True) -> dict:
            fn = GradientExtractor(model, SEQREC, fc.grad_params, pad_id=self.tok.pad_token_id, yes_no=None,
                                   dropout=bool(fc.dropout), dropout_seed=0, projection=None, want=want)
            if sort:
                out = run_batches(fn, items, batch_size=int(fc.batch_size), device=self.device, desc="numerics")
            else:
                fn.prepare(torch.device(self.device))
                parts = [fn(fn.collate(items[i:i + int(fc.batch_size)])) for i in range(0, n, int(fc.batch_size))]
                out = {k: np.concatenate([p[k] for p in parts]) for k in want}
            fn.release()
            return out

        job, job_s = timed(lambda: extract(self.model), self.device)
        fp32 = copy.deepcopy(self.model).float()
        job32, job32_s = timed(lambda: extract(fp32), self.device)
        with mock.patch("goracs.models.lm_head.split_head", return_value=None):
            ref = extract(fp32, sort=False)
        del fp32
        result = {"samples": n, "job_dtype_s": job_s, "job_fp32_s": job32_s}
        for name, values in (("job_dtype", job), ("job_fp32", job32)):
            g, r = values["grad_proj"].astype(np.float64), ref["grad_proj"].astype(np.float64)
            rel = np.linalg.norm(g - r, axis=1) / np.linalg.norm(r, axis=1)
            cos = (g * r).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1))
            result.update({f"{name}/gradient/median_rel_l2": float(np.median(rel)),
                           f"{name}/gradient/max_rel_l2": float(rel.max()), f"{name}/gradient/min_cos": float(cos.min())})
            for f in want[:3]:
                a, b = values[f].astype(np.float64), ref[f].astype(np.float64)
                result[f"{name}/{f}/max_rel"] = float(np.abs(a - b).max() / np.abs(b).max())
                result[f"{name}/{f}/median_rel"] = float(np.median(np.abs(a - b) / np.abs(b)))
                result[f"{name}/{f}/spearman"] = float(_spearman(a, b))
        return result

    # -- fine-tuning ---------------------------------------------------------------------------------------------

    def _fit(self) -> "_StageClock":
        if not hasattr(self, "_clock"):
            trainer = plain(self.cfg.trainer)
            trainer["lightning"].update(max_epochs=1, enable_progress_bar=False, val_check_interval=1.0,
                                        check_val_every_n_epoch=1)
            for name, prm in self.model.named_parameters():  # as a job's fresh model: every LoRA matrix trains
                prm.requires_grad_("lora_" in name)
            self._clock = _StageClock(self.device)
            with tempfile.TemporaryDirectory(prefix="bench-fit-") as out:
                fine_tune(self.model, self.tok, self.train, self.valid, task=SEQREC, faithful=self.faithful,
                          trainer=trainer, logger=None, out_dir=Path(out), seed=0, callbacks=[self._clock])
        return self._clock

    def _train_tokens(self, frame, train_on_inputs: bool = True) -> list[list[int]]:
        cut = int(self.cfg.trainer.cutoff_len)
        return [encode_lm(self.tok, SEQREC.prompt(r, faithful=self.faithful), r["output"], cutoff_len=cut,
                          train_on_inputs=train_on_inputs)["input_ids"] for r in frame.to_dict("records")]

    def train_step(self) -> dict:
        clock = self._fit()
        bs = int(self.cfg.trainer.batch_size)
        for name, prm in self.model.named_parameters():
            prm.requires_grad_("lora_" in name)
        opt = torch.optim.AdamW([q for q in self.model.parameters() if q.requires_grad], lr=1e-5)
        self.model.train()

        def floor(ids):
            self.model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        row = self._row(self._train_tokens(self.train), clock.train_s, floor, bs,
                        note=f"batch {bs}, {clock.steps} steps, {self.cfg.trainer.lightning.precision}")
        self.model.eval()
        return row

    def validation(self) -> dict:
        clock = self._fit()
        bs = int(self.cfg.trainer.eval_batch_size)
        return self._row(self._train_tokens(self.valid), clock.valid_s, self._no_grad_forward(self.model, loss=True),
                         bs, note=f"batch {bs}")

    # -- evaluation ----------------------------------------------------------------------------------------------

    def test_loss(self) -> dict:
        rows = self.test.to_dict("records")
        prompts = [SEQREC.prompt(r, faithful=self.faithful) for r in rows]
        responses = [r["output"] for r in rows]
        bs, cut = int(self.ev["batch_size"]), int(self.ev["cutoff_len"])
        _, seconds = timed(lambda: response_losses(self.model, self.tok, prompts, responses, batch_size=bs,
                                                   cutoff_len=cut), self.device)
        tokens = [encode_lm(self.tok, p, r, cutoff_len=cut)["input_ids"] for p, r in zip(prompts, responses)]
        return self._row(tokens, seconds, self._no_grad_forward(self.model, logits=True), bs, note=f"batch {bs}")

    def likelihood(self) -> dict:
        title = dict(zip(self.samples.items["item"].astype(str), self.samples.items["title"].astype(str)))
        rows = self.test.to_dict("records")[:self.args.rank_rows]
        cut, cb = int(self.ev["cutoff_len"]), int(self.ev["candidate_batch_size"])
        seconds, prompt_tokens, candidates = 0.0, [], []
        for row in rows:
            prompt = SEQREC.prompt(row, purpose="infer", faithful=self.faithful)
            responses = [seqrec_response(title[str(i)]) for i in [row["item"], *row["negatives"]]]
            _, s = timed(lambda: candidate_scores(self.model, self.tok, prompt, responses, cutoff_len=cut,
                                                  candidate_batch_size=cb), self.device)
            seconds += s
            prompt_tokens.append(encode_prompt(self.tok, prompt, cutoff_len=cut)["input_ids"])
            candidates += [candidate_tokens(self.tok, r) for r in responses]
        forward = self._no_grad_forward(self.model, logits=True)
        floor_s = sum(self._floor_seconds([t], forward, 1)[0] for t in prompt_tokens)
        cand_s, cand_n = self._floor_seconds(candidates, forward, cb)
        n = sum(map(len, prompt_tokens)) + sum(map(len, candidates))
        return {"tokens": n, "stage_s": seconds, "stage_tok_s": n / seconds,
                "floor_tok_s": (sum(map(len, prompt_tokens)) + cand_n) / (floor_s + cand_s),
                "note": f"{len(rows)} rows x {len(candidates) // max(len(rows), 1)} candidates, batch {cb}"}

    def generation(self) -> dict:
        rows = self.test.to_dict("records")
        prompts = [SEQREC.prompt(r, purpose="infer", faithful=self.faithful) for r in rows]
        bs, beams, cut = int(self.ev["batch_size"]), int(self.ev["num_beams"]), int(self.ev["cutoff_len"])
        calls: list[tuple[int, int]] = []  # (rows, new positions) of each decoder forward
        decoder = self.model.get_base_model().get_decoder()
        hook = decoder.register_forward_pre_hook(
            lambda _m, a, kw: calls.append(tuple((kw.get("input_ids") if kw.get("input_ids") is not None
                                                  else kw["inputs_embeds"]).shape[:2])), with_kwargs=True)
        try:
            _, seconds = timed(lambda: generate(self.model, self.tok, prompts, num_beams=beams,
                                                max_new_tokens=int(self.ev["max_new_tokens"]), batch_size=bs,
                                                cutoff_len=cut), self.device)
        finally:
            hook.remove()
        steps = _decode_steps(calls)
        prompt_tokens = [encode_prompt(self.tok, p, cutoff_len=cut)["input_ids"] for p in prompts]
        n = sum(map(len, prompt_tokens)) + sum(s * r for s, r in steps)
        floor_s, floor_n = 0.0, 0
        for b, (n_steps, n_rows) in zip(range(0, len(prompts), bs), steps):
            chunk = prompt_tokens[b:b + bs]
            s, k = self._decode_floor(chunk, n_rows // len(chunk), n_steps)
            floor_s, floor_n = floor_s + s, floor_n + k
        return {"tokens": n, "stage_s": seconds, "stage_tok_s": n / seconds, "floor_tok_s": floor_n / floor_s,
                "note": f"batch {bs} x {beams} beams, {sum(s for s, _ in steps)} decode steps"}

    def title_emb(self) -> dict:
        titles = sorted({clean_text(t) for t in self.samples.items["title"].astype(str)})[:self.args.n_titles]
        bs = int(self.ev["embed_batch_size"])
        _, seconds = timed(lambda: embed_texts(self.model, self.tok, titles, batch_size=bs), self.device)
        tokens = [self.tok(t, add_special_tokens=True)["input_ids"] for t in titles]
        with self.model.disable_adapter():
            row = self._row(tokens, seconds, self._no_grad_forward(self.model), bs, note=f"batch {bs}")
        return row

    # -- floors --------------------------------------------------------------------------------------------------

    def _row(self, tokens: list[list[int]], seconds: float, floor, batch_size: int, note: str = "") -> dict:
        floor_s, floor_n = self._floor_seconds(tokens, floor, batch_size)
        n = sum(map(len, tokens))
        return {"tokens": n, "stage_s": seconds, "stage_tok_s": n / seconds, "floor_tok_s": floor_n / floor_s,
                "note": note}

    def _floor_seconds(self, tokens: list[list[int]], step, batch_size: int) -> tuple[float, int]:
        """Seconds and tokens of ``step(ids)`` over the packed batches of ``tokens`` (see :func:`packed`)."""
        batches = packed(tokens, batch_size, self.device)
        _, seconds = timed(lambda: [step(b) for b in batches], self.device)
        return seconds, sum(b.numel() for b in batches)

    def _no_grad_forward(self, model, loss: bool = False, logits: bool = False):
        """A plain no-grad forward: with the HF loss (validation), with every position's logits (scoring, as a plain
        forward returns them), or with the last position's only (embedding, generation prefill)."""
        @torch.no_grad()
        def step(ids):
            if loss:
                model(input_ids=ids, labels=ids, use_cache=False)
            elif logits:
                model(input_ids=ids, use_cache=False)
            else:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return step

    @torch.no_grad()
    def _decode_floor(self, prompts: list[list[int]], beams: int, steps: int) -> tuple[float, int]:
        """Prefill the packed prompts, repeat the cache per beam, then ``steps`` greedy one-token forwards."""
        (ids,) = packed(prompts, len(prompts), self.device, rows=len(prompts))
        kw = cache_keyword(self.model)

        def run():
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = getattr(out, kw)
            cache.batch_repeat_interleave(beams)
            nxt = out.logits[:, -1].argmax(-1).repeat_interleave(beams).unsqueeze(1)
            for _ in range(steps):
                out = self.model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{kw: cache})
                cache = getattr(out, kw)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)

        _, seconds = timed(run, self.device)
        return seconds, ids.numel() + steps * ids.shape[0] * beams


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def packed(tokens: list[list[int]], batch_size: int, device, rows: int | None = None) -> list[torch.Tensor]:
    """The floor's input: all of ``tokens`` concatenated and cut into rows of their mean length (``rows`` rows when
    given), grouped ``batch_size`` rows per batch; a last partial row is dropped. Same tokens, no padding."""
    stream = [t for seq in tokens for t in seq]
    n_rows = rows or len(tokens)
    width = len(stream) // n_rows
    grid = torch.tensor(stream[:n_rows * width], dtype=torch.long).view(n_rows, width)
    return [grid[i:i + batch_size].to(device) for i in range(0, n_rows, batch_size)]


def _decode_steps(calls: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(decode steps, rows) of each ``generate`` batch from the decoder calls: a multi-token call starts a batch."""
    out: list[list[int]] = []
    for rows, width in calls:
        if width > 1 or not out:
            out.append([0, rows])
        else:
            out[-1][0] += 1
            out[-1][1] = rows
    return [(s, r) for s, r in out]


class _StageClock(Callback):
    """Wall time inside training batches (forward, backward, optimiser step) and inside validation loops."""

    def __init__(self, device: str):
        self.device, self.train_s, self.valid_s, self.steps = device, 0.0, 0.0, 0

    def on_train_batch_start(self, *_):
        sync(self.device)
        self._t = time.perf_counter()

    def on_train_batch_end(self, *_):
        sync(self.device)
        self.train_s += time.perf_counter() - self._t
        self.steps += 1

    def on_validation_start(self, *_):
        self._v = time.perf_counter()

    def on_validation_end(self, *_):
        sync(self.device)
        self.valid_s += time.perf_counter() - self._v


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
