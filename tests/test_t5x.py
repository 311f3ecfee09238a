"""T5X checkpoints (flix.interop.t5x, python -m flix.convert from-t5x).

Real checkpoints written by T5X itself (../shared/fixtures/t5x; those tests skip when the files
are absent) and checkpoints in both layouts written here: flax msgpack files, and directories of
tensorstore zarr arrays plus a msgpack `checkpoint` of specs, as T5X writes them.
"""

import dataclasses
import gzip
import itertools
import math
import os
import re
import shutil

import ml_dtypes
import msgpack
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization

from flix import convert
from flix.checkpoints import load_model
from flix.interop import hf, t5x
from flix.models.families import gin_bindings
from flix.models.t5 import T5, T5Config, abstract_params
from shared_files import shared_path
import tiny

# 2 + 3 layers, emb 32, 2 heads of 8.
GATED = tiny.t5_config(mlp_dim=48, num_encoder_layers=2, num_decoder_layers=3)
RELU = tiny.t5_config(mlp_activations=("relu",), logits_via_embedding=True, num_heads=3,
                      relpos_buckets=16, num_encoder_layers=2, num_decoder_layers=2)


# -- writing T5X checkpoints --------------------------------------------------------------------
def random_params(config: T5Config, seed: int = 0) -> dict:
  """Random float32 params of flix's T5, every value exact in bfloat16 (for bfloat16 files)."""
  rng = np.random.RandomState(seed)
  leaves = t5x.flatten(abstract_params(T5(config)))
  return t5x.unflatten({p: rng.normal(size=v.shape).astype(ml_dtypes.bfloat16).astype(np.float32)
                        for p, v in leaves.items()})


def adafactor_state(params) -> dict:
  """Optimizer state shaped like T5X's Adafactor param_states (never read by the importer)."""
  return t5x.unflatten({p + (k,): np.zeros(shape, np.float32)
                        for p, v in t5x.flatten(params).items()
                        for k, shape in (("m", (1,)), ("v", v.shape), ("v_row", (1,)))})


def write_msgpack(path, params, version=3):
  """The older layout: one msgpack file, every leaf an array."""
  state = {"version": version, "optimizer": {
      "target": params, "state": {"step": np.int32(7), "param_states": adafactor_state(params)}}}
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(state))


def write_zarr(directory, name, value, dtype, driver="file"):
  """One array as T5X writes it: zarr + gzip under DIR/name; returns its (relative) spec."""
  chunks = [math.ceil(value.shape[0] / 3)] + list(value.shape[1:]) if value.ndim else []
  spec = {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": driver, "path": name + "/"},
          "metadata": {"shape": list(value.shape), "chunks": chunks,
                       "compressor": {"id": "gzip", "level": 1}}}
  local = {**spec, "kvstore": {"driver": "file", "path": os.path.join(directory, name) + "/"}}
  store = ts.open(local, create=True, open=True).result()
  store.write(np.asarray(value).astype(store.dtype.numpy_dtype)).result()
  return spec


def write_t5x_dir(directory, params, *, dtype="bfloat16", driver="file", zarray=True,
                  inline=("scale",)):
  """The current layout: DIR/checkpoint (msgpack of specs; leaves named in `inline` stay arrays,
  like T5X's unpartitioned ones) + one zarr directory per array, in up to 3 chunks each."""
  os.makedirs(directory)
  target = {}
  for path, value in t5x.flatten(params).items():
    name = "target." + ".".join(path)
    target[path] = (value if path[-1] in inline else
                    write_zarr(directory, name, value, dtype, driver))
  state = adafactor_state(params)
  state["token_embedder"]["embedding"]["v"] = write_zarr(
      directory, "state.param_states.token_embedder.embedding.v",
      state["token_embedder"]["embedding"]["v"], "float32", driver)
  contents = {"version": 3, "optimizer": {
      "target": t5x.unflatten(target), "state": {"step": np.int32(7), "param_states": state}}}
  write_checkpoint_file(directory, contents)
  if not zarray:  # As in T5X's own test data: the metadata lives only in the specs.
    for root, _, files in os.walk(directory):
      if ".zarray" in files:
        os.remove(os.path.join(root, ".zarray"))
  return contents


