"""Procedural chest radiograph phantom, pure numpy.

The phantom is an attenuation-like map: float32 in [0, 1], bright = dense (bone, soft tissue,
fluid, metal), dark = air. Anatomy (body outline, lungs, heart, mediastinum, spine, ribs,
clavicles, diaphragm, lung markings) is drawn from a few per-patient parameters, so patients
differ, and the 13 CheXpert findings plus support devices change it in ways that stay visible
at 128 px (that is what makes the demo dataset learnable).

Geometry lives in "height units": ``u`` runs left to right and ``v`` top to bottom, both
centred on the image and scaled by the number of rows, so shapes keep their proportions on
any aspect ratio. On frontal views the patient's right is on the image left (u < 0), as a
radiologist reads a PA film. On lateral views anterior is on the image left.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from cxr.observations import OBSERVATIONS

MAX_RENDER_SIDE = 768
"""Larger images are rendered at this size and upsampled (fine noise is added at full size)."""

FRONTAL = "frontal"
LATERAL = "lateral"

RENDERABLE = OBSERVATIONS[1:]  # every observation but No Finding changes the image

_ZONE_V = {"upper": -0.20, "middle": -0.02, "lower": 0.15}


@dataclass(frozen=True)
class Anatomy:
    """Per-patient body geometry and exposure, in height units (see module docstring).

    Attributes:
        body_half_width: Half width of the trunk.
        lung_top: ``v`` of the lung apices.
        costophrenic_v: ``v`` of the lateral costophrenic angles.
        lung_lateral: Lateral extent of each lung (``|u|``).
        lung_medial: Medial edge of each lung (``|u|``), i.e. half the mediastinal width.
        heart_rx: Horizontal radius of the heart silhouette.
        heart_ry: Vertical radius of the heart silhouette.
        heart_shift: Offset of the heart centre towards the patient's left.
        heart_v: ``v`` of the heart centre.
        dome_height: How far the hemidiaphragm domes rise above the costophrenic angles.
        right_dome_lift: Extra height of the right hemidiaphragm.
        rib_spacing: Distance between consecutive posterior ribs.
        rib_curve: Curvature of the posterior ribs.
        rotation_deg: In-plane rotation of the patient.
        zoom: Magnification of the whole thorax.
        shift_u: Horizontal offset of the patient in the field.
        gain: Exposure gain applied to the final map.
        offset: Exposure offset applied to the final map.
        gamma: Exposure gamma applied to the final map.
        noise: Standard deviation of the quantum noise.
        texture_seed: Seed of the lung-marking texture.
    """

    body_half_width: float
    lung_top: float
    costophrenic_v: float
    lung_lateral: float
    lung_medial: float
    heart_rx: float
    heart_ry: float
    heart_shift: float
    heart_v: float
    dome_height: float
    right_dome_lift: float
    rib_spacing: float
    rib_curve: float
    rotation_deg: float
    zoom: float
    shift_u: float
    gain: float
    offset: float
    gamma: float
    noise: float
    texture_seed: int


@dataclass(frozen=True)
class RenderFinding:
    """One finding to draw.

    Attributes:
        observation: CheXpert observation name (one of ``RENDERABLE``).
        side: Patient side: ``"left"``, ``"right"`` or ``"bilateral"``.
        severity: Size of the finding, 0 (minimal) to 1 (large).
        strength: Density multiplier, 1 for a definite finding, about 0.5 for an uncertain one.
        zone: Lung zone: ``"upper"``, ``"middle"`` or ``"lower"``.
        device: For support devices: ``"ett"``, ``"ng"``, ``"picc"``, ``"pacemaker"`` or
            ``"chest_tube"``.
        seed: Placement randomness (blob shapes, positions).
    """

    observation: str
    side: str = "right"
    severity: float = 0.5
    strength: float = 1.0
    zone: str = "lower"
    device: str = ""
    seed: int = 0


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draws a random patient: body habitus, organ sizes, positioning and exposure."""
    u = rng.uniform
    return Anatomy(
        body_half_width=u(0.40, 0.46),
        lung_top=u(-0.37, -0.32),
        costophrenic_v=u(0.24, 0.30),
        lung_lateral=u(0.31, 0.35),
        lung_medial=u(0.045, 0.06),
        heart_rx=u(0.145, 0.165),
        heart_ry=u(0.095, 0.11),
        heart_shift=u(0.03, 0.05),
        heart_v=u(0.12, 0.15),
        dome_height=u(0.06, 0.09),
        right_dome_lift=u(0.01, 0.03),
        rib_spacing=u(0.052, 0.062),
        rib_curve=u(1.3, 1.7),
        rotation_deg=u(-4.0, 4.0),
        zoom=u(0.93, 1.06),
        shift_u=u(-0.02, 0.02),
        gain=u(0.9, 1.1),
        offset=u(-0.03, 0.03),
        gamma=u(0.85, 1.15),
        noise=u(0.008, 0.016),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def jitter_anatomy(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same patient on another day: new positioning and exposure, same body."""
    u = rng.uniform
    return replace(
        anatomy,
        rotation_deg=float(np.clip(anatomy.rotation_deg + u(-1.5, 1.5), -4.5, 4.5)),
        zoom=float(np.clip(anatomy.zoom * u(0.98, 1.02), 0.9, 1.08)),
        shift_u=u(-0.02, 0.02),
        gain=u(0.9, 1.1),
        offset=u(-0.03, 0.03),
        gamma=u(0.85, 1.15),
        noise=u(0.008, 0.016),
    )


class _Grid:
    """Pixel grid with rotated/zoomed anatomical coordinates and cheap local windows."""

    def __init__(self, rows: int, cols: int, anatomy: Anatomy) -> None:
        self.rows, self.cols = rows, cols
        theta = np.deg2rad(anatomy.rotation_deg)
        self.cos, self.sin = float(np.cos(theta)), float(np.sin(theta))
        self.zoom = anatomy.zoom
        self.shift_u = anatomy.shift_u
        col_u = ((np.arange(cols, dtype=np.float32) + 0.5) - cols / 2) / rows
        row_v = ((np.arange(rows, dtype=np.float32) + 0.5) - rows / 2) / rows
        cu, rv = col_u[None, :], row_v[:, None]
        self.u = ((cu * self.cos + rv * self.sin) / self.zoom - self.shift_u).astype(np.float32)
        self.v = ((-cu * self.sin + rv * self.cos) / self.zoom).astype(np.float32)

    def window(self, u0: float, v0: float, radius: float) -> tuple[slice, slice]:
        """Pixel slices covering the disc of ``radius`` around anatomical point (u0, v0)."""
        up, vp = (u0 + self.shift_u) * self.zoom, v0 * self.zoom
        cu = up * self.cos - vp * self.sin
        rv = up * self.sin + vp * self.cos
        col = cu * self.rows + self.cols / 2
        row = rv * self.rows + self.rows / 2
        rad = radius * self.zoom * self.rows + 2
        r0, r1 = int(max(row - rad, 0)), int(min(row + rad + 1, self.rows))
        c0, c1 = int(max(col - rad, 0)), int(min(col + rad + 1, self.cols))
        if r1 <= r0 or c1 <= c0:
            return slice(0, 0), slice(0, 0)
        return slice(r0, r1), slice(c0, c1)


def _inside(f: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of an implicit shape ``f <= 1`` with an edge width ``edge`` (in f units)."""
    return np.clip((1.0 - f) / edge, 0.0, 1.0)


def _pow8(x: np.ndarray) -> np.ndarray:
    """x**8 by repeated squaring (several times faster than a float power)."""
    x = x * x
    x *= x
    x *= x
    return x


def _smooth_noise(
    rng: np.random.Generator, rows: int, cols: int, cells: tuple[int, int]
) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bilinearly."""
    small = rng.random(cells, dtype=np.float32)
    img = Image.fromarray(small).resize((cols, rows), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def _segment_distance(
    u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    """Distance from every (u, v) to the segment p0-p1."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    length2 = du * du + dv * dv or 1e-12
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / length2, 0.0, 1.0)
    return np.hypot(u - (p0[0] + t * du), v - (p0[1] + t * dv))


def _draw_polyline(
    img: np.ndarray,
    grid: _Grid,
    points: Sequence[tuple[float, float]],
    width: float,
    value: float,
) -> None:
    """Adds a bright line (a tube or wire) of half-width ``width`` through ``points``."""
    for p0, p1 in itertools.pairwise(points):
        mid = ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2)
        radius = float(np.hypot(p1[0] - p0[0], p1[1] - p0[1])) / 2 + 3 * width
        rs, cs = grid.window(mid[0], mid[1], radius)
        dist = _segment_distance(grid.u[rs, cs], grid.v[rs, cs], p0, p1)
        line = np.clip(1.5 - dist / width, 0.0, 1.0)
        np.maximum(img[rs, cs], line * value, out=img[rs, cs])


