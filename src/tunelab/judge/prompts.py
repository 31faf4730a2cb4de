"""Judge prompts: the seed's 0-100 prompt, a 1-5 rubric prompt, pairwise, and custom templates.

Templates use `{placeholder}` fields, filled by plain substitution (so braces inside records, or a
JSON example inside a template, need no escaping):
  {instruction} {input} {reference} {response}   the record, its reference output and the answer
  {prompt}       instruction + input in the seed's Alpaca form, without "### Response:"
  {response_a} {response_b}                       pairwise templates only
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.prompts import Alpaca
from tunelab.data.records import Record
from tunelab.judge.parsing import parse_after_marker, parse_score, parse_verdict

# The seed's prompt (LLMs from scratch, ch. 7), word for word.
SCORE_0_100 = (
    "Given the input `{prompt}` and correct output `{reference}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)

# A Prometheus-style rubric: feedback first, then a "Total rating" line that is parsed.
RUBRIC_1_5 = """You will be given an instruction, a reference answer, and a response to evaluate.
Rate how well the response completes the instruction, compared with the reference answer, on a
scale of 1 to 5:
1: the response is wrong, irrelevant, or empty.
2: the response is mostly wrong; only a small part is correct.
3: the response is partly correct but misses important parts of the reference answer.
4: the response is correct, with minor omissions or inaccuracies.
5: the response is correct and complete, as good as the reference answer.

Instruction:
{prompt}

Reference answer:
{reference}

Response to evaluate:
{response}

Give short feedback first, then your rating, in exactly this format:
Feedback: (one or two sentences about the response)
Total rating: (a number from 1 to 5)"""

PAIRWISE = """Compare two responses to the same instruction and decide which one is better.

Instruction:
{prompt}

Reference answer:
{reference}

Response A:
{response_a}

Response B:
{response_b}

Which response completes the instruction better? Answer with A, B, or tie only."""

FIELDS = ("instruction", "input", "reference", "response", "prompt", "system")
PAIR_FIELDS = ("instruction", "input", "reference", "prompt", "system", "response_a", "response_b")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def seed_format_input(record: Record) -> str:
    """The seed's `format_input`: the Alpaca prompt without the trailing "### Response:"."""
    text = Alpaca().prompt(record)
    return text.removesuffix("\n\n### Response:\n")


def render(template: str, values: dict[str, str]) -> str:
    """Replace known `{name}` fields; any other braces are left as they are."""
    return _PLACEHOLDER_RE.sub(
        lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template
    )


def check_template(template: str, allowed: tuple[str, ...], required: tuple[str, ...], where: str):
    names = set(_PLACEHOLDER_RE.findall(template))
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
            f"available: {', '.join('{' + n + '}' for n in allowed)}"
        )
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(
            f"{where}: the template must contain {', '.join('{' + n + '}' for n in missing)}"
        )


def record_fields(record: Record) -> dict[str, str]:
    return {
        "instruction": record.instruction,
        "input": record.input,
        "reference": record.output,
        "prompt": seed_format_input(record),
        "system": record.system or "",
    }


@dataclass(frozen=True)
class JudgePrompt:
    """A template plus how to read the judge's answer.

    marker: None reads a free-form score (`parse_score`); otherwise the number after the last
    marker (`parse_after_marker`). low/high: the scale; answers outside it are `out_of_range`.
    """

    name: str
    template: str
    low: float = 0
    high: float = 100
    marker: str | None = None

    def __post_init__(self) -> None:
        check_template(self.template, FIELDS, ("response",), f"judge prompt {self.name!r}")
        if not self.low < self.high:
            raise ValueError(
                f"judge prompt {self.name!r}: scale must be [low, high] with low < high, "
                f"got [{self.low}, {self.high}]"
            )

    def render(self, record: Record, response: str) -> str:
        return render(self.template, {**record_fields(record), "response": response})

    @property
    def answer_prefix(self) -> str:
        """How the judge's answer starts (prefilled by backends that can, e.g. LocalJudge)."""
        return f"{self.marker} " if self.marker else "Score: "

    def parse(self, text: str | None) -> tuple[float | None, str]:
        if self.marker is None:
            return parse_score(text, self.low, self.high)
        return parse_after_marker(text, self.marker, self.low, self.high)

    def bins(self) -> list[float]:
        """Histogram bin edges: one per integer on short scales, ten bins otherwise."""
        span = self.high - self.low
        if span <= 10 and float(span).is_integer():
            return [self.low - 0.5 + i for i in range(int(span) + 2)]
        return [self.low + span * i / 10 for i in range(11)]


@dataclass(frozen=True)
class PairwisePrompt:
    name: str = "pairwise"
    template: str = PAIRWISE

    def __post_init__(self) -> None:
        check_template(
            self.template, PAIR_FIELDS, ("response_a", "response_b"), f"judge prompt {self.name!r}"
        )

    def render(self, record: Record, response_a: str, response_b: str) -> str:
        return render(
            self.template,
            {**record_fields(record), "response_a": response_a, "response_b": response_b},
        )

    answer_prefix: str = "Verdict: "

    @staticmethod
    def parse(text: str | None) -> tuple[str | None, str]:
        return parse_verdict(text)


BUILTIN = {
    "score_0_100": JudgePrompt("score_0_100", SCORE_0_100, 0, 100, None),
    "rubric_1_5": JudgePrompt("rubric_1_5", RUBRIC_1_5, 1, 5, "Total rating:"),
}


def _template_text(template: str | None, template_file: str | None, where: str) -> str | None:
    if template and template_file:
        raise ValueError(f"{where}: give either template or template_file, not both")
    if template_file:
        path = Path(template_file)
        if not path.is_file():
            raise FileNotFoundError(f"{where}.template_file: file not found: {path}")
        return path.read_text(encoding="utf-8")
    return template


def get_prompt(
    name: str = "score_0_100",
    template: str | None = None,
    template_file: str | None = None,
    scale: list[float] | tuple[float, float] | None = None,
    marker: str | None = None,
) -> JudgePrompt:
    """A built-in prompt by name, or `custom` from a template (text or file) with its scale."""
    text = _template_text(template, template_file, "judge")
    if name != "custom":
        if name not in BUILTIN:
            raise KeyError(
                f"judge.prompt: unknown prompt {name!r}; expected one of "
                f"{', '.join([*BUILTIN, 'custom'])}"
            )
        if text:
            raise ValueError(f"judge.template is only used with judge.prompt=custom, not {name!r}")
        return BUILTIN[name]
    if not text:
        raise ValueError("judge.prompt=custom needs judge.template (text) or judge.template_file")
    if scale is None or len(scale) != 2:
        raise ValueError(f"judge.scale: a custom prompt needs [low, high], got {scale!r}")
    return JudgePrompt("custom", text, float(scale[0]), float(scale[1]), marker or None)


def get_pairwise_prompt(template: str | None = None, template_file: str | None = None):
    text = _template_text(template, template_file, "judge.pairwise")
    return PairwisePrompt("pairwise", text) if text else PairwisePrompt()
