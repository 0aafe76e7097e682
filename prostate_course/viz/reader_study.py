"""A reader study the student takes part in (notebook 05).

The student reads about 20 test cases as a radiologist would - T2W, ADC and high-b DWI side by
side, scrolling through the gland, no labels, no AI - and gives each a PI-RADS category (1-5).
Then the truth is revealed: the student's own operating points (PI-RADS >= 3 and >= 4) appear on
the AI's ROC curve, beside the simulated readers' on the very same cases, with the AI's
sensitivity at the student's specificity. This is how PI-CAI compared AI and radiologists
(Saha et al., Lancet Oncology 2024), with the student as one of the readers.

Without a live Jupyter frontend (papermill, an HTML export, ``PROSTATE_COURSE_STATIC=1``) a
*recorded* reader fills in the scores - the cases' routine (first) simulated report - so every
later cell runs; the notebook says which reader it shows. Answers given in the viewer are saved
to a CSV as they are given (``save_path``), so a restarted kernel keeps them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["PIRADS_HINTS", "ReaderStudy", "pick_study_cases"]

#: one line per PI-RADS v2.1 category (likelihood of clinically significant cancer)
PIRADS_HINTS = {1: "very low (highly unlikely)", 2: "low (unlikely)", 3: "intermediate (equivocal)",
                4: "high (likely)", 5: "very high (highly likely)"}
RECORDED = "recorded simulated reader (each case's routine report)"


def pick_study_cases(table: pd.DataFrame, case_ids, labels, n: int = 20, seed: int = 0,
                     min_each: int = 5) -> list:
    """About ``n`` test cases with at least one report, stratified by csPCa (the test set's
    prevalence, but at least ``min_each`` of each class where the test set has them), in a
    seeded random order (positives and negatives mixed)."""
    from ..detection.readers import _parse

    t = table.set_index("case_id").loc[[str(c) for c in case_ids]]
    y = pd.Series(np.asarray(labels).astype(int), index=t.index)
    ok = [c for c, r in zip(t.index, t["pirads_reports"]) if _parse(r)]
    pos = [c for c in ok if y[c] == 1]
    neg = [c for c in ok if y[c] == 0]
    n = min(n, len(ok))
    k_pos = int(round(n * len(pos) / max(len(ok), 1)))
    k_pos = min(len(pos), max(k_pos, min(min_each, len(pos))))
    k_neg = min(len(neg), n - k_pos)
    rng = np.random.default_rng(seed)
    chosen = list(rng.permutation(pos)[:k_pos]) + list(rng.permutation(neg)[:k_neg])
    return [str(c) for c in rng.permutation(np.array(chosen, dtype=object))]


class ReaderStudy:
    """The reader study on ``case_ids`` (see the module docstring).

    ``slices``: the test SliceSet (its gland slices are what the viewer shows); ``table``: the
    prepared cases table (``pirads_reports``); ``labels`` and ``ai_scores``: per case of
    ``case_ids`` (csPCa, the AI's detection-map max).
    """

    def __init__(self, slices, table: pd.DataFrame, case_ids, labels, ai_scores, *,
                 save_path=None):
        self.slices = slices
        self.table = table
        self.case_ids = [str(c) for c in case_ids]
        self.labels = pd.Series(np.asarray(labels).astype(int), index=self.case_ids)
        self.ai_scores = pd.Series(np.asarray(ai_scores, float), index=self.case_ids)
        self.save_path = save_path
        self.scores: dict = {}
        self.source = None
        self._pos = {c: i for i, c in enumerate(slices.case_ids)}
        missing = [c for c in self.case_ids if c not in self._pos]
        if missing:
            raise KeyError(f"study cases not in the slice set: {missing[:3]}")

    def __repr__(self) -> str:
        given = sum(c in self.scores for c in self.case_ids)
        return (f"ReaderStudy: {len(self.case_ids)} cases ({int(self.labels.sum())} with csPCa), "
                f"{given} scored by {self.source or 'nobody yet'}")

    # ------------------------------------------------------------------ scores
    def recorded_scores(self) -> dict:
        """The recorded reader: each case's routine (first) simulated report."""
        from ..detection.readers import first_report

        fr = first_report(self.table, self.case_ids)
        return {c: int(v) for c, v in fr.items() if np.isfinite(v)}

    def use_recorded(self) -> "ReaderStudy":
        self.scores = self.recorded_scores()
        self.source = RECORDED
        return self

    def load(self) -> bool:
        """Read answers saved earlier (``save_path``); True if every case has one."""
        from pathlib import Path

        if not self.save_path or not Path(self.save_path).is_file():
            return False
        df = pd.read_csv(self.save_path, dtype={"case_id": str})
        self.scores = {c: int(p) for c, p in zip(df.case_id, df.pirads) if c in self.labels.index}
        self.source = "you"
        return self.complete

    def save(self) -> None:
        from ..io_utils import write_text_atomic

        if self.save_path:
            df = pd.DataFrame({"case_id": list(self.scores), "pirads": list(self.scores.values())})
            write_text_atomic(self.save_path, df.to_csv(index=False))

    @property
    def complete(self) -> bool:
        return all(c in self.scores for c in self.case_ids)

    def final_scores(self) -> tuple[pd.Series, str]:
        """The scores the analysis uses: the student's where given; the recorded reader fills
        the rest (and the note says so)."""
        if self.complete:
            return pd.Series({c: self.scores[c] for c in self.case_ids}), self.source or "you"
        rec = self.recorded_scores()
        given = sum(c in self.scores for c in self.case_ids)
        merged = {c: self.scores.get(c, rec.get(c)) for c in self.case_ids}
        note = (RECORDED if given == 0 else f"you ({given} of {len(self.case_ids)} cases) + {RECORDED} "
                f"for the other {len(self.case_ids) - given}")
        return pd.Series(merged), note

    # ---------------------------------------------------------------- analysis
    def results(self) -> pd.DataFrame:
        """Your operating points at PI-RADS >= 3 and >= 4 on the study cases, with the AI's
        sensitivity at your specificity and specificity at your sensitivity, and the pooled
        simulated readers on the same cases."""
        from ..detection.readers import (operating_point, reader_operating_points,
                                         sensitivity_at_specificity, specificity_at_sensitivity)

        s, who = self.final_scores()
        y = self.labels.loc[s.index].to_numpy()
        rows = []
        for k in (3, 4):
            op = operating_point(y, s.to_numpy() >= k)
            row = {"reader": who, "threshold": f"PI-RADS >= {k}", "n_cases": len(s), **{
                k2: op[k2] for k2 in ("sensitivity", "specificity")}}
            if 0 < y.sum() < len(y):
                row["ai_sensitivity_at_reader_specificity"] = sensitivity_at_specificity(
                    y, self.ai_scores.loc[s.index], op["specificity"])[0]
                row["ai_specificity_at_reader_sensitivity"] = specificity_at_sensitivity(
                    y, self.ai_scores.loc[s.index], op["sensitivity"])[0]
            rows.append(row)
        readers = reader_operating_points(self.table, self.case_ids, self.labels.to_numpy(),
                                          self.ai_scores.to_numpy())
        return pd.concat([pd.DataFrame(rows), readers[readers.reader == "pooled"]], ignore_index=True)

    def answers(self) -> pd.DataFrame:
        """Per case: your PI-RADS, the simulated readers' reports, csPCa, and the AI's score."""
        s, _ = self.final_scores()
        t = self.table.set_index("case_id").loc[self.case_ids]
        return pd.DataFrame({"case_id": self.case_ids, "your PI-RADS": s.loc[self.case_ids].to_numpy(),
                             "readers' reports": t["pirads_reports"].to_numpy(),
                             "csPCa": self.labels.to_numpy(), "AI score": self.ai_scores.round(3).to_numpy()})

    def figure(self, ax=None):
        """The AI's ROC on the study cases, the pooled and single-report readers' points and
        yours (stars)."""
        import matplotlib.pyplot as plt

        from ..detection.readers import reader_operating_points
        from .detection import plot_roc_readers

        if ax is None:
            _, ax = plt.subplots(figsize=(5.2, 5.2))
        res = self.results()
        mine = res[res.reader != "pooled"]
        who = "recorded reader" if mine.reader.iloc[0].startswith("recorded") else "you"
        readers = reader_operating_points(self.table, self.case_ids, self.labels.to_numpy())
        plot_roc_readers(self.labels.to_numpy(), self.ai_scores.to_numpy(), readers, ax, student=mine,
                         student_label=who)
        ax.set_title(f"the {len(self.case_ids)} study cases: the AI, the simulated readers and {who}", fontsize=9)
        return ax.figure

    # ------------------------------------------------------------------ viewer
    def _case_slices(self, case_id: str):
        i = self._pos[case_id]
        rows = (self.slices.case_index == i).nonzero().ravel()
        z = self.slices.slice_z[rows]
        order = z.argsort()
        return rows[order], z[order]

    def draw_case(self, case_id: str, k: int | None = None, fig=None):
        """T2W, ADC and HBV of one study case at its k-th gland slice (default: the middle)."""
        import matplotlib.pyplot as plt

        rows, zs = self._case_slices(case_id)
        k = len(rows) // 2 if k is None else int(np.clip(k, 0, len(rows) - 1))
        img = self.slices.images[int(rows[k])].float().numpy()
        fig = fig or plt.figure(figsize=(10.5, 3.7))
        fig.clf()
        axes = fig.subplots(1, 3)
        for ax, c, name in zip(axes, range(3), ("T2W", "ADC", "HBV (high b)")):
            ax.imshow(img[c], cmap="gray", vmin=-2.5, vmax=2.5, interpolation="bilinear")
            ax.set_title(name, fontsize=10)
            ax.set_xticks([]); ax.set_yticks([])
        fig.suptitle(f"slice {k + 1} of {len(rows)} through the gland (z = {int(zs[k])})", fontsize=9)
        fig.tight_layout()
        return fig

    def run(self, interactive: bool | None = None):
        """The viewer widget, shown when it is the cell's last value (or, without a live
        frontend, use the recorded reader and return ``self``)."""
        from .cases import widgets_available

        if interactive is None:
            interactive = widgets_available()
        if not interactive:
            if not self.load():
                self.use_recorded()
            return self
        self.load()
        return self._viewer()

    def _viewer(self):
        import ipywidgets as W
        import matplotlib.pyplot as plt
        from IPython.display import display

        state = {"i": 0}
        head = W.HTML()
        image = W.Output()
        slider = W.IntSlider(description="slice", continuous_update=True, readout=False,
                             layout=W.Layout(width="420px"))
        choice = W.ToggleButtons(options=[(str(p), p) for p in range(1, 6)], value=None,
                                 description="PI-RADS", tooltips=[PIRADS_HINTS[p] for p in range(1, 6)],
                                 style={"button_width": "48px"})
        hint = W.HTML("<small>" + " &nbsp; ".join(f"<b>{p}</b> {h}" for p, h in PIRADS_HINTS.items())
                      + "</small>")
        prev_b, next_b = W.Button(description="< previous"), W.Button(description="next >")
        done_b = W.Button(description="finish: show my operating point", button_style="success",
                          layout=W.Layout(width="280px"))
        progress = W.IntProgress(min=0, max=len(self.case_ids), description="scored")
        result = W.Output()
        fig = plt.figure(figsize=(10.5, 3.7))
        plt.close(fig)          # drawn into the Output widget only

        def show_image(*_):
            with image:
                image.clear_output(wait=True)
                self.draw_case(self.case_ids[state["i"]], slider.value, fig)
                display(fig)

        def show_case():
            cid = self.case_ids[state["i"]]
            rows, _ = self._case_slices(cid)
            slider.unobserve(show_image, "value")
            slider.max, slider.value = len(rows) - 1, len(rows) // 2
            slider.observe(show_image, "value")
            choice.unobserve(on_choice, "value")
            choice.value = self.scores.get(cid)
            choice.observe(on_choice, "value")
            head.value = (f"<b>Case {state['i'] + 1} of {len(self.case_ids)}</b> - read all three "
                          "sequences, scroll through the gland, then give a PI-RADS category.")
            progress.value = sum(c in self.scores for c in self.case_ids)
            show_image()

        def on_choice(change):
            if change["new"] is None:
                return
            self.scores[self.case_ids[state["i"]]] = int(change["new"])
            self.source = "you"
            self.save()
            progress.value = sum(c in self.scores for c in self.case_ids)
            if state["i"] < len(self.case_ids) - 1:
                state["i"] += 1
                show_case()

        def move(step):
            state["i"] = int(np.clip(state["i"] + step, 0, len(self.case_ids) - 1))
            show_case()

        def finish(_):
            with result:
                result.clear_output()
                if not self.complete:
                    left = [i + 1 for i, c in enumerate(self.case_ids) if c not in self.scores]
                    print(f"still unscored: cases {left}. Score them, or finish now and the recorded "
                          "reader fills them in.")
                display(self.results().round(2))
                display(self.answers())
                f = self.figure()
                plt.show(f)

        prev_b.on_click(lambda _: move(-1))
        next_b.on_click(lambda _: move(+1))
        done_b.on_click(finish)
        choice.observe(on_choice, "value")
        slider.observe(show_image, "value")
        ui = W.VBox([head, image, slider, choice, hint, W.HBox([prev_b, next_b, progress]), done_b, result])
        show_case()
        return ui               # the cell shows the returned widget once (no display() here too)