def _add_blob(
    img: np.ndarray,
    grid: _Grid,
    center: tuple[float, float],
    sigma: float,
    amplitude: float,
    sharp: bool = False,
) -> None:
    """Adds a Gaussian blob (or a sharp-edged disc when ``sharp``) at ``center``."""
    rs, cs = grid.window(center[0], center[1], 3.2 * sigma)
    r2 = (grid.u[rs, cs] - center[0]) ** 2 + (grid.v[rs, cs] - center[1]) ** 2
    if sharp:
        blob = np.clip((sigma - np.sqrt(r2)) / (0.25 * sigma) + 0.5, 0.0, 1.0)
    else:
        blob = np.exp(-r2 / (2 * sigma * sigma))
    img[rs, cs] += amplitude * blob


def _sides(side: str) -> tuple[int, ...]:
    """Image-side signs for a patient side on a frontal view (patient right = image left)."""
    if side == "bilateral":
        return (-1, 1)
    return (-1,) if side == "right" else (1,)


@dataclass
class _Frontal:
    """Frontal geometry after findings that change anatomy (heart size, mediastinum)."""

    heart_rx: float
    heart_ry: float
    heart_shift: float
    medi_scale: float
    dome_lift: dict[int, float]


def render_chest(
    anatomy: Anatomy,
    findings: Sequence[RenderFinding],
    rows: int,
    cols: int,
    view: str = FRONTAL,
    seed: int = 0,
) -> np.ndarray:
    """Renders one radiograph of ``anatomy`` with ``findings``.

    Args:
        anatomy: The patient (see ``sample_anatomy``).
        findings: Findings to draw; their ``strength`` already encodes certainty.
        rows: Output height in pixels.
        cols: Output width in pixels.
        view: ``"frontal"`` (PA/AP) or ``"lateral"``.
        seed: Seed of the per-image noise.

    Returns:
        float32 array of shape (rows, cols) in [0, 1], bright = dense.
    """
    rng = np.random.default_rng(seed)
    scale = min(1.0, MAX_RENDER_SIDE / max(rows, cols))
    work_rows, work_cols = max(16, round(rows * scale)), max(16, round(cols * scale))
    grid = _Grid(work_rows, work_cols, anatomy)
    if view == LATERAL:
        density = _render_lateral(grid, anatomy, findings)
    elif view == FRONTAL:
        density = _render_frontal(grid, anatomy, findings)
    else:
        raise ValueError(f"view must be {FRONTAL!r} or {LATERAL!r}, got {view!r}")

    density = np.clip(density, 0.0, 1.2) / 1.2
    density = anatomy.offset + anatomy.gain * np.power(density, anatomy.gamma, dtype=np.float32)
    density += rng.standard_normal(density.shape, dtype=np.float32) * (anatomy.noise * 0.6)
    if (work_rows, work_cols) != (rows, cols):
        resized = Image.fromarray(density.astype(np.float32)).resize(
            (cols, rows), Image.Resampling.BILINEAR
        )
        density = np.asarray(resized, dtype=np.float32).copy()
    density += rng.standard_normal(density.shape, dtype=np.float32) * (anatomy.noise * 0.6)
    return np.clip(density, 0.0, 1.0).astype(np.float32)


