"""Synthetic segments for domain randomisation, fit to real segments of the dataset.

The generator writes CSVs in exactly the dataset's format (columns t, vEgo, aEgo, roll,
targetLateralAcceleration, steerCommand; 10 Hz; 598..601 rows as in the fit set;
steerCommand empty, i.e. NaN, from row CONTROL_START_IDX = 100 on, as in the public
files), so `tinyphysics.load_segment` and everything built on it read them unchanged.

Model (every statistic below is fitted on the fit set only, default 00000-00079; the
held-out segments 00080-00099 are read for the report only, never for fitting):

* Each synthetic segment is drawn around one random fit segment: that segment's parameter
  vector plus Gaussian jitter of KDE_BANDWIDTH times each parameter's spread over the fit
  set, clipped to the fit set's range (a kernel density estimate): start speed, mean and
  spread of aEgo, median of the curvature, spread of the target lataccel, mean roll
  lataccel, bank coefficient, roll residual spread. Fit segments that slow below 1 m/s
  (12 of 80) feed the stop_and_go scenario, the others all the rest.
* Within a segment aEgo, curvature and roll residual are AR(AR_ORDER) processes with the
  drawn fit segment's own least-squares coefficients (its spectrum), Gaussian innovations
  under a smooth volatility envelope (strength fitted to the fit set's intermittency,
  median|diff|/std(diff)) and a smooth level envelope (per fit segment, fitted to its
  peakedness, median|x - median|/std(x): long straights, a few curves), standardised to
  the drawn location and spread.
* vEgo is the integral of aEgo the way it is in the logs: the fitted least-squares relation
  v[k+1] - v[k] = b0 a[k] + b1 a[k+1] + b2 a[k+2] + e (b0+b1+b2 ~ 0.1 s), e the fitted residual
  (std 0.003 m/s); drives that would leave [1 m/s, max fit speed] are redrawn or shifted.
* targetLateralAcceleration = kappa * max(v, V_KAPPA)^2 (regularised curvature kappa, so
  lataccel falls with speed through turns), tapered to exactly 0 at standstill (v < 0.3 m/s)
  as in the logs, scaled to the drawn spread and clipped to the fit set's largest |target|
  at that speed (+10%), so no segment asks for lataccels the simulator never saw.
  Roll lataccel = mean + bank * (target smoothed over ~1 s) + residual (road banking: the fit
  set shows roll lataccel ~ 0.36 * target above 20 m/s); roll = arcsin(roll lataccel / g).
* Warm-up steerCommand (rows 0..99, applied by the simulator as logged) is a least-squares
  model of the logged steer on target, roll lataccel, both times v/30, and the means of
  the target over rows k-5..k, k+1..k+5 and k+5..k+15 (R^2 0.85 on the fit set's rows
  0..99), plus a per-segment bias of the measured spread and an AR(1) residual at
  STEER_NOISE_SCALE of its measured size. Values are in the log's sign convention (the
  simulator flips the sign on load) and clipped to the steer range [-2, 2]; rows from 100
  on are empty (NaN), as in the public files.

Hard cases: every segment gets exactly one scenario of SCENARIO_FRACTIONS (shares and
definitions there), assigned by a low-discrepancy sequence so that any prefix of N files
holds each scenario within about one file of its share. The injected events (fast
lataccel, sustained curve, steep roll) start in the controlled part (row >= 100), so the
warm-up stays in the range the steer model was fitted on.

Command line:
  python -m ppo_training.synthetic --out data/synthetic --num 1000 --seed 0 [--fit_dir data --fit_files 00000-00079]
  python -m ppo_training.synthetic --report --out data/synthetic
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

import tinyphysics as tp

GENERATOR_VERSION = 1
DEFAULT_FIT_FILES = "00000-00079"
DEFAULT_HELDOUT_FILES = "00080-00099"
REPORT_NAME = "generator_report.json"
FILE_PREFIX = "synth_"
COLUMNS = ("vEgo", "aEgo", "roll", "targetLateralAcceleration")
DT = 1.0 / tp.FPS
WARMUP = tp.CONTROL_START_IDX

# Share of segments per scenario (each segment has exactly one). Defaults:
#   normal           0.60  a fit-set-like drive, moving throughout
#   stop_and_go      0.15  low speed with full stops: cruise 8-30 s, brake 0.8-2.5 m/s^2,
#                          standstill 2-10 s (v ~ 0, target exactly 0), pull away
#                          0.7-2 m/s^2; the fit set has 12 of 80 segments (15%) that slow
#                          below 1 m/s, 14% of their rows at standstill
#   fast_lataccel    0.10  normal + 1-3 fast lataccel events at >= 5 m/s: lane-change
#                          S-curves (one 2-4 s sine period, 1-2.5 m/s^2) or quick curves
#                          (ramp 0.6-2 s to 1.5-3 m/s^2, hold 2-8 s, ramp out)
#   sustained_curve  0.10  normal + one long curve: |target| 1.5-3 m/s^2 for 15-35 s with
#                          smooth (clothoid-like) entry and exit of 2-5 s
#   (all targets are clipped to the fit set's largest |target| at that speed, +10%: about
#   1.9 m/s^2 above 20 m/s, 3-4.6 m/s^2 at 5-20 m/s; see _lataccel_envelope)
#   steep_roll       0.05  normal + a steep road-roll stretch: |roll lataccel| 1.0-1.8 m/s^2
#                          (roll 0.10-0.19 rad) for 20-45 s; beyond the fit set's range
#                          (max |roll lataccel| 1.0 m/s^2) on purpose
SCENARIO_FRACTIONS: Dict[str, float] = {
    "normal": 0.60,
    "stop_and_go": 0.15,
    "fast_lataccel": 0.10,
    "sustained_curve": 0.10,
    "steep_roll": 0.05,
}

AR_ORDER = 6            # AR order of the aEgo, curvature and roll residual processes
KDE_BANDWIDTH = 0.2     # jitter of per-segment parameters, in units of each parameter's spread
V_KAPPA = 5.0           # m/s: kappa = target / max(v, V_KAPPA)^2 (regularised curvature)
V_STANDSTILL = 0.3      # m/s: target is exactly 0 below this speed, as in the real files
MOVING_MIN_V = 1.0      # m/s: fit segments slower than this somewhere are "stop" segments
INNOVATIONS = "gaussian"  # AR innovations: "gaussian" or "empirical" (resampled fit residuals)
BURN_IN = 300           # AR burn-in rows
BANK_SMOOTH_ROWS = 10   # rows (1 s): sigma of the target smoothing in the roll ~ bank * target relation
ENVELOPE_ROWS = 10      # smoothing sigma (rows, 1 s) of the AR processes' innovation envelope
LEVEL_ENVELOPE_ROWS = 30  # smoothing sigma (rows, 3 s) of the AR processes' level envelope
STEER_FEATURES = ("one", "target", "roll_lataccel", "target_v", "roll_lataccel_v",
                  "future_1_5", "future_5_15", "past_5")
# Scale of the warm-up steer's within-segment AR(1) residual relative to its measured size.
# The measured residual is mostly dynamics the simulator explains from the logged lataccel,
# not noise: at full size the free-run hand-over error (see handover_errors) is about 1.6x
# the real fit set's, at 0.5 about 1.3x (the held-out segments' own ratio), at 0 about 1.0x.
STEER_NOISE_SCALE = 0.5
HANDOVER_FREE_RUN_START = 80
HANDOVER_STEPS = (90, 100)


class SyntheticError(ValueError):
    """Bad input to the generator or the report; the message names the problem."""


# --------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------
def select_files(data_dir: Union[str, os.PathLike], spec: Union[str, Sequence[str]]) -> List[str]:
    """Segment path strings for a spec, like ppo_training.config.select_files.

    spec: 'A-B' (inclusive range of zero-padded stems, e.g. '00000-00079'), a
    comma-separated string or list of names/stems ('00001,00002' or ['00001.csv']).
    Returns str(Path(data_dir) / name) per file, in spec order.
    Raises SyntheticError when the directory is missing, holds no CSV, the spec is
    malformed, or a named file is missing.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise SyntheticError(f"data directory {data_dir}: no such directory (run `make setup`?)")
    if not any(d.glob("*.csv")):
        raise SyntheticError(f"data directory {data_dir}: holds no .csv segments")
    if isinstance(spec, str):
        s = spec.strip()
        if "," not in s and s.count("-") == 1:
            lo, hi = s.split("-")
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise SyntheticError(f"file spec {spec!r}: expected 'A-B' with A <= B, both digits")
            names = [f"{i:0{len(lo)}d}.csv" for i in range(int(lo), int(hi) + 1)]
        else:
            names = [n.strip() for n in s.split(",") if n.strip()]
    else:
        names = [str(n) for n in spec]
    names = [n if n.endswith(".csv") else f"{n}.csv" for n in names]
    if not names:
        raise SyntheticError(f"file spec {spec!r}: names no files")
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise SyntheticError(f"{data_dir}: {len(missing)} of {len(names)} files of {spec!r} are missing "
                             f"(first: {missing[0]})")
    return [str(d / n) for n in names]