def write_checkpoint_file(directory, contents):
  with open(os.path.join(directory, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(contents))


def get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def assert_trees_equal(got, want):
  got, want = t5x.flatten(got), t5x.flatten(want)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    assert got[path].dtype == np.float32 and got[path].shape == value.shape, path
    np.testing.assert_array_equal(got[path], value, err_msg="/".join(path))


# -- reading T5X's msgpack and zarr without flax or tensorstore ---------------------------------
def raw_msgpack(path):
  """A T5X msgpack file decoded with plain msgpack (flax's ndarray ext: shape, dtype, bytes)."""
  def ext_hook(code, data):
    assert code in (1, 3), code  # ndarray, numpy scalar.
    shape, dtype, buffer = msgpack.unpackb(data, raw=False)
    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    return np.frombuffer(buffer, dtype).reshape(shape)

  with open(path, "rb") as f:
    return msgpack.unpackb(f.read(), ext_hook=ext_hook, raw=False, strict_map_key=False)


def decode_zarr(directory, spec):
  """An array from its gzip chunk files, assembled by hand from the spec's metadata."""
  metadata = spec["metadata"]
  dtype = np.dtype(spec["dtype"]).newbyteorder("<")  # zarr v2 "<f8", "<i4", ...
  shape, chunks = tuple(metadata["shape"]), tuple(metadata["chunks"])
  order = metadata.get("order", "C")
  out = np.zeros(shape, dtype)
  grid = [math.ceil(n / c) for n, c in zip(shape, chunks)]
  for index in itertools.product(*(range(n) for n in grid)):
    key = ".".join(map(str, index)) or "0"
    with open(os.path.join(directory, spec["kvstore"]["path"], key), "rb") as f:
      data = gzip.decompress(f.read())
    chunk = np.frombuffer(data, dtype).reshape(chunks, order=order)
    box = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape))
    out[box] = chunk[tuple(slice(0, s.stop - s.start) for s in box)]
  return out


# -- T5X's own files ----------------------------------------------------------------------------
T5_TINY_CONFIG = T5Config(vocab_size=32128, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16,
                          num_encoder_layers=2, num_decoder_layers=2,
                          mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                          dropout_rate=0.0, relpos_buckets=32)


def test_t5x_tiny_checkpoint_matches_transformers(tmp_path):
  """T5X's test_t5_tiny.checkpoint_0 -> flix -> hf.save_hf (to-hf): flix and transformers agree."""
  import torch
  import transformers

  path = shared_path("fixtures", "t5x", "test_t5_tiny.checkpoint_0")
  checkpoint = t5x.open_checkpoint(path)
  assert "msgpack layout; 52 parameter arrays under optimizer/target" in checkpoint.describe()
  config, params = t5x.load_t5x(checkpoint, dropout_rate=0.0)
  assert config == T5_TINY_CONFIG

  raw = raw_msgpack(path)["optimizer"]["target"]
  for key in (("token_embedder", "embedding"), ("decoder", "logits_dense", "kernel"),
              ("encoder", "layers_1", "mlp", "wi_0", "kernel"),
              ("decoder", "layers_0", "encoder_decoder_attention", "query", "kernel"),
              ("decoder", "relpos_bias", "rel_embedding"), ("encoder", "encoder_norm", "scale")):
    want = get(raw, key).astype(np.float32)
    got = get(params, key)
    assert got.dtype == np.float32 and np.array_equal(got, want), key
  assert np.abs(params["token_embedder"]["embedding"]).max() > 0.5  # Not a zero fixture.

  hf_dir = str(tmp_path / "hf")
  hf.save_hf(hf_dir, params, config)
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
  rng = np.random.RandomState(0)
  enc = rng.randint(2, config.vocab_size, (4, 40))  # 40 > 32 buckets: exercises log buckets.
  enc[1, 30:] = 0
  enc[3, 12:] = 0
  dec = rng.randint(2, config.vocab_size, (4, 9))
  dec[:, 0] = 0
  with torch.no_grad():
    enc_t = torch.tensor(enc)
    ref = model(input_ids=enc_t, attention_mask=(enc_t != 0).long(),
                decoder_input_ids=torch.tensor(dec)).logits.numpy()
  ours = np.asarray(tiny.apply(T5(config), params, enc, dec, None))
  assert ours.shape == (4, 9, 32128) and ref.std() > 0.1
  assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()


