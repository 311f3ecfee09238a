"""Every link and every cited repository file in README.md and docs/*.md exists in the checkout.

Checked, outside fenced code blocks:
- markdown links and images `[text](target)`, relative to the page (URLs and `#anchors` skipped);
- backticked paths whose first part is a top-level entry of the repository (`flix/...`,
  `docs/...`, `tests/...`), relative to the repository root, and gin files under a config
  directory (`models/`, `runs/`, `data/`, `experiments/`), also looked up in flix/configs as
  the gin search path does; a `*` glob must match something. Placeholders (`MODEL_DIR/...`,
  `{grid}`, `<step>`) and paths outside the repository are skipped, except a `.py`, `.gin`,
  `.md` or `.sh` file under a lowercase directory the repository lacks
  (`configs/runs/eval.gin`): a stale path.
  The bad-input table of docs/reliability.md quotes missing files on purpose: its rows are skipped.
Everywhere, code blocks included:
- `python -m MODULE` for this repository's packages names a module that exists;
- `--gin_file=...` and gin `include '...'` of the forms above resolve.
"""

import functools
import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "flix", "configs")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\]\n]|\][^(])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.*-]+)*/?$")
MODULE = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")
GIN_FILE = re.compile(r"--gin_file[= ]([^\s\\'\"]+)|^\s*include\s+'([^']+)'", re.M)
SOURCE_FILE = re.compile(r"^[a-z][a-z0-9_]*/.*\.(py|gin|md|sh)$")
BAD_INPUT_TABLES = ("docs/reliability.md",)  # Rows name missing files and bad values on purpose.


def pages() -> list[str]:
  docs = os.path.join(ROOT, "docs")
  return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(docs, "*.md")))


@functools.lru_cache(maxsize=None)
def top_level() -> frozenset[str]:
  """The first path part of every tracked file (or, without git, the checkout's directories)."""
  try:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    names = {line.split("/", 1)[0] for line in out.splitlines() if line}
  except (OSError, subprocess.CalledProcessError):
    names = {n for n in os.listdir(ROOT) if not n.startswith(".") and not n.endswith(".egg-info")}
  return frozenset(names)


@functools.lru_cache(maxsize=None)
def config_dirs() -> frozenset[str]:
  return frozenset(n for n in os.listdir(CONFIGS) if os.path.isdir(os.path.join(CONFIGS, n)))


def exists(path: str) -> bool:
  if any(c in path for c in "*?["):
    return bool(glob.glob(path))
  return os.path.exists(path)


def repo_path_exists(path: str) -> bool | None:
  """Whether a cited path exists (None: not a path of this repository, not checked)."""
  path = path.rstrip("/")
  if not PATH.match(path) or "/" not in path and path not in top_level():
    return None
  first = path.split("/", 1)[0]
  is_gin = path.endswith(".gin")
  bases = (([ROOT] if first in top_level() else []) +
           ([CONFIGS] if is_gin and first in config_dirs() else []))
  if not bases:
    return False if SOURCE_FILE.match(path) else None
  return any(exists(os.path.join(base, path)) for base in bases)


def module_exists(name: str) -> bool | None:
  parts = name.split(".")
  if not os.path.isfile(os.path.join(ROOT, parts[0], "__init__.py")):
    return None  # pip, pytest, ...: not this repository's.
  base = os.path.join(ROOT, *parts)
  return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def strip_code_blocks(text: str) -> str:
  return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def line_of(text: str, index: int) -> int:
  return text.count("\n", 0, index) + 1


def broken_references(page: str) -> list[str]:
  """`page:line: what` for every reference of `page` that does not resolve."""
  with open(page, encoding="utf-8") as f:
    text = f.read()
  prose = strip_code_blocks(text)
  name = os.path.relpath(page, ROOT)
  if name in BAD_INPUT_TABLES:
    prose = re.sub(r"^\|.*$", "", prose, flags=re.M)
  broken = []
  for m in LINK.finditer(prose):
    target = m.group(1)
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
      continue  # A URL (https:, mailto:) or an anchor of this page.
    target = target.split("#", 1)[0]
    if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(page), target))):
      broken.append(f"{name}:{line_of(prose, m.start())}: link {m.group(1)}")
  for m in INLINE_CODE.finditer(prose):
    for token in re.split(r"[\s=,]+", m.group(1)):
      token = token.strip("()[];:'\"").rstrip(".")
      if repo_path_exists(token) is False:
        broken.append(f"{name}:{line_of(prose, m.start())}: path `{token}`")
  for m in MODULE.finditer(text):
    if module_exists(m.group(1)) is False:
      broken.append(f"{name}:{line_of(text, m.start())}: module python -m {m.group(1)}")
  for m in GIN_FILE.finditer(text):
    gin_file = m.group(1) or m.group(2)
    if repo_path_exists(gin_file) is False:
      broken.append(f"{name}:{line_of(text, m.start())}: gin file {gin_file}")
  return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_link_and_cited_file_resolves(page):
  assert not broken_references(page), "\n".join(broken_references(page))


def test_the_checker_catches_a_broken_path_and_leaves_prose_alone(tmp_path):
  page = tmp_path / "page.md"
  page.write_text(
      "See [the study](study.md), [a site](https://example.com), [here](#top),\n"
      "`flix/features.py`, `experiments/offline_flix.gin`, `models/tiny.gin`,\n"
      "`docs/bench/*.json`,\n"
      "`MODEL_DIR/checkpoint_<step>`, `{grid}/{method}.json`, `../shared/data`, `task.lang`,\n"
      "`--gin.MODEL_DIR='/tmp/run'`, `python -m pytest`.\n"
      "Broken: [gone](nowhere.md), `flix/no_such_module.py`, `docs/bench/none_*.json`,\n"
      "`runs/no_such_run.gin`, `configs/runs/eval.gin`.\n"
      "```bash\npython -m flix.no_such_entry --gin_file=experiments/no_such.gin\n"
      "python -m flix.train --gin_file=experiments/offline_flix.gin --gin_file=/ckpt/model.gin\n"
      "```\n")
  (tmp_path / "study.md").write_text("")
  found = [line.split(": ", 1)[1] for line in broken_references(str(page))]
  assert found == ["link nowhere.md", "path `flix/no_such_module.py`",
                   "path `docs/bench/none_*.json`", "path `runs/no_such_run.gin`",
                   "path `configs/runs/eval.gin`",
                   "module python -m flix.no_such_entry", "gin file experiments/no_such.gin"]
