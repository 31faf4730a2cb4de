"""tunelab's DPO with the notebook's settings equals the book's DPO notebook, step for step.

The notebook (ch07/04_preference-tuning-with-dpo/dpo-from-scratch.ipynb) is not part of the
`llms-from-scratch` package: its `compute_logprobs`, `compute_dpo_loss` and
`compute_dpo_loss_batch` are re-typed below from the notebook's text (its data code is in
test_book_data.py). Policy and reference start as the same tiny GPT-2 (the book's GPTModel
holding tunelab's weights); both sides train three AdamW steps on the same 4 pairs: every step's
loss and mean chosen/rejected rewards agree to 1e-5 (the notebook's rewards are not multiplied by
beta, TRL's and tunelab's are), and every step's gradients to 1e-6.

The final weights are not compared at 1e-5: LM-head rows of tokens that are never targets get
gradients that nearly cancel between the chosen and the rejected answers (about 1e-9), where
fp32 rounding (tunelab sums in a different order: one forward over both answers, chunked head)
is a sizeable fraction of the gradient, and Adam's normalised update turns that into up to
about 5e-5 after three steps at lr 1e-3 (measured), although the gradients agree to 2e-8.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from tests.book.book import (
    PAIRS,
    book_model,
    gpt2_encoding,
    tiny_tunelab_gpt2,
    tunelab_to_book,
)
from tests.book.test_book_data import notebook_collate, notebook_preference_items
from tunelab.data.preference import PreferenceDataModule
from tunelab.models.api import untie_lm_head
from tunelab.models.tokenizer import tokenizer_by_name
from tunelab.tasks.dpo import DPOTask

BETA, LR, STEPS = 0.1, 1e-3, 3
PAIRS4 = PAIRS[:4]


# -- the notebook's functions, as printed there --------------------------------------------------
def compute_logprobs(logits, labels, selection_mask=None):
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    log_probs = F.log_softmax(logits, dim=-1)
    selected_log_probs = torch.gather(input=log_probs, dim=-1, index=labels.unsqueeze(-1)).squeeze(
        -1
    )
    if selection_mask is not None:
        mask = selection_mask[:, 1:].clone()
        selected_log_probs = selected_log_probs * mask
        avg_log_prob = selected_log_probs.sum(-1) / mask.sum(-1)
        return avg_log_prob
    else:
        return selected_log_probs.mean(-1)


def compute_dpo_loss(
    model_chosen_logprobs,
    model_rejected_logprobs,
    reference_chosen_logprobs,
    reference_rejected_logprobs,
    beta=0.1,
):
    model_logratios = model_chosen_logprobs - model_rejected_logprobs
    reference_logratios = reference_chosen_logprobs - reference_rejected_logprobs
    logits = model_logratios - reference_logratios
    losses = -F.logsigmoid(beta * logits)
    chosen_rewards = (model_chosen_logprobs - reference_chosen_logprobs).detach()
    rejected_rewards = (model_rejected_logprobs - reference_rejected_logprobs).detach()
    return losses.mean(), chosen_rewards.mean(), rejected_rewards.mean()


def compute_dpo_loss_batch(batch, policy_model, reference_model, beta):
    policy_chosen_log_probas = compute_logprobs(
        logits=policy_model(batch["chosen"]),
        labels=batch["chosen"],
        selection_mask=batch["chosen_mask"],
    )
    policy_rejected_log_probas = compute_logprobs(
        logits=policy_model(batch["rejected"]),
        labels=batch["rejected"],
        selection_mask=batch["rejected_mask"],
    )
    with torch.no_grad():
        ref_chosen_log_probas = compute_logprobs(
            logits=reference_model(batch["chosen"]),
            labels=batch["chosen"],
            selection_mask=batch["chosen_mask"],
        )
        ref_rejected_log_probas = compute_logprobs(
            logits=reference_model(batch["rejected"]),
            labels=batch["rejected"],
            selection_mask=batch["rejected_mask"],
        )
    return compute_dpo_loss(
        model_chosen_logprobs=policy_chosen_log_probas,
        model_rejected_logprobs=policy_rejected_log_probas,
        reference_chosen_logprobs=ref_chosen_log_probas,
        reference_rejected_logprobs=ref_rejected_log_probas,
        beta=beta,
    )


# -- the comparison ---------------------------------------------------------------------------------
def tunelab_batch(tmp_path):
    """The 4 pairs as one batch, with experiment=book_dpo's data settings."""
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(PAIRS4), encoding="utf-8")
    dm = PreferenceDataModule(
        path=str(path),
        split=(1.0, 0.0, 0.0),
        batch_size=len(PAIRS4),
        max_length=1024,
        split_order="file",
        scored="response_and_answer",
        end_of_text=False,
    )
    dm.connect(tokenizer_by_name("gpt2"), "alpaca")
    dm.setup("fit")
    return dm.collate_fn()(dm.datasets["train"].examples)


def test_dpo_steps_equal_the_notebooks_compute_dpo_loss_batch(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = tiny_tunelab_gpt2(seed=3)
        untie_lm_head(policy)  # the notebook's GPTModel has its own out_head
        policy.train()
        book_policy = book_model(policy)
        book_reference = copy.deepcopy(book_policy).eval()
        task = DPOTask(
            model=policy,
            tokenizer=tokenizer_by_name("gpt2"),
            prompt_style="alpaca",
            beta=BETA,
            average_logps=True,
            reference="frozen",
            weight_decay_exclude_norms=False,
        )
        task.setup("fit")  # the frozen reference: a copy of the starting policy
        batch = tunelab_batch(tmp_path)
        book_batch = notebook_collate(notebook_preference_items(PAIRS4, gpt2_encoding()))

        opt = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.01)
        book_opt = torch.optim.AdamW(book_policy.parameters(), lr=LR, weight_decay=0.01)
        mine, theirs, grad_diffs = [], [], []
        for _ in range(STEPS):
            opt.zero_grad()
            loss, metrics = task.compute_loss(batch)
            loss.backward()
            opt.step()
            chosen, rejected = metrics["rewards/chosen"], metrics["rewards/rejected"]
            mine.append([float(loss), float(chosen) / BETA, float(rejected) / BETA])

            book_opt.zero_grad()
            book_loss, book_chosen, book_rejected = compute_dpo_loss_batch(
                book_batch, book_policy, book_reference, BETA
            )
            book_loss.backward()
            grad_diffs.append(max_grad_diff(policy, book_policy))
            book_opt.step()
            theirs.append([float(book_loss), float(book_chosen), float(book_rejected)])
    finally:
        torch.set_num_threads(threads)
    assert mine[0][0] == pytest.approx(0.693147, abs=1e-6)  # policy = reference: log 2
    for step_mine, step_theirs in zip(mine, theirs, strict=True):
        assert step_mine == pytest.approx(step_theirs, abs=1e-5, rel=0)
    assert mine[-1][0] < mine[0][0] - 0.01 and mine[-1][1] > mine[-1][2]  # it learned
    assert max(grad_diffs) < 1e-6, grad_diffs


def max_grad_diff(model, gpt) -> float:
    """Largest absolute difference between the gradients of the two models' parameters."""
    grads = {k: p.grad for k, p in model.named_parameters()}
    mine = tunelab_to_book(grads, model.cfg)
    theirs = {k: p.grad for k, p in gpt.named_parameters()}
    return max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
