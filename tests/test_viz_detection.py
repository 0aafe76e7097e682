"""Detection figures and the reader study from known inputs."""
import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from prostate_course.detection import evaluate as dev  # noqa: E402
from prostate_course.detection import readers  # noqa: E402
from prostate_course.viz import detection as vd  # noqa: E402
from prostate_course.viz import reader_study as rs  # noqa: E402

SHAPE = (5, 24, 24)


def crafted():
    """Case a: lesion found (z 1-2) and a false positive (z 4); case b: lesion missed (z 3)."""
    ra, rb = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    ra[1:3, 4:10, 4:10] = 3
    rb[3, 12:20, 12:20] = 2
    pa, pb = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)
    pa[1:3, 4:10, 4:10] = 0.9
    pa[4, 18:23, 1:6] = 0.6
    pb[0, 0:4, 0:4] = 0.3
    ev = dev.evaluate_detection([pa, pb], [ra, rb], ["a", "b"], candidates={"min_voxels": 3})
    return ev, [ra, rb]


class Slices:
    def __init__(self):
        self.images = torch.zeros(10, 3, 24, 24)
        self.case_index = torch.tensor([0] * 5 + [1] * 5)
        self.slice_z = torch.tensor(list(range(5)) * 2)
        self.case_ids = ["a", "b"]


def test_pick_examples_finds_the_hit_the_miss_and_the_false_positive():
    ev, ref = crafted()
    ex = vd.pick_examples(ev, ref).set_index("kind")
    assert ex.loc["hit", ["case_id", "isup"]].tolist() == ["a", 3] and ex.loc["hit", "z"] in (1, 2)
    assert ex.loc["miss", ["case_id", "z", "isup"]].tolist() == ["b", 3, 2]
    assert ex.loc["false positive", ["case_id", "z"]].tolist() == ["a", 4]
    assert ex.loc["false positive", "confidence"] == pytest.approx(0.6)


def _colours(ax):
    from matplotlib.colors import to_hex

    out = []
    for c in ax.collections:
        ec = c.get_edgecolor()
        if len(ec):
            out.append(to_hex(ec[0]))
    return out


def test_overlays_draw_reference_and_prediction_where_they_are():
    ev, ref = crafted()
    ex = vd.pick_examples(ev, ref)
    fig = vd.plot_overlays(ex, Slices(), ref, ev.maps)
    axes = np.array(fig.axes[:9]).reshape(3, 3)
    kinds = list(ex.kind)
    for row, kind in zip(axes, kinds):
        cols = _colours(row[1])
        want_ref = kind in ("hit", "miss")
        want_pred = kind in ("hit", "false positive")
        assert (vd.REFERENCE_COLOUR in cols) == want_ref, kind
        assert (vd.PREDICTION_COLOUR in cols) == want_pred, kind
        assert kind.split()[0] in row[0].get_ylabel()
    with pytest.raises(ValueError, match="no example"):
        vd.plot_overlays(ex.iloc[0:0], Slices(), ref, ev.maps)


def test_roc_with_readers_puts_each_operating_point_at_1_minus_spec_sens():
    import matplotlib.pyplot as plt

    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    pts = pd.DataFrame([{"reader": "pooled", "threshold": "PI-RADS >= 3", "sensitivity": 0.8, "specificity": 0.6},
                        {"reader": "report 1 (routine)", "threshold": "PI-RADS >= 3", "sensitivity": 1.0, "specificity": 0.5}])
    me = pd.DataFrame([{"threshold": "PI-RADS >= 4", "sensitivity": 0.5, "specificity": 0.9}])
    fig, ax = plt.subplots()
    vd.plot_roc_readers(y, s, pts, ax, student=me)
    offsets = [tuple(np.round(c.get_offsets()[0], 6)) for c in ax.collections if len(c.get_offsets())]
    assert (0.4, 0.8) in offsets and (0.5, 1.0) in offsets and (0.1, 0.5) in offsets
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [0, 0, 1 / 3, 1 / 3, 1])      # sklearn's ROC of s
    assert "AUROC 0.83" in line.get_label()


def test_froc_curve_is_picai_evals():
    import matplotlib.pyplot as plt

    ev, _ = crafted()
    fig, ax = plt.subplots()
    vd.plot_froc({"ai": ev}, ax)
    f = ev.froc()
    f = f[f.fp_per_case > 0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), f.fp_per_case)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), f.sensitivity)


