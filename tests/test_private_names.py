r"""No module uses another module's `_private` names (bigvl/, tools/, tests/, colabs/ code cells).

A name with a leading underscore is its module's own business: other modules, tests included,
go through a public name. The scan (AST, no imports) reports `file:line name [form]` for

  (a) `from <project module> import _name`                      (multi-line imports too)
  (b) `<alias>._name` where `alias` is bound by an import of a project module (bigvl, a tests/
      helper such as conftest, a tools/ script through `load_tool`), also `setattr(alias,
      "_name", ...)` / `monkeypatch.setattr(alias, "_name", ...)` and
      `monkeypatch.setattr("bigvl.x._name", ...)`
  (c) `<expr>._name` (including `self._name` in a subclass) where `_name` is not defined in this
      file but is defined in another project file (module-level or class-level def/class/
      assignment, or a `self._name = ...` attribute): best effort, by name only.

A plain grep for forms (a) and (b), run from the repository root (a superset: it also lists
`obj._name` uses inside the module that defines `_name`, such as make_dataset's
`journal._rewrite()`):

  grep -rnP --include=*.py --include=*.ipynb --exclude=test_private_names.py \
    "from (bigvl|conftest|\.)[\w.]* import [^#]*\b_[a-z]|^\s+_[a-z]\w*(\s+as\s+\w+)?,?\s*(#.*)?$|\b(?!(self|cls|os|sys)\.)[A-Za-z_]\w*\._[a-z]\w*" \
    bigvl tools tests colabs
"""
import ast
import json
import os

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit

SCAN_DIRS = ("bigvl", "tools", "tests")

# Uses of private names allowed anyway, keyed by (file, name). Empty: keep it so; a public
# name serves.
ALLOWED: set = set()


def _is_private(name):
  return name.startswith("_") and name != "_" and not (name.startswith("__") and name.endswith("__"))


def _project_roots(repo):
  """Top-level names that import a project module: bigvl, tests/ helpers, tools/ scripts."""
  roots = {"bigvl", "configs", "conftest"}
  for d in ("tests", "tools"):
    path = os.path.join(repo, d)
    if os.path.isdir(path):
      roots.update(f[:-3] for f in os.listdir(path) if f.endswith(".py"))
  return roots


def _is_project_module(module, level, roots):
  return level > 0 or (module or "").split(".")[0] in roots


def _notebook_source(path):
  """The code cells of a notebook as one source; returns (source, [(cell index, line)] per line)."""
  with open(path) as f:
    nb = json.load(f)
  lines, where = [], []
  for i, cell in enumerate(nb.get("cells", [])):
    if cell.get("cell_type") != "code":
      continue
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    for j, line in enumerate(src.splitlines(), 1):
      # IPython magics and shell escapes are not Python: keep the line count, drop the text.
      lines.append("" if line.lstrip().startswith(("!", "%")) else line)
      where.append((i, j))
  return "\n".join(lines) + "\n", where


