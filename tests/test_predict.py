"""Saved models are checked when loaded; images of any mode become 8-bit RGB or one error line."""
import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from experiments import predict
from jaxlin import checkpoint, data, linear, mlp
from jaxlin.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (4, 4, 3)
CLASSES = ("cat", "dog", "frog")


def _run_folder(path):
  """A run's workdir holding its model.npz."""
  os.makedirs(path)
  _save(os.path.join(path, "model.npz"))
  return str(path)


def _raw_member(path):
  """A model whose mean_image is stored as raw bytes, not as an .npy array."""
  good = _save(str(path) + ".good.npz")
  with zipfile.ZipFile(good) as z, zipfile.ZipFile(path, "w") as out:
    for name in z.namelist():
      raw = name == "mean_image.npy"
      out.writestr("mean_image" if raw else name, b"junk" if raw else z.read(name))
  return str(path)


def _save(path, *, kind="linear", features="pixels", **changes):
  rng = np.random.default_rng(0)
  d = int(np.prod(SHAPE)) if features == "pixels" else 5
  params = ({"W": rng.normal(size=(d, 3)), "b": np.zeros(3)} if kind == "linear" else
            {"W1": rng.normal(size=(d, 4)), "b1": np.zeros(4), "W2": rng.normal(size=(4, 3)),
             "b2": np.zeros(3)})
  stats = dict(feature_mean=np.zeros(d), feature_std=np.ones(d),
               feature_settings={"cell": 4, "orientations": 1, "bins": 4}  # 1 + 4 features
               ) if features != "pixels" else {}
  checkpoint.save(str(path), params=params, mean_image=np.full(SHAPE, 100.0), scale=50.0,
                  class_names=CLASSES, kind=kind, loss="softmax", features=features, **stats)
  if changes:  # rewrite the archive with some arrays changed, removed (None) or added
    with np.load(str(path)) as f:
      arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["header"]))
    header.update(changes.pop("header", {}))
    arrays["header"] = np.asarray(json.dumps(header))
    for k, v in changes.items():
      if v is None:
        arrays.pop(k.replace("__", "/"))
      else:
        arrays[k.replace("__", "/")] = v
    with open(path, "wb") as f:
      np.savez(f, **arrays)
  return str(path)


def test_a_saved_model_loads_and_refuses_float_images(tmp_path):
  model = checkpoint.load(_save(tmp_path / "m.npz", kind="mlp"))
  pixels = np.random.default_rng(1).integers(0, 256, (2,) + SHAPE).astype(np.uint8)
  np.testing.assert_allclose(model.scores(pixels), model.scores(pixels.astype(np.int64)))
  with pytest.raises(InputError, match="uint8 pixels in \\[0, 255\\], got float"):
    model.scores(pixels / 255.0)  # [0, 1] floats would all land in one class
  with pytest.raises(InputError, match="must be \\(N, 4, 4, 3\\)"):
    model.scores(pixels[:, :2])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_saved_model_scores_as_the_library_models_do(tmp_path, kind):
  model = checkpoint.load(_save(tmp_path / "m.npz", kind=kind))
  pixels = np.random.default_rng(2).integers(0, 256, (5,) + SHAPE).astype(np.uint8)
  x = (pixels.astype(np.float64) - 100.0).reshape(5, -1) / 50.0  # the saved mean and scale
  np.testing.assert_allclose(model.preprocess(pixels), x, rtol=1e-6)
  params = {k: np.asarray(v, np.float32) for k, v in model.params.items()}
  library = (linear if kind == "linear" else mlp).scores(params, x.astype(np.float32))
  np.testing.assert_allclose(model.scores(pixels), library, rtol=1e-4, atol=1e-4)


def test_tied_classes_are_listed_in_class_order(tmp_path):
  # 40 classes (numpy's default sort is stable only on short arrays): 1 scores 3, then the
  # classes scoring 2 in class order.
  b = np.zeros(40, np.float32)
  b[[33, 5, 17, 38, 2, 29, 11]] = 2
  b[21] = 3
  model = checkpoint.SavedModel(
      params={"W": np.zeros((48, 40), np.float32), "b": b},
      mean_image=np.zeros(SHAPE, np.float32), scale=1.0,
      class_names=tuple(f"c{i}" for i in range(40)), kind="linear", loss="svm",
      image_shape=SHAPE)
  path = _write(tmp_path, "x.png", Image.fromarray(np.zeros(SHAPE, np.uint8)))
  (_, top, error), = predict.classify(model, [path], top=6)
  assert error is None and top == [("c21", 3.0), ("c2", 2.0), ("c5", 2.0), ("c11", 2.0),
                                   ("c17", 2.0), ("c29", 2.0)]