def test_t5x_current_layout_fixture_reads_every_array():
  """tiny_t5/checkpoint_1 (specs + zarr chunks, no .zarray): the reader vs chunks decoded here."""
  directory = shared_path("fixtures", "t5x", "tiny_t5", "checkpoint_1")
  raw = raw_msgpack(os.path.join(directory, "checkpoint"))
  ours = t5x.flatten(t5x.read_arrays(directory))
  leaves = t5x.flatten(raw)
  assert sorted(ours) == sorted(leaves)
  specs = {p: v for p, v in leaves.items() if t5x.is_spec(v)}
  assert sorted(specs) == [("optimizer", "state", "param_states", k)
                           for k in ("bias", "kernel", "step")]
  for path, leaf in leaves.items():
    want = decode_zarr(directory, leaf) if t5x.is_spec(leaf) else np.asarray(leaf)
    assert ours[path].dtype == want.dtype and ours[path].shape == want.shape, path
    np.testing.assert_array_equal(ours[path], want, err_msg="/".join(path))
  kernel = ours[("optimizer", "state", "param_states", "kernel")]
  assert kernel.dtype == np.float64 and kernel.shape == (10, 5) and len(np.unique(kernel)) == 50
  checkpoint = t5x.open_checkpoint(directory)
  assert checkpoint.layout == "tensorstore"
  assert t5x.find_params(checkpoint)[0] == ("optimizer", "state", "param_states")  # target: {}.
  with pytest.raises(t5x.T5XCheckpointError, match="token_embedder/embedding is missing"):
    t5x.load_t5x(directory)


# -- both layouts, written here -----------------------------------------------------------------
@pytest.mark.parametrize("config", [GATED, RELU], ids=["gated_untied", "relu_tied"])
def test_msgpack_layout_round_trip(tmp_path, config):
  params = random_params(config, seed=1)
  path = str(tmp_path / "checkpoint_7")
  write_msgpack(path, params)
  checkpoint = t5x.open_checkpoint(path)
  assert (checkpoint.layout, checkpoint.version) == ("msgpack", 3)
  inferred, read = t5x.load_t5x(path, dropout_rate=config.dropout_rate)
  assert inferred == config
  assert_trees_equal(read, params)
  given, read = t5x.load_t5x(path, config)
  assert given == config
  assert_trees_equal(read, params)


def test_msgpack_chunked_arrays(tmp_path, monkeypatch):
  """flax splits arrays over MAX_CHUNK_SIZE bytes into chunks; the reader joins them."""
  params = random_params(GATED, seed=2)
  path = str(tmp_path / "checkpoint")
  monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 1000)
  write_msgpack(path, params)
  monkeypatch.undo()
  with open(path, "rb") as f:
    assert f.read().count(b"__msgpack_chunked_array__") > 10
  _, read = t5x.load_t5x(path, GATED)
  assert_trees_equal(read, params)