def _frontal_geometry(anatomy: Anatomy, findings: Sequence[RenderFinding]) -> _Frontal:
    """Applies the findings that change organ sizes and diaphragm heights."""
    geo = _Frontal(
        heart_rx=anatomy.heart_rx,
        heart_ry=anatomy.heart_ry,
        heart_shift=anatomy.heart_shift,
        medi_scale=1.0,
        dome_lift={-1: anatomy.right_dome_lift, 1: 0.0},
    )
    for f in findings:
        grow = f.strength * (0.5 + 0.5 * f.severity)
        if f.observation == "Cardiomegaly":
            geo.heart_rx *= 1.0 + 0.45 * grow
            geo.heart_ry *= 1.0 + 0.12 * grow
            geo.heart_shift += 0.02 * grow
        elif f.observation == "Enlarged Cardiomediastinum":
            geo.medi_scale *= 1.0 + 0.9 * grow
            geo.heart_rx *= 1.0 + 0.12 * grow
        elif f.observation == "Atelectasis":
            for s in _sides(f.side):
                geo.dome_lift[s] += 0.015 * f.strength
    return geo


def _render_frontal(grid: _Grid, anatomy: Anatomy, findings: Sequence[RenderFinding]) -> np.ndarray:
    """Density map of a PA/AP view (before exposure and noise)."""
    u, v = grid.u, grid.v
    a = np.abs(u)
    side = np.where(u < 0, -1, 1).astype(np.int8)
    geo = _frontal_geometry(anatomy, findings)
    texture_rng = np.random.default_rng(anatomy.texture_seed)

    # Body outline: trunk with flat shoulders that fall off towards the neck.
    shoulder_w = anatomy.body_half_width + 0.04
    drop = np.clip((-0.30 - v) / 0.19, 0.0, 1.0) ** 3
    half_width = np.maximum(shoulder_w - (shoulder_w - 0.09) * drop, 0.09)
    half_width = half_width - 0.04 * np.clip((v - 0.1) / 0.4, 0.0, 1.0)
    body = np.clip((half_width - a) / 0.02, 0.0, 1.0)

    # Lungs: elliptical apex above, straight lateral wall below, cut by the domes.
    medial, lateral = anatomy.lung_medial * geo.medi_scale**0.3, anatomy.lung_lateral
    center_a = (medial + lateral) / 2
    radius_a = (lateral - medial) / 2
    v_mid = anatomy.lung_top + 0.22
    dv = np.minimum(v - v_mid, 0.0) / 0.22
    lung_f = np.sqrt(((a - center_a) / radius_a) ** 2 + dv * dv)
    rel = np.clip((a - medial) / (lateral - medial), 0.0, 1.0)
    lift = np.where(side < 0, geo.dome_lift[-1], geo.dome_lift[1]).astype(np.float32)
    dome_rise = np.clip(np.sin(np.pi * rel), 0.0, 1.0) ** 0.6
    dome_v = anatomy.costophrenic_v - lift - anatomy.dome_height * dome_rise
    dome_v = dome_v - 0.02 * (1 - rel)
    lungs = _inside(lung_f, 0.06) * np.clip((dome_v - v) / 0.012, 0.0, 1.0)

    # Heart and mediastinum (with the aortic knob on the patient's left).
    hu, hv = u - geo.heart_shift, v - anatomy.heart_v
    # The long axis of the heart points down towards the patient's left (image right).
    heart_f = np.sqrt(
        ((0.87 * hu + 0.5 * hv) / geo.heart_rx) ** 2 + ((-0.5 * hu + 0.87 * hv) / geo.heart_ry) ** 2
    )
    heart = _inside(heart_f, 0.08) * np.clip((dome_v + 0.03 - v) / 0.02, 0.0, 1.0)
    medi_half = (0.045 + 0.012 * np.clip((v + 0.1) / 0.2, 0.0, 1.0)) * geo.medi_scale
    medi = np.clip((medi_half - a) / 0.01, 0.0, 1.0) * np.clip((v + 0.48) / 0.04, 0.0, 1.0)
    knob_f = np.hypot(u - (0.04 + 0.02 * geo.medi_scale), v + 0.16) / (0.028 * geo.medi_scale)
    medi = np.maximum(medi, _inside(knob_f, 0.3))
    soft_organs = np.maximum(heart, medi)

    air = lungs * (1.0 - soft_organs)
    fluid = np.zeros_like(u)
    markings_gate = np.ones_like(u)
    extra = np.zeros_like(u)

    # Lung markings: vessels radiating from the hila plus low-frequency texture.
    rows, cols = u.shape
    coarse = _smooth_noise(texture_rng, rows, cols, (14, 12))
    fine = _smooth_noise(texture_rng, rows, cols, (48, 40))
    hilum_u, hilum_v = 0.10, -0.02
    du, dvh = a - hilum_u, v - hilum_v
    theta = np.arctan2(dvh, du + 1e-3)
    dist = np.hypot(du, dvh)
    branches = _pow8(0.5 + 0.5 * np.cos(theta * 19.0 + 14.0 * coarse + 6.0 * fine))
    twigs = _pow8(0.5 + 0.5 * np.cos(theta * 37.0 + 20.0 * fine))
    vessels = (0.7 * branches + 0.3 * twigs) * (0.4 + fine) * np.clip(dist / 0.06, 0.0, 1.0)
    markings = (0.6 * vessels + 0.4 * fine) * np.exp(-dist / 0.22)
    markings += 0.6 * np.exp(-(dist * dist) / (2 * 0.035**2))

    # Findings that replace air (effusion) or add air (pneumothorax).
    for f in findings:
        if f.observation == "Pleural Effusion":
            for s in _sides(f.side):
                height = (0.06 + 0.22 * f.severity) * (0.4 + 0.6 * f.strength)
                men_v = anatomy.costophrenic_v - height * (0.35 + 0.65 * rel**1.5)
                wet = np.clip((v - men_v) / 0.015, 0.0, 1.0) * (side == s) * (a > medial * 0.8)
                wet = wet * np.clip((v - anatomy.lung_top) / 0.05, 0.0, 1.0)
                fluid = np.maximum(fluid, wet * min(1.0, 0.5 + 0.6 * f.strength))
        elif f.observation == "Pneumothorax":
            for s in _sides(f.side):
                depth = (0.12 + 0.25 * f.severity) * (0.5 + 0.5 * f.strength)
                in_side = (side == s) & (u * s > center_a * 0.9) | (side == s) & (v < v_mid)
                rim = ((lung_f > 1.0 - depth) & in_side & (v < v_mid + 0.12)).astype(np.float32)
                rim *= lungs
                markings_gate *= 1.0 - rim
                extra -= 0.10 * f.strength * rim
                pleural_line = np.exp(-(((lung_f - (1.0 - depth)) / 0.025) ** 2))
                pleural_line *= in_side & (v < v_mid + 0.12)
                extra += 0.22 * f.strength * pleural_line * lungs

    air = air * (1.0 - fluid)
    density = 0.02 + 0.50 * body
    density += 0.04 * np.clip((v - dome_v) / 0.05, 0.0, 1.0) * body
    density -= 0.36 * air
    density += 0.05 * soft_organs
    density += 0.16 * fluid * lungs
    density += 0.085 * air * markings * markings_gate
    density += extra

    # Trachea (air column) and spine.
    trachea = np.clip((0.014 - np.abs(u - 0.002)) / 0.005, 0.0, 1.0) * (v < -0.13) * (v > -0.5)
    density -= 0.10 * trachea
    spine_half = 0.032
    spine = np.clip((spine_half - a) / 0.006, 0.0, 1.0) * (v > -0.5)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (v / 0.047))
    density += 0.13 * spine * vertebrae

    density += _ribs(grid, anatomy, findings, dome_v, side)
    for s in (-1, 1):
        pts = [(s * 0.035, -0.355), (s * 0.16, -0.38), (s * 0.30, -0.415)]
        clav = np.zeros_like(u)
        _draw_polyline(clav, grid, pts, 0.011, 1.0)
        density += 0.17 * clav

    density += _frontal_opacities(grid, anatomy, findings, lungs, heart, center_a, lung_f, side)
    _frontal_devices(density, grid, anatomy, findings)
    return density