def test_probabilities_of_large_scores_are_a_softmax():
  model = checkpoint.SavedModel(
      params={"W": np.zeros((48, 3), np.float32), "b": np.array([1000, 1001, 999], np.float32)},
      mean_image=np.zeros(SHAPE, np.float32), scale=1.0, class_names=CLASSES, kind="linear",
      loss="softmax", image_shape=SHAPE)
  e = np.exp([0.0, 1.0, -1.0])
  np.testing.assert_allclose(model.probabilities(np.zeros((2,) + SHAPE, np.uint8)),
                             [e / e.sum()] * 2, rtol=1e-6)  # exp(1000) would be inf: NaN


def _bad_files(tmp_path):
  good = _save(tmp_path / "good.npz")
  with open(good, "rb") as f:
    data = f.read()
  text = tmp_path / "text.npz"
  text.write_text("W,b\n1,2\n")
  npy = tmp_path / "w.npy"
  np.save(npy, np.zeros(3))
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(data[:len(data) // 2])
  # A damaged zip directory: the general-purpose flag's bit 0 says "encrypted" (zipfile
  # raised RuntimeError), a version it cannot read (NotImplementedError): tracebacks before.
  directory = data.find(b"PK\x01\x02")
  encrypted, version = bytearray(data), bytearray(data)
  encrypted[directory + 8] |= 1
  version[directory + 6] = 0xff
  (tmp_path / "encrypted.npz").write_bytes(encrypted)
  (tmp_path / "version.npz").write_bytes(version)
  return {
      "encrypted": (str(tmp_path / "encrypted.npz"), "truncated or corrupt: .*encrypted"),
      "version": (str(tmp_path / "version.npz"), "truncated or corrupt"),
      "text": (str(text), "not an .npz archive"),
      "npy": (str(npy), "single .npy array"),
      "empty": (str(empty), "the file is empty"),
      "truncated": (str(truncated), "truncated or corrupt"),
      "missing": (str(tmp_path / "none.npz"), "does not exist"),
      "folder": (str(tmp_path), r"\(it is a folder\)$"),
      "run_folder": (_run_folder(tmp_path / "run"),
                     r"it is a folder; the model a run saved there is .*run/model.npz\)"),
      "no_W": (_save(tmp_path / "a.npz", param__W=None), "missing param/W"),
      "shape": (_save(tmp_path / "b.npz", param__W=np.zeros((47, 3))),
                r"param/W has shape \(47, 3\), expected \(48, 3\)"),
      "classes": (_save(tmp_path / "c.npz", class_names=np.asarray(["cat", "dog"])),
                  "2 class names for 3 classes"),
      # Class names as a column loaded as "['cat']"; repeated ones leave predictions
      # ambiguous; none at all saved and loaded, then predict crashed.
      "classes_2d": (_save(tmp_path / "c1.npz", class_names=np.asarray([["cat"], ["dog"], ["x"]])),
                     r"class_names must be a 1-D array of strings, got <U3 of shape \(3, 1\)"),
      "classes_twice": (_save(tmp_path / "c2.npz", class_names=np.asarray(["cat", "dog", "cat"])),
                        "class name 'cat' appears more than once"),
      "no_classes": (_save(tmp_path / "c3.npz", param__W=np.zeros((48, 0)), param__b=np.zeros(0),
                           class_names=np.asarray([], dtype=str)), "no class names"),
      # An archive member that is not an .npy array: numpy returns its bytes (AttributeError
      # before); an object array (pickled).
      "raw_member": (_raw_member(tmp_path / "c4.npz"), "member 'mean_image' is not a numpy array"),
      "object": (_save(tmp_path / "c5.npz", extra=np.array([{"a": 1}], dtype=object)),
                 "object array"),
      "kind": (_save(tmp_path / "d.npz", header={"kind": "cnn"}), "unknown kind 'cnn'"),
      # A parameter the kind does not have was dropped without a word (save refuses it); a
      # format number given as "1" or True said "has model format 1; this jaxlin reads 1".
      "extra_param": (_save(tmp_path / "d1.npz", param__W2=np.zeros((2, 2))),
                      r"param/W2 is not a parameter of a 'linear' model \(its: param/W, param/b\)"),
      "version_str": (_save(tmp_path / "d2.npz", header={"format_version": "1"}),
                      "format_version is '1', not a format number"),
      "version_bool": (_save(tmp_path / "d3.npz", header={"format_version": True}),
                       "format_version is True, not a format number"),
      "version_2": (_save(tmp_path / "d4.npz", header={"format_version": 2}),
                    "has model format 2; this jaxlin reads format 1"),
      "loss": (_save(tmp_path / "e.npz", header={"loss": "hinge"}), "unknown loss 'hinge'"),
      "scale": (_save(tmp_path / "f.npz", header={"scale": 0.0}), "scale must be a finite"),
      "scale_bool": (_save(tmp_path / "f1.npz", header={"scale": True}),
                     "scale must be a finite.*got True"),  # was read as 1.0
      "scale_tiny": (_save(tmp_path / "f2.npz", header={"scale": 1e-46}),  # float32: 0
                     r"within float32's normal range .*got 1e-46"),
      "scale_huge": (_save(tmp_path / "f4.npz", header={"scale": 1e39}),  # float32: inf
                     r"within float32's normal range .*got 1e\+39"),  # (not a RuntimeWarning)
      "scale_int": (_save(tmp_path / "f5.npz", header={"scale": 10 ** 400}),  # OverflowError
                    r"within float32's normal range .*got 1000000"),
      "shape_float": (_save(tmp_path / "f3.npz", header={"image_shape": [4, 4, 3.7]}),
                      r"image_shape \(4, 4, 3.7\) is not \(H, W, C\)"),  # was (4, 4, 3)
      "nan": (_save(tmp_path / "g.npz", param__b=np.array([0.0, np.nan, 0.0])),
              "param/b holds inf or NaN"),
      "hog": (_save(tmp_path / "h.npz", features="hog_hsv", feature_std=None),
              "missing feature_std"),
      "hog_std": (_save(tmp_path / "i.npz", features="hog_hsv", feature_std=np.zeros(5)),
                  "feature_std must be > 0"),
      "hog_size": (_save(tmp_path / "j.npz", features="hog_hsv",
                         header={"feature_settings": {"orientations": 9, "cell": 2, "bins": 5}}),
                   "feature_mean has 5 values, but the HOG . hue features of 4x4 images"),
  }


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a float32 overflow was a warning
def test_every_broken_model_file_is_one_clear_error(tmp_path):
  for name, (path, message) in _bad_files(tmp_path).items():
    with pytest.raises(checkpoint.ModelFileError, match=message):
      checkpoint.load(path)
    assert name


def test_predict_command_line_on_a_text_file_named_npz(tmp_path, cli):
  text = tmp_path / "model.npz"
  text.write_text("hello")
  img = tmp_path / "x.png"
  Image.fromarray(np.zeros(SHAPE, np.uint8)).save(img)
  proc = cli.run("experiments.predict", f"--model={text}", img)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: {text} is not a jaxlin model file (not an .npz archive)"]


def test_predict_json_lines_survive_any_path_or_class_name(tmp_path, cli):
  """The plain lines "path: name 12.3%, ..." are ambiguous where a path holds ": " or a
  class name ", "; --json gives one JSON object per image."""
  model = _save(tmp_path / "m.npz", class_names=np.asarray(["a, b", "c: d", "e"]))
  img = tmp_path / "x: y, z.png"
  Image.fromarray(np.full(SHAPE, 90, np.uint8)).save(img)
  proc = cli.run("experiments.predict", f"--model={model}", "--json", "--top=2", img, img)
  assert proc.returncode == 0, proc.stderr
  lines = [json.loads(line) for line in proc.stdout.splitlines()]
  want = checkpoint.load(model).probabilities(np.full((1,) + SHAPE, 90, np.uint8))[0]
  order = np.argsort(-want, kind="stable")[:2]
  for line in lines:  # (values: as the batch's float32 product gives them)
    assert line["path"] == str(img) and [n for n, _ in line["classes"]] == [
        ["a, b", "c: d", "e"][j] for j in order]
    assert [v for _, v in line["classes"]] == pytest.approx(want[order].tolist(), rel=1e-5)
  assert len(lines) == 2


def _write(tmp_path, name, img, **kw):
  path = str(tmp_path / name)
  img.save(path, **kw)
  return path


def test_images_of_every_mode_become_the_right_8_bit_rgb(tmp_path):
  rng = np.random.default_rng(2)
  grey8 = rng.integers(0, 256, (4, 4)).astype(np.uint8)
  rgb8 = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
  as_rgb = np.repeat(grey8[..., None], 3, -1)
  read = lambda p: predict.read_image(p, SHAPE)
  # 16-bit greyscale PNG: scaled to 8 bits, not clipped to white
  g16 = Image.fromarray(grey8.astype(np.uint16) * 257)
  np.testing.assert_array_equal(read(_write(tmp_path, "g16.png", g16)), as_rgb)
  # 16-bit TIFF (Pillow's decoder, not the folder's): divided by 257 and rounded
  i16 = Image.fromarray(np.array([[0, 1000, 25828, 65535]], np.uint16))
  np.testing.assert_array_equal(predict.to_rgb8(i16)[..., 0], [[0, 4, 100, 255]])
  np.testing.assert_array_equal(read(_write(tmp_path, "g16.tiff", g16)), as_rgb)
  # float TIFF in [0, 1]
  f32 = Image.fromarray(grey8.astype(np.float32) / 255)
  np.testing.assert_array_equal(read(_write(tmp_path, "f.tiff", f32)), as_rgb)
  # grayscale, palette, CMYK (lossless TIFF), opaque alpha
  np.testing.assert_array_equal(read(_write(tmp_path, "l.png", Image.fromarray(grey8))), as_rgb)
  pal = Image.fromarray(rgb8).quantize(256)
  np.testing.assert_array_equal(read(_write(tmp_path, "p.png", pal)),
                                np.asarray(pal.convert("RGB")))
  rgba = np.concatenate([rgb8, np.full((4, 4, 1), 255, np.uint8)], -1)
  np.testing.assert_array_equal(read(_write(tmp_path, "a.png", Image.fromarray(rgba))), rgb8)
  cmyk = Image.fromarray(rgb8).convert("CMYK")
  np.testing.assert_array_equal(read(_write(tmp_path, "c.tiff", cmyk)),
                                np.asarray(cmyk.convert("RGB")))
  # transparent pixels: alpha dropped, as the image-folder decoder drops it (PNG and TIFF)
  clear = np.concatenate([rgb8, np.zeros((4, 4, 1), np.uint8)], -1)
  np.testing.assert_array_equal(read(_write(tmp_path, "t.png", Image.fromarray(clear))), rgb8)
  np.testing.assert_array_equal(read(_write(tmp_path, "t.tiff", Image.fromarray(clear))), rgb8)
  # float outside [0, 1]: refused, one line
  model = checkpoint.load(_save(tmp_path / "m.npz"))
  bad = _write(tmp_path, "big.tiff", Image.fromarray(np.full((4, 4), 7.5, np.float32)))
  (_, top, error), = predict.classify(model, [bad])
  assert top is None and error.startswith(f"cannot read {bad}: a float image with values")


def test_a_png_pillow_refuses_but_the_image_folder_reads_is_read_as_it_reads_it(tmp_path):
  """A PNG whose comment chunk has a bad checksum: TensorFlow decodes it (a run trains and
  tests on it), Pillow's header check refused it as "not an image file"."""
  rgb = np.random.default_rng(5).integers(0, 256, (4, 4, 3)).astype(np.uint8)
  info = PngImagePlugin.PngInfo()
  info.add_text("Comment", "hello")
  path = tmp_path / "c.png"
  Image.fromarray(rgb).save(path, pnginfo=info)
  raw = bytearray(path.read_bytes())
  at = raw.find(b"tEXt")
  raw[at + 4 + struct.unpack(">I", raw[at - 4:at])[0]] ^= 0xFF  # the chunk's CRC
  path.write_bytes(bytes(raw))
  np.testing.assert_array_equal(predict.read_image(str(path), SHAPE), rgb)
  np.testing.assert_array_equal(predict.read_image(str(path), SHAPE),
                                data.decode_image(bytes(raw)))
  (tmp_path / "t.txt").write_text("not an image")
  with pytest.raises(UnidentifiedImageError):  # still: one line, "not an image file"
    predict.read_image(str(tmp_path / "t.txt"), SHAPE)


def test_a_model_of_other_channels_is_one_error_and_a_large_image_names_its_file(
    tmp_path, monkeypatch):
  """A 4-channel model (load reads it) was blamed on every image, a missing one too; a
  decompression-bomb warning named no file."""
  model = checkpoint.load(_save(tmp_path / "m.npz"))
  four = dataclasses.replace(model, image_shape=(4, 4, 4))
  with pytest.raises(predict.ImageError, match="takes images of 4 channels"):
    predict.classify(four, [str(tmp_path / "missing.png")])
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 16 pixels: a warning, not an error
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "big.png")
  with pytest.warns(Image.DecompressionBombWarning, match=r"big\.png: Image size \(16"):
    predict.read_image(str(tmp_path / "big.png"), SHAPE)


def test_files_are_read_as_the_image_folder_decodes_them(tmp_path):
  """The run's own files give the run's pixels: JPEG (TensorFlow's DCT, not Pillow's),
  PNG with transparency (alpha dropped, not composited), 16-bit, grey and palette PNG.
  (A model file used to disagree with its run on JPEG and transparent PNG folders.)"""
  rng = np.random.default_rng(3)
  rgb = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
  alpha = rng.integers(0, 256, (32, 32, 1)).astype(np.uint8)
  folder = tmp_path / "images"
  for split in ("train", "test"):
    os.makedirs(folder / split / "a")
  files = {"q.jpg": (Image.fromarray(rgb), {"quality": 75}),
           "t.png": (Image.fromarray(np.concatenate([rgb, alpha], -1)), {}),
           "w.png": (Image.fromarray(rgb[..., 0].astype(np.uint16) * 251), {}),
           "g.png": (Image.fromarray(rgb[..., 1]), {}),
           "p.png": (Image.fromarray(rgb).quantize(64), {}),
           "b.bmp": (Image.fromarray(rgb), {})}
  for name, (img, kw) in files.items():
    img.save(folder / "train" / "a" / name, **kw)
  Image.fromarray(rgb).save(folder / "test" / "a" / "x.png")
  paths, _ = data.folder_examples(str(folder), "train")
  decoded = data.load_split(f"folder:{folder}", "train", cache_dir=None)[0]
  for path, pixels in zip(paths, decoded):
    np.testing.assert_array_equal(predict.read_image(path, (32, 32, 3)), pixels,
                                  err_msg=path)
  jpeg = predict.read_image(str(folder / "train" / "a" / "q.jpg"), (32, 32, 3))
  with Image.open(folder / "train" / "a" / "q.jpg") as img:
    assert not np.array_equal(jpeg, np.asarray(img))  # Pillow's DCT differs: not used
  cut = _write(tmp_path, "cut.jpg", Image.fromarray(rgb), quality=90)
  with open(cut, "rb") as f:
    head = f.read(200)
  with open(cut, "wb") as f:
    f.write(head)
  model = checkpoint.load(_save(tmp_path / "m.npz"))
  (_, top, error), = predict.classify(model, [cut])  # one error line, as before
  assert top is None and error.startswith(f"cannot read {cut}: ")
  (_, _, missing), = predict.classify(model, [str(tmp_path / "none.png")])
  assert missing == f"cannot read {tmp_path / 'none.png'}: no such file or directory"


def test_bmp_files_are_read_with_their_palettes(tmp_path):
  # TensorFlow's BMP decoder read a palette BMP's indices as grey levels (a confident, wrong
  # class, exit 0) and refused 1-bit BMPs.
  rgb = np.zeros((32, 32, 3), np.uint8)
  rgb[:, :16] = (102, 153, 204)
  rgb[:, 16:] = (250, 20, 30)
  palette = _write(tmp_path, "pal.bmp", Image.fromarray(rgb).quantize(2))  # exact colours
  np.testing.assert_array_equal(predict.read_image(palette, (32, 32, 3)), rgb)
  mono = (np.arange(32 * 32).reshape(32, 32) % 3 == 0)
  one_bit = _write(tmp_path, "one.bmp", Image.fromarray(mono).convert("1"))
  np.testing.assert_array_equal(predict.read_image(one_bit, (32, 32, 3)),
                                np.repeat(np.where(mono, 255, 0)[..., None], 3, -1))
  true_colour = _write(tmp_path, "rgb.bmp", Image.fromarray(rgb))
  np.testing.assert_array_equal(predict.read_image(true_colour, (32, 32, 3)), rgb)
  # Written by hand (Pillow writes none of these): colour masks, which TensorFlow ignored
  # (wrong colours, no error), and 16-bit and 4-bit grey BMPs, which it refused.
  two = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [200, 96, 48]]], np.uint8)
  masks = struct.pack("<III", 0xff000000, 0x00ff0000, 0x0000ff00)  # R, G, B: not BGRX
  rgbx = _bmp(tmp_path / "masks.bmp", 32, [b"".join(bytes([0, b, g, r]) for r, g, b in row)
                                           for row in two], compression=3, extra=masks)
  np.testing.assert_array_equal(predict.read_image(rgbx, (2, 2, 3)), two)
  rgb555 = _bmp(tmp_path / "16.bmp", 16, [b"".join(struct.pack(
      "<H", (r >> 3) << 10 | (g >> 3) << 5 | b >> 3) for r, g, b in row.tolist()) for row in two])
  want = (two >> 3).astype(np.uint16) * 255 // 31  # 5 bits a channel, as Pillow scales them
  np.testing.assert_array_equal(predict.read_image(rgb555, (2, 2, 3)), want.astype(np.uint8))
  grey16 = b"".join(bytes([i * 17, i * 17, i * 17, 0]) for i in range(16))  # 4-bit grey ramp
  four = _bmp(tmp_path / "4.bmp", 4, [bytes([0x1f]), bytes([0x7a])], extra=grey16)
  np.testing.assert_array_equal(predict.read_image(four, (2, 2, 3))[..., 0],
                                [[17, 255], [119, 170]])