def _defined_private_names(tree):
  """`_names` a file defines: module-/class-level defs, classes, assignments; `self._x = ...`."""
  names = set()

  def targets(node):
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      ts = node.targets if isinstance(node, ast.Assign) else [node.target]
      for t in ts:
        for n in ast.walk(t):
          if isinstance(n, ast.Name):
            yield n.id

  def scope(body):
    for node in body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(node.name)
        if isinstance(node, ast.ClassDef):
          scope(node.body)
      else:
        names.update(targets(node))
        if isinstance(node, (ast.If, ast.Try, ast.With)):  # Conditional definitions.
          for sub in ("body", "orelse", "finalbody"):
            scope(getattr(node, sub, []))
          for h in getattr(node, "handlers", []):
            scope(h.body)

  scope(tree.body)
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and (
        isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
      names.add(node.attr)
  return {n for n in names if _is_private(n)}


def _root_name(node):
  while isinstance(node, ast.Attribute):
    node = node.value
  return node.id if isinstance(node, ast.Name) else None


def check_source(source, filename, *, roots, elsewhere=frozenset()):
  """Violations in one source: a list of (line, name, form).

  `roots`: top-level module names that belong to the project. `elsewhere`: private names
  defined in other project files (for form (c)).
  """
  tree = ast.parse(source, filename)
  here = _defined_private_names(tree)
  aliases = set()  # Names bound to a project module (or to something imported from one).
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if _is_project_module(a.name, 0, roots):
          aliases.add(a.asname or a.name.split(".")[0])
          if _is_private(a.name.split(".")[-1]):
            found.append((node.lineno, a.name.split(".")[-1], "a"))
    elif isinstance(node, ast.ImportFrom) and _is_project_module(node.module, node.level, roots):
      for a in node.names:
        aliases.add(a.asname or a.name)
        if _is_private(a.name):
          found.append((getattr(a, "lineno", node.lineno), a.name, "a"))  # Its own line.
    elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and (
        getattr(node.value.func, "id", None) == "load_tool"
        or getattr(node.value.func, "attr", None) == "load_tool"):  # tool = load_tool("x")
      for t in node.targets:
        if isinstance(t, ast.Name):
          aliases.add(t.id)

  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _is_private(node.attr):
      root = _root_name(node.value)
      if root in aliases and root not in ("self", "cls"):
        found.append((node.lineno, node.attr, "b"))
      elif node.attr not in here and node.attr in elsewhere:
        found.append((node.lineno, node.attr, "c"))
    elif isinstance(node, ast.Call) and node.args:
      fn = node.func
      fname = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
      if fname not in ("setattr", "getattr", "hasattr", "delattr", "delitem"):
        continue
      first = node.args[0]
      if (len(node.args) > 1 and _root_name(first) in aliases
          and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
          and _is_private(node.args[1].value)):
        found.append((node.lineno, node.args[1].value, "b"))
      elif isinstance(first, ast.Constant) and isinstance(first.value, str) and "." in first.value:
        parts = first.value.split(".")
        if parts[0] in roots and _is_private(parts[-1]):
          found.append((node.lineno, parts[-1], "b"))
  return sorted(set(found))


def _project_files(repo):
  files = []
  for d in SCAN_DIRS:
    for dirpath, dirnames, filenames in os.walk(os.path.join(repo, d)):
      dirnames[:] = sorted(x for x in dirnames if not x.startswith(".") and x != "__pycache__")
      files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
  colabs = os.path.join(repo, "colabs")
  if os.path.isdir(colabs):
    files += [os.path.join(colabs, f) for f in sorted(os.listdir(colabs)) if f.endswith(".ipynb")]
  return files


def find_violations(repo=REPO):
  """Every violation in the project: a list of "file:line name [form]" strings (allowed ones out)."""
  roots = _project_roots(repo)
  sources = {}
  for path in _project_files(repo):
    rel = os.path.relpath(path, repo)
    if path.endswith(".ipynb"):
      sources[rel] = _notebook_source(path)
    else:
      with open(path) as f:
        sources[rel] = (f.read(), None)
  defined = {rel: _defined_private_names(ast.parse(src, rel)) for rel, (src, _) in sources.items()}
  out = []
  for rel, (src, where) in sources.items():
    elsewhere = set().union(*(names for other, names in defined.items() if other != rel))
    for line, name, form in check_source(src, rel, roots=roots, elsewhere=elsewhere):
      if (rel, name) in ALLOWED:
        continue
      loc = f"{rel}:{line}" if where is None else f"{rel}:cell{where[line - 1][0]}:{where[line - 1][1]}"
      out.append(f"{loc} {name} [{form}]")
  return out


def test_no_cross_module_private_names():
  violations = find_violations()
  assert not violations, (
      "private names used outside their module (give them a public name with a docstring, or "
      "test through a public function):\n  " + "\n  ".join(violations))


def test_allow_list_entries_are_still_needed():
  """An allow-list entry that matches nothing any more must be deleted."""
  roots = _project_roots(REPO)
  for rel, name in sorted(ALLOWED):
    path = os.path.join(REPO, rel)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      hits = check_source(f.read(), rel, roots=roots)
    assert any(n == name for _, n, _ in hits), f"delete the stale ALLOWED entry ({rel!r}, {name!r})"


def test_checker_reports_synthetic_violations():
  src = (
      "from bigvl.models.two_towers import (\n"
      "    TwoTowers,\n"
      "    _l2_normalize,\n"
      ")\n"
      "from bigvl.kernels import contrastive_loss as cl\n"
      "import bigvl.train\n"
      "from conftest import _helper\n"
      "tool = load_tool('bench_kernels')\n"
      "def f(ev, monkeypatch):\n"
      "  cl._plan(1)\n"
      "  bigvl.train._build(None, None)\n"
      "  tool._parse()\n"
      "  ev._prefix(0, 1)\n"
      "  monkeypatch.setattr(cl, '_pad', None)\n"
      "  monkeypatch.setattr('bigvl.decoding._step', None)\n"
      "  return self._ok, os._exit, cl.plan, ev.__class__\n"
      "class B(TwoTowers):\n"
      "  def g(self):\n"
      "    return self._x()\n"
  )
  got = check_source(src, "<synthetic>", roots={"bigvl", "conftest"}, elsewhere={"_prefix", "_x"})
  assert got == [(3, "_l2_normalize", "a"), (7, "_helper", "a"), (10, "_plan", "b"),
                 (11, "_build", "b"), (12, "_parse", "b"), (13, "_prefix", "c"),
                 (14, "_pad", "b"), (15, "_step", "b"), (19, "_x", "c")]
  # Names the file defines itself, and non-project modules, are fine.
  ok = ("import os\nclass A:\n  def _m(self):\n    self._v = 1\n    return self._v\n"
        "def g(a):\n  return a._m(), os._exit\n")
  assert check_source(ok, "<ok>", roots={"bigvl"}, elsewhere={"_m", "_v"}) == []