def _ribs(
    grid: _Grid,
    anatomy: Anatomy,
    findings: Sequence[RenderFinding],
    dome_v: np.ndarray,
    side: np.ndarray,
) -> np.ndarray:
    """Posterior and anterior rib bands over the thorax, with optional fractures.

    A fracture breaks its rib (a lucent gap), offsets the lateral fragment, and carries a
    fusiform callus (healing bone, denser than the rib) a few pixels wide at 128 px: a
    fracture line alone is under a pixel at that resolution, invisible to any model.
    """
    u, v = grid.u, grid.v
    a = np.abs(u)
    start = anatomy.lung_top - 0.03
    offset = -0.15 * a + anatomy.rib_curve * a * a
    phase = (v - offset - start) / anatomy.rib_spacing
    gap = np.ones_like(u)
    callus = np.zeros_like(u)
    for f in findings:
        if f.observation != "Fracture":
            continue
        for s in _sides(f.side):
            rib_rng = np.random.default_rng(f.seed)
            fa = float(rib_rng.uniform(0.24, 0.29))
            zone_rib = {"upper": 2, "middle": 4, "lower": 6}.get(f.zone, 4)
            rib = zone_rib + int(rib_rng.integers(0, 2))
            fv = start + (-0.15 * fa + anatomy.rib_curve * fa * fa) + rib * anatomy.rib_spacing
            rs, cs = grid.window(s * fa, fv, 0.06)
            lu, lv = u[rs, cs], v[rs, cs]
            local = np.exp(-((lu - s * fa) ** 2 + (lv - fv) ** 2) / (2 * 0.035**2))
            local *= side[rs, cs] == s
            across = (lu * s - fa) / 0.004
            step = 1.0 / (1.0 + np.exp(-np.clip(across, -30, 30)))
            phase[rs, cs] += 0.5 * f.strength * step * local
            gap[rs, cs] *= 1.0 - 0.95 * f.strength * np.exp(-((across / 3.5) ** 2)) * local
            du, dv = lu * s - fa, lv - fv
            blob = np.exp(-((du / 0.022) ** 2 + (dv / 0.013) ** 2) / 2.0)
            callus[rs, cs] += 0.16 * f.strength * blob * (side[rs, cs] == s)
    posterior = 0.5 + 0.5 * np.cos(2 * np.pi * phase)
    posterior = np.clip((posterior - 0.45) / 0.35, 0.0, 1.0) * gap
    anterior_phase = (v + 0.45 * a - start - 0.05) / (anatomy.rib_spacing * 1.35)
    anterior = np.clip((0.5 + 0.5 * np.cos(2 * np.pi * anterior_phase) - 0.6) / 0.4, 0.0, 1.0)
    cage = ((u / (anatomy.body_half_width - 0.02)) ** 2 + ((v - 0.0) / 0.48) ** 2) < 1.0
    cage = cage & (a > 0.03)
    top_fade = np.clip((v - anatomy.lung_top + 0.07) / 0.06, 0.0, 1.0)
    lateral_fade = np.clip((anatomy.lung_lateral + 0.05 - a) / 0.05, 0.0, 1.0) * top_fade
    below_dome = np.clip((v - dome_v) / 0.08, 0.0, 1.0)
    bands = 0.12 * posterior + 0.04 * anterior * (a > 0.06)
    return bands * cage * lateral_fade * (1.0 - below_dome) + callus * cage


