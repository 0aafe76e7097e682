"""Exam metadata for metadata-aware pretraining (notebook 04): PI-RADS reports -> labels with a
confidence, continuous clinical values standardised on the training exams, reports resampled at a
higher reader noise.

PI-RADS (Ruppli et al. 2023). Each report is binarised (PI-RADS <= 2 -> 0, >= 4 -> 1, PI-RADS 3
dropped); an exam's label is the majority y^ and its confidence c = 2 (p_maj - 1/2), a single
usable report gives a small epsilon, a tie or no usable report leaves the exam unannotated. The
data code computes these once (:func:`prostate_course.data.readers.pirads_consensus`, the
prepared table's ``pirads_majority`` / ``pirads_conf``); this module reads them and describes
them (:func:`report_status`, :func:`agreement_table`).

Continuous metadata (Dufumier et al. 2021): age, PSA and PSA density, PSA and PSA density on a
log scale (both are right-skewed, roughly log-normal), each standardised with the mean and
standard deviation of the *training* exams (:class:`Standardiser`), missing values kept as NaN
(the loss drops that factor for the pair).

Only training exams' metadata enter pretraining: :func:`pretraining_set` refuses any other exam.
Metadata belong to the exam; every slice of an exam carries them (``SliceSet.slice_meta``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.readers import SINGLE_REPORT_CONF, add_pirads_consensus, parse_reports

#: continuous metadata used by y-Aware, and those standardised on a log scale
CONTINUOUS = ("patient_age", "psa", "psad")
LOG_SCALE = ("psa", "psad")
#: the order of the report statuses in tables and figures
STATUSES = ("agreement", "single report", "tie", "no usable report")


# ------------------------------------------------------------------------------ PI-RADS
def binarise(reports) -> list[int]:
    """The usable binarised reports of one exam: PI-RADS <= 2 -> 0, >= 4 -> 1, 3 dropped."""
    return [0 if v <= 2 else 1 for v in parse_reports(reports) if v != 3]


def pirads_labels(table: pd.DataFrame) -> pd.DataFrame:
    """``pirads_majority`` (float: 0, 1 or NaN = unannotated) and ``pirads_conf`` per exam, from
    the table's own columns (the data code's consensus) or, without them, computed by it."""
    t = table if {"pirads_majority", "pirads_conf"} <= set(table.columns) else add_pirads_consensus(table)
    return pd.DataFrame({"pirads_majority": pd.to_numeric(t["pirads_majority"], errors="coerce")
                         .astype(float).to_numpy(),
                         "pirads_conf": t["pirads_conf"].astype(float).to_numpy()}, index=table.index)


def report_status(table: pd.DataFrame) -> pd.DataFrame:
    """Per exam: n_reports, n_usable (reports other than PI-RADS 3), pirads_majority,
    pirads_conf and status: "agreement" (several usable reports, one majority), "single
    report" (confidence epsilon), "tie" or "no usable report" (both unannotated)."""
    lab = pirads_labels(table)
    reps = table["pirads_reports"].fillna("")
    n_rep = reps.map(lambda r: len(parse_reports(r)))
    n_use = reps.map(lambda r: len(binarise(r)))
    status = np.select([n_use == 0, lab["pirads_majority"].isna(), n_use == 1],
                       ["no usable report", "tie", "single report"], "agreement")
    return pd.DataFrame({"n_reports": n_rep, "n_usable": n_use, **lab, "status": status},
                        index=table.index)


