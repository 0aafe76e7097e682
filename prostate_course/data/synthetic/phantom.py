"""Phantom rendering: an analytic pelvis and prostate drawn on each sequence's own grid.

Everything is in patient (world, LPS) millimetres, so every grid is exact and ADC/HBV really need
resampling onto T2W. :func:`render_case` returns numpy arrays and grids (no files); the writer
module stores them. :class:`Phantom` also exposes the soft truth (the normalised radii of the
gland, zones and lesions) that the simulated annotators outline.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .params import SynthParams, case_seeds

_B_VALUE = 1400.0e-6  # s/mm^2 x (ADC in 1e-6 mm^2/s)


@dataclass
class _Grid:
    """An image grid as SimpleITK sees it: array (z, y, x); world p = origin + D (spacing * ijk)."""

    shape: tuple[int, int, int]          # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm
    origin: np.ndarray                   # (3,) world mm, LPS
    direction: np.ndarray                # (3, 3) columns = axis directions

    def world(self, box=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (x, y, z) of the voxels in ``box`` (z, y, x slices), broadcast-ready."""
        nz, ny, nx = self.shape
        box = box or (slice(0, nz), slice(0, ny), slice(0, nx))
        k = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None] * self.spacing[2]
        j = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None] * self.spacing[1]
        i = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :] * self.spacing[0]
        D = self.direction.astype(np.float32)
        o = self.origin.astype(np.float32)
        out = []
        for a in range(3):   # skip zero terms: arrays stay broadcast-shaped (cheaper)
            q = np.full((1, 1, 1), o[a], np.float32)
            for coef, ax in ((D[a, 0], i), (D[a, 1], j), (D[a, 2], k)):
                if abs(float(coef)) > 1e-9:
                    q = q + coef * ax
            out.append(q)
        return tuple(out)

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice] | None:
        """Index box (z, y, x) covering a world ball; None when it misses the grid."""
        idx = self.direction.T @ (np.asarray(centre, float) - self.origin) / np.array(self.spacing)
        r = radius / np.array(self.spacing)
        lo = np.floor(idx - r).astype(int)
        hi = np.ceil(idx + r).astype(int) + 1
        size = np.array(self.shape[::-1])
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