def _zone_center(
    anatomy: Anatomy, zone: str, s: int, rng: np.random.Generator
) -> tuple[float, float]:
    """A point inside the lung on image side ``s`` in the given zone."""
    mid_a = (anatomy.lung_medial + anatomy.lung_lateral) / 2
    v = _ZONE_V.get(zone, 0.0) + rng.uniform(-0.03, 0.03)
    a = mid_a + rng.uniform(-0.03, 0.05) + (0.04 if zone == "lower" else 0.0)
    return s * a, v


def _frontal_opacities(
    grid: _Grid,
    anatomy: Anatomy,
    findings: Sequence[RenderFinding],
    lungs: np.ndarray,
    heart: np.ndarray,
    center_a: float,
    lung_f: np.ndarray,
    side: np.ndarray,
) -> np.ndarray:
    """Parenchymal and pleural densities: opacities, edema, nodules, atelectasis, thickening."""
    u, v = grid.u, grid.v
    out = np.zeros_like(u)
    lung_only = lungs * (1.0 - 0.6 * heart)
    for f in findings:
        rng = np.random.default_rng(f.seed)
        obs = f.observation
        if obs in ("Consolidation", "Pneumonia", "Lung Opacity"):
            dense = obs != "Lung Opacity"
            amp = (0.30 if dense else 0.20) * f.strength
            blobs = np.zeros_like(u)
            for s in _sides(f.side):
                cu, cv = _zone_center(anatomy, f.zone, s, rng)
                size = (0.045 if dense else 0.055) * (0.8 + 0.6 * f.severity)
                for _ in range(5):
                    center = (cu + rng.normal(0, size * 0.6), cv + rng.normal(0, size * 0.6))
                    _add_blob(blobs, grid, center, size * rng.uniform(0.6, 1.0), 1.0)
            patch = np.clip(blobs, 0.0, 1.3)
            out += amp * patch * lung_only
        elif obs == "Edema":
            amp = (0.12 + 0.10 * f.severity) * f.strength
            hilar = np.zeros_like(u)
            for s in (-1, 1):
                _add_blob(hilar, grid, (s * 0.14, 0.0), 0.10 + 0.03 * f.severity, 1.0)
            out += amp * np.clip(hilar, 0.0, 1.0) * lungs
        elif obs == "Lung Lesion":
            s = _sides(f.side)[0]
            cu, cv = _zone_center(anatomy, f.zone, s, rng)
            radius = 0.014 + 0.035 * f.severity
            _add_blob(out, grid, (cu, cv), radius, 0.30 * f.strength, sharp=True)
        elif obs == "Atelectasis":
            for s in _sides(f.side):
                base_v = anatomy.costophrenic_v - 0.075 + rng.uniform(-0.015, 0.01)
                a0 = anatomy.lung_medial + 0.07 + rng.uniform(0.0, 0.03)
                a1 = a0 + 0.10 + 0.06 * f.severity
                band = np.zeros_like(u)
                tilt = rng.uniform(-0.02, 0.02)
                _draw_polyline(band, grid, [(s * a0, base_v + tilt), (s * a1, base_v)], 0.016, 1.0)
                out += 0.36 * f.strength * band * lungs
        elif obs == "Pleural Other":
            for s in _sides(f.side):
                thick = 0.22 + 0.12 * f.severity
                lateral_part = ((u * s > center_a) & (side == s)) * np.clip(
                    (v - anatomy.lung_top - 0.08) / 0.08, 0.0, 1.0
                )
                rim = np.clip((lung_f - (1.0 - thick)) / 0.05, 0.0, 1.0) * lateral_part
                out += 0.32 * f.strength * rim * np.clip(lungs * 3.0, 0.0, 1.0)
    return out


