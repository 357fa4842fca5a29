"""tests/conftest.py's CI guard: under CI=true a skip whose reason is not on tests/skip_allowlist.txt fails the run
(a failed optional install must not pass as a green run); elsewhere skips stay skips. Each case runs a tiny test
file in pytest's own `pytester`, with this suite's conftest registered as a plugin."""

import re

import conftest
import pytest


pytest_plugins = ["pytester"]

TOY = """
import pytest


def test_runs():
    pass


@pytest.mark.skip(reason=REASON)
def test_skipped():
    pass


@pytest.mark.xfail(reason="an expected failure is no skip")
def test_expected_failure():
    raise AssertionError
"""


def _run(pytester, monkeypatch, ci, reason, module_level=False):
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    if module_level:  # a whole module skipped by a failed import, as an optional dependency that is missing
        pytester.makepyfile(test_toy="import pytest\n\npytest.importorskip('surely_not_' + 'installed')\n")
    else:
        pytester.makepyfile(test_toy=TOY.replace("REASON", repr(reason)))
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[conftest])


NOT_ALLOWED = "lmms-eval not installed (pip install --no-deps lmms-eval)"


def test_a_disallowed_skip_passes_without_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ci=False, reason=NOT_ALLOWED)
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "not allowed under CI" not in result.stdout.str()


def test_a_disallowed_skip_fails_under_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ci=True, reason=NOT_ALLOWED)
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*1 skip(s) not allowed under CI=true*", f"SKIPPED (fails CI) test_toy.py::test_skipped: {NOT_ALLOWED}"]
    )


def test_a_module_skipped_by_a_missing_import_fails_under_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ci=True, reason=None, module_level=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED (fails CI) test_toy.py: could not import 'surely_not_installed'*"])


@pytest.mark.parametrize("reason", ["needs a GPU", "CUDA is not available", "flash-attn needs CUDA"])
def test_an_allowed_skip_passes_under_ci(pytester, monkeypatch, reason):
    result = _run(pytester, monkeypatch, ci=True, reason=reason)
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "not allowed under CI" not in result.stdout.str()


def test_the_allowlist_does_not_allow_a_failed_optional_install():
    allowed = conftest.skip_allowlist()
    assert allowed and all(isinstance(p, re.Pattern) for p in allowed)
    for reason in [
        NOT_ALLOWED,
        "needs Debian's chromium (.ci/run installs it)",
        "could not import 'gradio': No module named 'gradio'",
        "could not import 'playwright.sync_api': No module named 'playwright'",
        "could not import 'trl.trainer.utils': No module named 'trl'",
    ]:
        assert not any(p.search(reason) for p in allowed), reason
