"""viz: raw-case loading and resampling for display, figures, static fallback, cost table."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from prostate_course import viz  # noqa: E402
from prostate_course.data.readers import read_marksheet  # noqa: E402
from prostate_course.data.synthetic import generate_cohort, simulate_clinical  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("viz") / "raw", 6, seed=1, workers=2, progress=False)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_load_raw_case_picks_a_lesion_case_and_resamples_onto_t2w(raw):
    case = viz.load_raw_case(raw)
    ms = read_marksheet(raw / "labels/clinical_information/marksheet.csv").set_index("case_id")
    assert ms.loc[case.case_id, "case_csPCa"] == 1
    t2w = case.images["t2w"]
    shape = t2w.GetSize()[::-1]
    for seq in ("t2w", "adc", "hbv"):
        assert case.array(seq).shape == shape
    assert case.images["adc"].GetSize() != t2w.GetSize()  # resampling was really needed
    les = case.mask("lesions")
    assert les.shape == shape and set(np.unique(les)) - {0} <= {2, 3, 4, 5}
    z = case.default_slice()
    assert (les[z] > 0).sum() == (les > 0).sum(axis=(1, 2)).max()
    geo = viz.geometry_table(case)
    assert list(geo.index) == ["t2w", "adc", "hbv", "gland", "zones", "lesions"]
    assert geo.loc["adc", "spacing mm"] != geo.loc["t2w", "spacing mm"]
    assert set(geo["axcodes (nibabel)"]) == {"LPS"}


def test_resampled_adc_matches_sitk_resample(raw):
    case = viz.load_raw_case(raw)
    ref = sitk.Resample(case.images["adc"], case.images["t2w"], sitk.Transform(), sitk.sitkLinear, 0.0,
                        sitk.sitkFloat32)
    np.testing.assert_allclose(case.array("adc"), sitk.GetArrayFromImage(ref))


def test_show_case_and_static_viewer(raw):
    case = viz.load_raw_case(raw)
    fig = viz.show_case(case)
    assert len(fig.axes) == 3 and "slice" in fig.axes[0].get_title()
    fig = viz.show_case(case, native=True)
    assert "128" in fig.axes[1].get_title()
    fig = viz.slice_viewer(case, interactive=False, n_static=3)
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="outside"):
        viz.show_case(case, z=999)


def test_widgets_unavailable_outside_a_kernel_and_when_forced(monkeypatch):
    assert viz.widgets_available() is False  # pytest is not a Jupyter kernel
    monkeypatch.setenv(viz.STATIC_ENV, "1")
    assert viz.widgets_available() is False


def test_real_labels_without_images():
    labels = FIXTURES / "picai_labels"
    if not (labels / "csPCa_lesion_delineations").is_dir():
        pytest.skip("real label fixtures not copied yet")
    case = viz.load_raw_case(labels_root=labels)
    assert not case.images and case.mask("gland") is not None
    fig = viz.show_case(case)
    assert "masks only" in fig.axes[0].get_title()


def test_cohort_plots_on_synthetic_and_real_marksheets():
    syn = simulate_clinical(200, seed=0)
    ax = viz.plot_missing(syn)
    assert len(ax.patches) == 6
    axes = viz.plot_pirads_vs_isup(syn)
    assert axes[1].get_ylim() == (0, 100)
    axes, kap = viz.plot_reader_agreement(syn)
    assert 0.5 < kap.kappa_quadratic.mean() < 0.9
    # the heat map shows the quadratic-weighted kappa of each pair, as its title says
    assert "quadratic-weighted" in axes[0].get_title()
    shown = sorted(float(t.get_text()) for t in axes[0].texts)
    assert shown == sorted(round(v, 2) for v in kap.kappa_quadratic for _ in (0, 1))
    real = read_marksheet(FIXTURES / "marksheet_picai.csv")
    viz.plot_pirads_vs_isup(real)
    with pytest.raises(ValueError, match="one routine report"):
        viz.plot_reader_agreement(real)


def test_anatomy_figure_labels_the_structures(raw):
    from prostate_course.data.synthetic import case_phantom, load_truth

    case = viz.load_raw_case(raw)
    gt, seed, params = load_truth(raw)
    row = gt[(gt.patient_id.astype(str) + "_" + gt.study_id.astype(str)) == case.case_id].iloc[0].to_dict()
    ax = viz.plot_anatomy(case, case_phantom(row, seed, params)[0].landmarks())
    texts = {t.get_text() for t in ax.texts}
    assert {"peripheral zone (PZ)", "transition zone (TZ)", "rectum", "pubic bone", "fat",
            "obturator internus (left)", "obturator internus (right)"} <= texts
    assert any(t.startswith("lesion (csPCa, ISUP") for t in texts)
    # the rectum label sits posterior to (below, in radiological view) the pubic bone label
    pos = {t.get_text(): t.xy for t in ax.texts}
    assert pos["rectum"][1] > pos["pubic bone"][1]
    # patient's left is on the image's right
    assert pos["obturator internus (left)"][0] > pos["obturator internus (right)"][0]
    # real labels without images: the zones are still labelled, no landmarks
    labels = FIXTURES / "picai_labels"
    real = viz.load_raw_case(labels_root=labels, case_id="10005_1000005")
    texts = {t.get_text() for t in viz.plot_anatomy(real).texts}
    assert "peripheral zone (PZ)" in texts and "rectum" not in texts


def test_annotator_figures(raw):
    from prostate_course.data.synthetic import annotation_agreement, simulate_annotators, simulate_clinical

    df = simulate_clinical(12, seed=0)
    row = next(r for r in df.to_dict("records") if r["case_csPCa"] == "YES")
    ann = simulate_annotators(row, 0, n_annotators=3)
    axes = viz.plot_annotators(ann)
    assert len(axes) == 2 and "3 annotators" in axes[0].get_title()
    d = annotation_agreement(df, 0, n_annotators=3)
    ax = viz.plot_annotation_agreement(d, published={"gland whole": (0.92, "Montagne 2021")})
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "gland whole"
    bars = [b.get_height() for b in ax.patches]
    assert bars[0] == pytest.approx(d[(d.structure == "gland") & (d.region == "whole")].dice.mean())
    assert any(t.get_text() == "Montagne 2021" for t in ax.texts)


def test_wilson_interval():
    lo, hi = viz._wilson(0, 10)
    assert lo == pytest.approx(0, abs=1e-12) and 0.25 < hi < 0.35
    lo, hi = viz._wilson(50, 100)
    assert lo == pytest.approx(0.404, abs=0.002) and hi == pytest.approx(0.596, abs=0.002)


def test_annotation_costs():
    t = viz.annotation_costs(200, rate_per_hour=120)
    assert t.loc["voxel contour per lesion", "hours (high)"] == 100.0
    assert t.loc["case label (csPCa yes/no, PI-RADS)", "cost (high)"] == 800
    assert (t["hours (low)"] <= t["hours (high)"]).all()
    with pytest.raises(ValueError):
        viz.annotation_costs(-1)
