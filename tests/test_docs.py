"""The public API documents itself: every method class shows its maths, paper and a
doctest, and the doctests in the public docstrings run."""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch

import camkit

METHOD_CLASSES = [name for name in camkit.__all__
                  if inspect.isclass(getattr(camkit, name))
                  and issubclass(getattr(camkit, name), camkit.CAMMethod)
                  and getattr(camkit, name) is not camkit.CAMMethod]
DOCUMENTED = [camkit.explain, camkit.evaluate, *(getattr(camkit, n) for n in METHOD_CLASSES)]


def test_every_registered_method_has_a_class() -> None:
    assert sorted(getattr(camkit, n).method for n in METHOD_CLASSES) == sorted(
        camkit.available_methods())


@pytest.mark.parametrize("name", METHOD_CLASSES)
def test_method_class_docs_show_maths_paper_options_and_example(name: str) -> None:
    doc = inspect.getdoc(getattr(camkit, name)) or ""
    method = camkit.methods.registry.get_method(getattr(camkit, name).method)
    assert method.maths, f"{name}: no pure maths function registered"
    for part in ("Maths:", f"Paper: {method.paper}", "Options:", ">>> maps = camkit."):
        assert part in doc, f"{name}: {part!r} missing from its docstring"
    for function in method.maths:
        assert (inspect.getdoc(function) or "").splitlines()[0] in doc


@pytest.mark.parametrize("obj", DOCUMENTED, ids=lambda o: o.__name__)
def test_doctests_run(obj: object) -> None:
    torch.manual_seed(0)
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(verbose=False)
    tests = [t for t in finder.find(obj, globs={"camkit": camkit}) if t.examples]
    assert tests, f"{obj.__name__} has no doctest"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{obj.__name__}: a doctest failed (run with -s to see it)"
