"""The public API documents itself: every method class shows its maths, paper and a
doctest, and the doctests in the public docstrings run."""

from __future__ import annotations

import ast
import doctest
import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch

import camkit

METHOD_CLASSES = [name for name in camkit.__all__
                  if inspect.isclass(getattr(camkit, name))
                  and issubclass(getattr(camkit, name), camkit.CAMMethod)
                  and getattr(camkit, name) is not camkit.CAMMethod]
DOCUMENTED = [camkit.explain, camkit.evaluate, camkit.factorize,
              *(getattr(camkit, n) for n in METHOD_CLASSES)]


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


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def documented_value(comment: str) -> object:
    """The value a ``# ...`` comment states before its first ``:`` (``(2, 1, 224, 224)``,
    ``('a', 'b')``, ``tensor([[1], [2]])``), or ``None`` when it states none."""
    stated = comment.split(": ")[0].strip()
    if stated.startswith("tensor(") and stated.endswith(")"):
        return ast.literal_eval(stated[len("tensor("):-1])
    try:
        return ast.literal_eval(stated)
    except (ValueError, SyntaxError):
        return None


def as_plain(value: object) -> object:
    """A tensor or ``torch.Size`` as the nested lists or tuple the docs write."""
    if isinstance(value, torch.Size):
        return tuple(value)
    return value.tolist() if isinstance(value, torch.Tensor) else value


def test_the_examples_of_tasks_md_run_and_give_what_they_say() -> None:
    """Each Python block of docs/tasks.md runs (in order, one namespace); an expression line
    whose comment states a value (a shape, a tuple, a tensor) gives that value (a tensor's
    stated tuple is its shape)."""
    namespace: dict[str, object] = {}
    checked = 0
    for block in python_blocks(Path(__file__).parents[1] / "docs" / "tasks.md"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant maps of random weights
            exec(compile(block, "docs/tasks.md", "exec"), namespace)  # noqa: S102
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if not comment or not code.strip() or not isinstance(
                    ast.parse(code.strip()).body[0], ast.Expr):
                continue
            stated = documented_value(comment)
            if stated is None:
                continue
            value = eval(code.strip(), namespace)  # noqa: S307
            if isinstance(value, torch.Tensor) and isinstance(stated, tuple):
                value = value.shape
            assert as_plain(value) == stated, f"docs/tasks.md: {line.strip()}"
            checked += 1
    assert checked >= 4
