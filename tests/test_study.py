import json

import pytest

from experiments import linear as linear_exp
from experiments import study
from jaxlin.errors import ConfigError, DataError
from tests.conftest import make_image_folder

TINY = dict(num_val=6, mlp_hidden_size=8, mlp_epochs=2)


def test_study_end_to_end_with_a_failing_stage(tmp_path, monkeypatch):
  root = str(tmp_path / "images")
  make_image_folder(root, size=16)
  real_run = linear_exp.run

  def run_or_fail(cfg, workdir):
    if cfg.get("loss") == "svm" and cfg.get("features", "pixels") == "pixels":
      raise RuntimeError("simulated | failure")
    return real_run(dict(cfg, batch_size=8), workdir)

  monkeypatch.setattr(linear_exp, "run", run_or_fail)
  res = study.run(dict(dataset=f"folder:{root}", knn_num_train=40, **TINY), str(tmp_path / "wd"))
  wd = tmp_path / "wd"
  report = (wd / "report.md").read_text()
  assert json.loads((wd / "results.json").read_text())["stages"].keys() == set(study.STAGES)
  assert res["stages"]["svm"]["error"] == "RuntimeError: simulated / failure"
  assert "| svm | **failed**: RuntimeError: simulated / failure |" in report
  for stage in ("knn", "softmax", "svm_features", "mlp", "mlp_features"):
    row = res["stages"][stage]
    assert 0.0 <= row["test_accuracy"] <= 1.0, stage
    assert f"**{100 * row['test_accuracy']:.1f} %**" in report
  assert "![kNN: accuracy vs k by cross-validation](knn/plots/cross_validation.png)" in report
  assert (wd / "knn" / "plots" / "cross_validation.png").exists()
  assert res["stages"]["knn"]["chosen"].startswith(("l1, k=", "l2, k="))
  assert "svm/plots/weights.png" not in report  # the failed stage shows no figures


def test_study_rejects_bad_values_and_missing_data_at_once(tmp_path):
  with pytest.raises(ConfigError, match="unknown --stages"):
    study.run(dict(stages=["knn", "cnn"]), str(tmp_path))
  with pytest.raises(DataError, match="does not exist"):
    study.run(dict(dataset=f"folder:{tmp_path}/none"), str(tmp_path / "wd"))
  assert not (tmp_path / "wd" / "report.md").exists()