def confidence_levels(max_reports: int = 7) -> pd.DataFrame:
    """Every confidence c = 2 (p_maj - 1/2) that k usable reports can give (k = 2..max_reports),
    beside the single-report epsilon: why epsilon < 1/7 is "less sure than any vote"."""
    rows = [{"usable reports": 1, "majority votes": 1, "confidence": SINGLE_REPORT_CONF}]
    for k in range(2, max_reports + 1):
        for m in range(k // 2 + 1, k + 1):
            rows.append({"usable reports": k, "majority votes": m, "confidence": 2 * (m / k - 0.5)})
    return pd.DataFrame(rows)


def _report_pairs(table: pd.DataFrame) -> list[tuple[int, int]]:
    """Both orders of every pair of reports of one exam (report positions, not reader ids)."""
    pairs = []
    for r in table["pirads_reports"].fillna(""):
        v = parse_reports(r)
        pairs += [(v[i], v[j]) for i in range(len(v)) for j in range(len(v)) if i != j]
    return pairs


def agreement_table(table: pd.DataFrame) -> pd.DataFrame:
    """PI-RADS of one report (rows) against another report of the same exam (columns), counts
    of report pairs over the exams with >= 2 reports (each pair counted in both orders, so the
    table is symmetric)."""
    pairs = _report_pairs(table)
    cats = [1, 2, 3, 4, 5]
    m = pd.DataFrame(0, index=pd.Index(cats, name="report"), columns=pd.Index(cats, name="other report"))
    for a, b in pairs:
        m.loc[a, b] += 1
    return m


def agreement_kappas(table: pd.DataFrame) -> dict:
    """Cohen's kappa between two reports of the same exam, pooled over report pairs (scikit-learn):
    unweighted and quadratic-weighted on PI-RADS 1-5, and unweighted on the binarised reports
    (PI-RADS 3 dropped). Report positions stand in for readers (the prepared table has no
    reader ids); NaN without any exam that has two reports."""
    from sklearn.metrics import cohen_kappa_score

    pairs = _report_pairs(table)
    if not pairs:
        return {"pairs": 0, "kappa": math.nan, "kappa_quadratic": math.nan, "kappa_binary": math.nan}
    a, b = map(list, zip(*pairs))
    bin_pairs = [(int(x >= 4), int(y >= 4)) for x, y in pairs if x != 3 and y != 3]
    cats = [1, 2, 3, 4, 5]
    out = {"pairs": len(pairs) // 2,
           "kappa": float(cohen_kappa_score(a, b, labels=cats)),
           "kappa_quadratic": float(cohen_kappa_score(a, b, labels=cats, weights="quadratic"))}
    if bin_pairs:
        ba, bb = map(list, zip(*bin_pairs))
        out["kappa_binary"] = float(cohen_kappa_score(ba, bb, labels=[0, 1]))
    else:
        out["kappa_binary"] = math.nan
    return out


def label_noise_by_confidence(table: pd.DataFrame, bins=(0.0, 0.2, 0.5, 0.8, 1.0)) -> pd.DataFrame:
    """For the annotated exams of ``table``: how often the majority PI-RADS label equals the
    histopathology outcome (case_csPCa), by confidence bin. A look the pretraining never gets
    (it sees no outcome); shown to explain why a confident majority deserves more weight."""
    st = report_status(table)
    ann = st["pirads_majority"].notna()
    d = pd.DataFrame({"conf": st.loc[ann, "pirads_conf"],
                      "agree": st.loc[ann, "pirads_majority"].astype(int).to_numpy()
                      == table.loc[ann, "case_csPCa"].astype(int).to_numpy()})
    d["confidence"] = pd.cut(d["conf"], bins=list(bins), include_lowest=True)
    g = d.groupby("confidence", observed=True)["agree"]
    return pd.DataFrame({"exams": g.size(), "majority = csPCa": g.mean().round(3)})


# -------------------------------------------------------------------- continuous values
@dataclass
class Standardiser:
    """z = (f(x) - mean) / sd per column, f = log for :data:`LOG_SCALE` columns, mean and sd of
    the exams it was fitted on (the training exams); NaN stays NaN."""

    columns: tuple = CONTINUOUS
    log: tuple = LOG_SCALE
    mean: dict = field(default_factory=dict)
    sd: dict = field(default_factory=dict)

    def _f(self, table: pd.DataFrame, c: str) -> pd.Series:
        x = pd.to_numeric(table[c], errors="coerce").astype(float)
        if c in self.log:
            if (x <= 0).any():
                bad = table.index[(x <= 0).to_numpy()][:3].tolist()
                raise ValueError(f"{c} must be > 0 for a log scale; rows {bad} are not")
            x = np.log(x)
        return x

    @classmethod
    def fit(cls, table: pd.DataFrame, columns=CONTINUOUS, log=LOG_SCALE) -> "Standardiser":
        s = cls(tuple(columns), tuple(c for c in log if c in columns))
        for c in s.columns:
            if c not in table.columns:
                raise KeyError(f"no column {c!r} to standardise (columns: {list(table.columns)})")
            x = s._f(table, c)
            if x.notna().sum() < 2 or not x.std() > 0:
                raise ValueError(f"{c}: need >= 2 distinct training values to standardise, "
                                 f"got {int(x.notna().sum())} present")
            s.mean[c], s.sd[c] = float(x.mean()), float(x.std())
        return s

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        """Columns ``<name>_z`` (same index as ``table``)."""
        return pd.DataFrame({f"{c}_z": (self._f(table, c) - self.mean[c]) / self.sd[c]
                             for c in self.columns}, index=table.index)

    @property
    def z_columns(self) -> list[str]:
        return [f"{c}_z" for c in self.columns]

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame({"scale": ["log" if c in self.log else "linear" for c in self.columns],
                             "mean": [self.mean[c] for c in self.columns],
                             "sd": [self.sd[c] for c in self.columns]}, index=list(self.columns))


# --------------------------------------------------------------------- pretraining sets
def _check_training(case_ids, table: pd.DataFrame) -> None:
    split = table.set_index("case_id")["split"]
    unknown = [c for c in case_ids if c not in split.index]
    if unknown:
        raise KeyError(f"exams not in the table: {unknown[:3]}")
    other = [c for c in case_ids if split[c] != "train"]
    if other:
        raise ValueError(f"only training exams' metadata may enter pretraining; {len(other)} exams "
                         f"are in other splits, e.g. {other[:3]} ({split[other[0]]})")


def pretraining_set(slices, table: pd.DataFrame, standardiser: Standardiser | None = None, *,
                    annotated_only: bool = False):
    """The unlabelled training slices with the metadata pretraining uses, one row per exam in
    ``meta``: ``<name>_z`` (standardised continuous values, NaN = missing), ``pirads_majority``
    (0/1, NaN = unannotated) and ``pirads_conf``, taken from ``table`` (by case id; pass a
    table with resampled reports to change them). ``annotated_only`` drops the unannotated
    exams' slices. Any exam outside the training split raises."""
    ids = list(slices.case_ids)
    _check_training(ids, table)
    t = table.set_index("case_id").loc[ids]
    meta = pirads_labels(t).reset_index(drop=True)
    if standardiser is not None:
        meta = pd.concat([standardiser.transform(t).reset_index(drop=True), meta], axis=1)
    out = replace(slices.unlabelled(), meta=meta)
    if annotated_only:
        keep = [c for c, m in zip(ids, meta["pirads_majority"]) if not math.isnan(m)]
        if len(keep) < 2:
            raise ValueError(f"only {len(keep)} annotated training exams: nothing to contrast")
        out = out.subset(keep)
    return out


# ------------------------------------------------------------------ reader noise
def _synth_manifest(raw_root) -> dict:
    p = Path(raw_root) / "synth_manifest.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: resampling reports needs the synthetic generator's reader model. Real "
            "PI-CAI has one routine report per exam and no reader model to resample.")
    return json.loads(p.read_text())


