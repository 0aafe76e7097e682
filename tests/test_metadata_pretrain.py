"""Notebook 04's methods on the contrastive engine: the metadata reaching each loss, annotated-only
pretraining, checkpoints or stand-ins, exam embeddings and the reader-noise experiment."""
import json
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fakes import SlicesDataset, blob_slices, pirads_cohort  # noqa: E402
from prostate_course import compare, protocol, viz  # noqa: E402
from prostate_course.data.readers import SINGLE_REPORT_CONF, add_pirads_consensus  # noqa: E402
from prostate_course.ssl import metadata as md  # noqa: E402
from prostate_course.ssl import metadata_pretrain as mp  # noqa: E402
from prostate_course.ssl.metadata_losses import (ConditionalContrastive, YAwareInfoNCE)  # noqa: E402

def cohort(n_train=12, n_test=8, px=16):
    return pirads_cohort(n_train, n_test, px)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_every_method_has_a_loss_and_its_metadata_keys():
    for m in mp.METHODS:
        loss, keys = mp.make_metadata_loss(m)
        assert loss(torch.randn(4, 8), torch.randn(4, 8), **{k: torch.tensor([0.0, 1.0, np.nan, 1.0])
                                                              for k in keys}).isfinite()
    assert isinstance(mp.make_metadata_loss("yaware")[0], YAwareInfoNCE)
    assert not mp.make_metadata_loss("pirads_noconf")[0].use_confidence
    assert mp.make_metadata_loss("pirads_conf")[0].use_confidence
    with pytest.raises(ValueError, match="unknown notebook-04 method"):
        mp.make_metadata_loss("simclr")


def test_the_losses_see_the_training_exams_metadata_batch_by_batch(monkeypatch):
    tr, _, t = cohort()
    seen = []
    real = ConditionalContrastive.views_loss
    monkeypatch.setattr(ConditionalContrastive, "views_loss",
                        lambda self, z, **meta: seen.append({k: v.clone() for k, v in meta.items()}) or real(self, z, **meta))
    res = mp.pretrain_metadata("pirads_conf_nounlabelled", tr, t, steps=3, seed=0, device="cpu",
                               batch_size=4, progress=False)
    assert res.config["n_exams"] == int(t[t.split == "train"].pirads_majority.notna().sum())
    confs = set(np.round(t[(t.split == "train") & t.pirads_majority.notna()].pirads_conf.astype(float), 4))
    assert len(seen) == 3
    for m in seen:
        assert set(m) == {"pirads_majority", "pirads_conf"} and len(m["pirads_conf"]) == 4
        assert not torch.isnan(m["pirads_majority"]).any()          # annotated exams only
        assert set(np.round(m["pirads_conf"].double().numpy(), 4).tolist()) <= confs
    seen.clear()
    mp.pretrain_metadata("pirads_conf", tr, t, steps=6, seed=1, device="cpu", batch_size=12, progress=False)
    assert any(torch.isnan(m["pirads_majority"]).any() for m in seen)  # unannotated exams included
    with pytest.raises(ValueError, match="only training exams"):
        mp.pretrain_metadata("yaware", blob_slices(4, 2, px=16, prefix="b", seed=1), t, steps=1,
                             device="cpu", batch_size=4, progress=False)


def test_yaware_reads_standardised_values_with_missing_kept(monkeypatch):
    tr, _, t = cohort()
    seen = []
    real = YAwareInfoNCE.views_loss
    monkeypatch.setattr(YAwareInfoNCE, "views_loss",
                        lambda self, z, **meta: seen.append(meta) or real(self, z, **meta))
    mp.pretrain_metadata("yaware", tr, t, steps=2, device="cpu", batch_size=12, progress=False)
    m = seen[0]
    assert set(m) == {"patient_age_z", "psa_z", "psad_z"}
    assert torch.isnan(m["psa_z"]).sum() == 3                      # every 4th exam's PSA missing
    assert abs(float(m["patient_age_z"].mean())) < 1e-5            # all 12 training exams, z-scored


FakeDataset = SlicesDataset