@pytest.mark.parametrize("zarray,driver", [(True, "file"), (False, "gfile")])
def test_tensorstore_layout_round_trip(tmp_path, zarray, driver):
  """bfloat16 zarr arrays (several chunks, the last partial) + inline scales; directory moved."""
  params = random_params(GATED, seed=3)
  write_t5x_dir(str(tmp_path / "written"), params, driver=driver, zarray=zarray)
  moved = str(tmp_path / "checkpoint_7")
  os.rename(tmp_path / "written", moved)  # kvstore paths are relative: nothing names "written".
  embedding_dir = os.path.join(moved, "target.token_embedder.embedding")
  assert sorted(os.listdir(embedding_dir)) == sorted(["0.0", "1.0", "2.0"] +
                                                     [".zarray"] * zarray)
  checkpoint = t5x.open_checkpoint(moved)
  assert checkpoint.layout == "tensorstore"
  # 66 arrays: 1 embedding, 2 relpos tables, 3 final/logits, 2 x 9 encoder, 3 x 14 decoder;
  # the 15 layer norm scales are inline.
  assert "66 parameter arrays under optimizer/target, 51 of them in tensorstore" in (
      checkpoint.describe())
  config, read = t5x.load_t5x(moved, dropout_rate=0.0)
  assert config == GATED
  assert_trees_equal(read, params)
  # The msgpack file itself names the checkpoint too.
  _, read = t5x.load_t5x(os.path.join(moved, "checkpoint"), GATED)
  assert_trees_equal(read, params)
  raw = t5x.read_arrays(moved)["optimizer"]["target"]
  assert raw["token_embedder"]["embedding"].dtype == ml_dtypes.bfloat16
  assert raw["encoder"]["encoder_norm"]["scale"].dtype == np.float32  # Inline.


def test_float64_and_float16_arrays_become_float32(tmp_path):
  params = random_params(GATED, seed=4)
  write_t5x_dir(str(tmp_path / "f64"), params, dtype="float64")
  write_t5x_dir(str(tmp_path / "f16"), params, dtype="float16", inline=())
  _, read = t5x.load_t5x(str(tmp_path / "f64"), GATED)
  assert_trees_equal(read, params)
  _, read = t5x.load_t5x(str(tmp_path / "f16"), GATED)
  halves = {p: v.astype(np.float16) for p, v in t5x.flatten(params).items()}
  assert_trees_equal(read, t5x.unflatten({p: v.astype(np.float32) for p, v in halves.items()}))
  raw = t5x.flatten(t5x.read_arrays(str(tmp_path / "f16"))["optimizer"]["target"])
  assert all(raw[p].dtype == np.float16 and np.array_equal(raw[p], v) for p, v in halves.items())


# -- wrong and partial checkpoints --------------------------------------------------------------
@pytest.fixture
def t5x_dir(tmp_path):
  directory = str(tmp_path / "checkpoint_7")
  contents = write_t5x_dir(directory, random_params(GATED, seed=5))
  return directory, contents


def test_missing_array_is_named(t5x_dir):
  directory, contents = t5x_dir
  del contents["optimizer"]["target"]["decoder"]["layers_2"]["mlp"]["wo"]
  write_checkpoint_file(directory, contents)
  for config in (None, GATED):
    with pytest.raises(t5x.T5XCheckpointError) as e:
      t5x.load_t5x(directory, config)
    message = str(e.value)
    assert "missing decoder/layers_2/mlp/wo/kernel (48, 32)" in message, message
    assert f"expected in {directory}/checkpoint under optimizer/target" in message, message


def test_missing_array_directory_and_chunk_are_named(t5x_dir):
  directory, _ = t5x_dir
  name = "target.encoder.layers_1.attention.key.kernel"
  os.remove(os.path.join(directory, name, "2.0"))
  with pytest.raises(t5x.T5XCheckpointError,
                     match=re.escape(f"encoder/layers_1/attention/key/kernel: chunk file "
                                     f"{directory}/{name}/2.0 is missing")):
    t5x.load_t5x(directory)
  shutil.rmtree(os.path.join(directory, name))
  with pytest.raises(t5x.T5XCheckpointError,
                     match=re.escape(f"encoder/layers_1/attention/key/kernel: array directory "
                                     f"{directory}/{name} is missing")):
    t5x.load_t5x(directory)