def read_segment_columns(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """Raw columns of one segment CSV in the file's own units and sign convention.

    Validates with tinyphysics.load_segment first (raises tinyphysics.DataError naming the
    file). Returns float64 arrays of length T: t (s), vEgo (m/s), aEgo (m/s^2), roll (rad),
    targetLateralAcceleration (m/s^2), steerCommand (log convention, NaN from row 100).
    """
    tp.load_segment(path)
    df = pd.read_csv(path)
    return {c: df[c].to_numpy(dtype=np.float64) for c in tp.CSV_COLUMNS}


# --------------------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------------------
_Q_LEVELS = np.concatenate([[0.0, 0.0005, 0.001, 0.0025, 0.005], np.linspace(0.01, 0.99, 99),
                            [0.995, 0.9975, 0.999, 0.9995, 1.0]])


def _regularised_kappa(target: np.ndarray, v: np.ndarray) -> np.ndarray:
    return target / np.maximum(v, V_KAPPA) ** 2


def _bank_smooth(x: np.ndarray) -> np.ndarray:
    """x low-passed by a centred Gaussian window (sigma BANK_SMOOTH_ROWS rows, edges held):
    the road's bank follows the curve, not the lataccel's fast wiggles."""
    k = np.arange(-3 * BANK_SMOOTH_ROWS, 3 * BANK_SMOOTH_ROWS + 1)
    w = np.exp(-0.5 * (k / BANK_SMOOTH_ROWS) ** 2)
    pad = np.r_[np.full(len(k) // 2, x[0]), x, np.full(len(k) // 2, x[-1])]
    return np.convolve(pad, w / w.sum(), "valid")


def _standardise(x: np.ndarray) -> np.ndarray:
    s = x.std()
    return (x - x.mean()) / s if s > 1e-12 else np.zeros_like(x)


def _ar_design(z: np.ndarray, p: int) -> Tuple[np.ndarray, np.ndarray]:
    return np.stack([z[p - i - 1:len(z) - i - 1] for i in range(p)], axis=1), z[p:]


def _stable(phi: np.ndarray, max_root: float = 0.999) -> np.ndarray:
    """phi with the roots of its characteristic polynomial pulled inside |z| <= max_root."""
    roots = np.roots(np.r_[1.0, -phi])
    if len(roots) and np.max(np.abs(roots)) > max_root:
        roots = roots / np.maximum(np.abs(roots) / max_root, 1.0)
        phi = -np.real(np.poly(roots))[1:]
    return phi


def _fit_ar(series: Sequence[np.ndarray], p: int) -> Tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Least-squares AR(p) of each standardised series (a tiny ridge keeps flat series sane),
    the pooled innovation quantiles and the two envelope strengths.

    Returns (phi [n, p], quantiles at _Q_LEVELS of the pooled standardised innovations,
    lam, lam_level [n]). Real lateral signals are intermittent (still on straights, fast in
    curve transitions) and a segment's values are peaked (long straights, few curves); a
    Gaussian AR is neither. lam (one per process) scales a volatility envelope on the
    innovations and is fitted by bisection to the fit series' median of
    median|diff| / std(diff); lam_level (one per series) scales a slow envelope on the level
    and is read off a simulated curve so that each series' median|x - median| / std(x)
    is reproduced (see _ar_unit)."""
    phis, res, dr, lr = [], [], [], []
    for x in series:
        z = _standardise(x)
        X, y = _ar_design(z, p)
        phi = _stable(np.linalg.solve(X.T @ X + 1e-6 * len(y) * np.eye(p), X.T @ y))
        r = y - X @ phi
        phis.append(phi)
        if r.std() > 1e-9:
            res.append(r / r.std())
        dr.append(_diff_ratio(z))
        lr.append(_level_ratio(z))
    phis = np.array(phis)
    q = np.quantile(np.concatenate(res or [np.zeros(1)]), _Q_LEVELS)
    n_sim = 32

    def sims(lam, lam_level, stat):
        rng = np.random.default_rng(12345)
        qq = q if INNOVATIONS == "empirical" else None
        return float(np.median([stat(_ar_unit(rng, phis[j % len(phis)], qq, 600, lam, lam_level[j % len(phis)]))
                                for j in range(n_sim)]))

    def fit_lam(lam_level):
        lo, hi = 0.0, 3.0
        for _ in range(8):
            lam = 0.5 * (lo + hi)
            lo, hi = (lam, hi) if sims(lam, lam_level, _diff_ratio) > np.median(dr) else (lo, lam)
        return 0.5 * (lo + hi)

    lam_level = np.zeros(len(phis))
    lam = fit_lam(lam_level)
    grid = np.linspace(0.0, 3.0, 13)
    curve = np.array([sims(lam, np.full(len(phis), g), _level_ratio) for g in grid])
    curve = np.minimum.accumulate(curve)  # monotone (decreasing) for the inverse lookup
    lam_level = np.interp(-np.asarray(lr), -curve, grid)
    lam = fit_lam(lam_level)
    return phis, q, lam, lam_level


def _level_ratio(z: np.ndarray) -> float:
    return float(np.median(np.abs(z - np.median(z))) / z.std()) if z.std() > 0 else 0.6745


def _diff_ratio(z: np.ndarray) -> float:
    d = np.diff(z)
    return float(np.median(np.abs(d)) / d.std()) if d.std() > 0 else 1.0


def _lataccel_envelope(v: np.ndarray, target: np.ndarray, width: float = 2.5,
                       margin: float = 1.1) -> Tuple[np.ndarray, np.ndarray]:
    """The largest |target| of the fit set by speed: max over bins of `width` m/s, spread
    to the neighbouring bins, times `margin`. Returns (bin centres m/s, envelope m/s^2).
    The simulator never saw larger lataccels at a speed (at highway speeds about 1.9)."""
    edges = np.arange(0.0, max(float(v.max()), width) + width, width)
    idx = np.clip(np.digitize(v, edges) - 1, 0, len(edges) - 2)
    m = np.zeros(len(edges) - 1)
    np.maximum.at(m, idx, np.abs(target))
    spread = np.maximum(m, np.maximum(np.r_[0.0, m[:-1]], np.r_[m[1:], 0.0]))
    return (edges[:-1] + edges[1:]) / 2, spread * margin


def _soft_clip(x: np.ndarray, limit: np.ndarray, knee: float = 0.8) -> np.ndarray:
    """x unchanged up to knee * limit, then saturating smoothly (tanh, slope 1 at the knee)
    towards limit: no kinks where an event meets the envelope."""
    lim = np.maximum(limit, 1e-9)
    r = np.abs(x) / lim
    w = 1.0 - knee
    sat = knee + w * np.tanh((r - knee) / w)
    return np.sign(x) * np.where(r <= knee, r, sat) * lim


def _steer_features(target: np.ndarray, roll_la: np.ndarray, v: np.ndarray, rows: int = WARMUP) -> np.ndarray:
    """Features [rows, len(STEER_FEATURES)] of the warm-up steer model (see STEER_FEATURES)."""
    k = np.arange(rows)
    vn = v[:rows] / 30.0
    cs = np.r_[0.0, np.cumsum(target)]

    def mean(lo, hi):  # mean of target[k+lo : k+hi] (clipped to the array)
        a = np.clip(k + lo, 0, len(target))
        b = np.clip(k + hi, 0, len(target))
        return (cs[b] - cs[a]) / np.maximum(b - a, 1)

    t, r = target[:rows], roll_la[:rows]
    return np.stack([np.ones(rows), t, r, t * vn, r * vn, mean(1, 6), mean(5, 16), mean(-5, 1)], axis=1)


@dataclass
class GeneratorFit:
    """Everything the generator draws from, fitted on real segments (JSON-serialisable).

    moving_params [n_moving, 8] and stop_params [n_stop, 8]: per fit segment
    (v0 m/s, aEgo mean m/s^2, log aEgo std, kappa median / kappa std, log target std (m/s^2),
    roll lataccel mean m/s^2, bank coefficient, log roll residual std (m/s^2)).
    ar["moving/aEgo"] etc.: per fit segment AR(p) coefficients [n_kind, p] (row i belongs
    to row i of the kind's params), pooled innovation quantiles, innovation envelope strength
    and per-segment level envelope strengths (see _fit_ar).
    dv_coef [3], dv_std: the v integration relation (m/s per m/s^2, m/s).
    steer_w [len(STEER_FEATURES)], steer_bias_q, steer_ar (phi, std): warm-up steer model.
    stop_cruise_speed_q: speed quantiles of stop segments while moving (m/s).
    row_counts, dts: the fit files' row counts and time steps. ranges: per column (min, max).
    lat_envelope: (speeds m/s, max |target| m/s^2) of the fit set by speed (see
    _lataccel_envelope); targets are clipped to it.
    """

    fit_files: List[str]
    moving_params: np.ndarray
    stop_params: np.ndarray
    ar: Dict[str, Tuple[np.ndarray, np.ndarray, float, np.ndarray]]
    dv_coef: np.ndarray
    dv_std: float
    steer_w: np.ndarray
    steer_bias_q: np.ndarray
    steer_ar: Tuple[float, float]
    stop_cruise_speed_q: np.ndarray
    row_counts: List[int]
    dts: List[float]
    ranges: Dict[str, Tuple[float, float]]
    lat_envelope: Tuple[np.ndarray, np.ndarray]
    extra: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-JSON form (lists and floats)."""
        return {
            "fit_files": list(self.fit_files),
            "moving_params": self.moving_params.tolist(), "stop_params": self.stop_params.tolist(),
            "ar": {k: [phi.tolist(), q.tolist(), lam, ll.tolist()] for k, (phi, q, lam, ll) in self.ar.items()},
            "dv_coef": self.dv_coef.tolist(), "dv_std": self.dv_std,
            "steer_w": self.steer_w.tolist(), "steer_bias_q": self.steer_bias_q.tolist(),
            "steer_ar": list(self.steer_ar), "stop_cruise_speed_q": self.stop_cruise_speed_q.tolist(),
            "row_counts": list(self.row_counts), "dts": list(self.dts),
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "lat_envelope": [self.lat_envelope[0].tolist(), self.lat_envelope[1].tolist()],
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorFit":
        """Inverse of to_dict."""
        return cls(
            fit_files=list(d["fit_files"]),
            moving_params=np.asarray(d["moving_params"], float).reshape(-1, 8),
            stop_params=np.asarray(d["stop_params"], float).reshape(-1, 8),
            ar={k: (np.asarray(v[0], float).reshape(-1, AR_ORDER), np.asarray(v[1], float), float(v[2]),
                    np.asarray(v[3], float)) for k, v in d["ar"].items()},
            dv_coef=np.asarray(d["dv_coef"], float), dv_std=float(d["dv_std"]),
            steer_w=np.asarray(d["steer_w"], float), steer_bias_q=np.asarray(d["steer_bias_q"], float),
            steer_ar=tuple(d["steer_ar"]), stop_cruise_speed_q=np.asarray(d["stop_cruise_speed_q"], float),
            row_counts=[int(x) for x in d["row_counts"]], dts=[float(x) for x in d["dts"]],
            ranges={k: tuple(v) for k, v in d["ranges"].items()},
            lat_envelope=(np.asarray(d["lat_envelope"][0], float), np.asarray(d["lat_envelope"][1], float)),
            extra=dict(d.get("extra", {})),
        )


def fit_generator(paths: Sequence[Union[str, os.PathLike]]) -> GeneratorFit:
    """Fit the generator's statistics on real segment CSVs (the fit set only).

    paths: real segment files (the default fit set is 00000-00079; never pass held-out
    segments). Raises SyntheticError for an empty list or fewer than 2 usable moving
    segments, tinyphysics.DataError for an invalid file.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise SyntheticError("fit set is empty: give at least one real segment CSV")
    segs = [read_segment_columns(p) for p in paths]
    moving, stop = [], []
    series = {kind: {"aEgo": [], "kappa": [], "roll_residual": []} for kind in ("moving", "stop")}
    dv_X, dv_y = [], []
    steer_X, steer_y, steer_seg = [], [], []
    stop_speeds = []
    for s in segs:
        v, a, tgt = s["vEgo"], s["aEgo"], s["targetLateralAcceleration"]
        rl = np.sin(s["roll"]) * tp.ACC_G
        kap = _regularised_kappa(tgt, v)
        tc = _bank_smooth(tgt - tgt.mean())
        bank = float(np.dot(tc, rl - rl.mean()) / (np.dot(tc, tc) + len(tc) * 0.05 ** 2))
        rres = rl - rl.mean() - bank * tc
        row = [v[0], a.mean(), math.log(a.std() + 1e-4), np.median(kap) / (kap.std() + 1e-9),
               math.log(tgt.std() + 1e-4), rl.mean(), bank, math.log(rres.std() + 1e-4)]
        kind = "stop" if v.min() < MOVING_MIN_V else "moving"
        (stop if kind == "stop" else moving).append(row)
        if kind == "stop":
            stop_speeds.append(v[v > MOVING_MIN_V])
        series[kind]["aEgo"].append(a)
        series[kind]["kappa"].append(kap)
        series[kind]["roll_residual"].append(rres)
        dv_X.append(np.stack([a[:-2], a[1:-1], a[2:]], axis=1))
        dv_y.append(np.diff(v)[:-1])
        steer_X.append(_steer_features(tgt, rl, v))
        steer_y.append(s["steerCommand"][:WARMUP])
        steer_seg.append(np.full(WARMUP, len(steer_seg)))
    if len(moving) < 2:
        raise SyntheticError(f"fit set has {len(moving)} segments that stay above {MOVING_MIN_V} m/s; need >= 2")
    dv_X, dv_y = np.concatenate(dv_X), np.concatenate(dv_y)
    dv_coef = np.linalg.lstsq(dv_X, dv_y, rcond=None)[0]
    dv_std = float((dv_y - dv_X @ dv_coef).std())
    sX, sy, sg = np.concatenate(steer_X), np.concatenate(steer_y), np.concatenate(steer_seg)
    steer_w = np.linalg.lstsq(sX, sy, rcond=None)[0]
    sres = sy - sX @ steer_w
    bias = np.array([sres[sg == i].mean() for i in range(len(segs))])
    within = sres - bias[sg]
    w2 = within.reshape(len(segs), WARMUP)
    phi1 = float(np.sum(w2[:, 1:] * w2[:, :-1]) / np.sum(w2[:, :-1] ** 2))
    innov_std = float((w2[:, 1:] - phi1 * w2[:, :-1]).std())
    all_cols = {c: np.concatenate([s[c] for s in segs]) for c in COLUMNS}
    ranges = {c: (float(x.min()), float(x.max())) for c, x in all_cols.items()}
    rl_all = np.sin(all_cols["roll"]) * tp.ACC_G
    ranges["roll_lataccel"] = (float(rl_all.min()), float(rl_all.max()))
    stop_speeds = np.concatenate(stop_speeds) if stop_speeds else np.array([5.0, 15.0])
    return GeneratorFit(
        fit_files=[Path(p).name for p in paths],
        moving_params=np.array(moving), stop_params=np.array(stop) if stop else np.array(moving),
        ar={f"{kind}/{name}": _fit_ar(x, AR_ORDER) if x else _fit_ar(series["moving"][name], AR_ORDER)
            for kind, d in series.items() for name, x in d.items()},
        dv_coef=dv_coef, dv_std=dv_std, steer_w=steer_w,
        steer_bias_q=np.quantile(bias, _Q_LEVELS), steer_ar=(phi1, innov_std),
        stop_cruise_speed_q=np.quantile(stop_speeds, _Q_LEVELS),
        row_counts=[len(s["t"]) for s in segs],
        dts=[float(s["t"][-1] / (len(s["t"]) - 1)) for s in segs],
        ranges=ranges,
        lat_envelope=_lataccel_envelope(all_cols["vEgo"], all_cols["targetLateralAcceleration"]),
        extra={"n_moving": len(moving), "n_stop": len(stop), "steer_r2": float(1 - sres.var() / sy.var())},
    )


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------
def _draw_quantile(rng: np.random.Generator, q: np.ndarray, size=None):
    return np.interp(rng.random(size), _Q_LEVELS, q)


_IMPULSE_CACHE: Dict[bytes, np.ndarray] = {}


def _impulse(phi: np.ndarray, L: int) -> np.ndarray:
    key = phi.tobytes() + L.to_bytes(4, "little")
    h = _IMPULSE_CACHE.get(key)
    if h is None:
        h = np.zeros(L)
        h[0] = 1.0
        p = len(phi)
        for k in range(1, L):
            j = min(k, p)
            h[k] = np.dot(phi[:j], h[k - 1::-1][:j])
            if k > 50 and abs(h[k]) < 1e-9 and abs(h[k - 1]) < 1e-9:
                break
        if len(_IMPULSE_CACHE) > 4096:
            _IMPULSE_CACHE.clear()
        _IMPULSE_CACHE[key] = h
    return h


def _fft_filter(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    m = 1 << int(np.ceil(np.log2(2 * len(x))))
    return np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(h, m), m)[:len(x)]


def _ar_unit(rng: np.random.Generator, phi: np.ndarray, q: np.ndarray, n: int, lam: float = 0.0,
             lam_level: float = 0.0) -> np.ndarray:
    """n rows of an AR(phi) process standardised to mean 0, std 1 over the n rows.

    Innovations are Gaussian (q None) or resampled from quantiles q (INNOVATIONS), times a volatility envelope
    exp(lam * g); the AR output is then multiplied by a level envelope exp(lam_level * g2);
    g and g2 are smooth unit Gaussian noises (_smooth_unit, ENVELOPE_ROWS and
    LEVEL_ENVELOPE_ROWS wide); 0: no envelope."""
    L = n + BURN_IN
    e = rng.normal(size=L) if q is None else _draw_quantile(rng, q, L)
    if lam > 0:
        e = e * np.exp(lam * _smooth_unit(rng, L, ENVELOPE_ROWS))
    x = _standardise(_fft_filter(e, _impulse(phi, L))[BURN_IN:])
    if lam_level > 0:
        x = x * np.exp(lam_level * _smooth_unit(rng, n, LEVEL_ENVELOPE_ROWS))
    return _standardise(x)


def _smooth_unit(rng: np.random.Generator, L: int, rows: float) -> np.ndarray:
    """L rows of smooth unit-variance Gaussian noise: white noise through a Gaussian window
    of sigma `rows` (an envelope that changes little from row to row)."""
    k = np.arange(-int(4 * rows), int(4 * rows) + 1)
    w = np.exp(-0.5 * (k / rows) ** 2)
    w /= math.sqrt(np.sum(w * w))
    return np.convolve(rng.normal(size=L + len(k) - 1), w, "valid")


def _kde_draw(rng: np.random.Generator, table: np.ndarray) -> Tuple[np.ndarray, int]:
    """A fit segment's parameter row plus KDE jitter (clipped to the table's range), and
    that segment's index."""
    spread = table.std(axis=0) if len(table) > 1 else np.abs(table[0]) * 0.1 + 1e-6
    i = int(rng.integers(len(table)))
    p = table[i] + rng.normal(size=table.shape[1]) * KDE_BANDWIDTH * spread
    return np.clip(p, table.min(axis=0), table.max(axis=0)), i


def _unit(fit: "GeneratorFit", rng: np.random.Generator, key: str, i: int, n: int) -> np.ndarray:
    phis, q, lam, lam_level = fit.ar[key]
    return _ar_unit(rng, phis[i], q if INNOVATIONS == "empirical" else None, n, lam, float(lam_level[i]))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _plateau(n: int, start: int, ramp_in: int, hold: int, ramp_out: int) -> np.ndarray:
    """0..1..0 profile over rows: smooth ramp in, hold, smooth ramp out."""
    k = np.arange(n, dtype=float)
    up = _smoothstep((k - start) / max(ramp_in, 1))
    down = 1 - _smoothstep((k - start - ramp_in - hold) / max(ramp_out, 1))
    return up * down


def _integrate_speed(fit: GeneratorFit, rng: np.random.Generator, v0: float, a: np.ndarray) -> np.ndarray:
    b = fit.dv_coef
    a_next2 = np.r_[a[2:], a[-1], a[-1]]
    dv = b[0] * a + b[1] * np.r_[a[1:], a[-1]] + b[2] * a_next2 + rng.normal(0, fit.dv_std, len(a))
    return v0 + np.r_[0.0, np.cumsum(dv[:-1])]


def _moving_drive(fit: GeneratorFit, rng: np.random.Generator, n: int):
    """Speed, accel, parameters and fit-segment index of a drive that stays within
    [MOVING_MIN_V, max fit speed]. The parameters are drawn once (rejecting them would
    bias the mix of fit segments); the accel process is redrawn up to 20 times, and a
    drive still out of range gets a constant accel offset that brings it back."""
    vlo, vhi = MOVING_MIN_V, fit.ranges["vEgo"][1]
    p, i = _kde_draw(rng, fit.moving_params)
    v0 = float(np.clip(p[0], vlo + 0.5, vhi - 0.5))
    for _ in range(20):
        a = p[1] + math.exp(p[2]) * _unit(fit, rng, "moving/aEgo", i, n)
        v = _integrate_speed(fit, rng, v0, a)
        if v.min() >= vlo and v.max() <= vhi:
            return v, a, p, i
    # shift a by c, i.e. v by c * elapsed (the integration's gain), so that v fits when its swing allows
    elapsed = np.arange(n) * float(np.sum(fit.dv_coef))
    lo_c = np.max((vlo - v)[1:] / elapsed[1:])
    hi_c = np.min((vhi - v)[1:] / elapsed[1:])
    c = float(np.clip(0.0, lo_c, hi_c)) if lo_c <= hi_c else float(lo_c)
    return np.clip(v + c * elapsed, vlo, vhi), a + c, p, i


def _stop_and_go_drive(fit: GeneratorFit, rng: np.random.Generator, n: int):
    """Speed and accel of a low-speed drive with full stops (a phase machine, 10 Hz).

    Phases: cruise (8-30 s at a speed from the fit set's stop segments) -> brake
    (0.8-2.5 m/s^2, easing near the stop) -> standstill (2-10 s) -> pull away (0.7-2 m/s^2)
    -> cruise. The durations are set so that about 14% of the rows are at standstill, as in
    the fit set's stop segments. The measured aEgo is the commanded accel through a 0.6 s
    lag plus a smooth noise (0.2 x a unit process), and v integrates it, so v stays the
    integral of aEgo; at standstill v is a small constant offset in [-0.06, 0.003] m/s and
    aEgo the noise alone, as in the logs."""
    v = np.zeros(n)
    a_out = np.zeros(n)
    noise = 0.2 * _unit(fit, rng, "stop/aEgo", int(rng.integers(len(fit.stop_params))), n)
    state = "stop" if rng.random() < 0.2 else "cruise"
    speed = 0.0 if state == "stop" else max(float(_draw_quantile(rng, fit.stop_cruise_speed_q)), 2.0)
    v_set = speed
    timer = int(rng.uniform(2, 10) * tp.FPS) if state == "stop" else int(rng.uniform(4, 30) * tp.FPS)
    decel = go = 1.0
    offset = rng.uniform(-0.06, 0.003)
    acc = 0.0
    tau = 0.6
    for k in range(n):
        if state == "cruise":
            cmd = np.clip(0.4 * (v_set - speed), -1.0, 1.0)
            timer -= 1
            if timer <= 0:
                state, decel = "brake", rng.uniform(0.8, 2.5)
        elif state == "brake":
            cmd = -decel * min(1.0, 0.3 + speed / 3.0)
        elif state == "stop":
            cmd = 0.0
            timer -= 1
            if timer <= 0:
                state, go = "go", rng.uniform(0.7, 2.0)
                v_set = max(float(_draw_quantile(rng, fit.stop_cruise_speed_q)), 3.0)
        else:  # go
            cmd = go * min(1.0, 2.0 * (v_set - speed) / max(v_set, 1.0) + 0.2)
            if speed >= 0.9 * v_set:
                state, timer = "cruise", int(rng.uniform(8, 30) * tp.FPS)
        if state == "stop":
            acc, speed = 0.0, 0.0
            v[k], a_out[k] = offset, noise[k]
            continue
        acc += (cmd - acc) * DT / tau
        speed += (acc + noise[k]) * DT
        if speed <= 0.0:
            speed, acc = 0.0, 0.0
            if state == "brake":
                state, timer = "stop", int(rng.uniform(2, 10) * tp.FPS)
                offset = rng.uniform(-0.06, 0.003)
        v[k], a_out[k] = speed, acc + noise[k]
    return v, a_out


def generate_segment(fit: GeneratorFit, rng: np.random.Generator, scenario: str = "normal") -> Dict[str, np.ndarray]:
    """One synthetic segment as raw CSV columns (file units and sign convention).

    fit: a GeneratorFit; rng: the segment's own numpy Generator; scenario: a key of
    SCENARIO_FRACTIONS. Returns float64 arrays of length T (a row count of the fit set):
    t (s), vEgo (m/s), aEgo (m/s^2), roll (rad), targetLateralAcceleration (m/s^2),
    steerCommand (log convention, NaN from row 100). Raises SyntheticError for an
    unknown scenario.
    """
    if scenario not in SCENARIO_FRACTIONS:
        raise SyntheticError(f"unknown scenario {scenario!r}; choose from {list(SCENARIO_FRACTIONS)}")
    n = int(fit.row_counts[rng.integers(len(fit.row_counts))])
    dt = float(fit.dts[rng.integers(len(fit.dts))])
    if scenario == "stop_and_go":
        kind = "stop"
        v, a = _stop_and_go_drive(fit, rng, n)
        p, i = _kde_draw(rng, fit.stop_params)
    else:
        kind = "moving"
        v, a, p, i = _moving_drive(fit, rng, n)
    # curvature (in units of its own spread) -> lataccel, scaled to the drawn segment's spread
    kappa = p[3] + _unit(fit, rng, f"{kind}/kappa", i, n)
    target = kappa * np.maximum(v, V_KAPPA) ** 2 * _smoothstep((v - V_STANDSTILL) / 1.5)
    if target.std() > 1e-9:
        target *= math.exp(p[4]) / target.std()
    k = np.arange(n)
    if scenario == "fast_lataccel":
        for _ in range(int(rng.integers(1, 4))):
            target += _fast_event(rng, v, n)
    elif scenario == "sustained_curve":
        ramp_in, ramp_out = (int(rng.uniform(2, 5) * tp.FPS) for _ in range(2))
        hold = int(rng.uniform(15, 35) * tp.FPS)
        start = int(rng.integers(WARMUP, max(WARMUP + 1, n - 20 - hold - ramp_in - ramp_out)))
        amp = rng.choice([-1, 1]) * rng.uniform(1.5, 3.0)
        shape = _plateau(n, start, ramp_in, hold, ramp_out) * _smoothstep((v - 2.0) / 6.0)
        target = target * (1 - 0.7 * shape) + amp * shape
    lo, hi = fit.ranges["targetLateralAcceleration"]
    target = np.clip(_soft_clip(target, np.interp(v, *fit.lat_envelope)), lo, hi)
    target[v < V_STANDSTILL] = 0.0
    roll_la = (p[5] + p[6] * _bank_smooth(target - target.mean())
               + math.exp(p[7]) * _unit(fit, rng, f"{kind}/roll_residual", i, n))
    rlo, rhi = fit.ranges["roll_lataccel"]
    roll_la = np.clip(roll_la, rlo, rhi)
    if scenario == "steep_roll":
        hold = int(rng.uniform(20, 45) * tp.FPS)
        ramp_in, ramp_out = (int(rng.uniform(3, 6) * tp.FPS) for _ in range(2))
        start = int(rng.integers(WARMUP, max(WARMUP + 1, n - hold - ramp_in - ramp_out)))
        amp = rng.choice([-1, 1]) * rng.uniform(1.0, 1.8)
        shape = _plateau(n, start, ramp_in, hold, ramp_out)
        roll_la = roll_la * (1 - shape) + (amp + 0.05 * (roll_la - p[5])) * shape
    roll = np.arcsin(np.clip(roll_la / tp.ACC_G, -1, 1))
    steer = _warmup_steer(fit, rng, target, roll_la, v, n)
    vlo, vhi = fit.ranges["vEgo"]
    alo, ahi = fit.ranges["aEgo"]
    return {"t": k * dt, "vEgo": np.clip(v, vlo, vhi), "aEgo": np.clip(a, alo, ahi), "roll": roll,
            "targetLateralAcceleration": target, "steerCommand": steer}


def _fast_event(rng: np.random.Generator, v: np.ndarray, n: int) -> np.ndarray:
    """An additive lataccel event at >= 5 m/s: a lane-change S-curve or a quick curve entry/exit."""
    out = np.zeros(n)
    if rng.random() < 0.5:   # S-curve: one sine period of 2-4 s, amplitude 1-2.5 m/s^2
        length = int(rng.uniform(2, 4) * tp.FPS)
        amp = rng.choice([-1, 1]) * rng.uniform(1.0, 2.5)
        shape = np.sin(2 * np.pi * np.arange(length) / length)
    else:                    # quick curve: ramp 0.6-2 s to 1.5-3 m/s^2, hold 2-8 s, ramp out
        r_in, r_out = (int(rng.uniform(0.6, 2.0) * tp.FPS) for _ in range(2))
        hold = int(rng.uniform(2, 8) * tp.FPS)
        length = r_in + hold + r_out
        amp = rng.choice([-1, 1]) * rng.uniform(1.5, 3.0)
        shape = _plateau(length, 0, r_in, hold, r_out)
    ok = np.flatnonzero(np.convolve(v >= 5.0, np.ones(length), "valid") >= length)
    ok = ok[(ok >= WARMUP) & (ok <= n - length)]
    if len(ok) == 0:
        return out
    s = int(ok[rng.integers(len(ok))])
    out[s:s + length] = amp * shape
    return out


def _warmup_steer(fit: GeneratorFit, rng: np.random.Generator, target, roll_la, v, n) -> np.ndarray:
    X = _steer_features(target, roll_la, v)
    phi, sd = fit.steer_ar
    e = rng.normal(0, sd * STEER_NOISE_SCALE, WARMUP)
    r = np.zeros(WARMUP)
    r[0] = e[0] / math.sqrt(max(1 - phi * phi, 1e-3))
    for k in range(1, WARMUP):
        r[k] = phi * r[k - 1] + e[k]
    steer = np.full(n, np.nan)
    steer[:WARMUP] = np.clip(X @ fit.steer_w + _draw_quantile(rng, fit.steer_bias_q) + r, *tp.STEER_RANGE)
    return steer


def scenario_schedule(num: int, seed: int, fractions: Optional[Dict[str, float]] = None) -> List[str]:
    """The scenario of each of num files: a golden-ratio low-discrepancy sequence (offset
    by the seed) mapped through the cumulative fractions, so every prefix of the list holds
    each scenario within about one file of its share. Raises SyntheticError for bad fractions."""
    fr = dict(SCENARIO_FRACTIONS if fractions is None else fractions)
    if any(k not in SCENARIO_FRACTIONS for k in fr) or any(x < 0 for x in fr.values()) \
            or abs(sum(fr.values()) - 1.0) > 1e-6:
        raise SyntheticError(f"scenario fractions {fr}: need non-negative shares of {list(SCENARIO_FRACTIONS)} "
                             f"summing to 1")
    names = list(fr)
    edges = np.cumsum([fr[k] for k in names])
    offset = np.random.default_rng([seed, 0x5CE7]).random()
    u = (offset + np.arange(1, num + 1) * 0.6180339887498949) % 1.0
    idx = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    return [names[i] for i in idx]


def generate(fit: GeneratorFit, num: int, seed: int,
             fractions: Optional[Dict[str, float]] = None) -> Tuple[List[Dict[str, np.ndarray]], List[str]]:
    """num synthetic segments (see generate_segment) and their scenarios.

    Segment i uses its own Generator seeded with [seed, i], so it does not depend on num.
    Raises SyntheticError when num < 1.
    """
    if not isinstance(num, (int, np.integer)) or num < 1:
        raise SyntheticError(f"num must be an integer >= 1, got {num!r}")
    scen = scenario_schedule(num, seed, fractions)
    segs = [generate_segment(fit, np.random.default_rng([seed, i]), s) for i, s in enumerate(scen)]
    return segs, scen


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def segment_csv_text(seg: Dict[str, np.ndarray]) -> str:
    """The CSV text of a segment: header CSV_COLUMNS, floats as Python repr (shortest
    round-trip, as in the real files), NaN steer as an empty field."""
    lines = [",".join(tp.CSV_COLUMNS)]
    cols = [seg[c] for c in tp.CSV_COLUMNS]
    for row in zip(*cols):
        lines.append(",".join("" if x != x else repr(float(x)) for x in row))
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_out_dir(out: Path, meta: dict, overwrite: bool) -> List[Path]:
    """Refuse an unsuitable --out; returns the old files that overwrite=True will remove."""
    if out.exists() and not out.is_dir():
        raise SyntheticError(f"--out {out}: exists and is not a directory")
    if not out.is_dir():
        return []
    existing = sorted(out.glob(f"{FILE_PREFIX}*.csv"))
    others = sorted(f.name for f in out.glob("*.csv") if not f.name.startswith(FILE_PREFIX))
    if others:
        raise SyntheticError(f"--out {out}: holds {len(others)} other CSV files (first: {others[0]}; real "
                             f"segments?); write synthetic segments to a directory of their own")
    report = out / REPORT_NAME
    if not existing and not report.exists():
        return []
    old_files = existing + ([report] if report.exists() else [])
    if overwrite:
        return old_files
    if not report.exists():
        raise SyntheticError(f"--out {out}: holds {len(existing)} {FILE_PREFIX}*.csv files but no {REPORT_NAME} "
                             f"(an interrupted run?); pass --overwrite to replace them or choose another --out")
    try:
        old = json.loads(report.read_text()).get("meta", {})
    except (OSError, ValueError) as e:
        raise SyntheticError(f"{report}: unreadable ({e}); pass --overwrite or choose another --out") from None
    keys = ("seed", "num", "fit_files", "fractions", "generator_version")
    diff = {k: (old.get(k), meta[k]) for k in keys if old.get(k) != meta[k]}
    if diff:
        raise SyntheticError(f"--out {out}: already holds synthetic files made with other settings "
                             f"(existing vs requested: {diff}); pass --overwrite to replace them "
                             f"or choose another --out")
    return []  # same settings: the same files are written again


def write_dataset(out: Union[str, os.PathLike], num: int, seed: int, fit_dir: Union[str, os.PathLike] = "data",
                  fit_files: Union[str, Sequence[str]] = DEFAULT_FIT_FILES,
                  heldout_files: Optional[Union[str, Sequence[str]]] = DEFAULT_HELDOUT_FILES,
                  fractions: Optional[Dict[str, float]] = None, overwrite: bool = False,
                  handover_model: Optional[str] = "models/tinyphysics.onnx", progress: bool = False) -> dict:
    """Fit on fit_dir/fit_files, write num CSVs out/synth_NNNNNN.csv and out/generator_report.json.

    out: output directory (created). num: number of segments (>= 1). seed: int, the only
    source of randomness (same seed and settings: byte-identical files). fit_files,
    heldout_files: file specs (see select_files) inside fit_dir; held-out files are read
    for the report only (missing ones: the report says n/a), and fit files that overlap
    them are refused. fractions: scenario shares (default SCENARIO_FRACTIONS).
    handover_model: ONNX simulator for the hand-over check (None or a missing file: skipped).

    Each CSV is written to a temporary name and renamed; the report comes last, so a
    directory without a report is an interrupted run. An out directory that holds other
    CSVs is refused; one that holds synthetic files is refused unless its report has the
    same seed, num, fit files, fractions and generator version (the same files are then
    written again) or overwrite=True (its synth_*.csv and report are removed, after the
    fit succeeded). Returns the report dict ({"meta", "report", "scenario_of_file", "fit"}).
    Raises SyntheticError / tinyphysics.DataError on bad input.
    """
    if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
        raise SyntheticError(f"--num must be an integer >= 1, got {num!r}")
    scenario_schedule(1, seed, fractions)  # validates fractions before any work
    fit_paths = select_files(fit_dir, fit_files)
    held_paths: List[str] = []
    if heldout_files:
        try:
            held_paths = select_files(fit_dir, heldout_files)
        except SyntheticError:
            held_paths = []
        overlap = sorted({Path(p).name for p in fit_paths} & {Path(p).name for p in held_paths})
        if overlap:
            raise SyntheticError(f"fit files {fit_files!r} overlap the held-out files {heldout_files!r} "
                                 f"({overlap[0]} ...): never fit on held-out segments")
    out = Path(out)
    meta = {"seed": int(seed), "num": int(num), "fit_dir": str(fit_dir), "fit_files": [Path(p).name for p in fit_paths],
            "heldout_files": [Path(p).name for p in held_paths],
            "fractions": dict(SCENARIO_FRACTIONS if fractions is None else fractions),
            "generator_version": GENERATOR_VERSION}
    to_remove = _check_out_dir(out, meta, overwrite)
    t0 = time.perf_counter()
    fit = fit_generator(fit_paths)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    segs, scen = generate(fit, num, seed, fractions)
    t_gen = time.perf_counter() - t0
    for f in to_remove:
        f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, seg in enumerate(segs):
        _atomic_write(out / f"{FILE_PREFIX}{i:06d}.csv", segment_csv_text(seg))
        if progress and (i + 1) % 200 == 0:
            print(f"  wrote {i + 1}/{num}", file=sys.stderr)
    t_write = time.perf_counter() - t0
    report = fidelity_report(segs, [read_segment_columns(p) for p in fit_paths],
                             [read_segment_columns(p) for p in held_paths] or None)
    report["scenarios"] = {k: scen.count(k) / num for k in meta["fractions"]}
    report["handover"] = None
    if handover_model and os.path.isfile(handover_model):
        model = tp.TinyPhysicsModel(handover_model)
        names = [str(out / f"{FILE_PREFIX}{i:06d}.csv") for i in range(num)]
        report["handover"] = handover_report(model, {"synthetic": names, "fit": fit_paths, "heldout": held_paths})
    meta.update(fit_seconds=round(t_fit, 3), generation_seconds=round(t_gen, 3), write_seconds=round(t_write, 3))
    full = {"meta": meta, "report": report, "scenario_of_file": scen, "fit": fit.to_dict()}
    _atomic_write(out / REPORT_NAME, json.dumps(full, indent=1))
    return full


# --------------------------------------------------------------------------------------
# Fidelity
# --------------------------------------------------------------------------------------
def ks_2samp(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_x - F_y| (same as scipy.stats.ks_2samp's
    statistic). x, y: 1-D samples (NaN dropped). Raises SyntheticError for an empty sample."""
    x = np.sort(np.asarray(x, float)[~np.isnan(x)])
    y = np.sort(np.asarray(y, float)[~np.isnan(y)])
    if len(x) == 0 or len(y) == 0:
        raise SyntheticError("ks_2samp: empty sample")
    grid = np.concatenate([x, y])
    fx = np.searchsorted(x, grid, side="right") / len(x)
    fy = np.searchsorted(y, grid, side="right") / len(y)
    return float(np.max(np.abs(fx - fy)))


def _autocorr(segs, col: str, lag: int) -> float:
    num = den = 0.0
    for s in segs:
        x = s[col] - s[col].mean()
        num += float(np.dot(x[lag:], x[:-lag]))
        den += float(np.dot(x, x))
    return num / den if den > 0 else float("nan")


def _high_power_fraction(segs, col: str, f_cut: float = 0.5) -> float:
    """Share of the (de-meaned, linearly detrended) power above f_cut Hz, pooled over segments."""
    hi = tot = 0.0
    for s in segs:
        x = s[col]
        k = np.arange(len(x))
        x = x - np.polyval(np.polyfit(k, x, 1), k)
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), DT)
        hi += float(p[f > f_cut].sum())
        tot += float(p[1:].sum())
    return hi / tot if tot > 0 else float("nan")


def coverage(segs) -> Dict[str, float]:
    """Hard-case coverage: fraction of rows with v < 5 m/s, |target| > 2 m/s^2,
    |d target| > 0.2 m/s^2 per row, |roll lataccel| > 1 m/s^2, and v < 0.3 m/s (standstill)."""
    v = np.concatenate([s["vEgo"] for s in segs])
    t = np.concatenate([s["targetLateralAcceleration"] for s in segs])
    dt = np.concatenate([np.r_[0.0, np.abs(np.diff(s["targetLateralAcceleration"]))] for s in segs])
    rl = np.concatenate([np.sin(s["roll"]) * tp.ACC_G for s in segs])
    return {"v<5": float(np.mean(v < 5)), "|target|>2": float(np.mean(np.abs(t) > 2)),
            "|d target|>0.2": float(np.mean(dt > 0.2)), "|roll lataccel|>1": float(np.mean(np.abs(rl) > 1)),
            "v<0.3 (standstill)": float(np.mean(v < V_STANDSTILL))}


def fidelity_report(synth, fit_segs, heldout_segs=None) -> dict:
    """KS distances, spectral summaries and hard-case coverage of synthetic vs real segments.

    synth, fit_segs, heldout_segs: lists of column dicts (read_segment_columns /
    generate_segment). Returns {"ks": {column or 'd column': {"synth_vs_fit", "synth_vs_heldout",
    "heldout_vs_fit"}}, "spectral": {column: {set: {"ac1", "ac10", "hf>0.5Hz"}}},
    "coverage": {set: coverage(...)}, "v_integral_residual": {set: std of
    dv - a[k+1]*0.1 (m/s)}}; held-out entries are None without held-out segments.
    """
    sets = {"synthetic": synth, "fit": fit_segs}
    if heldout_segs:
        sets["heldout"] = heldout_segs
    ks = {}
    for c in COLUMNS:
        for name, f in ((c, lambda s: s[c]), (f"d {c}", lambda s: np.diff(s[c]))):
            vals = {k: np.concatenate([f(s) for s in v]) for k, v in sets.items()}
            ks[name] = {"synth_vs_fit": ks_2samp(vals["synthetic"], vals["fit"]),
                        "synth_vs_heldout": ks_2samp(vals["synthetic"], vals["heldout"]) if heldout_segs else None,
                        "heldout_vs_fit": ks_2samp(vals["heldout"], vals["fit"]) if heldout_segs else None}
    spectral = {c: {k: {"ac1": _autocorr(v, c, 1), "ac10": _autocorr(v, c, 10),
                        "hf>0.5Hz": _high_power_fraction(v, c)} for k, v in sets.items()} for c in COLUMNS}
    vres = {k: float(np.concatenate([np.diff(s["vEgo"]) - s["aEgo"][1:] * DT for s in v]).std())
            for k, v in sets.items()}
    return {"ks": ks, "spectral": spectral, "coverage": {k: coverage(v) for k, v in sets.items()},
            "v_integral_residual": vres}


def handover_errors(model, segments: Sequence[tp.Segment], free_run_start: int = HANDOVER_FREE_RUN_START,
                    steps: Tuple[int, int] = HANDOVER_STEPS) -> Dict[str, np.ndarray]:
    """How well the warm-up steer explains the targets, in the simulator's eyes.

    model: anything with probs(states float32 [N,20,4], tokens int64 [N,20]) -> [N,1024]
    (tinyphysics.TinyPhysicsModel or a tinyphysics_torch model). segments: loaded Segments.
    Returns float64 arrays [N, steps[1]-steps[0]] of |lataccel - target| (m/s^2) at steps
    steps[0]..steps[1]-1:
      one_step: the model's expected lataccel with the history as the simulator holds it
                during warm-up (logged steer, lataccel = target);
      free_run: the model's expected lataccel fed back as its own history from step
                free_run_start on, driven by the logged steer (what the controller would
                inherit if the simulator, not the log, had produced the warm-up).
    """
    segments = list(segments)
    sim = tp.BatchedSimulator(model, segments, rngs=np.random.default_rng(0))
    for i, s in enumerate(segments):
        sim.set_row(i, s, start_step=tp.CONTROL_START_IDX)
    rows = np.arange(len(segments))
    bins = tp.TOKENIZER.bins

    def expected(lat, s):
        states, tokens = tp.build_model_inputs(sim.action, sim.roll, sim.v, sim.a, lat, rows,
                                               np.full(len(rows), s))
        return np.asarray(model.probs(states, tokens), dtype=np.float64) @ bins

    lo, hi = steps
    one = np.stack([np.abs(expected(sim.lataccel, s) - sim.target[:, s]) for s in range(lo, hi)], axis=1)
    lat = sim.lataccel.copy()
    for s in range(free_run_start, hi):
        pred = expected(lat, s)
        cur = lat[:, s - 1]
        lat[:, s] = np.clip(pred, cur - tp.MAX_ACC_DELTA, cur + tp.MAX_ACC_DELTA)
    free = np.abs(lat[:, lo:hi] - sim.target[:, lo:hi])
    return {"one_step": one, "free_run": free}


def handover_report(model, path_sets: Dict[str, Sequence[str]]) -> Dict[str, Dict[str, float]]:
    """handover_errors summarised per named set of CSV paths: mean, median and p90 (m/s^2)."""
    out = {}
    for name, paths in path_sets.items():
        if not paths:
            continue
        e = handover_errors(model, [tp.load_segment(p) for p in paths])
        out[name] = {f"{k}_{stat}": float(fn(v)) for k, v in e.items()
                     for stat, fn in (("mean", np.mean), ("median", np.median),
                                      ("p90", lambda x: np.quantile(x, 0.9)))}
        out[name]["segments"] = len(paths)
    return out


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def format_report(full: dict) -> str:
    """Markdown tables (KS, spectral, coverage, hand-over) of a generator_report.json dict."""
    r, m = full["report"], full["meta"]
    nan = float("nan")
    lines = [f"synthetic segments: {m['num']} (seed {m['seed']}), fit on {len(m['fit_files'])} files "
             f"({m['fit_files'][0]}..{m['fit_files'][-1]}), held-out {len(m['heldout_files'])}; "
             f"fit {m.get('fit_seconds', nan):.1f} s, generation {m.get('generation_seconds', nan):.1f} s, "
             f"writing {m.get('write_seconds', nan):.1f} s", "",
             "| column | KS synth vs fit | KS synth vs held-out | KS held-out vs fit (real vs real) |",
             "|---|---|---|---|"]

    def f(x, fmt="{:.3f}"):
        return "n/a" if x is None else fmt.format(x)
    for c, d in r["ks"].items():
        lines.append(f"| {c} | {f(d['synth_vs_fit'])} | {f(d['synth_vs_heldout'])} | {f(d['heldout_vs_fit'])} |")
    sets = list(next(iter(r["spectral"].values())))
    lines += ["", "| column | " + " | ".join(f"ac1 / ac10 / power>0.5Hz ({s})" for s in sets) + " |",
              "|---|" + "---|" * len(sets)]
    for c, d in r["spectral"].items():
        lines.append(f"| {c} | " + " | ".join(
            f"{d[s]['ac1']:.3f} / {d[s]['ac10']:.3f} / {d[s]['hf>0.5Hz']:.4f}" for s in sets) + " |")
    keys = list(next(iter(r["coverage"].values())))
    lines += ["", "| rows with | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for k in keys:
        lines.append(f"| {_md(k)} | " + " | ".join(f"{r['coverage'][s][k]:.4f}" for s in sets) + " |")
    lines.append("| std(dv - a*dt) m/s | " + " | ".join(f"{r['v_integral_residual'][s]:.4f}" for s in sets) + " |")
    lines += ["", "| scenario | share of files |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["scenarios"].items()]
    if full["report"].get("handover"):
        h = full["report"]["handover"]
        lines += ["", "| \\|lataccel - target\\| at steps 90-99 (m/s^2) | " + " | ".join(h) + " |",
                  "|---|" + "---|" * len(h)]
        for k in ("one_step_mean", "one_step_median", "free_run_mean", "free_run_median", "free_run_p90"):
            lines.append(f"| {k} | " + " | ".join(f"{h[s][k]:.4f}" for s in h) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (2 with a message on bad input)."""
    ap = argparse.ArgumentParser(prog="python -m ppo_training.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (e.g. data/synthetic)")
    ap.add_argument("--num", type=int, default=1000, help="number of synthetic segments")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit_dir", default="data", help="directory of the real segments")
    ap.add_argument("--fit_files", default=DEFAULT_FIT_FILES, help="fit set: 'A-B' or comma-separated names")
    ap.add_argument("--heldout_files", default=DEFAULT_HELDOUT_FILES, help="reported against, never fitted")
    ap.add_argument("--model_path", default="models/tinyphysics.onnx", help="simulator model for the hand-over check")
    ap.add_argument("--no_handover", action="store_true", help="skip the hand-over check")
    ap.add_argument("--overwrite", action="store_true", help="replace synthetic files already in --out")
    ap.add_argument("--report", action="store_true", help="print the fitness table of an existing --out")
    args = ap.parse_args(argv)
    try:
        if args.report:
            path = Path(args.out) / REPORT_NAME
            if not path.is_file():
                raise SyntheticError(f"{path}: no generator report (generate first, without --report)")
            print(format_report(json.loads(path.read_text())))
            return 0
        full = write_dataset(args.out, args.num, args.seed, args.fit_dir, args.fit_files, args.heldout_files,
                             overwrite=args.overwrite, handover_model=None if args.no_handover else args.model_path,
                             progress=True)
    except (SyntheticError, tp.DataError, tp.ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(full))
    print(f"\nwrote {args.num} files and {REPORT_NAME} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
