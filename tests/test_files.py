"""flix.files: outputs are replaced whole or not at all, and concurrent writers both succeed."""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from flix import files  # noqa: E402


def test_a_write_that_fails_leaves_the_previous_file_whole_and_no_temporary(tmp_path):
  path = str(tmp_path / "predictions.jsonl")
  files.write_jsonl(path, [{"i": 0}, {"i": 1}])
  before = open(path, "rb").read()

  def records():  # A decoding run that dies after the first record.
    yield {"i": 0}
    raise RuntimeError("decoder died")

  with pytest.raises(RuntimeError, match="decoder died"):
    files.write_jsonl(path, records())
  assert open(path, "rb").read() == before == b'{"i": 0}\n{"i": 1}\n'
  assert os.listdir(tmp_path) == ["predictions.jsonl"]


def test_a_failed_rename_leaves_the_previous_file_whole_and_no_temporary(tmp_path, monkeypatch):
  path = str(tmp_path / "report.json")
  files.write_json(path, {"exact_match": 0.5})

  def full_disk(src, dst):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(files.os, "replace", full_disk)
  with pytest.raises(OSError, match="No space left"):
    files.write_json(path, {"exact_match": 0.9})
  assert json.loads(open(path).read()) == {"exact_match": 0.5}
  assert os.listdir(tmp_path) == ["report.json"]


def test_two_processes_writing_the_same_file_at_once_both_succeed(tmp_path, monkeypatch):
  # The trainer and a study process that waited for it both archive a run; here the second
  # write lands between the first one's temporary file and its rename (a fixed `path.tmp`
  # name made the first rename fail with FileNotFoundError).
  path, real_replace, nested = str(tmp_path / "run.json"), os.replace, []

  def replace_after_another_writer(src, dst):
    if not nested:
      nested.append(dst)
      files.write_json(path, {"writer": "other"}, indent=None)
    real_replace(src, dst)

  monkeypatch.setattr(files.os, "replace", replace_after_another_writer)
  files.write_json(path, {"writer": "first"}, indent=None)
  assert nested == [path]
  assert open(path).read() == '{"writer":"first"}\n'
  assert os.listdir(tmp_path) == ["run.json"]
  assert oct(os.stat(path).st_mode & 0o777) == oct(files.MODE)


def test_text_is_utf8_directories_are_created_and_figures_are_pngs(tmp_path):
  path = str(tmp_path / "a" / "b" / "report.md")
  files.write_text(path, "Ελληνικά | 日本語\n")
  assert open(path, encoding="utf-8").read() == "Ελληνικά | 日本語\n"
  files.write_json(str(tmp_path / "x.json"), {"lang": "ру"})
  assert '"ру"' in open(tmp_path / "x.json", encoding="utf-8").read()  # Not \u-escaped.
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  files.save_figure(fig, str(tmp_path / "plot.png"), dpi=50)
  plt.close(fig)
  data = open(tmp_path / "plot.png", "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