def test_shape_mismatch_names_parameter_and_both_shapes(t5x_dir):
  directory, _ = t5x_dir
  with pytest.raises(t5x.T5XCheckpointError) as e:
    t5x.load_t5x(directory, dataclasses.replace(GATED, mlp_dim=40))
  message = str(e.value)
  assert ("decoder/layers_0/mlp/wi_0/kernel has shape (32, 48) (in "
          f"{directory}/target.decoder.layers_0.mlp.wi_0.kernel) but the model config expects "
          "(32, 40)") in message, message
  assert "(and 10 more)" in message and "\n" not in message  # 3 MLP kernels x 5 layers.
  with pytest.raises(t5x.T5XCheckpointError,
                     match=r"token_embedder/embedding has shape \(64, 32\) .* expects \(100, 32\)"):
    t5x.load_t5x(directory, dataclasses.replace(GATED, vocab_size=100))
  with pytest.raises(t5x.T5XCheckpointError,
                     match=r"arrays flix's T5 has no place for: decoder/layers_2/"):
    t5x.load_t5x(directory, dataclasses.replace(GATED, num_decoder_layers=2))


def test_unknown_array_is_named(t5x_dir):
  directory, contents = t5x_dir
  contents["optimizer"]["target"]["encoder"]["layers_0"]["mlp"]["wi_0"]["bias"] = np.zeros(48)
  write_checkpoint_file(directory, contents)
  for config in (None, GATED):
    with pytest.raises(t5x.T5XCheckpointError,
                       match="arrays flix's T5 has no place for: encoder/layers_0/mlp/wi_0/bias"):
      t5x.load_t5x(directory, config)


def test_non_float_and_uint16_arrays_are_refused(tmp_path, t5x_dir):
  directory, contents = t5x_dir
  contents["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"] = np.ones(32, np.int32)
  write_checkpoint_file(directory, contents)
  with pytest.raises(t5x.T5XCheckpointError,
                     match=r"not floating-point .*: encoder/encoder_norm/scale \(int32\)"):
    t5x.load_t5x(directory)
  other = str(tmp_path / "uint16")
  write_t5x_dir(other, random_params(GATED), dtype="uint16")
  with pytest.raises(t5x.T5XCheckpointError,
                     match=r"decoder/layers_0/encoder_decoder_attention/key/kernel \(uint16\), "
                           r".*; uint16 is how T5X version-2 checkpoints stored bfloat16"):
    t5x.load_t5x(other)


def test_not_a_checkpoint(tmp_path):
  def fails(path, message):
    with pytest.raises(t5x.T5XCheckpointError) as e:
      t5x.load_t5x(str(path))
    assert message in str(e.value), str(e.value)

  fails(tmp_path / "nope", f"{tmp_path}/nope: no such file or directory")
  (tmp_path / "model" / "checkpoint_1000").mkdir(parents=True)
  (tmp_path / "model" / "checkpoint_1000" / "checkpoint").write_bytes(b"")
  fails(tmp_path / "model", f"{tmp_path}/model is not a T5X checkpoint directory: "
                            f"{tmp_path}/model/checkpoint is missing; it holds checkpoint_1000")
  text = tmp_path / "notes.txt"
  text.write_text("not msgpack at all\n")
  fails(text, f"{text} is not a T5X checkpoint: not a flax msgpack file")
  other = tmp_path / "other.msgpack"
  other.write_bytes(serialization.msgpack_serialize({"params": {"w": np.zeros(3)}}))
  fails(other, f"{other} is not a T5X checkpoint: no parameter tree")
  fails(other, "top-level keys ['params']")
  tf_index = tmp_path / "tf" / "checkpoint"
  tf_index.parent.mkdir()
  tf_index.write_text('model_checkpoint_path: "model.ckpt-1000000"\n')
  with pytest.raises(t5x.T5XCheckpointError, match="TensorFlow checkpoint"):
    t5x.load_t5x(str(tf_index.parent))