def _bmp(path, bits, rows, *, compression=0, extra=b""):
  """A bottom-up BMP (40-byte header) of 2 x 2 pixels: ``rows`` their bytes, top row first;
  ``extra``: colour masks or a palette after the header."""
  stride = (2 * bits + 31) // 32 * 4
  body = b"".join(r.ljust(stride, b"\0") for r in reversed(rows))
  colours = len(extra) // 4 if compression == 0 else 0
  info = struct.pack("<IiiHHIIiiII", 40, 2, 2, 1, bits, compression, len(body), 2835, 2835,
                     colours, 0)
  start = 14 + len(info) + len(extra)
  path.write_bytes(b"BM" + struct.pack("<IHHI", start + len(body), 0, 0, start) + info + extra
                   + body)
  return str(path)


@pytest.mark.parametrize("flag, error", [
    ("--top=abc", "error: --top must be an integer, got 'abc'"),
    ("--k=3", "error: unknown command line flag 'k'"),
    ("--model=", "error: --model is required: the model.npz an experiment wrote"),  # was exit 1
])
def test_predict_flag_errors_are_one_line(flag, error, cli):
  proc = cli.run("experiments.predict", flag, "x.png")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [error]


def _good_model():
  rng = np.random.default_rng(0)
  return dict(params={"W": rng.normal(size=(48, 3)), "b": np.zeros(3)},
              mean_image=np.full(SHAPE, 100.0), scale=50.0, class_names=CLASSES, kind="linear",
              loss="softmax")