def test_stand_in_then_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path / "runs"))
    from prostate_course.ssl.contrastive import save_encoder

    tr, te, t = cohort()
    ds = FakeDataset(tr, te, t, tmp_path)
    init, stand_in, note = mp.encoder_or_stand_in("unit", ds, "pirads_conf", steps=1, device="cpu", batch_size=4)
    assert stand_in and "stand-in" in stand_in and init.seed_independent
    enc = init(0)
    assert enc(torch.zeros(2, 3, 16, 16)).shape == (2, 512)
    save_encoder(enc, ds, "unit", mp.NOTEBOOK, "pirads_conf", seed=0)
    init2, stand_in2, note2 = mp.encoder_or_stand_in("unit", ds, "pirads_conf", seed=3, device="cpu")
    assert stand_in2 is None and "seed 0" in note2 and init2.seed_independent
    for a, b in zip(init2(3).state_dict().values(), enc.state_dict().values()):
        assert torch.equal(a, b)


def test_exam_embedding_is_the_mean_of_each_exams_slices():
    tr, _, _ = cohort()
    enc = protocol.random_init(0)
    e = mp.exam_embedding(enc, tr, device="cpu")
    from prostate_course.ssl.embeddings import embed
    f = embed(enc, tr.images, device="cpu")
    i = 5
    np.testing.assert_allclose(e[i], f[tr.case_index.numpy() == i].mean(0), rtol=1e-5, atol=1e-6)
    assert e.shape == (len(tr.case_ids), 512)


def _sim_cohort(tmp_path, n=40, px=16):
    from prostate_course.data.synthetic import SynthParams, simulate_clinical

    raw = tmp_path / "raw"
    raw.mkdir()
    params = SynthParams().to_dict()
    (raw / "synth_manifest.json").write_text(json.dumps({"seed": 2, "n_cases": n, "params": params}))
    sim = simulate_clinical(n, seed=2)
    ids = list(sim.patient_id.astype(str) + "_" + sim.study_id.astype(str))
    n_tr = int(0.7 * n)
    s = blob_slices(n, 3, px=px, prefix="x")             # images and labels: learnable blobs
    y = s.case_label.numpy()
    s = replace(s, case_ids=ids, patient_ids=list(sim.patient_id.astype(str)))
    t = pd.DataFrame({"case_id": ids, "patient_id": list(sim.patient_id.astype(str)), "case_csPCa": y,
                      "split": ["train"] * n_tr + ["test"] * (n - n_tr), "pirads_reports": sim.pirads_reports,
                      "patient_age": sim.patient_age, "psa": sim.psa, "psad": sim.psad})
    return raw, s.subset(ids[:n_tr]), s.subset(ids[n_tr:]), add_pirads_consensus(t), params["reader_noise"]


