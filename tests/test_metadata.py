"""Exam metadata for notebook 04: report statuses, agreement, standardisation on the training
exams, pretraining sets that refuse test exams, and reports resampled at a higher reader noise."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from prostate_course.data.readers import SINGLE_REPORT_CONF
from prostate_course.ssl import metadata as md
from tests.fakes import blob_slices, table_of


def reports_table(reports, labels=None):
    n = len(reports)
    return pd.DataFrame({"case_id": [f"c{i:03d}" for i in range(n)], "pirads_reports": reports,
                         "case_csPCa": labels if labels is not None else [0] * n})


def test_report_status_known_answers():
    t = reports_table(["4;4;2", "5", "4;2", "3;3", "", "1;2;2;5;4", "3;4;2;2"])
    st = md.report_status(t)
    assert list(st["status"]) == ["agreement", "single report", "tie", "no usable report",
                                  "no usable report", "agreement", "agreement"]
    assert st["pirads_majority"].tolist()[:2] == [1.0, 1.0]
    assert math.isnan(st["pirads_majority"][2]) and math.isnan(st["pirads_majority"][4])
    np.testing.assert_allclose(st["pirads_conf"], [1 / 3, SINGLE_REPORT_CONF, 0, 0, 0, 0.2, 1 / 3])
    assert st["n_usable"].tolist() == [3, 1, 2, 0, 0, 5, 3]
    assert st["n_reports"].tolist() == [3, 1, 2, 2, 0, 5, 4]


def test_pirads_labels_reads_the_tables_own_consensus():
    t = reports_table(["4;4;2"]).assign(pirads_majority=pd.array([0], dtype="Int64"), pirads_conf=[0.7])
    lab = md.pirads_labels(t)          # the table's columns win over a recomputation
    assert lab["pirads_majority"].tolist() == [0.0] and lab["pirads_conf"].tolist() == [0.7]


def test_single_report_epsilon_is_below_every_vote():
    lv = md.confidence_levels(7)
    votes = lv[lv["usable reports"] >= 2]
    assert votes["confidence"].min() == pytest.approx(1 / 7)
    assert SINGLE_REPORT_CONF < votes.loc[votes.confidence > 0, "confidence"].min()
    assert set(np.round(lv.loc[lv["usable reports"] == 3, "confidence"], 6)) == {round(1 / 3, 6), 1.0}


def test_agreement_table_counts_pairs_both_ways():
    m = md.agreement_table(reports_table(["4;2", "5;5;4", "3", ""]))
    assert m.to_numpy().sum() == 2 + 6
    assert m.loc[4, 2] == 1 and m.loc[2, 4] == 1 and m.loc[5, 5] == 2 and m.loc[5, 4] == 2
    assert (m.to_numpy() == m.to_numpy().T).all()


def test_agreement_kappas_limits():
    perfect = md.agreement_kappas(reports_table(["1;1", "2;2;2", "4;4", "5;5"]))
    assert perfect["kappa"] == pytest.approx(1) and perfect["kappa_quadratic"] == pytest.approx(1)
    opposite = md.agreement_kappas(reports_table(["1;5", "5;1"]))
    assert opposite["kappa"] == pytest.approx(-1) and opposite["kappa_quadratic"] == pytest.approx(-1)
    assert md.agreement_kappas(reports_table(["4", ""]))["pairs"] == 0


def test_label_noise_by_confidence_known_answer():
    t = reports_table(["4;4;4", "4;4;4", "4;4;2", "2;2;4", "4;2", "5"], labels=[1, 0, 1, 1, 1, 1])
    out = md.label_noise_by_confidence(t, bins=(0, 0.2, 0.5, 1.0))
    assert out["exams"].tolist() == [1, 2, 2]          # eps; 1/3 twice; 1 twice (tie left out)
    assert out["majority = csPCa"].tolist() == [1.0, 0.5, 0.5]


def test_standardiser_uses_training_values_only_and_keeps_missing():
    train = pd.DataFrame({"patient_age": [60.0, 70.0, 80.0], "psa": [2.0, 8.0, np.nan],
                          "psad": [0.1, np.nan, 0.4]})
    s = md.Standardiser.fit(train)
    assert s.mean["patient_age"] == pytest.approx(70) and s.sd["patient_age"] == pytest.approx(10)
    assert s.mean["psa"] == pytest.approx(np.log(4.0))             # log scale: geometric mean
    test = pd.DataFrame({"patient_age": [90.0], "psa": [np.nan], "psad": [0.2]})
    z = s.transform(test)
    assert list(z.columns) == ["patient_age_z", "psa_z", "psad_z"]
    assert z["patient_age_z"].iloc[0] == pytest.approx(2.0) and math.isnan(z["psa_z"].iloc[0])
    assert z["psad_z"].iloc[0] == pytest.approx(0.0)               # geometric mean of 0.1, 0.4
    with pytest.raises(ValueError, match="psa must be > 0"):
        s.transform(test.assign(psa=[0.0]))
    with pytest.raises(KeyError, match="psad"):
        md.Standardiser.fit(train.drop(columns="psad"))


def _train_test():
    tr, te = blob_slices(8, 2, px=8, prefix="a"), blob_slices(4, 2, px=8, prefix="b", seed=1)
    t = table_of((tr, "train"), (te, "test"))
    t["pirads_reports"] = ["4;4;4", "2;4", "", "2", "4;2;2", "3", "5;5", "1;1;2"] + ["4"] * 4
    t["patient_age"] = np.arange(len(t)) + 55.0
    t["psa"] = np.where(np.arange(len(t)) % 3 == 0, np.nan, 6.0 + np.arange(len(t)))
    t["psad"] = 0.1 + 0.01 * np.arange(len(t))
    return tr, te, t


def test_pretraining_set_refuses_test_exams_and_drops_unannotated_on_request():
    tr, te, t = _train_test()
    s = md.Standardiser.fit(t[t.split == "train"])
    ps = md.pretraining_set(tr, t, s)
    assert not ps.labelled and ps.case_label is None
    assert list(ps.meta.columns) == ["patient_age_z", "psa_z", "psad_z", "pirads_majority", "pirads_conf"]
    assert ps.meta["pirads_majority"].isna().tolist() == [False, True, True, False, False, True, False, False]
    assert ps.meta["psa_z"].isna().tolist()[:4] == [True, False, False, True]
    only = md.pretraining_set(tr, t, s, annotated_only=True)
    assert only.case_ids == ["a000", "a003", "a004", "a006", "a007"]
    assert only.meta["pirads_conf"].tolist() == pytest.approx([1.0, SINGLE_REPORT_CONF, 1 / 3, 1.0, 1.0])
    with pytest.raises(ValueError, match="only training exams"):
        md.pretraining_set(te, t, s)


# ------------------------------------------------------------------------ reader noise
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from prostate_course.data.synthetic import SynthParams, simulate_clinical

    raw = tmp_path_factory.mktemp("raw")
    params = SynthParams().to_dict()
    (raw / "synth_manifest.json").write_text(json.dumps({"seed": 5, "n_cases": 400, "params": params}))
    sim = simulate_clinical(400, seed=5)
    t = pd.DataFrame({"case_id": sim.patient_id.astype(str) + "_" + sim.study_id.astype(str),
                      "patient_id": sim.patient_id.astype(str), "pirads_reports": sim.pirads_reports,
                      "case_csPCa": (sim.case_csPCa == "YES").astype(int), "split": "train"})
    from prostate_course.data.readers import add_pirads_consensus
    return raw, add_pirads_consensus(t), params["reader_noise"]


def test_resampling_at_the_cohorts_noise_changes_nothing(cohort):
    raw, t, noise = cohort
    same = md.resample_reports(t, raw, noise)
    assert same["pirads_reports"].tolist() == t["pirads_reports"].tolist()
    assert same["pirads_conf"].tolist() == t["pirads_conf"].tolist()


def test_more_reader_noise_means_less_agreement_and_same_outcomes(cohort):
    raw, t, noise = cohort
    tables = {f: md.resample_reports(t, raw, f * noise) for f in (0.0, 1.0, 4.0)}
    summ = md.reader_noise_summary(tables).set_index("reader_noise")
    k = summ["kappa_quadratic"]
    assert k[0.0] > k[1.0] > k[4.0]
    assert summ["majority = csPCa"][0.0] > summ["majority = csPCa"][4.0]
    for tt in tables.values():
        assert tt["case_csPCa"].tolist() == t["case_csPCa"].tolist()
        assert tt["case_id"].tolist() == t["case_id"].tolist()
        # how many reports each exam has does not depend on the noise
        assert tt["n_reports"].tolist() == t["pirads_reports"].map(md.parse_reports).map(len).tolist()


def test_resampling_refuses_another_cohort_and_real_data(cohort, tmp_path):
    raw, t, noise = cohort
    bad = t.copy()
    bad.loc[0, "pirads_reports"] = "5;5;5;5;5" if bad.loc[0, "pirads_reports"] != "5;5;5;5;5" else "1"
    with pytest.raises(ValueError, match="no longer reproduces"):
        md.resample_reports(bad, raw, 2 * noise)
    with pytest.raises(FileNotFoundError, match="one routine report"):
        md.resample_reports(t, tmp_path, 2 * noise)
    with pytest.raises(ValueError, match="reader_noise"):
        md.resample_reports(t, raw, -1.0)