@pytest.mark.parametrize("changes, argument, message", [
    (dict(kind="cnn"), "kind", "unknown kind 'cnn'"),
    (dict(loss="hinge"), "loss", "unknown loss 'hinge'"),
    (dict(scale=0.0), "scale", "scale must be a finite number > 0"),
    (dict(scale=np.array([1.0, 2.0])), "scale", "scale must be a finite number > 0"),  # was
    (dict(scale=True), "scale", "scale must be a finite number > 0"),  # "lacks a valid float"
    (dict(class_names="abc"), "class_names", "got the string 'abc'"),
    (dict(class_names={"a", "b", "c"}), "class_names",  # stored in an arbitrary order
     "class_names must be an ordered sequence of names .*got a value of type set"),
    (dict(class_names={"b": 1, "a": 0, "c": 2}), "class_names",  # its keys: "b" for label 0
     "class_names must be an ordered sequence of names .*of type dict"),
    (dict(scale="1"), "scale", "scale must be a finite number > 0"),  # was stored as 1.0
    (dict(scale=1e-46), "scale", "within float32's normal range"),  # scores were NaN
    (dict(class_names=["a"]), "class_names", "1 class names for 3 classes"),
    (dict(class_names=["a", "b", "a"]), "class_names", "class name 'a' appears more than once"),
    (dict(class_names=[], params={"W": np.zeros((48, 0)), "b": np.zeros(0)}), "class_names",
     "no class names: a model has at least one class"),
    (dict(params={"W": np.full((48, 3), 1e300), "b": np.zeros(3)}), "params",
     r"params\['W'\] holds inf or NaN \(or values beyond float32\)"),
    (dict(params={"W": np.zeros((47, 3)), "b": np.zeros(3)}), "params",
     r"params\['W'\] has shape \(47, 3\), expected \(48, 3\)"),
    (dict(params={"W": np.zeros((48, 3))}), "params", r"missing params\['b'\]"),
    (dict(params={"W": np.zeros((4, 48, 3)), "b": np.zeros((4, 3))}), "params",  # a grid's
     r"expected 2 dimensions \(params stacked over a grid.*train.member\(fit.params, g\)"),
    (dict(params={"W": np.zeros((48, 3)), "b": np.zeros(3), "extra": np.ones(2)}), "params",
     r"params has 'extra', which a 'linear' model does not have"),  # was dropped by load
    (dict(mean_image=np.zeros((2, 4, 3))), "params",  # named only params
     r"expected \(24, 3\) \(one row per value of mean_image, of shape \(2, 4, 3\)"),
    (dict(mean_image=np.zeros(48)), "mean_image",
     r"mean_image must be the training images' mean image, \(H, W, C\).* got shape \(48,\)"),
    (dict(mean_image=None, features="hog_hsv", feature_mean=np.zeros(10),  # no image shape
          feature_std=np.ones(10)), "mean_image", r"a features model keeps it too"),
    (dict(features="hog_hsv"), "feature_mean", "needs feature_mean and feature_std"),
    (dict(features="hog_hsv", feature_mean=np.zeros(48), feature_std=np.ones(48),
          feature_settings={"cell": 4}),
     "feature_mean", r"48 values, but the HOG \+ hue features of 4x4 images .* have 19"),
    (dict(features="hog_hsv", feature_mean=np.zeros(10), feature_std=np.ones(10),
          params={"W": np.zeros((10, 3)), "b": np.zeros(3)}),
     "feature_settings", "cell=8 is larger than the 4x4 images"),
    (dict(features="hog_hsv", feature_mean=np.zeros(10), feature_std=np.ones(10),
          feature_settings={"cell": 0}), "feature_settings", "must be a positive int"),
    (dict(feature_settings={"cell": 4}), "feature_settings", "not 'pixels'"),
])
def test_save_writes_only_what_load_reads(tmp_path, changes, argument, message):
  with pytest.raises(InputError, match=message) as e:
    checkpoint.save(str(tmp_path / "m.npz"), **{**_good_model(), **changes})
  assert e.value.argument == argument
  assert not os.listdir(tmp_path)  # nothing written