def _rot(axis: str, deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _grid_centred(shape, spacing, direction, centre) -> _Grid:
    """Grid whose field-of-view centre sits at world point ``centre``."""
    nz, ny, nx = shape
    half = np.array([(nx - 1) * spacing[0], (ny - 1) * spacing[1], (nz - 1) * spacing[2]]) / 2
    origin = np.asarray(centre, float) - direction @ half
    return _Grid(tuple(shape), tuple(float(s) for s in spacing), origin, np.asarray(direction, float))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _ramp(x: np.ndarray) -> np.ndarray:
    """Soft inside-indicator from a signed distance in edge widths: clip(0.5 + x / 2, 0, 1).

    A linear ramp one edge width wide (partial-volume anti-aliasing); computed in place, it is
    several times cheaper than a logistic on 3 million voxels.
    """
    x = np.asarray(x, dtype=np.float32)
    x *= 0.5
    x += 0.5
    return np.clip(x, 0.0, 1.0, out=x)


def _sub(q: np.ndarray, box) -> np.ndarray:
    """``q[box]`` for a broadcast-shaped coordinate array (size-1 axes are kept whole)."""
    return q[tuple(slice(None) if q.shape[d] == 1 else box[d] for d in range(3))]


def in_mask(finding: dict) -> bool:
    """Whether a finding is drawn in the lesion mask: a csPCa (ISUP >= 2) cancer that the
    histology found (unbiopsied or missed cancers are in the image, not in the mask)."""
    return finding["kind"] == "cancer" and finding["isup"] >= 2 and bool(finding.get("found", True))


class Phantom:
    """Analytic pelvis + prostate of one case, in world millimetres (LPS)."""

    def __init__(self, row: dict, rng: np.random.Generator, p: SynthParams, centre: np.ndarray):
        self.p = p
        self.c = centre
        vol = float(row["gt_volume_ml"]) * 1000.0  # mm^3
        ratio = np.array([1.2, 0.9, 1.0]) * np.exp(rng.normal(0, 0.08, 3))
        r = (3 * vol / (4 * math.pi * ratio.prod())) ** (1 / 3)
        self.axes = ratio * r * 1.018   # (a_x, b_y, c_z); 1.018 offsets the posterior flattening
        f_tz = float(np.clip(0.35 + 0.4 * _sigmoid((vol / 1000 - 45) / 15) + rng.normal(0, 0.05), 0.25, 0.85))
        self.tz_centre = centre + np.array([0, -0.3, 0.12]) * self.axes
        self.tz_axes = self.axes * np.array([0.8, 0.68, 0.85]) * (f_tz / 0.42) ** (1 / 3)
        self.tex = [(rng.normal(0, 1, 3) * rng.uniform(0.15, 0.4), rng.uniform(0, 2 * np.pi)) for _ in range(3)]
        self.lesions = self._place(json.loads(row["gt_findings"]), rng)
        a, b = self.axes[0], self.axes[1]
        self.body = (np.array([0, -25.0 + rng.normal(0, 5), 0]) + centre,
                     np.array([rng.uniform(150, 185), rng.uniform(105, 130)]))
        self.muscle_dx = a + rng.uniform(12, 20)
        self.rectum = centre + np.array([rng.normal(0, 3), b + rng.uniform(8, 13), -5.0])
        self.rectum_r = np.array([rng.uniform(14, 20), rng.uniform(9, 13)])
        self.bladder = centre + np.array([0, -0.3 * b, self.axes[2] + rng.uniform(15, 25)])
        self.bladder_r = np.array([rng.uniform(30, 45), rng.uniform(25, 35), rng.uniform(18, 28)])
        self.pubis = centre + np.array([0, -b - rng.uniform(18, 26), 0])

    def landmarks(self) -> dict[str, np.ndarray]:
        """World points (LPS mm) inside the phantom's structures, at the gland centre's height:
        for labelling a figure. Rectum, pubic bone, obturator internus muscles and fat are
        cylinders along z, so their points label any axial slice through the gland."""
        c = self.c
        out = {"rectum": np.array([self.rectum[0], self.rectum[1], c[2]]),
               "pubic bone": np.array([self.pubis[0], self.pubis[1], c[2]])}
        for side, sx in (("right", -1), ("left", 1)):   # LPS: +x is the patient's left
            out[f"obturator internus ({side})"] = c + np.array([sx * (self.muscle_dx + 12), 0, 0])
        out["fat"] = c + np.array([0.5 * (self.axes[0] + self.muscle_dx), -0.6 * self.axes[1], 0])
        return out

    # -- zones -----------------------------------------------------------------------------
    def _rho_gland(self, x, y, z):
        a, b, c = self.axes
        az = a * (1 + 0.12 * np.clip(z / c, -1, 1))          # wider at the base, narrow apex
        by = np.where(y > 0, b * 0.9, b)                      # flattened posteriorly (rectum)
        return np.sqrt((x / az) ** 2 + (y / by) ** 2 + (z / c) ** 2)

    def _rho_tz(self, x, y, z):
        d = self.tz_centre - self.c
        a, b, c = self.tz_axes
        return np.sqrt(((x - d[0]) / a) ** 2 + ((y - d[1]) / b) ** 2 + ((z - d[2]) / c) ** 2)

    def rho_gland(self, x, y, z):
        """Normalised radius of the gland at gland-centred points (mm): < 1 inside."""
        return self._rho_gland(x, y, z)

    def rho_tz(self, x, y, z):
        """Normalised radius of the transition zone: < 0.95 inside (and inside the gland)."""
        return self._rho_tz(x, y, z)

    def zone_at(self, u: np.ndarray) -> str | None:
        if self._rho_gland(*u) >= 0.92:
            return None
        return "TZ" if self._rho_tz(*u) < 0.95 else "PZ"

    @staticmethod
    def rho_lesion(les: dict, x, y, z):
        """Normalised radius of a lesion at gland-centred points (mm): < 1 inside. An irregular
        ellipsoid: a few smooth sinusoidal wobbles on the ellipsoid radius."""
        x, y, z = x - les["u"][0], y - les["u"][1], z - les["u"][2]
        r3, wob = les["r3"], les["wob"]
        rr = np.sqrt((x / r3[0]) ** 2 + (y / r3[1]) ** 2 + (z / r3[2]) ** 2)
        return rr * (1 + 0.15 * np.sin(wob[0, 0] * x / r3[0] + wob[0, 1]) * np.cos(wob[1, 0] * y / r3[1] + wob[1, 1])
                     + 0.1 * np.sin(wob[2, 0] * z / r3[2] + wob[2, 1]))

    def lesion_contrast(self, les: dict) -> float:
        """Image contrast k of a finding: ``lesion_contrast`` x clip(v / 2.5, 0.05, 1.3)."""
        return self.p.lesion_contrast * float(np.clip(les["v"] / 2.5, 0.05, 1.3))

    def _place(self, findings: list[dict], rng: np.random.Generator) -> list[dict]:
        """Put each finding at a random point of its zone (rejection sampling in the gland)."""
        out = []
        for f in findings:
            for _ in range(400):
                u = rng.uniform(-1, 1, 3) * self.axes
                if f["kind"] == "cancer" and f["zone"] == "PZ" and rng.random() < 0.7 and u[1] < 0:
                    u[1] = -u[1]                                   # PZ cancers mostly posterior
                if self.zone_at(u) == f["zone"] and self._rho_gland(*u) < 0.85:
                    break
            else:
                u = np.zeros(3) if f["zone"] == "TZ" else np.array([0, 0.7 * self.axes[1], 0])
            g = dict(f)
            g["u"] = u
            shape = np.exp(rng.normal(0, 0.2, 3))
            if f["kind"] == "prostatitis":                         # a flat band
                shape = shape * np.array([1.8, 0.45, 1.2])
            g["r3"] = f["radius"] * shape / shape.prod() ** (1 / 3)
            g["wob"] = rng.normal(0, 1, (3, 3))
            g["sign"] = 1.0 if rng.random() < 0.5 else -1.0
            out.append(g)
        return out

    # -- rendering -------------------------------------------------------------------------
    def render(self, grid: _Grid, maps: tuple[str, ...], labels: bool = False) -> dict[str, np.ndarray]:
        """Tissue maps ('t2', 'adc', 's0') and, with ``labels``, gland/zones/lesion masks."""
        px, py, pz = grid.world()
        w = 0.6 * max(grid.spacing[0], grid.spacing[1])           # edge width ~ partial volume
        T = {"t2": 0, "adc": 1, "hbv": 2}
        vals = {  # (t2, adc, s0) per tissue
            "air": (0.0, 0.0, 0.0), "fat": (780.0, 250.0, 0.06), "muscle": (280.0, 1450.0, 1.0),
            "rectum_wall": (330.0, 1300.0, 0.9), "urine": (1500.0, 2900.0, 1.4),
            "bone": (120.0, 500.0, 0.1), "pz": (900.0, 1700.0, 1.2), "tz": (480.0, 1250.0, 1.0),
        }
        # high-b signal of each tissue: S0 exp(-b ADC), b = 1400 s/mm^2
        vals = {k: (t2, adc, 100.0 * s0 * math.exp(-_B_VALUE * adc)) for k, (t2, adc, s0) in vals.items()}
        out = {m: np.zeros(grid.shape, np.float32) for m in maps}

        def paint(box, ind, tissue):
            for m in maps:
                v = vals[tissue][T[m]]
                reg = out[m][box]
                reg += (v - reg) * ind

        full = (slice(None),) * 3
        bc, br = self.body
        rb = np.sqrt(((px - bc[0]) / br[0]) ** 2 + ((py - bc[1]) / br[1]) ** 2)
        paint(full, _ramp((1 - rb) * 110 / w), "fat")
        for sx in (-1, 1):   # obturator internus (lateral) muscles, elliptic cylinders
            mc = self.c + np.array([sx * (self.muscle_dx + 12), 0, 0])
            box = grid.box(mc, 45)
            if box:
                x, y, z = (_sub(q, box) for q in (px, py, pz))
                rr = np.sqrt(((x - mc[0]) / 12) ** 2 + ((y - mc[1]) / 35) ** 2)
                paint(box, _ramp((1 - rr) * 12 / w), "muscle")
        box = grid.box(self.pubis, 40)
        if box:
            x, y, z = (_sub(q, box) for q in (px, py, pz))
            rr = np.sqrt(((x - self.pubis[0]) / 30) ** 2 + ((y - self.pubis[1]) / 9) ** 2)
            paint(box, _ramp((1 - rr) * 9 / w), "bone")
        box = grid.box(self.rectum, 25)
        if box:
            x, y, z = (_sub(q, box) for q in (px, py, pz))
            rr = np.sqrt(((x - self.rectum[0]) / self.rectum_r[0]) ** 2 + ((y - self.rectum[1]) / self.rectum_r[1]) ** 2)
            paint(box, _ramp((1 - rr) * 10 / w), "rectum_wall")
            paint(box, _ramp((0.7 - rr) * 10 / w), "air")
        box = grid.box(self.bladder, float(self.bladder_r.max()) + 3)
        if box:
            x, y, z = (_sub(q, box) for q in (px, py, pz))
            u = (x - self.bladder[0], y - self.bladder[1], z - self.bladder[2])
            rr = np.sqrt(sum((u[a] / self.bladder_r[a]) ** 2 for a in range(3)))
            paint(box, _ramp((1 - rr) * 25 / w), "urine")

        res = {}
        box = grid.box(self.c, float(self.axes.max()) * 1.2 + 3)
        if labels:
            for k in ("gland", "zones", "lesions"):
                res[k] = np.zeros(grid.shape, np.uint8 if k != "lesions" else np.uint16)
        if box:
            x, y, z = (_sub(q, box) - self.c[a] for a, q in enumerate((px, py, pz)))
            rmin = float(self.axes.min())
            rg = self._rho_gland(x, y, z)
            G = _ramp((1 - rg) * rmin / w)
            rt = self._rho_tz(x, y, z)
            Tz = _ramp((0.95 - rt) * float(self.tz_axes.min()) / w) * G
            paint(box, G, "pz")
            paint(box, Tz, "tz")
            if self.p.tz_texture > 0:   # heterogeneous TZ (BPH) and milder PZ striation
                tex = sum(np.cos(k[0] * x + k[1] * y + k[2] * z + ph) for k, ph in self.tex) / 1.7
                f = self.p.tz_texture * tex * (Tz + 0.3 * (G - Tz))
                if "hbv" in maps:   # follows the ADC change: S exp(-b ADC (1 + f))
                    out["hbv"][box] *= np.exp(-_B_VALUE * out["adc"][box] * f)
                for m in ("t2", "adc"):
                    if m in maps:
                        out[m][box] *= 1 + f
            if labels:
                gl = rg < 1.0
                res["gland"][box] = gl
                res["zones"][box] = np.where(gl, np.where(rt < 0.95, 2, 1), 0)
            for les in self.lesions:   # each on its own sub-box of the gland box
                lb = grid.box(self.c + les["u"], float(les["r3"].max()) * 1.35 + 2 * w)
                if lb is None:
                    continue
                loc = tuple(slice(max(l.start, g.start) - g.start, min(l.stop, g.stop) - g.start)
                            for l, g in zip(lb, box))
                if any(sl.stop <= sl.start for sl in loc):
                    continue
                sub = tuple(slice(g.start + sl.start, g.start + sl.stop) for sl, g in zip(loc, box))
                self._paint_lesion(les, sub, tuple(_sub(q, loc) for q in (x, y, z)), G[loc], out, maps, w,
                                   res if labels else None)
        return {**out, **res}

    def _paint_lesion(self, les, gbox, xyz, G, out, maps, w, res):
        rr = self.rho_lesion(les, *xyz)
        ind = _ramp((1 - rr) * float(les["r3"].min()) / w) * G
        k = self.lesion_contrast(les)
        kind = les["kind"]
        if kind == "cancer":
            d = {"t2": -0.45 * k, "adc": -0.5 * k}
        elif kind == "bph":   # circumscribed nodule, T2 bright or dark with a dark rim, mild ADC drop
            rim = _ramp((1 - np.abs(rr - 1) * 8)) * G
            d = {"t2": 0.25 * k * les["sign"], "adc": -0.25 * k}
            if "t2" in out:
                out["t2"][gbox] *= 1 - 0.25 * k * rim
        else:                  # prostatitis: T2 dark band, small ADC drop, HBV barely
            d = {"t2": -0.4 * k, "adc": -0.15 * k}
        if "hbv" in maps:      # low ADC -> bright high-b image: S exp(-b ADC (1 + d_adc))
            out["hbv"][gbox] *= np.exp(-_B_VALUE * out["adc"][gbox] * d["adc"] * ind)
        for m in ("t2", "adc"):
            if m in maps:
                out[m][gbox] *= 1 + d[m] * ind
        if res is not None and in_mask(les):
            m = (rr < 1.0) & (res["gland"][gbox] > 0)
            lab = res["lesions"][gbox]
            lab[m] = np.maximum(lab[m], les["isup"])


def _apply_bias(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Multiply ``img`` in place by a smooth field exp(strength * f), f = f_z + f_y + f_x.

    Separable in the grid axes, so exp(f) is a product of three 1D profiles (no 3D exp): a cheap
    stand-in for coil sensitivity (N4-style bias; Tustison et al. 2010 correct exactly this).
    """
    if strength <= 0:
        return img
    nz, ny, nx = img.shape
    t = [np.linspace(-1, 1, n) for n in (nz, ny, nx)]
    c = rng.normal(0, 1, (3, 2)) * np.array([[0.3, 0.3], [1.0, 1.0], [0.5, 0.5]])
    fz = c[0, 0] * t[0] + c[0, 1] * t[0] ** 2
    fy = c[1, 0] * t[1] + c[1, 1] * (t[1] ** 2 - 0.3)          # coil: brighter on one side
    fx = c[2, 0] * t[2] + c[2, 1] * (t[2] ** 2 - 0.3)
    scale = strength / max(np.abs(fz).max() + np.abs(fy).max() + np.abs(fx).max(), 1e-6)
    img *= np.exp(scale * fz).astype(np.float32)[:, None, None]
    img *= np.exp(scale * fy).astype(np.float32)[None, :, None]
    img *= np.exp(scale * fx).astype(np.float32)[None, None, :]
    return img


def _to_int16(x: np.ndarray) -> np.ndarray:
    np.rint(x, out=x)
    np.clip(x, 0, 32767, out=x)
    return x.astype(np.int16)


def _rician(signal: np.ndarray, sd: float, rng: np.random.Generator, channels: int = 2) -> np.ndarray:
    """Magnitude image sqrt((S + n1)^2 + n2^2) (Rician; Gudbjartsson & Patz 1995).

    ``channels=1`` gives |S + n1| (a folded normal): the same noise floor in air and Gaussian
    noise in tissue for half the random numbers; used on the large T2W grid for speed.
    """
    n1 = rng.standard_normal(signal.shape, dtype=np.float32)
    n1 *= np.float32(sd)
    n1 += signal
    if channels == 1:
        return np.abs(n1, out=n1)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32)
    n2 *= np.float32(sd)
    n1 *= n1
    n2 *= n2
    n1 += n2
    return np.sqrt(n1, out=n1)


def _case_geometry(rng: np.random.Generator, p: SynthParams) -> tuple[_Grid, _Grid, np.ndarray]:
    """T2W and ADC/HBV grids of one case plus the gland centre (world, mm)."""
    gland = np.array([rng.uniform(-20, 20), rng.uniform(10, 60), rng.uniform(-40, 40)])
    s_xy = float(rng.choice([0.5, 0.45, 0.4], p=[0.6, 0.2, 0.2]))
    s_z = float(rng.choice([3.0, 3.3, 3.6], p=[0.6, 0.2, 0.2]))
    nz = int(rng.integers(19, 26))
    tilt = float(rng.uniform(0, 15))                                   # oblique axial
    D = _rot("x", tilt)
    off = np.array([rng.uniform(-1, 1) * p.max_offset_mm, rng.uniform(-1, 1) * p.max_offset_mm,
                    rng.uniform(-8, 8)])
    n = int(p.t2w_matrix)
    t2w = _grid_centred((nz, n, n), (s_xy, s_xy, s_z), D, gland + D @ off)
    sd_xy = float(p.dwi_spacing) * float(rng.choice([1.0, 0.9375, 1.1]))
    sd_z = float(rng.choice([s_z, 3.0, 3.6]))
    Dd = D @ _rot("z", float(rng.uniform(-4, 4)) if rng.random() < 0.6 else 0.0)
    fov_z = nz * s_z
    ndz = int(math.ceil(fov_z / sd_z)) + int(rng.integers(0, 3))
    nx, ny = 128, int(rng.choice([104, 112, 120, 128]))
    doff = off + np.array([rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-0.5, 0.5) * sd_z])
    dwi = _grid_centred((ndz, ny, nx), (sd_xy, sd_xy, sd_z), Dd, gland + D @ doff)
    return t2w, dwi, gland


def case_phantom(row: dict, seed: int, params: SynthParams | None = None):
    """The phantom of one case, exactly as :func:`render_case` draws it.

    Returns (phantom, rng, t2w grid, dwi grid); ``rng`` is the case's image stream after the
    geometry and phantom draws (render_case goes on with it for noise and bias).
    """
    p = params or SynthParams()
    rng = np.random.default_rng(case_seeds(seed, int(row["case_index"]))[1])
    t2w_grid, dwi_grid, gland = _case_geometry(rng, p)
    return Phantom(row, rng, p, gland), rng, t2w_grid, dwi_grid


def render_case(row: dict, seed: int, params: SynthParams | None = None) -> dict[str, Any]:
    """Draw one case's images and masks in memory (numpy arrays + grids); see :func:`generate_cohort`."""
    p = params or SynthParams()
    ph, rng, t2w_grid, dwi_grid = case_phantom(row, seed, p)
    a = ph.render(t2w_grid, ("t2",), labels=True)
    gain = float(np.exp(rng.normal(0, 0.3)))
    t2 = _apply_bias(a["t2"], rng, p.bias_strength)
    t2 = _rician(t2, p.noise * 900.0, rng, channels=1)
    t2 *= gain
    d = ph.render(dwi_grid, ("adc", "hbv"))
    adc = d["adc"] + rng.standard_normal(d["adc"].shape, dtype=np.float32) * np.float32(p.noise * 2.0 * 1700.0)
    hbv = _apply_bias(d["hbv"], rng, 0.5 * p.bias_strength)
    pz_level = 100.0 * 1.2 * math.exp(-_B_VALUE * 1700.0)
    hbv = _rician(hbv, p.noise * 2.0 * pz_level, rng)
    hbv *= np.float32(np.exp(rng.normal(0, 0.3)) * 4.0)
    return {
        "t2w": _to_int16(t2), "adc": _to_int16(adc), "hbv": _to_int16(hbv),
        "gland": a["gland"], "zones": a["zones"], "lesions": a["lesions"],
        "t2w_grid": t2w_grid, "dwi_grid": dwi_grid,
    }
