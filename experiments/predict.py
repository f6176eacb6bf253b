r"""Classify image files with a saved model.

  python -m experiments.predict --model=runs/softmax/model.npz cat.jpg plane.png

JPEG, PNG, GIF and BMP files are decoded exactly as the experiments decode an
image folder (``jaxlin.data.decode_image``: TensorFlow's decoder and its JPEG
DCT, alpha dropped), so a model gives the run's own predictions on the run's
files; but BMPs other than plain 24- and 32-bit RGB and 8-bit grey (palette,
1- to 16-bit, colour masks: TensorFlow's decoder reads palette indices as grey
levels, ignores colour masks, or refuses them) and other formats (TIFF, WebP,
...) are read with Pillow and converted to
8-bit RGB the same way: alpha dropped; 16-bit images divided by 257 (65535
becomes 255); 32-bit integer images kept as they are when every value fits 8
bits, else read as 16-bit (divided by 257), refused beyond 16 bits or below
0; float images in [0, 1] scaled by 255; palette, grayscale and CMYK images
converted. Images of another size are resized to the model's input. Anything
else (e.g. float images outside [0, 1]) is refused with one line.

Prints the top classes per image, with probabilities (softmax) or scores
(SVM), as they are classified (256 images at a time). A bad model file is one
error line (exit code 2); an unreadable image gets one error line and the
others are still classified (exit code 1 if any failed); Ctrl-C or SIGTERM
stops with one line saying how many were done (exit code 130); a reader that
closes the output (``| head``) stops it quietly (exit code 141, as a shell
reports a process ended by SIGPIPE).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import sys
import threading
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from experiments import config as cfg
from experiments.config import option
from jaxlin import checkpoint, data
from jaxlin.errors import DataError


@dataclasses.dataclass(frozen=True)
class Config(cfg.BaseConfig):
  model: str | None = option(None, "path to a model.npz written by an experiment")
  top: int = option(3, "how many classes to print per image")
  json: bool = option(False, "one JSON object per image and line, for scripts: {\"path\": ..., "
                      "\"classes\": [[name, probability or score], ...]} (paths and class "
                      "names may hold ': ' or ', ', which the plain lines do not escape)")


class ImageError(ValueError):
  """An image that cannot be turned into 8-bit RGB without guessing."""


def to_rgb8(img: Image.Image) -> np.ndarray:
  """(H, W, 3) uint8 pixels of a Pillow image of any mode, scaled rather than clipped."""
  mode = img.mode
  if mode.startswith("I;16") or mode in ("I", "F"):
    a = np.asarray(img).astype(np.float64)
    if mode == "F":
      if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1 or np.isnan(a).any()):
        raise ImageError(f"a float image with values outside [0, 1] ({mode}); "
                         "convert it to 8-bit first")
      a = a * 255
    elif a.size and a.min() < 0:  # a 32-bit image with negative values: no 8-bit reading
      raise ImageError(f"an image of mode {mode} with negative values; convert it to 8-bit "
                       "first")
    elif mode.startswith("I;16") or (a.size and a.max() > 255):
      if a.size and (a.min() < 0 or a.max() > 65535):
        raise ImageError(f"an image of mode {mode} with values outside 16 bits; convert it to "
                         "8-bit first")
      a = a / 257  # 65535 -> 255
    grey = np.clip(np.round(a), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode in ("P", "PA", "LA", "La", "RGBa"):
    img = img.convert("RGBA")  # then RGB: alpha dropped, as the folder decoder drops it
  try:
    return np.asarray(img.convert("RGB"), np.uint8)
  except (ValueError, OSError) as e:
    raise ImageError(f"cannot decode this {mode} image, truncated or corrupt? ({e})") from None


def check_channels(image_shape) -> None:
  """ImageError unless the model takes RGB (3) or grayscale (1) images, the ones this
  command reads (checked once per model, not per image)."""
  if image_shape[2] not in (1, 3):
    raise ImageError(f"the model takes images of {image_shape[2]} channels; this command "
                     "reads RGB (3) or grayscale (1) images")


def read_image(path: str, image_shape) -> np.ndarray:
  """RGB uint8 array of the model's (H, W, C), resized with bilinear filtering."""
  h, w, c = image_shape
  check_channels(image_shape)
  with open(path, "rb") as f:
    encoded = f.read()
  folder_format = encoded.startswith(data.FOLDER_FORMATS)
  try:
    with warnings.catch_warnings(record=True) as caught:  # Pillow's: named with the file
      warnings.simplefilter("always", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(encoded))  # the header: Pillow's decompression-bomb check
    for w_ in caught:
      warnings.warn(f"{path}: {w_.message}", w_.category, stacklevel=2)
  except UnidentifiedImageError:
    if not folder_format or encoded.startswith(b"BM"):
      raise
    img = None  # Pillow refuses what TensorFlow reads (e.g. a PNG's comment chunk with a
    # bad checksum): read as the image folder reads it
  with img if img is not None else contextlib.nullcontext():
    # As the experiments read an image folder; other BMPs by Pillow (module docstring).
    odd_bmp = encoded.startswith(b"BM") and not _plain_bmp(encoded, img.mode)
    if folder_format and not odd_bmp:
      try:
        rgb = data.decode_image(encoded)
      except DataError as e:
        raise ImageError(str(e)) from None
    else:
      rgb = to_rgb8(img)
  if rgb.shape[:2] != (h, w):
    rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), np.uint8)
  if c == 1:
    return np.asarray(Image.fromarray(rgb).convert("L"), np.uint8)[..., None]
  return rgb