# ---------------------------------------------------------------------------- reader study
def study_table(n=12):
    rng = np.random.default_rng(0)
    y = np.array([1, 0] * (n // 2))
    reports = [";".join(str(v) for v in rng.integers(1, 6, rng.integers(1, 4))) for _ in range(n)]
    reports[5] = ""                                    # a case without reports is never picked
    ids = [f"c{i}" for i in range(n)]
    return pd.DataFrame({"case_id": ids, "case_csPCa": y, "pirads_reports": reports}), ids, y


def study_slices(ids):
    sl = Slices()
    sl.images = torch.randn(len(ids) * 3, 3, 24, 24).half()
    sl.case_index = torch.arange(len(ids)).repeat_interleave(3)
    sl.slice_z = torch.tensor([4, 5, 6] * len(ids))
    sl.case_ids = ids
    return sl


def test_pick_study_cases_is_stratified_seeded_and_skips_unreported_cases():
    t, ids, y = study_table(40)
    picked = rs.pick_study_cases(t, ids, y, n=10, seed=3, min_each=3)
    assert len(picked) == 10 and "c5" not in picked and len(set(picked)) == 10
    n_pos = sum(y[ids.index(c)] for c in picked)
    assert 3 <= n_pos <= 7
    assert picked == rs.pick_study_cases(t, ids, y, n=10, seed=3, min_each=3)


def test_the_static_study_uses_the_recorded_reader_and_scores_it_by_hand(tmp_path):
    t, ids, y = study_table(12)
    picked = [c for c in ids if c != "c5"]
    ai = np.linspace(0, 1, len(picked))
    lab = pd.Series(y, index=ids).loc[picked]
    study = rs.ReaderStudy(study_slices(ids), t, picked, lab, ai, save_path=tmp_path / "answers.csv")
    assert study.run(interactive=False) is study and study.complete
    first = {c: int(t.set_index("case_id").at[c, "pirads_reports"].split(";")[0]) for c in picked}
    assert study.scores == first and study.source.startswith("recorded")
    res = study.results().set_index(["reader", "threshold"])
    s = pd.Series(first)
    for k in (3, 4):
        want_sens = ((s >= k) & (lab == 1)).sum() / (lab == 1).sum()
        want_spec = ((s < k) & (lab == 0)).sum() / (lab == 0).sum()
        row = res.loc[(rs.RECORDED, f"PI-RADS >= {k}")]
        assert row.sensitivity == pytest.approx(want_sens) and row.specificity == pytest.approx(want_spec)
    fig = study.draw_case(picked[0])
    assert len(fig.axes) == 3
    fig = study.figure()
    assert any("recorded reader" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_partial_answers_are_saved_loaded_and_completed_by_the_recorded_reader(tmp_path):
    t, ids, y = study_table(12)
    picked = [c for c in ids if c != "c5"]
    lab = pd.Series(y, index=ids).loc[picked]
    study = rs.ReaderStudy(study_slices(ids), t, picked, lab, np.zeros(len(picked)), save_path=tmp_path / "a.csv")
    study.scores = {picked[0]: 5, picked[1]: 1}
    study.source = "you"
    study.save()
    again = rs.ReaderStudy(study_slices(ids), t, picked, lab, np.zeros(len(picked)), save_path=tmp_path / "a.csv")
    assert not again.load() and again.scores == {picked[0]: 5, picked[1]: 1}
    scores, who = again.final_scores()
    assert scores[picked[0]] == 5 and "you (2 of 11 cases)" in who
    assert scores[picked[2]] == int(t.set_index("case_id").at[picked[2], "pirads_reports"].split(";")[0])
    with pytest.raises(KeyError, match="not in the slice set"):
        rs.ReaderStudy(study_slices(ids[:3]), t, picked, lab, np.zeros(len(picked)))


def test_the_viewer_records_a_score_saves_it_and_moves_on(tmp_path):
    pytest.importorskip("ipywidgets")
    t, ids, y = study_table(12)
    picked = [c for c in ids if c != "c5"][:4]
    lab = pd.Series(y, index=ids).loc[picked]
    study = rs.ReaderStudy(study_slices(ids), t, picked, lab, np.linspace(0, 1, 4), save_path=tmp_path / "a.csv")
    ui = study.run(interactive=True)
    head, _, slider, choice, *_ = ui.children
    done = ui.children[6]
    assert "Case 1 of 4" in head.value and slider.max == 2
    choice.value = 4                                     # the student's PI-RADS for case 1
    assert study.scores == {picked[0]: 4} and "Case 2 of 4" in head.value
    assert pd.read_csv(tmp_path / "a.csv", dtype={"case_id": str}).pirads.tolist() == [4]
    assert choice.value is None                          # the next case starts unscored
    done.click()                                         # finishing early: the recorded reader fills in
    scores, who = study.final_scores()
    assert scores[picked[0]] == 4 and who.startswith("you (1 of 4 cases)")
