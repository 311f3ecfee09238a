"""T5X-style command lines: --gin_file (repeatable), --gin.NAME=VALUE, --gin_search_paths.

Every failure a user can cause (unknown binding, missing required macro, unknown mixture, bad
feature value, ...) ends as one clear line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import sys
import tokenize
from typing import Any, Callable, Sequence

import gin

from flix import host_memory
from flix.errors import Interrupted

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before TensorFlow is first imported.
# The packaged gin files (flix/configs/{models,runs,data,experiments}), installed with flix.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """(gin files, bindings, search paths) from argv; anything else is an error."""
  files, bindings, paths = [], [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    name, eq, value = arg.partition("=")
    if name in ("--gin_file", "--gin_search_paths") and not eq:
      if not args:
        raise ValueError(f"{name} needs a value")
      value = args.pop(0)
    if name == "--gin_file":
      files.append(value)
    elif name == "--gin_search_paths":
      paths.extend(p for p in value.split(",") if p)
    elif name.startswith("--gin.") and eq:
      bindings.append(f"{name[len('--gin.'):]} = {value}")
    else:
      raise ValueError(f"unknown flag {arg!r}; expected --gin_file=FILE, --gin.NAME=VALUE or "
                       "--gin_search_paths=DIR[,DIR]")
  return files, bindings, paths


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str],
              require_macros: bool = True) -> None:
  """Loads gin files, searched in `search_paths`, then CONFIGS_DIR, then the working directory.
  require_macros: every `%gin.REQUIRED` macro must be set (gin.finalize); False leaves that to
  the values a caller reads (`bound_arguments`), as flix.compile reads no MODEL_DIR."""
  import flix.gin_configurables  # noqa: F401  (registers the configurables)
  for path in [*search_paths, CONFIGS_DIR, os.getcwd()]:
    gin.add_config_file_search_path(path)
  if not files:
    raise ValueError("no --gin_file given; e.g. --gin_file=experiments/offline_flix.gin")
  # gin tries each file relative to the working directory first and logs every miss as an error.
  quiet = lambda record: not record.getMessage().startswith("Path not found:")
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(list(files), [], finalize_config=False)
  finally:
    logging.getLogger().removeFilter(quiet)
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except (SyntaxError, tokenize.TokenError) as e:
      name, _, value = binding.partition(" = ")
      raise ValueError(f"--gin.{name}={value} is not a valid gin binding ({_reason(e)}); the "
                       "value is a Python literal or a @reference, strings in quotes: "
                       f"--gin.{name}=\"'text'\"") from None
  if require_macros:
    gin.finalize()


def bound_arguments(fn: Callable, names: Sequence[str]) -> dict[str, Any]:
  """The values gin would pass the configurable `fn` for `names`: each bound value with its
  macros and references resolved (an `@f()` is called), else `fn`'s default. Only `names` are
  resolved, so another required parameter left unbound is no error. A name that is neither bound
  nor defaulted is a ValueError naming the binding."""
  bindings = gin.get_bindings(fn, resolve_references=False)
  params = inspect.signature(fn).parameters
  out = {}
  for name in names:
    if name in bindings:
      out[name] = copy.deepcopy(bindings[name])  # gin's way of resolving references.
      if out[name] is gin.REQUIRED:
        raise ValueError(f"{fn.__name__}.{name} = {bindings[name]!r}, which is "
                         f"%gin.REQUIRED: set it, e.g. --gin.{str(bindings[name])[1:]}=...")
    else:
      default = params[name].default
      if default is inspect.Parameter.empty or default is gin.REQUIRED:
        raise ValueError(f"{fn.__name__}.{name} is not bound: a gin file (e.g. runs/"
                         f"finetune.gin) or --gin.{fn.__name__}.{name}=... must set it")
      out[name] = default
  return out


def _reason(error: Exception) -> str:
  if isinstance(error, tokenize.TokenError):
    return str(error.args[0])
  message = getattr(error, "msg", None) or str(error).splitlines()[0]
  return message[message.find("Failed to parse"):] if "Failed to parse" in message else message


def run(main: Callable[[], int | None], argv: Sequence[str] | None = None, *,
        require_macros: bool = True) -> None:
  """Parses flags and gin, runs `main`, and turns user errors into one line + exit code.
  require_macros: as `parse_gin`'s."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    host_memory.retain_freed_memory()  # Before JAX starts its backend.
    parse_gin(*parse_flags(argv), require_macros=require_macros)
    code = main()
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    code = 130
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, Interrupted):
      print(str(e), file=sys.stderr)
      code = 128 + e.signum
    else:
      message = [m for m in str(e).strip().splitlines()
                 if not m.strip().startswith("In call to configurable")]
      print(f"error: {type(e).__name__}: {message[0] if message else ''}"
            + (f" {' '.join(m.strip() for m in message[1:4])}" if len(message) > 1 else ""),
            file=sys.stderr)
      if os.environ.get("FLIX_TRACEBACK"):
        raise
      code = 1
  sys.exit(code or 0)
