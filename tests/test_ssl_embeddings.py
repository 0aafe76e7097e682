"""Embedding tools (sampling, t-SNE, neighbour agreement) and their figures: what is drawn."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from prostate_course import viz  # noqa: E402
from prostate_course.ssl import embeddings as E  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _clusters(n=120, d=32, seed=0, sep=6.0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    x = rng.normal(size=(n, d))
    x[:, 0] += sep * y
    return x, y


def test_sample_for_map_keeps_rare_positives():
    y = np.zeros(1000, int)
    y[:30] = 1
    idx = E.sample_for_map(y, n=200, seed=0)
    assert len(idx) == 200 and len(set(idx)) == 200 and (np.diff(idx) > 0).all()
    assert y[idx].sum() == 30                       # every positive, the rest negatives
    assert y[E.sample_for_map(y, n=40, seed=0)].sum() == 20     # at most half positives
    assert not np.array_equal(E.sample_for_map(y, 200, seed=1), idx)
    assert len(E.sample_for_map(y[:50], n=200)) == 50


def test_tsne_separates_separated_clusters_and_agreement_measures_it():
    x, y = _clusters()
    xy = E.tsne(x, seed=0)
    assert xy.shape == (len(x), 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, E.tsne(x, seed=0))          # seeded
    assert E.neighbour_agreement(xy, y, k=5) > 0.95                # the map keeps the clusters
    assert E.neighbour_agreement(x, y, k=5) > 0.9
    noise, _ = _clusters(sep=0.0)
    chance = E.chance_agreement(y)
    assert chance == pytest.approx((1 / 3) ** 2 + (2 / 3) ** 2, abs=0.01)
    assert abs(E.neighbour_agreement(noise, y, k=10) - chance) < 0.08   # no structure: chance
    with_nan = y.astype(float)
    with_nan[:10] = np.nan
    assert 0 <= E.neighbour_agreement(x, with_nan, k=5) <= 1
    with pytest.raises(ValueError, match="NaN"):
        E.tsne(np.full((10, 3), np.nan))


def _scatter_groups(ax):
    return {c.get_label(): c for c in ax.collections}


def test_plot_embedding_draws_every_point_once_in_its_class_colour():
    rng = np.random.default_rng(1)
    xy = rng.normal(size=(50, 2))
    y = np.array([0] * 30 + [1] * 15 + [np.nan] * 5)
    ax = viz.plot_embedding(xy, y, names={0: "no csPCa", 1: "csPCa"}, title="t")
    groups = _scatter_groups(ax)
    assert set(groups) == {"no csPCa (30)", "csPCa (15)", "missing (5)"}
    np.testing.assert_allclose(groups["csPCa (15)"].get_offsets(), xy[30:45])
    np.testing.assert_allclose(groups["missing (5)"].get_offsets(), xy[45:])
    assert sum(len(c.get_offsets()) for c in ax.collections) == 50
    colours = {k: tuple(np.round(c.get_facecolor()[0][:3], 3)) for k, c in groups.items()}
    assert len(set(colours.values())) == 3
    assert colours["missing (5)"] == tuple(np.round(to_rgba("0.75")[:3], 3))
    assert ax.collections[-1].get_label() == "missing (5)"          # the rarest drawn on top
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [c.get_label() for c in ax.collections]
    # ordered classes with a colour map: PI-RADS 1..5 in increasing colour order
    pirads = np.repeat([1, 2, 3, 4, 5], 10).astype(float)
    ax2 = plt.figure().gca()
    viz.plot_embedding(rng.normal(size=(50, 2)), pirads, ax=ax2, cmap="viridis")
    g2 = _scatter_groups(ax2)
    assert set(g2) == {f"{k} (10)" for k in range(1, 6)}
    ramp = [plt.get_cmap("viridis")(v) for v in np.linspace(0, 0.9, 5)]
    for k in range(1, 6):
        np.testing.assert_allclose(g2[f"{k} (10)"].get_facecolor()[0][:3], ramp[k - 1][:3], atol=1e-6)
    with pytest.raises(ValueError, match="N labels"):
        viz.plot_embedding(xy, y[:10])


def test_plot_alignment_uniformity_draws_each_trajectory():
    df = pd.DataFrame({"method": ["simclr"] * 3 + ["dcl"] * 3, "epoch": [3, 1, 2, 1, 2, 3],
                       "align": [0.3, 0.9, 0.5, 0.8, 0.6, 0.4],
                       "uniform": [-3.0, -1.0, -2.0, -1.5, -2.5, -3.5]})
    ax = viz.plot_alignment_uniformity(df, title="au")
    lines = ax.get_lines()
    assert len(lines) == 6                           # per method: path, first, last
    path = lines[0]
    np.testing.assert_allclose(path.get_xdata(), [0.9, 0.5, 0.3])   # in epoch order
    np.testing.assert_allclose(path.get_ydata(), [-1.0, -2.0, -3.0])
    last_simclr, last_dcl = lines[2], lines[5]
    assert (float(last_simclr.get_xdata()[0]), float(last_simclr.get_ydata()[0])) == (0.3, -3.0)
    assert (float(last_dcl.get_xdata()[0]), float(last_dcl.get_ydata()[0])) == (0.4, -3.5)
    assert lines[1].get_markerfacecolor() == "white"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["simclr", "dcl"]
    assert "alignment" in ax.get_xlabel() and "uniformity" in ax.get_ylabel()
    with pytest.raises(ValueError, match="'uniform'"):
        viz.plot_alignment_uniformity(df.drop(columns="uniform"))
