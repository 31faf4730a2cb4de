"""The logit lens: exact at the last layer, metrics against an independent computation, and the
callback's files and logger calls at the start and the end of training."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger

from tests.callbacks.test_activations import FixedBatchLM, make_trainer, tiny
from tests.conftest import compose_train
from tunelab.callbacks.hooks import capture_block_outputs, hook_count
from tunelab.callbacks.logit_lens import (
    LogitLens,
    lens_logits,
    logit_lens,
    select_layers,
    show_token,
)
from tunelab.models.tokenizer import tokenizer_by_name

FAMILIES = ["tiny-gpt2", "tiny-llama"]
PROMPTS = ["The capital of France is", "One, two, three, four"]


@pytest.fixture(scope="module")
def tok():
    return tokenizer_by_name("gpt2")


@pytest.mark.parametrize("preset", FAMILIES)
def test_last_layer_is_the_models_own_output(preset, tok):
    model = tiny(preset)
    result = logit_lens(model, tok, PROMPTS)
    for p in result.prompts:
        with torch.no_grad():
            own = model(torch.tensor([p.ids]))[0].float()
        assert torch.equal(p.final_top_ids, own.argmax(-1))
        assert p.top_ids[-1].tolist() == own.argmax(-1).tolist()
        assert p.kl[-1].abs().max() < 1e-6
        assert p.agree[-1].all() and (p.rank[-1] == 1).all()
        assert p.top_tokens[-1] == [tok.token_str(t) for t in own.argmax(-1).tolist()]
        # Cross-entropy of the last row = the model's own next-token loss.
        ce = F.cross_entropy(own[:-1], torch.tensor(p.ids[1:]), reduction="none")
        assert torch.allclose(p.ce[-1, :-1], ce, atol=1e-5)
        assert p.ce[-1, -1].isnan()  # no next token after the prompt
    assert result.layers == list(range(model.cfg.n_layer + 1))
    assert result.summary()[-1]["kl"] < 1e-6 and result.summary()[-1]["agree"] == 1.0


@pytest.mark.parametrize("preset", FAMILIES)
def test_lens_logits_of_last_residual_equal_the_logits(preset):
    model = tiny(preset).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad(), capture_block_outputs(model) as res:
        logits = model(ids)
        assert torch.equal(lens_logits(model, res[model.cfg.n_layer]), logits)


def test_middle_layer_metrics_match_an_independent_computation(tok):
    model = tiny("tiny-llama").eval()
    result = logit_lens(model, tok, PROMPTS)
    p = result.prompts[1]
    ids = torch.tensor([p.ids])
    with torch.no_grad(), capture_block_outputs(model) as res:
        final = model(ids)[0]
        mid = model.lm_head(model.norm_f(res[1]))[0]
    kl = F.kl_div(
        F.log_softmax(mid, -1), F.log_softmax(final, -1), log_target=True, reduction="none"
    ).sum(-1)
    assert torch.allclose(p.kl[1], kl, atol=1e-5)
    order = mid.argsort(-1, descending=True)
    want_rank = [(order[t] == final[t].argmax()).nonzero().item() + 1 for t in range(len(p.ids))]
    assert p.rank[1].tolist() == want_rank
    assert p.top_ids[1].tolist() == mid.argmax(-1).tolist()
    ce = F.cross_entropy(mid[:-1], ids[0, 1:], reduction="none")
    assert torch.allclose(p.ce[1, :-1], ce, atol=1e-5)
    assert p.agree[1].tolist() == (mid.argmax(-1) == final.argmax(-1)).tolist()


def test_batched_prompts_and_last_k_match_one_prompt_alone(tok):
    """Right padding in the probe batch changes nothing (causal attention)."""
    model = tiny("tiny-gpt2")
    both = logit_lens(model, tok, PROMPTS, last_k=3)
    alone = logit_lens(model, tok, [PROMPTS[0]])
    a, b = both.prompts[0], alone.prompts[0]
    n = len(b.ids)
    assert a.positions == list(range(n - 3, n)) and len(both.prompts[1].positions) == 3
    assert torch.equal(a.top_ids, b.top_ids[:, -3:])
    assert torch.allclose(a.kl, b.kl[:, -3:], atol=1e-5)
    assert a.input_tokens == [tok.token_str(t) for t in b.ids[-3:]]


def test_select_layers_and_show_token():
    assert select_layers(None, 4) == [0, 1, 2, 3, 4]
    assert select_layers("emb,2", 4) == [0, 2, 4]  # the final layer is always kept
    assert select_layers("::2", 4) == [0, 2, 4]
    assert select_layers("3:", 4) == [3, 4]
    with pytest.raises(ValueError, match=r"layers='7': expected residual indices in 0..4"):
        select_layers("7", 4)
    assert show_token(" Paris\n\t") == "␣Paris\\n\\t"


def test_callback_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="prompts: expected a non-empty list of strings"):
        LogitLens(str(tmp_path), prompts=[])
    with pytest.raises(ValueError, match="last_k must be >= 1"):
        LogitLens(str(tmp_path), last_k=0)


class TableLogger(Logger):
    """A logger with W&B's `log_table`/`log_image` methods, recording the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []
        self.tables: list[tuple[str, list, list]] = []
        self.images: list[tuple[str, list]] = []

    name = "table"
    version = "0"

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_table(self, key, columns, data, step=None):
        self.tables.append((key, columns, data))

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images))