def _plain_bmp(encoded: bytes, mode: str) -> bool:
  """A BMP that TensorFlow's decoder reads right: a Windows header (40 bytes or more),
  uncompressed (BI_RGB, so no colour masks), 24 or 32 bits per pixel, or 8 bits of grey
  (Pillow's mode "L": a palette that is the identity)."""
  if len(encoded) < 34:
    return False
  header = int.from_bytes(encoded[14:18], "little")
  bits = int.from_bytes(encoded[28:30], "little")
  compression = int.from_bytes(encoded[30:34], "little")
  return header >= 40 and compression == 0 and (bits in (24, 32) or (bits == 8 and mode == "L"))


def classify(model: checkpoint.SavedModel, paths, top: int = 3):
  """[(path, [(class, value), ...] or None, error or None)] in input order; ImageError
  for a model whose images this command does not read (``check_channels``)."""
  check_channels(model.image_shape)
  out, images, ok = [], [], []
  for p in paths:
    if _STOP.is_set():  # the command line's Ctrl-C: before more decoding (nothing counted yet)
      raise KeyboardInterrupt
    try:
      images.append(read_image(p, model.image_shape))
      ok.append(len(out))
      out.append([p, None, None])
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
      if isinstance(e, UnidentifiedImageError):
        reason = "not an image file"
      elif isinstance(e, OSError) and e.strerror:  # not "[Errno 2] ...: 'path'" again
        reason = e.strerror[:1].lower() + e.strerror[1:]
      else:
        reason = str(e)
      out.append([p, None, f"cannot read {p}: {reason}"])
  if images and not _STOP.is_set():
    with np.errstate(all="ignore"):  # overflow: reported per image below, as one line
      values = (model.probabilities(np.stack(images)) if model.loss == "softmax"
                else model.scores(np.stack(images)))
    for row, v in zip(ok, values):
      if not np.all(np.isfinite(v)):
        out[row][2] = (f"the model's scores for {out[row][0]} are not finite (its weights or "
                       "scale overflow float32); retrain or rescale the model")
        continue
      order = np.argsort(-v, kind="stable")[:top]
      out[row][1] = [(model.class_names[j], float(v[j])) for j in order]
  return [tuple(r) for r in out]


def main(argv):
  c = Config.make(cfg.from_flags(Config))
  paths = argv[1:]
  if not c.model:
    cfg.usage_error("--model is required: the model.npz an experiment wrote")
  if c.top < 1:
    cfg.usage_error(f"--top must be >= 1, got {c.top}")
  if not paths:
    cfg.usage_error("give one or more image files after the flags")
  try:
    model = checkpoint.load(c.model)
    check_channels(model.image_shape)
  except (checkpoint.ModelFileError, ImageError) as e:
    cfg.usage_error(f"{c.model}: {e}" if isinstance(e, ImageError) else str(e))
  what = "probability" if model.loss == "softmax" else "score"
  failed = done = 0
  for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, `kill`: one line, exit code 130
    signal.signal(sig, _interrupt)
  warnings.formatwarning = _one_line_warning
  try:
    for start in range(0, len(paths), CHUNK):  # printed as they are classified
      for path, top, error in classify(model, paths[start:start + CHUNK], c.top):
        if _STOP.is_set():
          raise KeyboardInterrupt
        if error:
          print(f"error: {error}", file=sys.stderr)
          failed += 1
        elif c.json:
          print(json.dumps({"path": path, "classes": [[n, v] for n, v in top]}), flush=True)
        else:
          print(f"{path}: " + ", ".join(f"{n} {what} {v:.3f}" if what == "score" else
                                        f"{n} {v:.1%}" for n, v in top), flush=True)
        done += 1
  except KeyboardInterrupt:
    print(f"interrupted after {done} of {len(paths)} images (those are printed above)",
          file=sys.stderr)
    sys.exit(130)
  except BrokenPipeError:  # the reader has gone (`| head`): nothing more to say to it
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
    sys.exit(141)
  sys.exit(1 if failed else 0)


CHUNK = 256  # images decoded and classified, then printed, at a time


_STOP = threading.Event()


def _interrupt(signum, frame):  # pylint: disable=unused-argument
  """Ctrl-C or SIGTERM: the loop stops before its next line. (A KeyboardInterrupt raised here
  could land in a callback of JAX's that drops it, or between a line and its count.) A
  second one stops at once."""
  if _STOP.is_set():
    raise KeyboardInterrupt
  _STOP.set()


def _one_line_warning(message, category, *_):
  """A library's warning (e.g. Pillow's on a very large image) as one line, without the
  source line that Python prints under it."""
  return f"warning: {category.__name__}: {(str(message).splitlines() or [''])[0]}\n"


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  cfg.quiet_backend_search()
  cfg.define_flags(Config)
  app.run(main, flags_parser=cfg.parse_flags)