def test_paths_and_empty_batches(tmp_path):
  path = checkpoint.save(tmp_path / "m.npz", **_good_model())  # an os.PathLike
  model = checkpoint.load(path)
  assert model.scores(np.zeros((0,) + SHAPE, np.uint8)).shape == (0, 3)
  with open(path, "rb") as f:
    with pytest.raises(InputError, match="must be a file path") as e:
      checkpoint.load(f.fileno())  # was read, and the caller's descriptor closed
    os.fstat(f.fileno())  # still open
  assert e.value.argument == "path"
  with pytest.raises(InputError, match=r"cannot write the model to .*no/m.npz: No such file"):
    checkpoint.save(str(tmp_path / "no" / "m.npz"), **_good_model())


def test_images_and_models_the_command_cannot_read_right_are_one_error_each(tmp_path,
                                                                            monkeypatch):
  ok = _write(tmp_path, "ok.png", Image.fromarray(np.zeros((4, 4, 3), np.uint8)))
  neg = _write(tmp_path, "neg.tiff", Image.fromarray(np.array([[-1000, 100], [50, 0]],
                                                               np.int32)))  # was clipped to 0
  big = _write(tmp_path, "big.png", Image.fromarray(np.zeros((64, 64, 3), np.uint8)))
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over 2x this: a "bomb"
  model = checkpoint.load(_save(tmp_path / "m.npz"))
  out = {p: (top, error) for p, top, error in predict.classify(model, [ok, neg, big])}
  assert out[ok][1] is None and len(out[ok][0]) == 3  # the others do not stop it
  assert out[neg][1] == f"cannot read {neg}: an image of mode I with negative values; " \
                        "convert it to 8-bit first"
  assert out[big][1].startswith(f"cannot read {big}: Image size (4096 pixels) exceeds limit")
  # A model whose scores overflow: one error, not "nan%".
  huge = dict(_good_model(), params={"W": np.full((48, 3), 3e38), "b": np.zeros(3)}, scale=1e-30)
  path = checkpoint.save(tmp_path / "huge.npz", **huge)
  (_, top, error), = predict.classify(checkpoint.load(path), [ok])
  assert top is None and error.startswith(f"the model's scores for {ok} are not finite")
  # Grayscale models read images as one channel.
  grey = dict(_good_model(), params={"W": np.ones((16, 3)), "b": np.zeros(3)},
              mean_image=np.zeros((4, 4, 1)))
  path = checkpoint.save(tmp_path / "grey.npz", **grey)
  (_, top, error), = predict.classify(checkpoint.load(path), [ok])
  assert error is None and len(top) == 3