def cohort_reader_noise(raw_root) -> float:
    """The per-reading noise the synthetic cohort in ``raw_root`` was generated with."""
    from ..data.synthetic import SynthParams

    params = _synth_manifest(raw_root).get("params") or {}
    return float(params.get("reader_noise", SynthParams().reader_noise))


def resample_reports(table: pd.DataFrame, raw_root, reader_noise: float) -> pd.DataFrame:
    """``table`` with the PI-RADS reports of every exam read again by the synthetic cohort's
    readers at per-reading noise ``reader_noise`` (the generator's ``SynthParams.reader_noise``);
    images, findings, outcomes and splits unchanged; ``pirads_majority`` / ``pirads_conf`` /
    ``n_reports`` / ``pirads_max`` recomputed by the data code's consensus.

    The generator's public :func:`~prostate_course.data.synthetic.simulate_clinical` redraws the
    cohort with the same seed: each exam's findings and reader draws are the same, only scaled
    by the new noise (so two noise levels differ by the noise alone). First it checks that the
    cohort's own noise reproduces ``table``'s reports exactly; a generator that no longer does
    (another version) raises instead of mixing two cohorts.
    """
    from ..data.synthetic import simulate_clinical

    if not reader_noise >= 0:
        raise ValueError(f"reader_noise must be >= 0, got {reader_noise!r}")
    m = _synth_manifest(raw_root)
    params = dict(m.get("params") or {})
    n, seed = int(m["n_cases"]), int(m["seed"])

    def reports(noise):
        sim = simulate_clinical(n, seed=seed, **{**params, "reader_noise": float(noise)})
        ids = sim["patient_id"].astype(str) + "_" + sim["study_id"].astype(str)
        return pd.Series(sim["pirads_reports"].fillna("").astype(str).to_numpy(), index=ids)

    own = reports(cohort_reader_noise(raw_root))
    ids = table["case_id"].astype(str)
    missing = [c for c in ids if c not in own.index]
    if missing:
        raise ValueError(f"{len(missing)} exams of the table are not in the cohort of {raw_root} "
                         f"(e.g. {missing[:3]})")
    have = table["pirads_reports"].fillna("").astype(str).str.replace(",", ";").to_numpy()
    differ = [c for c, h in zip(ids, have) if own[c] != h]
    if differ:
        raise ValueError(f"the generator no longer reproduces this cohort's reports (generator "
                         f"version {m.get('version')}; {len(differ)} exams differ, e.g. {differ[0]}): "
                         f"re-create the dataset before resampling")
    new = reports(reader_noise)
    out = table.drop(columns=["pirads_majority", "pirads_conf"], errors="ignore").copy()
    out["pirads_reports"] = new.loc[ids].to_numpy()
    parsed = out["pirads_reports"].map(parse_reports)
    out["n_reports"] = parsed.map(len)
    out["pirads_max"] = parsed.map(lambda v: float(max(v)) if v else np.nan)
    return add_pirads_consensus(out)


