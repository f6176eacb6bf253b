"""The L1 bounds that benchmarks.bound_tightness measures never exceed the distance."""
# pylint: disable=too-many-function-args  # pylint misreads the jitted function's signature
import numpy as np
import pytest

from benchmarks import bound_tightness


@pytest.mark.parametrize("p", [2, 4])
def test_pooled_and_residual_l1_bounds_are_lower_bounds(p):
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.integers(0, 256, (30, 192)),  # noise: loose bounds
                      np.repeat(rng.integers(0, 256, (10, 1)), 192, axis=1),  # constant images
                      np.tile(rng.integers(0, 2, (1, 192)) * 255, (5, 1))]).astype(np.uint8)
  s, r = bound_tightness.block_features(x, p)
  assert s.shape == (45, 192 // (p * p)) and r.shape == s.shape
  pooled, residual = (np.asarray(b) for b in bound_tightness._bounds(
      s, r, s, r, n=p * p))
  exact = np.abs(x[:, None].astype(np.int64) - x[None].astype(np.int64)).sum(-1)
  assert np.all(pooled <= exact) and np.all(residual <= exact + 1e-3)
  assert np.all(residual >= pooled) and np.mean(residual > pooled) > 0.3  # and tighter
  # Literal case: one 2x2 block [0, 10, 0, 10] against [5, 5, 5, 5]: same sum, L1 = 20;
  # pooled says 0, the residual |20 - 0| - (1 - 2 / 4) * 0 = 20 (tight).
  a = np.array([[0, 10, 0, 10]], np.uint8).reshape(1, 2, 2, 1)
  b = np.full((1, 2, 2, 1), 5, np.uint8)
  pair = np.concatenate([a, b]).repeat(3, axis=3).reshape(2, -1)
  s, r = bound_tightness.block_features(pair, 2)
  pooled, residual = (np.asarray(v) for v in bound_tightness._bounds(s[:1], r[:1], s[1:], r[1:],
                                                                     n=4))
  assert pooled[0, 0] == 0 and residual[0, 0] == 60  # 3 channels x 20