def test_a_feature_model_applies_the_settings_it_was_trained_with(tmp_path):
  from jaxlin import features  # pylint: disable=import-outside-toplevel
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  f = np.asarray(features.extract(images, cell=4, bins=6))  # 4 x 4 cells x 9 + 6 = 150
  mean, std = f.mean(axis=0), f.std(axis=0) + 1.0
  rng = np.random.default_rng(1)
  path = checkpoint.save(tmp_path / "m.npz", params={"W": rng.normal(size=(150, 3)),
                                                     "b": np.zeros(3)},
                         mean_image=np.zeros((16, 16, 3)), scale=1.0, class_names=CLASSES,
                         kind="linear", loss="svm", features="hog_hsv", feature_mean=mean,
                         feature_std=std, feature_settings={"cell": 4, "bins": 6})
  model = checkpoint.load(path)
  assert model.feature_settings == {"orientations": 9, "cell": 4, "bins": 6}
  np.testing.assert_allclose(model.preprocess(images), (f - mean) / std, rtol=1e-5, atol=1e-5)


def test_a_recorded_interrupt_stops_classify_before_more_decoding(tmp_path, monkeypatch):
  # The handler only records a stop; the loop over a chunk's files read it only after the
  # whole chunk was decoded and scored (41 s for 300 large images).
  import threading  # pylint: disable=import-outside-toplevel
  model = checkpoint.load(_save(tmp_path / "m.npz"))
  image = _write(tmp_path, "a.png", Image.fromarray(np.zeros(SHAPE, np.uint8)))
  stop = threading.Event()
  monkeypatch.setattr(predict, "_STOP", stop)
  assert predict.classify(model, [image])[0][1] is not None
  stop.set()
  with pytest.raises(KeyboardInterrupt):
    predict.classify(model, [image] * 3)
  with pytest.raises(KeyboardInterrupt):  # a second signal: at once
    predict._interrupt(2, None)  # pylint: disable=protected-access