def reader_noise_summary(tables: dict, outcome: bool = True) -> pd.DataFrame:
    """One row per reader-noise level {noise: table}: kappas between reports, shares of exam
    statuses, mean confidence of the exams with several reports and, with ``outcome``, how often
    the majority equals case_csPCa (a diagnostic the pretraining never sees)."""
    rows = []
    for noise, t in tables.items():
        st = report_status(t)
        k = agreement_kappas(t)
        multi = st["n_usable"] >= 2
        row = {"reader_noise": noise, "kappa_quadratic": k["kappa_quadratic"], "kappa": k["kappa"],
               **{f"share {s}": float((st["status"] == s).mean()) for s in STATUSES},
               "mean confidence (>= 2 usable)": float(st.loc[multi & st["pirads_majority"].notna(),
                                                          "pirads_conf"].mean())}
        if outcome:
            ann = st["pirads_majority"].notna()
            row["majority = csPCa"] = float((st.loc[ann, "pirads_majority"].astype(int).to_numpy()
                                             == t.loc[ann, "case_csPCa"].astype(int).to_numpy()).mean())
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["CONTINUOUS", "LOG_SCALE", "STATUSES", "binarise", "pirads_labels", "report_status",
           "confidence_levels", "agreement_table", "agreement_kappas", "label_noise_by_confidence",
           "Standardiser", "pretraining_set", "cohort_reader_noise", "resample_reports", "reader_noise_summary"]