def test_callback_probes_at_start_and_end_and_writes_files(tmp_path):
    model = tiny("tiny-gpt2")
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(2))
    module = FixedBatchLM(model, ids)
    cb = LogitLens(str(tmp_path), prompts=PROMPTS, last_k=4)
    logger = TableLogger()
    trainer = make_trainer(tmp_path, [cb], max_steps=3, logger=[logger])
    start = hook_count(module)
    trainer.fit(module)
    assert hook_count(module) == start
    out = tmp_path / "logit_lens"
    for phase in ("start", "end"):
        assert (out / f"{phase}.png").read_bytes()[:4] == b"\x89PNG"
        with open(out / f"{phase}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 * 3 * 4  # prompts x layers (emb, 1, 2) x last 4 positions
        payload = json.loads((out / f"{phase}.json").read_text())
        assert payload["layers"] == ["emb", "1", "2"] and payload["summary"][-1]["kl"] < 1e-6
    assert payload["step"] == 3
    with open(out / "compare.csv") as f:
        cmp = list(csv.DictReader(f))
    assert [r["layer"] for r in cmp] == ["emb", "1", "2"]
    # lr is 0: training changed nothing, so start and end agree.
    assert cmp[1]["kl_start"] == cmp[1]["kl_end"]
    assert [k for k, *_ in logger.tables] == ["lens/start_table", "lens/end_table"]
    assert [k for k, _ in logger.images] == ["lens/start_heatmap", "lens/end_heatmap"]
    assert logger.images[0][1] == [str(out / "start.png")]
    key, columns, data = logger.tables[0]
    assert columns[:5] == ["prompt", "layer", "position", "input_token", "top1"] and len(data) == 24
    steps = [s for s, m in logger.metrics if "lens/layer_2/kl" in m]
    assert steps == [0, 3]
    assert set(logger.metrics[0][1]) >= {"lens/layer_0/kl", "lens/layer_1/agree", "lens/layer_2/ce"}
    assert cb.results["end"].prompts[0].prompt == PROMPTS[0]


def test_inspect_callbacks_config_trains_end_to_end(tmp_path, toy_file):
    """`callbacks=inspect` = default callbacks + activations + logit lens, through train()."""
    from tunelab.train import train

    cfg = compose_train(
        [
            "model=tiny-gpt2",
            "model.source=tiny-llama",
            "trainer=cpu",
            "data=instructions_file",
            f"data.path={toy_file}",
            "data.split=[0.75,0.25,0.0]",
            "data.batch_size=2",
            "callbacks=inspect",
            "callbacks.activations.every_n_steps=2",
            "callbacks.logit_lens.last_k=4",
            "~callbacks.responses",
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
            "trainer.max_steps=3",
        ],
        tmp_path,
    )
    assert cfg.callbacks.activations.every_n_steps == 2 and "grad_clip" in cfg.callbacks
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    act_steps = [int(r["step"]) for r in rows if r.get("act/layer_0/rms")]
    assert act_steps == [0, 2]
    assert [int(r["step"]) for r in rows if r.get("lens/layer_2/kl")] == [0, 3]
    for name in ("start.png", "end.png", "start.csv", "end.json", "compare.csv"):
        assert (tmp_path / "logit_lens" / name).exists(), name


def test_model_is_left_in_training_mode(tok):
    model = tiny("tiny-gpt2").train()
    logit_lens(model, tok, ["hi"])
    assert model.training