def test_predictions_stream_and_sigterm_stops_with_one_line(tmp_path):
  # Nothing was printed until every image was decoded, and SIGTERM exited 143 (Ctrl-C: a
  # 37-line traceback from inside the decoder).
  import signal  # pylint: disable=import-outside-toplevel
  model = _save(tmp_path / "m.npz")
  image = _write(tmp_path, "a.tif", Image.fromarray(np.zeros(SHAPE, np.uint8)))  # Pillow's
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.predict", f"--model={model}"] + [image] * 5000,
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=ROOT))
  first = proc.stdout.readline()  # the first chunk is printed before the rest is read
  proc.send_signal(signal.SIGTERM)
  out, err = proc.stdout.read(), proc.stderr.read()  # (communicate would skip what readline
  proc.wait(timeout=120)                              # buffered)
  assert first.startswith(f"{image}: ") and proc.returncode == 130, (first, err[-2000:])
  printed = 1 + len(out.splitlines())
  last = err.strip().splitlines()[-1]
  match = re.fullmatch(r"interrupted after (\d+) of 5000 images \(those are printed above\)",
                       last)
  assert match and "Traceback" not in err, err[-2000:]
  assert int(match.group(1)) == printed < 5000  # the loop stops between lines
  # A reader that stops reading (`| head -1`): a BrokenPipeError traceback, exit 1.
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.predict", f"--model={model}"] + [image] * 600,
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.stdout.readline().startswith(f"{image}: ")
  proc.stdout.close()
  err = proc.stderr.read()
  assert proc.wait(timeout=120) == 141 and not err.strip(), err[-2000:]