# -- the command line ---------------------------------------------------------------------------
def test_cli_from_t5x_on_t5x_file(tmp_path, capsys):
  path = shared_path("fixtures", "t5x", "test_t5_tiny.checkpoint_0")
  out = str(tmp_path / "ckpt")
  assert convert.main(["from-t5x", "--t5x_dir", path, "--out", out]) == 0
  assert "msgpack layout; 52 parameter arrays under optimizer/target" in capsys.readouterr().out
  config, flix, read = load_model(out)
  assert flix is None and config == dataclasses.replace(T5_TINY_CONFIG, dropout_rate=0.1)
  assert_trees_equal(read, t5x.load_t5x(path)[1])


def test_cli_from_t5x(tmp_path, capsys):
  params = random_params(GATED, seed=6)
  source = str(tmp_path / "t5x")
  write_t5x_dir(source, params)
  out = str(tmp_path / "ckpt")
  assert convert.main(["from-t5x", "--t5x_dir", source, "--out", out,
                       "--dropout_rate", "0.0"]) == 0
  assert "tensorstore layout" in capsys.readouterr().out
  config, flix, read = load_model(out)
  assert config == GATED and flix is None
  assert_trees_equal(read, params)
  gin_text = open(os.path.join(out, "model.gin")).read()
  assert f"T5Config of T5X checkpoint {source}" in gin_text
  assert "T5Config.mlp_dim = 48" in gin_text and "T5Config.num_decoder_layers = 3" in gin_text

  # --out exists: refused without --overwrite, replaced with it.
  assert convert.main(["from-t5x", "--t5x_dir", source, "--out", out]) == 1
  err = capsys.readouterr().err.strip()
  assert "already exists" in err and "--overwrite" in err and "\n" not in err
  # The model gin the conversion wrote gives the same config, checked against the shapes.
  assert convert.main(["from-t5x", "--t5x_dir", source, "--out", out, "--overwrite",
                       "--gin_file", os.path.join(out, "model.gin")]) == 0
  assert load_model(out)[0] == GATED


def test_cli_from_t5x_errors(tmp_path, capsys):
  source = str(tmp_path / "t5x")
  write_t5x_dir(source, random_params(GATED, seed=7))
  wrong_gin = tmp_path / "wrong.gin"
  wrong_gin.write_text(gin_bindings(dataclasses.replace(GATED, num_heads=4, head_dim=4)))
  no_config = tmp_path / "empty.gin"
  no_config.write_text("DROPOUT_RATE = 0.0\n")
  out = tmp_path / "ckpt"
  cases = [
      (["--t5x_dir", str(tmp_path / "missing")], f"--t5x_dir {tmp_path}/missing: no such file"),
      (["--t5x_dir", str(tmp_path)], f"{tmp_path}/checkpoint is missing"),
      (["--t5x_dir", source, "--gin_file", str(wrong_gin)],
       r"encoder/relpos_bias/rel_embedding has shape (2, 32) (in "
       f"{source}/target.encoder.relpos_bias.rel_embedding) but the model config expects (4, 32)"),
      (["--t5x_dir", source, "--gin_file", str(no_config)], "does not define MODEL_CONFIG"),
      (["--t5x_dir", source, "--gin_file", str(tmp_path / "absent.gin")],
       f"Unable to open file: {tmp_path}/absent.gin"),
  ]
  for args, message in cases:
    assert convert.main(["from-t5x", *args, "--out", str(out)]) == 1, args
    err = capsys.readouterr().err
    assert err.startswith("flix.convert from-t5x: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ckpt")]  # No temporary dirs.
