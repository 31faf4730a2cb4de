"""LLM-as-a-judge: prompts, score parsing, backends (Ollama, OpenAI-compatible, in process),
single-answer and pairwise evaluation, and reference metrics on the same answers."""

from tunelab.judge.backends import (
    JudgeBackend,
    JudgeError,
    JudgeRequestError,
    JudgeUnreachableError,
    LocalJudge,
    OllamaJudge,
    OpenAIJudge,
)
from tunelab.judge.evaluate import Judge, build_judge, evaluate_responses, read_responses
from tunelab.judge.parsing import parse_after_marker, parse_score, parse_verdict
from tunelab.judge.prompts import JudgePrompt, get_prompt

__all__ = [
    "Judge",
    "JudgeBackend",
    "JudgeError",
    "JudgePrompt",
    "JudgeRequestError",
    "JudgeUnreachableError",
    "LocalJudge",
    "OllamaJudge",
    "OpenAIJudge",
    "build_judge",
    "evaluate_responses",
    "get_prompt",
    "parse_after_marker",
    "parse_score",
    "parse_verdict",
    "read_responses",
]
