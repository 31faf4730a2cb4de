"""The one retry loop of the HTTP judge backends (and of scorers that call servers)."""

from __future__ import annotations

import pytest

from tunelab.judge.backends import (
    JudgeError,
    JudgeRequestError,
    JudgeUnreachableError,
    _Retryable,
    status_error,
    with_retries,
)


def test_retries_then_succeeds_and_gives_up_with_one_line():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _Retryable("server_error", "HTTP 503: busy")
        return "ok"

    assert with_retries(flaky, retries=2, backoff=0.0, where="judge x") == "ok" and len(calls) == 3

    def down():
        raise _Retryable("unreachable", "connection failed")

    with pytest.raises(JudgeUnreachableError, match="judge x is unreachable after 2 tries"):
        with_retries(down, retries=1, backoff=0.0, where="judge x")

    def busy():
        raise _Retryable("server_error", "HTTP 500: oops")

    with pytest.raises(JudgeRequestError, match=r"HTTP 500: oops \(after 1 tries\)"):
        with_retries(busy, retries=0, backoff=0.0, where="judge x")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (429, _Retryable),
        (503, _Retryable),
        (401, JudgeError),
        (404, JudgeError),
        (400, JudgeRequestError),
    ],
)
def test_status_errors(code, kind):
    assert type(status_error(code, "t", "refused", "missing")) is kind