def test_reader_noise_experiment_runs_a_level_and_reuses_a_known_one(tmp_path, monkeypatch):
    raw, tr, te, t, base = _sim_cohort(tmp_path)
    proto = protocol.Protocol(table=t, dataset_key="k", fractions=[1.0], seeds=[0, 1], fit_kwargs={},
                              min_val_positives=50, n_boot=50, device="cpu")
    exp = mp.reader_noise_experiment(proto, tr, te, t, raw, [base, 3 * base], steps=1, device="cpu",
                                     batch_size=4, progress=False)
    assert sorted(exp.deltas.reader_noise) == [base, 3 * base]
    assert set(exp.deltas.method) == {"pirads_conf"} and set(exp.deltas.reference) == {"pirads_noconf"}
    assert (exp.deltas.n_seeds == 2).all()
    assert exp.tables[base].pirads_reports.tolist() == t.pirads_reports.tolist()
    assert exp.tables[3 * base].pirads_reports.tolist() != t.pirads_reports.tolist()
    # the same level from its known scores: no pretraining, the same deltas
    known = exp.scores[exp.scores.reader_noise == base].drop(columns="reader_noise")
    monkeypatch.setattr(mp, "pretrain_metadata", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    again = mp.reader_noise_experiment(proto, tr, te, t, raw, [base], steps=1, device="cpu",
                                       known_scores={base: known}, progress=False)
    cols = ["delta", "delta_lo", "delta_hi"]
    np.testing.assert_allclose(again.deltas[cols].to_numpy(), exp.deltas[exp.deltas.reader_noise == base][cols].to_numpy())
    direct = compare.paired_deltas(known, reference="pirads_noconf", n_boot=50)
    assert again.deltas.delta.iloc[0] == pytest.approx(direct.delta.iloc[0])
    with pytest.raises(ValueError, match="lack"):
        mp.reader_noise_experiment(proto, tr, te, t, raw, [base], steps=1, device="cpu",
                                   known_scores={base: known[known.method == "pirads_conf"]}, progress=False)


# ------------------------------------------------------------------------------ figures
def test_agreement_and_confidence_plots_draw_the_counts():
    t = pd.DataFrame({"case_id": list("abcde"), "pirads_reports": ["4;2", "5;5;4", "3", "", "4"]})
    m = md.agreement_table(t)
    ax = viz.plot_agreement_table(m)
    texts = {tx.get_text() for tx in ax.texts}
    assert {"2", "1", "0"} <= texts and len(ax.texts) == 25
    assert ax.images[0].get_array().sum() == 8
    st = md.report_status(t)
    ax2 = plt.figure().gca()
    viz.plot_confidence(st, ax=ax2)
    heights = sum(p.get_height() for p in ax2.patches)
    assert heights == 2                                      # 5;5;4 (agreement) + 4 (single); tie, 3 and none not drawn
    labels = [tx.get_text() for tx in ax2.get_legend().get_texts()]
    assert "single report (1)" in labels and "unannotated: tie or no usable report (3)" in labels
    assert SINGLE_REPORT_CONF < 1 / 7


def test_weight_matrix_and_noise_plots():
    W = np.array([[0.5, 0.5, 0], [0.2, 0.8, 0], [0, 0, 1.0]])
    ax = viz.plot_weight_matrix(W, groups=["a", "b", "c"], title="t")
    np.testing.assert_array_equal(ax.images[0].get_array(), W)
    assert [tx.get_text() for tx in ax.get_yticklabels()] == ["a", "b", "c"]
    d = pd.DataFrame({"reader_noise": [1.2, 0.4], "delta": [0.05, 0.01], "delta_lo": [0.0, -0.02],
                      "delta_hi": [0.1, 0.03], "method": "pirads_conf", "reference": "pirads_noconf"})
    s = pd.DataFrame({"reader_noise": [0.4, 1.2], "mean confidence (>= 2 usable)": [0.9, 0.6]})
    ax = viz.plot_noise_experiment(d, ax=plt.figure().gca(), summary=s)
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(x, [0.4, 1.2]) and np.testing.assert_allclose(y, [0.01, 0.05])
    caps = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln is not ax.lines[0]]
    assert caps                                              # error bar caps drawn
    x2, y2 = ax.figure.axes[-1].lines[0].get_data()
    np.testing.assert_allclose(y2, [0.9, 0.6])


def test_reuse_or_run_takes_scores_made_under_the_same_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("PROSTATE_COURSE_RUNS", str(tmp_path / "runs"))
    from prostate_course.results import Results

    tr, te, t = cohort()
    proto = protocol.Protocol(table=t, dataset_key="k", fractions=[0.5, 1.0], seeds=[0], fit_kwargs={},
                              device="cpu")
    refs = [("scratch", "01_transfer_learning", protocol.random_init, None),
            ("dcl", "03_contrastive", protocol.random_init, "no checkpoint: stand-in")]
    reused, arms, notes = mp.reuse_or_run(proto, "unit", te, refs, fractions=[0.5])
    assert reused == [] and [a.method for a in arms] == ["scratch", "dcl"]
    assert arms[1].stand_in == "no checkpoint: stand-in" and "no results of 01" in notes[0]
    res = Results("01_transfer_learning", "unit", seeds=[0])
    res.set_protocol(proto.settings(te))
    sc = pd.concat([protocol.score_rows(te.case_ids, te.patient_ids, te.case_label.numpy(), np.arange(8.0),
                                        task="classification", method="scratch", protocol=p,
                                        label_fraction=f, seed=0)
                    for p in ("finetune", "linear_probe") for f in (0.5, 1.0)])
    for p in ("finetune", "linear_probe"):
        for f in (0.5, 1.0):
            res.add_row(task="classification", method="scratch", protocol=p, label_fraction=f, seed=0)
    res.add_scores(sc)
    res.save()
    reused, arms, notes = mp.reuse_or_run(proto, "unit", te, refs, fractions=[0.5])
    assert [a.method for a in arms] == ["dcl"] and len(reused) == 1
    assert set(reused[0].protocol) == {"finetune"} and set(reused[0].label_fraction) == {0.5}
    other = protocol.Protocol(table=t, dataset_key="other", fractions=[0.5, 1.0], seeds=[0], fit_kwargs={})
    _, arms, notes = mp.reuse_or_run(other, "unit", te, refs[:1], fractions=[0.5])
    assert [a.method for a in arms] == ["scratch"] and "other protocol settings" in notes[0]
