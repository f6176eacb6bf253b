r"""Classify image files with a saved model (no TensorFlow needed).

  python -m experiments.predict --model=runs/softmax/model.npz cat.jpg plane.png

Images of any size and common format are converted to RGB and resized to the
model's input. Prints the top classes per image, with probabilities (softmax)
or scores (SVM). An unreadable file gets one error line; the others are
still classified (exit code 1 if any failed).
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxlin import checkpoint

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program: --model here is a file, while in the
  training experiments it names the model kind, and tests import both."""
  flags.DEFINE_string("model", None, "path to a model.npz written by an experiment", required=True)
  flags.DEFINE_integer("top", 3, "how many classes to print per image")


def read_image(path: str, image_shape) -> np.ndarray:
  """RGB uint8 array of the model's (H, W, C), resized with bilinear filtering."""
  h, w = image_shape[:2]
  with Image.open(path) as img:
    img = img.convert("RGB")
    if img.size != (w, h):
      img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.uint8)


def classify(model: checkpoint.SavedModel, paths, top: int = 3):
  """[(path, [(class, value), ...] or None, error or None)] in input order."""
  out, images, ok = [], [], []
  for p in paths:
    try:
      images.append(read_image(p, model.image_shape))
      ok.append(len(out))
      out.append([p, None, None])
    except (OSError, UnidentifiedImageError, ValueError) as e:
      reason = "not an image file" if isinstance(e, UnidentifiedImageError) else str(e)
      out.append([p, None, f"cannot read {p}: {reason}"])
  if images:
    values = (model.probabilities(np.stack(images)) if model.loss == "softmax"
              else model.scores(np.stack(images)))
    for row, v in zip(ok, values):
      order = np.argsort(-v, kind="stable")[:top]
      out[row][1] = [(model.class_names[j], float(v[j])) for j in order]
  return [tuple(r) for r in out]


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("give one or more image files after the flags")
  if FLAGS.top < 1:
    sys.exit("error: --top must be >= 1")
  try:
    model = checkpoint.load(FLAGS.model)
  except ValueError as e:
    sys.exit(f"error: {e}")
  what = "probability" if model.loss == "softmax" else "score"
  failed = 0
  for path, top, error in classify(model, paths, FLAGS.top):
    if error:
      print(f"error: {error}", file=sys.stderr)
      failed += 1
      continue
    print(f"{path}: " + ", ".join(f"{c} {what} {v:.3f}" if what == "score" else f"{c} {v:.1%}"
                                  for c, v in top))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  define_flags()
  app.run(main)
