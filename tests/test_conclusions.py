"""Notebook 06's analysis: Holm, the primary endpoint, deltas across notebooks of a run."""
import numpy as np
import pandas as pd
import pytest

from prostate_course import conclusions as cc
from prostate_course.results import Results


def test_holm_on_a_worked_example_and_its_properties():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(cc.holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(cc.holm(p)[4])
    rng = np.random.default_rng(0)
    q = rng.random(30) ** 3
    adj = cc.holm(q)
    assert (adj >= q).all() and (adj <= 1).all()
    assert (np.diff(adj[np.argsort(q)]) >= -1e-15).all()          # order kept
    assert cc.holm([0.02])[0] == 0.02                               # one test: unchanged


def write_notebook(d, stem, arms, labels, patients, hash_, profile="t", task="classification"):
    """A results file + scores file for ``arms`` {(method, protocol, fraction, seed): scores}."""
    res = Results(stem, profile, seeds=[0])
    res.set_protocol({"hash": hash_, "dataset_key": "synthetic-x"})
    ids = [f"c{i:02d}" for i in range(len(labels))]
    for (method, protocol, frac, seed), s in arms.items():
        res.add_row(task=task, method=method, protocol=protocol, label_fraction=frac, seed=seed, auroc=0.5)
        res.add_scores(pd.DataFrame({"case_id": ids, "patient_id": patients, "label": labels, "task": task,
                                     "method": method, "protocol": protocol, "label_fraction": frac,
                                     "seed": seed, "score": s}))
    return res.save(d)


def test_all_deltas_borrow_the_reference_from_a_notebook_with_the_same_protocol(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    y = (rng.random(n) < 0.4).astype(int)
    pats = [f"p{i}" for i in range(n)]
    base = y + rng.standard_normal(n)
    write_notebook(tmp_path, "01_transfer_learning",
                   {("scratch", "finetune", f, 0): base + 0.1 * rng.standard_normal(n) for f in (0.05, 1.0)},
                   y, pats, "H")
    write_notebook(tmp_path, "04_metadata_contrastive",
                   {("pirads_conf", "finetune", 0.05, 0): base + 3 * y,
                    ("pirads_conf", "finetune", 1.0, 0): base}, y, pats, "H")
    write_notebook(tmp_path, "03_contrastive", {("dcl", "finetune", 0.05, 0): base}, y, pats, "OTHER")
    run = cc.load_run(tmp_path)
    assert "02_generative" in run.missing and "05_detection" in run.missing
    d = cc.all_deltas(run, n_boot=200)
    assert set(d.notebook) == {"04_metadata_contrastive"}           # 03 has no scratch on its protocol
    assert set(d.reference_from) == {"01_transfer_learning"}
    t = cc.endpoint_table(d, [0.05, 1.0])
    prim = t[t.role == "primary"]
    assert len(prim) == 1 and prim.label_fraction.iloc[0] == 0.05 and prim.verdict.iloc[0] == "better"
    assert "better than scratch" in cc.primary_sentence(t, [0.05, 1.0])
    lines = cc.conclusions(t, run, [0.05, 1.0])
    assert "Secondary comparisons: 1" in lines[1]
    assert any("Not in this run" in s for s in lines)
    fig = cc.plot_course_deltas(t)
    ax = fig.axes[0]
    assert ax.get_title() == "classification: auroc"
    assert any(a.get_text() == "primary" for a in ax.texts)
    (xs, ys), = [line.get_xydata().T for line in ax.lines if len(line.get_xydata()) == 1 and
                 line.get_markerfacecolor() not in ("white", "w")][:1]
    assert ys[0] == pytest.approx(prim.delta.iloc[0])          # the resolved delta, drawn solid


def test_the_primary_endpoint_says_when_it_is_missing(tmp_path):
    run = cc.load_run(tmp_path)                      # an empty results folder
    d = cc.all_deltas(run)
    t = cc.endpoint_table(d, [0.05, 1.0])
    assert d.empty and "NOT AVAILABLE" in cc.primary_sentence(t, [0.05, 1.0])
    assert set(run.missing) == set(cc.NOTEBOOKS)
    with pytest.raises(ValueError, match="no paired deltas"):
        cc.plot_course_deltas(t)


def test_a_reference_is_borrowed_for_each_read_out_the_notebook_lacks(tmp_path):
    rng = np.random.default_rng(1)
    n = 80
    y = (rng.random(n) < 0.4).astype(int)
    pats = [f"p{i}" for i in range(n)]
    base = y + rng.standard_normal(n)
    dcl = base + 0.2 * rng.standard_normal(n)
    write_notebook(tmp_path, "01_transfer_learning", {("scratch", "finetune", 0.05, 0): base}, y, pats, "H")
    write_notebook(tmp_path, "03_contrastive", {("scratch", "linear_probe", 0.05, 0): base,
                                                ("dcl", "linear_probe", 0.05, 0): dcl}, y, pats, "H")
    write_notebook(tmp_path, "04_metadata_contrastive",          # 04 probes scratch itself ...
                   {("scratch", "linear_probe", 0.05, 0): base,
                    ("dcl", "linear_probe", 0.05, 0): dcl,     # 03's encoder read again: one comparison
                    ("pirads_conf", "linear_probe", 0.05, 0): base + 0.1 * rng.standard_normal(n),
                    ("pirads_conf", "finetune", 0.05, 0): base + 3 * y}, y, pats, "H")
    d = cc.all_deltas(cc.load_run(tmp_path), n_boot=200)      # ... and reuses 01's fine-tuned scratch
    assert sorted(zip(d.notebook, d.method, d.protocol)) == [
        ("03_contrastive", "dcl", "linear_probe"), ("04_metadata_contrastive", "pirads_conf", "finetune"),
        ("04_metadata_contrastive", "pirads_conf", "linear_probe")]
    assert set(d[d.notebook == "04_metadata_contrastive"].reference_from) == {
        "04_metadata_contrastive, 01_transfer_learning"}
    t = cc.endpoint_table(d, [0.05])
    assert t[t.role == "primary"].verdict.tolist() == ["better"]
