"""Every option is checked before the first costly stage: a bad value given to ``goracs-run`` ends with one line that
names the key, exit status 2, and no stage run (no cache folder, no ``metrics.json``).

The cases run ``goracs.run.main`` (the ``goracs-run`` entry point) in-process with a patched ``sys.argv`` and a
machine without CUDA (the check's device count is patched to 0, so the CUDA cases hold on a GPU machine too); a few
run the real console command in a subprocess. ``BAD_INPUTS`` and the messages the cases get also make ``docs/config_errors.md``: regenerate it with
``GORACS_WRITE_ERROR_CATALOGUE=1 pytest -p no:xdist tests/test_job_check.py`` (``test_the_error_catalogue_is_current``
checks that it lists every input).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "docs" / "config_errors.md"
# The small job every case starts from; a case that sets one of these keys replaces it.
BASE = {"model": "tiny_llama", "data.max_train": "20", "data.max_valid": "4", "data.max_test": "4", "logger": "none",
        "selection": "random"}

# (node, overrides, text the one-line message must contain: the key, usually with its value)
BAD_INPUTS: list[tuple[str, list[str], str]] = [
    # top level
    ("top", ["budget=abc"], "budget=abc"),
    ("top", ["budget=0"], "budget=0"),
    ("top", ["budget=-5"], "budget=-5"),
    ("top", ["seed=1.5"], "seed=1.5"),
    ("top", ["data_seed=-1"], "data_seed=-1"),
    ("top", ["cutoff_len=0"], "cutoff_len=0"),
    ("top", ["stage=train"], "stage=train"),
    ("top", ["resume=no"], "resume=no"),
    ("top", ["tags=pilot"], "tags=pilot"),
    ("top", ["+budgett=64"], "budgett"),
    # data
    ("data", ["data=nosuch"], "data=nosuch"),
    ("data", ["data.max_train=0"], "data.max_train=0"),
    ("data", ["data.domain=books"], "data.domain='books'"),
    ("data", ["data=amazon2018"], "data.source.meta=???"),
    ("data", ["+data.max_trian=5"], "data.max_trian"),
    ("data", ["data.history_len=abc"], "data.history_len='abc'"),
    ("data", ["data.append_brand=maybe"], "data.append_brand='maybe'"),
    ("data", ["data.valid_size=-0.5"], "data.valid_size"),
    ("data", ["data.source.encoding=klingon"], "data.source.encoding"),
    ("data", ["+data.source.folder=/tmp"], "data.source.folder"),
    # task
    ("task", ["task=nosuch"], "task=nosuch"),
    ("task", ["task.like_threshold=high"], "task.like_threshold='high'"),
    ("task", ["task.faithful_prompts=yes"], "task.faithful_prompts='yes'"),
    ("task", ["+task.threshold=3"], "task.threshold"),
    # model and LoRA
    ("model", ["model=nosuch"], "model=nosuch"),
    ("model", ["model=hf"], "model.backbone.name_or_path=???"),
    ("model", ["model=hf", "model.backbone.name_or_path=/models/x", "model.backbone.dtype=fp16"],
     "model.backbone.dtype='fp16'"),
    ("model", ["model=hf", "model.backbone.name_or_path=/models/x", "model.backbone.load_in_8bit=true"],
     "model.backbone.load_in_8bit=true"),
    ("model", ["model.backbone.hidden_size=abc"], "model.backbone.hidden_size='abc'"),
    ("model", ["model.backbone.dtype=fp16"], "model.backbone.dtype"),
    ("model", ["+model.lora_int=/adapters/a"], "model.lora_int"),
    ("model", ["model.lora_init=/nonexistent/adapter"], "model.lora_init='/nonexistent/adapter'"),
    ("model", ["model.lora_init=nobody/no-such-adapter"], "model.lora_init='nobody/no-such-adapter'"),
    ("lora", ["model.lora.r=0"], "model.lora.r=0"),
    ("lora", ["model.lora.lora_dropout=1.5"], "model.lora.lora_dropout=1.5"),
    ("lora", ["model.lora.target_modules=[]"], "model.lora.target_modules=[]"),
    ("lora", ["model.lora.bias=some"], "model.lora.bias='some'"),
    ("lora", ["+model.lora.rank=4"], "model.lora.rank"),
    # features
    ("features", ["features.projection_dim=-1"], "features.projection_dim"),
    ("features", ["features.proj_dim=-1"], "features.proj_dim=-1"),
    ("features", ["features.device=cuda"], "features.device=cuda"),
    ("features", ["features=gpu"], "features.device=cuda"),
    ("features", ["features.text_encoder=bert"], "features.text_encoder='bert'"),
    ("features", ["features.dropout=no"], "features.dropout='no'"),
    ("features", ["features.surrogate.epochs=0"], "features.surrogate.epochs=0"),
    ("features", ["features.text_encoder=roberta_base"], "features.encoder_path"),
    # selection
    ("selection", ["selection=nosuch"], "selection=nosuch"),
    ("selection", ["selection=goracs", "selection.lam=-1"], "selection.lam"),
    ("selection", ["selection=goracs", "selection.solver=lp"], "selection.solver"),
    ("selection", ["selection=goracs", "+selection.lamda=0.5"], "selection.lamda"),
    ("selection", ["selection=goracs", "selection.lamda=0.5"], "selection.lamda=0.5"),
    ("selection", ["selection=goracs", "selection.greedy_fill=best"], "selection.greedy_fill"),
    ("selection", ["selection=goracs", "selection.device=cuda"], "selection.device=cuda"),
    ("selection", ["selection=goracs", "selection.label_enhanced=true"], "selection.label_enhanced=true"),
    ("selection", ["selection=goracs", "selection.ctr_normalize_dist=true"], "selection.ctr_normalize_dist"),
    ("selection", ["selection=goracs", "selection.max_iters=many"], "selection.max_iters='many'"),
    ("selection", ["selection=none", "budget=64"], "selection=none ignores the budget"),
    ("selection", ["selection=ccs", "selection.hard_fraction=1.5"], "selection.hard_fraction"),
    ("selection", ["+selection.foo=1"], "selection.foo"),
    # trainer
    ("trainer", ["trainer.lr=0"], "trainer.lr=0"),
    ("trainer", ["trainer.lr=abc"], "trainer.lr='abc'"),
    ("trainer", ["trainer.batch_size=0"], "trainer.batch_size=0"),
    ("trainer", ["trainer.warmup_steps=-2"], "trainer.warmup_steps=-2"),
    ("trainer", ["trainer.patience=0"], "trainer.patience=0"),
    ("trainer", ["trainer.train_on_inputs=sometimes"], "trainer.train_on_inputs='sometimes'"),
    ("trainer", ["trainer=gpu"], "trainer.lightning.accelerator=gpu"),
    ("trainer", ["trainer.lightning.max_epochs=-1"], "trainer.lightning.max_epochs=-1"),
    ("trainer", ["trainer.lightning.precision=17"], "trainer.lightning.precision=17"),
    ("trainer", ["trainer.lightning.strategy=nosuch"], "trainer.lightning.strategy='nosuch'"),
    ("trainer", ["+trainer.lightning.max_epoch=3"], "trainer.lightning.max_epoch"),
    ("trainer", ["trainer=nosuch"], "trainer=nosuch"),
    # evaluation
    ("eval", ["eval.ranking=beam"], "eval.ranking='beam'"),
    ("eval", ["eval.batch_size=0"], "eval.batch_size=0"),
    ("eval", ["eval.topk=[]"], "eval.topk=[]"),
    ("eval", ["eval.topk=[0]"], "eval.topk=[0]"),
    ("eval", ["eval.device=cuda"], "eval.device=cuda"),
    ("eval", ["eval=gpu"], "eval.device=cuda"),
    ("eval", ["eval.ranking_rows=0"], "eval.ranking_rows=0"),
    ("eval", ["+eval.num_beam=4"], "eval.num_beam"),
    # logger
    ("logger", ["logger=nosuch"], "logger=nosuch"),
    ("logger", ["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode='sometimes'"),
    ("logger", ["logger=csv", "logger.csv.name=5"], "logger.csv.name=5"),
    ("logger", ["logger=csv", "+logger.csv.flush_every=5"], "logger.csv.flush_every"),
]
# A few through the installed console command, in a subprocess, as a user types them.
SUBPROCESS = ["resume=no", "selection=nosuch", "trainer.lr=0", "eval.topk=[0]"]


def _argv(overrides: list[str], tmp_path: Path) -> list[str]:
    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    base = [f"{k}={v}" for k, v in BASE.items() if k not in given]
    return [*base, *overrides, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]


def _run_in_process(overrides: list[str], tmp_path: Path, monkeypatch, capsys) -> tuple[int, str]:
    from hydra.core.global_hydra import GlobalHydra

    import goracs.job_check
    import goracs.run

    monkeypatch.setattr(goracs.job_check, "_cuda_devices", lambda: 0)
    monkeypatch.setattr(sys, "argv", ["goracs-run", *_argv(overrides, tmp_path)])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as stop:
            goracs.run.main()
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    log = tmp_path / "run" / "goracs.log"
    return stop.value.code, out.out + out.err + (log.read_text() if log.exists() else "")


def _error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if " ERROR " in line or line.startswith("goracs-run: ")]
    if not lines:
        return ""
    line = lines[-1]
    return line.split("] ", 1)[1] if line.startswith("[") else line.removeprefix("goracs-run: ")


_MESSAGES: dict[str, str] = {}  # input -> the line it got, for docs/config_errors.md


@pytest.fixture(scope="module", autouse=True)
def error_catalogue():
    """With GORACS_WRITE_ERROR_CATALOGUE=1, write docs/config_errors.md once every case has run."""
    yield
    if os.environ.get("GORACS_WRITE_ERROR_CATALOGUE") and _MESSAGES:
        known = {**_catalogued(), **_MESSAGES}  # a partial run (-k) updates its own rows only
        CATALOGUE.write_text(catalogue(BAD_INPUTS, known))


def _catalogued() -> dict[str, str]:
    """input -> message of the rows docs/config_errors.md already has."""
    if not CATALOGUE.exists():
        return {}
    rows = [line.split(" | ", 2) for line in CATALOGUE.read_text().splitlines() if line.startswith("| ")]
    return {row[1].strip("`"): row[2].removesuffix(" |").replace("&#124;", "|") for row in rows
            if len(row) == 3 and row[1].startswith("`")}


def _nothing_ran(tmp_path: Path) -> None:
    assert not (tmp_path / "cache").exists(), "a stage ran: the cache folder exists"
    assert not (tmp_path / "run" / "metrics.json").exists(), "the job started: metrics.json exists"


@pytest.mark.parametrize(("node", "overrides", "named"), BAD_INPUTS, ids=[" ".join(o) for _, o, _ in BAD_INPUTS])
def test_a_bad_option_exits_2_naming_its_key_before_any_stage(node, overrides, named, tmp_path, monkeypatch, capsys):
    code, text = _run_in_process(overrides, tmp_path, monkeypatch, capsys)
    line = _error_line(text)
    assert code == 2, text[-3000:]
    assert named in line, f"{named!r} not in the message {line!r}"
    assert "Traceback" not in text
    _nothing_ran(tmp_path)
    _MESSAGES[" ".join(overrides)] = line


def test_the_cases_cover_every_node_and_are_distinct():
    nodes = {node for node, _, _ in BAD_INPUTS}
    assert {"top", "data", "task", "model", "lora", "features", "selection", "trainer", "eval", "logger"} <= nodes
    assert len({tuple(o) for _, o, _ in BAD_INPUTS}) == len(BAD_INPUTS) >= 40


@pytest.mark.parametrize("override", SUBPROCESS)
def test_the_console_command_exits_2_with_one_line(override, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(Path(sys.executable).parent / "goracs-run"), *_argv([override], tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert override.split("=")[0] in _error_line(out) and "Traceback" not in out
    _nothing_ran(tmp_path)


def test_a_good_config_passes_the_check(tmp_path):
    from conftest import compose_run_config
    from hydra.core.hydra_config import HydraConfig

    from goracs.job_check import check_job

    for overrides in ([], ["selection=goracs", "task=ctr", "selection.ctr_normalize_dist=true"],
                      ["trainer=ddp", "selection=dealrec", "features.surrogate.epochs=2"]):
        cfg = compose_run_config([*_argv(overrides, tmp_path)[:-2]], tmp_path / "out", tmp_path / "cache")
        check_job(cfg, overrides=list(HydraConfig.get().overrides.task),
                  method=HydraConfig.get().runtime.choices.get("selection"), cuda_devices=lambda: 0)


def test_a_genuine_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    import goracs.job_check

    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user mistake")

    monkeypatch.setattr(goracs.job_check, "_check_features", broken)
    from hydra.core.global_hydra import GlobalHydra

    import goracs.run

    monkeypatch.setattr(sys, "argv", ["goracs-run", *_argv([], tmp_path)])
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(BaseException) as raised:
            goracs.run.main()
    finally:
        GlobalHydra.instance().clear()
    assert not (isinstance(raised.value, SystemExit) and raised.value.code == 2)


def catalogue(rows: list[tuple[str, list[str], str]], messages: dict[str, str]) -> str:
    """docs/config_errors.md: every bad input of the test and the one line goracs-run answers."""
    head = ["# What goracs-run says to a bad option", "",
            "Generated from `tests/test_job_check.py::BAD_INPUTS` (`GORACS_WRITE_ERROR_CATALOGUE=1 pytest -p no:xdist "
            "tests/test_job_check.py`): each input, added "
            "to a small tiny_llama job on a machine without CUDA, ends with this one line and exit status 2, before "
            "any stage has run (no cache folder, no `metrics.json`).", "",
            "| node | input | message |", "|---|---|---|"]
    body = [f"| {node} | `{' '.join(o)}` | {messages.get(' '.join(o), '(not generated yet)').replace('|', '&#124;')} |"
            for node, o, _ in rows]
    return "\n".join(head + body) + "\n"


def test_the_error_catalogue_is_current():
    text = CATALOGUE.read_text()
    for _, overrides, named in BAD_INPUTS:
        assert f"`{' '.join(overrides)}`" in text, f"{overrides} missing from {CATALOGUE}: regenerate it"