def _frontal_devices(
    density: np.ndarray, grid: _Grid, anatomy: Anatomy, findings: Sequence[RenderFinding]
) -> None:
    """Radiopaque tubes, lines and a pacemaker with bright tips (drawn in place)."""
    metal = np.zeros_like(density)
    for f in findings:
        if f.observation != "Support Devices":
            continue
        s = 1 if f.side == "left" else -1
        value = 0.55 * max(f.strength, 0.6)
        device = f.device or "ett"
        if device == "ett":
            pts = [(0.004, -0.56), (0.003, -0.35), (0.002, -0.19)]
            _draw_polyline(metal, grid, pts, 0.006, value)
            _add_blob(metal, grid, pts[-1], 0.009, value * 0.6, sharp=True)
        elif device == "ng":
            pts = [(0.01, -0.56), (0.0, -0.2), (0.02, 0.15), (0.09, anatomy.costophrenic_v + 0.1)]
            _draw_polyline(metal, grid, pts, 0.004, value * 0.8)
            _add_blob(metal, grid, pts[-1], 0.008, value * 0.6, sharp=True)
        elif device == "picc":
            pts = [(s * 0.50, -0.30), (s * 0.33, -0.35), (s * 0.14, -0.31), (0.02, -0.16)]
            _draw_polyline(metal, grid, pts, 0.004, value)
            _add_blob(metal, grid, pts[-1], 0.008, value * 0.6, sharp=True)
        elif device == "pacemaker":
            gen = (0.25, -0.33)
            rs, cs = grid.window(gen[0], gen[1], 0.06)
            box = np.abs(grid.u[rs, cs] - gen[0]) < 0.04
            box &= np.abs(grid.v[rs, cs] - gen[1]) < 0.028
            metal[rs, cs] = np.maximum(metal[rs, cs], value * 1.2 * box)
            lead = [gen, (0.12, -0.28), (0.02, -0.12), (0.0, 0.08), (0.04, 0.17)]
            _draw_polyline(metal, grid, lead, 0.004, value)
            _add_blob(metal, grid, lead[-1], 0.008, value * 0.6, sharp=True)
        elif device == "chest_tube":
            lat = anatomy.lung_lateral
            pts = [(s * (lat + 0.08), 0.12), (s * (lat - 0.02), 0.05), (s * 0.2, -0.25)]
            _draw_polyline(metal, grid, pts, 0.007, value)
            _add_blob(metal, grid, pts[-1], 0.01, value * 0.6, sharp=True)
    density += metal


def _render_lateral(grid: _Grid, anatomy: Anatomy, findings: Sequence[RenderFinding]) -> np.ndarray:
    """Density map of a lateral view: anterior on the image left, spine on the right."""
    u, v = grid.u, grid.v
    texture_rng = np.random.default_rng(anatomy.texture_seed + 1)
    weak = 0.6  # findings project more weakly on the lateral view

    depth = anatomy.body_half_width * 0.95
    body = _inside(np.hypot(u / depth, np.maximum(np.abs(v) - 0.1, 0.0) / 0.5), 0.05)
    arms = np.clip((-0.12 - v) / 0.1, 0.0, 1.0) * (np.abs(u) < depth)

    heart_grow = 1.0
    medi_grow = 1.0
    for f in findings:
        grow = f.strength * (0.5 + 0.5 * f.severity)
        if f.observation == "Cardiomegaly":
            heart_grow *= 1.0 + 0.35 * grow
        elif f.observation == "Enlarged Cardiomediastinum":
            medi_grow *= 1.0 + 0.8 * grow

    dome_v = anatomy.costophrenic_v - 0.08 + 0.12 * ((u + 0.05) / 0.3) ** 2
    lung_f = np.hypot((u - 0.0) / 0.27, np.minimum(v - (anatomy.lung_top + 0.2), 0.0) / 0.22)
    lungs = _inside(lung_f, 0.05) * np.clip((dome_v - v) / 0.012, 0.0, 1.0)
    hu = u + 0.11 - 0.04 * (heart_grow - 1)
    hv = v - anatomy.heart_v - 0.01
    heart_f = np.hypot((0.8 * hu - 0.6 * hv) / (0.15 * heart_grow), (0.6 * hu + 0.8 * hv) / 0.13)
    heart = _inside(heart_f, 0.1) * np.clip((dome_v + 0.04 - v) / 0.02, 0.0, 1.0)
    medi_f = np.hypot((u + 0.03 + 0.1 * (v + 0.15)) / (0.07 * medi_grow), (v + 0.15) / 0.18)
    medi = _inside(medi_f, 0.3)
    air = lungs * (1.0 - np.maximum(heart, medi * 0.7))
    fluid = np.zeros_like(u)
    extra = np.zeros_like(u)
    rows, cols = u.shape
    fine = _smooth_noise(texture_rng, rows, cols, (40, 40))

    for f in findings:
        rng = np.random.default_rng(f.seed + 7)
        obs = f.observation
        st = f.strength * weak
        if obs == "Pleural Effusion":
            height = (0.04 + 0.18 * f.severity) * (0.4 + 0.6 * f.strength)
            men_v = anatomy.costophrenic_v + 0.04 - height * (0.3 + 0.7 * np.clip(u / 0.27, 0, 1))
            fluid = np.maximum(fluid, np.clip((v - men_v) / 0.015, 0.0, 1.0) * (u > -0.1))
        elif obs == "Pneumothorax":
            rim = (lung_f > 0.8) & (v < anatomy.lung_top + 0.15)
            extra -= 0.08 * st * rim * lungs
        elif obs in ("Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion"):
            cv = _ZONE_V.get(f.zone, 0.0) + rng.uniform(-0.03, 0.03)
            cu = rng.uniform(-0.05, 0.15) if f.zone != "middle" else rng.uniform(-0.15, -0.02)
            if obs == "Lung Lesion":
                _add_blob(extra, grid, (cu, cv), 0.014 + 0.035 * f.severity, 0.3 * st, True)
            else:
                amp = (0.28 if obs != "Lung Opacity" else 0.18) * st
                for _ in range(4):
                    center = (cu + rng.normal(0, 0.03), cv + rng.normal(0, 0.03))
                    _add_blob(extra, grid, center, 0.05, amp * 0.6)
        elif obs == "Edema":
            _add_blob(extra, grid, (0.02, -0.02), 0.12, (0.12 + 0.1 * f.severity) * st)
        elif obs == "Atelectasis":
            base_v = anatomy.costophrenic_v - 0.06
            _draw_polyline(extra, grid, [(-0.05, base_v - 0.02), (0.12, base_v)], 0.008, 0.3 * st)
        elif obs == "Pleural Other":
            rim = np.clip((lung_f - 0.85) / 0.05, 0.0, 1.0) * (u > 0.1) * (v > -0.2)
            extra += 0.2 * st * rim * lungs
        elif obs == "Support Devices":
            value = 0.5
            if f.device == "ett":
                _draw_polyline(extra, grid, [(-0.03, -0.56), (0.01, -0.2)], 0.006, value)
            elif f.device == "ng":
                pts = [(-0.02, -0.56), (0.06, -0.1), (0.05, 0.35)]
                _draw_polyline(extra, grid, pts, 0.004, value)
            elif f.device == "pacemaker":
                _add_blob(extra, grid, (-0.3, -0.3), 0.03, value, True)
                pts = [(-0.3, -0.3), (-0.05, -0.15), (-0.12, 0.15)]
                _draw_polyline(extra, grid, pts, 0.004, value)
            else:
                _draw_polyline(extra, grid, [(-0.1, -0.35), (0.0, -0.15)], 0.004, value)

    air = air * (1.0 - fluid)
    density = 0.02 + 0.50 * body + 0.12 * arms * body
    density -= 0.30 * air
    density += 0.05 * heart + 0.03 * medi
    density += 0.10 * fluid * lungs
    density += 0.06 * air * fine
    spine_u = 0.30
    vert = 0.6 + 0.4 * (np.cos(2 * np.pi * v / 0.05) > -0.6)
    spine = np.clip((0.055 - np.abs(u - spine_u)) / 0.006, 0.0, 1.0) * (v > -0.45) * vert
    sternum = np.clip((0.012 - np.abs(u + 0.31 + 0.05 * v)) / 0.004, 0.0, 1.0) * (np.abs(v) < 0.25)
    trachea = np.clip((0.018 - np.abs(u - 0.04 * v + 0.02)) / 0.005, 0.0, 1.0) * (v < -0.1)
    density += 0.20 * spine + 0.12 * sternum - 0.10 * trachea
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (v - 0.3 * u) / anatomy.rib_spacing)
    density += 0.04 * np.clip((ribs - 0.5) / 0.5, 0.0, 1.0) * lungs * (u > 0.05)
    density += extra
    return density
