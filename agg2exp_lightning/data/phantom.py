"""A synthetic thorax: pure numpy functions building structure masks and a CT volume in HU.

Axis convention (RAS, as nibabel and MONAI's ``Orientation("RAS")`` read it): array axis 0 runs
toward the patient's **Right**, axis 1 toward **Anterior**, axis 2 toward **Superior**. The affine
is ``diag(spacing) `` with the volume centred on the world origin, so ``nibabel.aff2axcodes`` gives
``("R", "A", "S")`` and a structure on the patient's left has a *negative* world x.

The anatomy is drawn in a template frame in millimetres: ``lat`` (positive toward the patient's
left), ``ant`` (positive anterior) and ``sup`` (positive superior), centred in the chest. A subject
is the template scaled per axis (sex, age, jitter), wrapped in a layer of subcutaneous fat, shifted
a few millimetres and rotated a few degrees about the cranio-caudal axis. Every voxel belongs to at
most one structure (masks never overlap): structures are painted in a fixed order, later ones
winning, into one structure-id volume.

HU levels are those of a contrast-enhanced (venous phase) CT, chosen so that neighbours differ
clearly against the ~30 HU noise (aorta ~290 > pulmonary veins ~200 > thyroid ~160 > heart blood pool
~100 > autochthon ~80 > chest-wall muscle ~45; ribs ~700 > sternum ~600 > vertebrae ~500; costal
cartilage ~160 against muscle and fat ~-100); lobes are told apart by position and by thin brighter
fissures. (With the heart and the autochthon muscles at the HU of the chest wall, a small model has
to learn them from shape alone and needs several times the demo's training budget.)

Planted conditions (``PLANTED_CONDITIONS``): ``pleural_effusion`` (fluid ~10 HU fills the dependent
back of one lower lobe; those voxels are background), ``missing_lobe`` (no right middle lobe: its
mask is empty and the upper lobe takes its place), ``metal_artefact`` (a ~3000 HU implant in the
left pectoral fat with bright and dark streaks in its slices; labels unchanged) and
``mirrored_heart`` (dextrocardia: heart, aortic root and atrial ends of the veins on the right). The
random draws do not depend on the condition, so one generator state gives the same subject with
and without it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

RIB_NAMES = tuple(f"rib_{side}_{k}" for side in ("left", "right") for k in range(1, 13))
VERTEBRA_LEVELS = ("C7",) + tuple(f"T{k}" for k in range(1, 13)) + ("L1",)
#: Every structure the phantom draws; a structure's id in the structure map is its index + 1.
STRUCTURES: tuple[str, ...] = (
    "aorta",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "trachea",
    "heart",
    "pulmonary_vein",
    "thyroid_gland",
    *RIB_NAMES,
    *(f"vertebrae_{v}" for v in VERTEBRA_LEVELS),
    "autochthon_left",
    "autochthon_right",
    "sternum",
    "costal_cartilages",
    "esophagus",
    "spinal_cord",
)
_SID = {name: i + 1 for i, name in enumerate(STRUCTURES)}

PLANTED_CONDITIONS: tuple[str, ...] = ("none", "pleural_effusion", "missing_lobe", "metal_artefact", "mirrored_heart")

# Tissues (index into the HU table); tissue, not structure, sets the intensity.
(AIR, FAT, MUSCLE, MED_FAT, LUNG, FISSURE, AIRWAY_WALL, ESOPHAGUS, AORTA, VEIN, HEART, THYROID, RIB, CARTILAGE,
 STERNUM, VERTEBRA, DISC, CSF, CORD, AUTOCHTHON, LIVER, SPLEEN, EFFUSION, METAL) = range(24)
#: Mean HU and between-subject standard deviation of each tissue.
TISSUE_HU: tuple[tuple[float, float], ...] = (
    (-1000, 0), (-100, 10), (45, 5), (-90, 10), (-850, 25), (-300, 30), (40, 5), (35, 5), (290, 18), (200, 10),
    (100, 6), (160, 8), (700, 40), (160, 10), (600, 30), (500, 30), (80, 5), (10, 3), (35, 3), (80, 5), (95, 8),
    (70, 8), (10, 5), (3000, 0),
)

# ---- the template (mm) ---------------------------------------------------------------------------------
_MUSCLE_AXES = (128.0, 98.0)        # half width / half depth inside the subcutaneous fat
_NECK_AXES, _NECK_ANT = (60.0, 62.0), -22.0
_CAGE_INNER, _CAGE_OUTER, _CAGE_ANT = (106.0, 76.0), (120.0, 90.0), -2.0   # rib ring, centred at ant=-2
_VERT_PITCH, _VERT_TOP = 22.0, 140.0  # C7 centre; levels every 22 mm down to L1
_BODY_ANT, _CANAL_ANT = -45.0, -70.0
_TRACHEA = (-2.0, 0.0, 30.0, 12.0, 8.5)  # lat, ant, carina height, outer and lumen radius
_ESOPHAGUS = (6.0, -22.0, 7.0)
_AORTA = (  # (lat, ant, sup, radius): root in the heart, ascending, arch over the left bronchus, descending
    (-4, 38, -12, 14), (-8, 36, 50, 14), (5, 30, 72, 12), (26, 18, 80, 12), (33, -6, 74, 11), (31, -24, 58, 11),
    (30, -30, 40, 11), (30, -30, -175, 11),
)
_VEINS = (  # (lung end, atrial end), radius 10 mm
    ((74, 5, -15), (26, 8, -32)), ((72, -5, -52), (26, 4, -46)),
    ((-72, 5, -14), (-6, 10, -30)), ((-70, -5, -50), (-6, 6, -46)),
)
_HEART = ((22.0, 33.0, -40.0), (58.0, 45.0, 40.0), -25.0)  # centre, semi-axes, in-plane rotation (deg)
_RIB_END = (2.55, 2.45, 2.4, 2.35, 2.3, 2.25, 2.2, 2.1, 2.0, 1.9, 1.5, 1.2)  # angle where each rib ends
_RIB_DROP = (25, 40, 50, 55, 58, 60, 60, 58, 55, 50, 35, 25)  # how far each rib descends toward the front
_RIB_START, _STERNUM_EDGE = 0.30, np.pi - 0.12
_STERNUM_Z = (-80.0, 90.0)


@dataclass(frozen=True)
class SubjectAnatomy:
    """The random part of one subject (everything drawn from the generator, in a fixed order).

    Attributes:
        scale: template scale along (lateral, antero-posterior, cranio-caudal).
        fat_mm: subcutaneous fat thickness.
        shift_mm: world (x, y, z) position of the template origin.
        rotation_deg: rotation about the cranio-caudal axis.
        tissue_hu: HU level of each tissue for this subject (global offset included).
        effusion_side: +1 left, -1 right (used by ``pleural_effusion``).
        metal_sup: cranio-caudal position of the implant (used by ``metal_artefact``).
        streak_phase: phase of the metal streaks.
    """

    scale: tuple[float, float, float]
    fat_mm: float
    shift_mm: tuple[float, float, float]
    rotation_deg: float
    tissue_hu: tuple[float, ...]
    effusion_side: int
    metal_sup: float
    streak_phase: float


def draw_anatomy(rng: np.random.Generator, *, sex: str = "m", age: float = 50.0) -> SubjectAnatomy:
    """Draw a subject's size, pose and tissue levels; males are larger, chests deepen and fatten with age."""
    male = sex == "m"
    z = np.clip(rng.standard_normal(8), -2.5, 2.5)
    sx = (1.0 if male else 0.91) + 0.0005 * (age - 50) + 0.035 * z[0]
    sy = (1.0 if male else 0.93) + 0.0015 * (age - 50) + 0.035 * z[1]
    sz = min((1.0 if male else 0.94) + 0.025 * z[2], 1.04)
    fat = float(np.clip((10.0 if male else 15.0) + 0.08 * (age - 20) + 3.0 * z[3], 4.0, 28.0))
    sx = min(sx, (146.0 - fat) / _MUSCLE_AXES[0])  # keep the body inside a 320 mm field of view
    sy = min(sy, (140.0 - fat) / _MUSCLE_AXES[1])
    shift = (5.0 * z[4], 5.0 * z[5], 6.0 * z[6])
    rotation = 2.0 * z[7]
    offset = 8.0 * float(np.clip(rng.standard_normal(), -2.5, 2.5))
    jitter = np.clip(rng.standard_normal(len(TISSUE_HU)), -2.0, 2.0)
    hu = tuple(
        float(m + (s * j + offset if m > -1000 and m < 3000 else 0.0)) for (m, s), j in zip(TISSUE_HU, jitter)
    )
    side = int(rng.choice([-1, 1]))
    metal_sup = float(rng.uniform(70.0, 100.0))
    phase = float(rng.uniform(0.0, 2 * np.pi))
    return SubjectAnatomy((float(sx), float(sy), float(sz)), fat, shift, float(rotation), hu, side, metal_sup, phase)


# ---- geometry helpers ----------------------------------------------------------------------------------
def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _zslab(sup: np.ndarray, lo: float, hi: float) -> slice:
    """Index range along axis 2 whose template height lies in [lo, hi] (heights grow with the index)."""
    s = sup.ravel()
    i0, i1 = int(np.searchsorted(s, lo, "left")), int(np.searchsorted(s, hi, "right"))
    return slice(i0, max(i0, i1))


def _tube_distance(lat: np.ndarray, ant: np.ndarray, sup: np.ndarray, points: Sequence[Sequence[float]]) -> np.ndarray:
    """Signed distance (mm) to a tube along a polyline of (lat, ant, sup, radius) vertices."""
    best = np.full(np.broadcast_shapes(lat.shape, ant.shape, sup.shape), np.inf, dtype=np.float32)
    for p, q in zip(points[:-1], points[1:]):
        p0, d = np.asarray(p[:3], float), np.subtract(q[:3], p[:3], dtype=float)
        r_max = max(p[3], q[3])
        zs = _zslab(sup, min(p[2], q[2]) - r_max - 10, max(p[2], q[2]) + r_max + 10)
        a, b, c = lat - p0[0], ant - p0[1], sup[..., zs] - p0[2]
        t = np.clip((a * d[0] + b * d[1] + c * d[2]) / float(d @ d), 0.0, 1.0)
        dist = np.sqrt((a - t * d[0]) ** 2 + (b - t * d[1]) ** 2 + (c - t * d[2]) ** 2) - (p[3] + t * (q[3] - p[3]))
        np.minimum(best[..., zs], dist, out=best[..., zs])
    return best


def _ellipsoid(
    lat: np.ndarray, ant: np.ndarray, sup: np.ndarray, centre: Sequence[float], axes: Sequence[float],
    grow: float = 0.0, angle_deg: float = 0.0,
) -> np.ndarray:
    """Inside an ellipsoid (axes grown by ``grow`` mm), rotated by ``angle_deg`` in the axial plane."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    u, v = lat - centre[0], ant - centre[1]
    u, v = c * u - s * v, s * u + c * v
    w = (sup - centre[2]) / (axes[2] + grow)
    return (u / (axes[0] + grow)) ** 2 + (v / (axes[1] + grow)) ** 2 + w**2 <= 1.0


def template_coordinates(
    shape: Sequence[int], spacing: Sequence[float], anat: SubjectAnatomy
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template coordinates of the voxel centres, as broadcastable arrays ``lat, ant [X,Y,1]`` and ``sup [1,1,Z]``."""
    x, y, z = (((np.arange(n) - (n - 1) / 2.0) * sp) for n, sp in zip(shape, spacing))
    xw, yw = x[:, None] - anat.shift_mm[0], y[None, :] - anat.shift_mm[1]
    c, s = np.cos(np.radians(anat.rotation_deg)), np.sin(np.radians(anat.rotation_deg))
    right, ant = c * xw + s * yw, -s * xw + c * yw
    lat = (-right / anat.scale[0]).astype(np.float32)[:, :, None]
    ant = (ant / anat.scale[1]).astype(np.float32)[:, :, None]
    sup = ((z - anat.shift_mm[2]) / anat.scale[2]).astype(np.float32)[None, None, :]
    return lat, ant, sup


def affine_for(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine: ``spacing`` on the diagonal and the volume centred on the world origin."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * sp for n, sp in zip(shape, spacing)]
    return aff


def _diaphragm(lat: np.ndarray, ant: np.ndarray, side: int) -> np.ndarray:
    """Height of one hemidiaphragm (the right dome higher), lowest at the back and the sides."""
    top = -55.0 if side < 0 else -68.0
    return np.maximum(top - 40 * ((lat - side * 50) / 75) ** 2 - 40 * ((ant - 5) / 75) ** 2, -135.0)


# ---- the anatomy ---------------------------------------------------------------------------------------
#: Antero-posterior half-axis of a vertebral body (mm, template).
_BODY_RY = 15.0


@dataclass
class _Canvas:
    """The two volumes being painted and the template coordinates of their voxels.

    Painters run in a fixed order and later ones paint over earlier ones.
    """

    lat: np.ndarray  # [X, Y, 1]
    ant: np.ndarray  # [X, Y, 1]
    sup: np.ndarray  # [1, 1, Z]
    smap: np.ndarray  # structure ids, uint8 [X, Y, Z]
    tissue: np.ndarray  # TISSUE_HU indices, uint8 [X, Y, Z]

    @property
    def full(self) -> tuple[int, int, int]:
        return self.smap.shape

    def paint(self, mask: np.ndarray, name: str | None, kind: int, zs: slice = slice(None)) -> None:
        """Give the voxels of ``mask`` (within the slab ``zs``) structure ``name`` (None: none) and tissue ``kind``."""
        self.smap[..., zs][mask] = _SID[name] if name else 0
        self.tissue[..., zs][mask] = kind


@dataclass(frozen=True)
class _Body:
    skin: np.ndarray  # inside the skin (muscle + subcutaneous fat)
    muscle: np.ndarray  # inside the muscle wall
    axes: tuple[np.ndarray, np.ndarray]  # the muscle ellipse's half-axes at each height


@dataclass(frozen=True)
class _Cage:
    lr: np.ndarray  # lateral / antero-posterior coordinates in the cage's frame
    yr: np.ndarray
    rho_in: np.ndarray  # elliptic radius against the cage's inner and outer walls
    rho_out: np.ndarray
    cavity: np.ndarray
    diaphragm: dict[int, np.ndarray]  # height of each hemidiaphragm (+1 left, -1 right)


@dataclass(frozen=True)
class _Organs:
    heart: np.ndarray
    heart_margin: np.ndarray  # the heart grown by 5 mm (kept free of lung)
    d_aorta: np.ndarray  # distances to the tubes' surfaces (<= 0 inside)
    d_trachea: np.ndarray
    d_esophagus: np.ndarray
    d_veins: np.ndarray
    thyroid: np.ndarray
    thyroid_margin: np.ndarray
    autochthon: dict[int, np.ndarray]
    spine_zone: np.ndarray


def _paint_body(c: _Canvas, anat: SubjectAnatomy) -> _Body:
    """Body: thorax ellipse blending into the neck above the shoulders; skin = muscle + fat."""
    lat, ant, sup, fat = c.lat, c.ant, c.sup, anat.fat_mm
    w = _smoothstep((sup - 125.0) / 25.0)
    am, bm = (1 - w) * _MUSCLE_AXES[0] + w * _NECK_AXES[0], (1 - w) * _MUSCLE_AXES[1] + w * _NECK_AXES[1]
    yc = w * _NECK_ANT
    skin = (lat / (am + fat / anat.scale[0])) ** 2 + ((ant - yc) / (bm + fat / anat.scale[1])) ** 2 <= 1
    muscle = (lat / am) ** 2 + ((ant - yc) / bm) ** 2 <= 1
    c.paint(skin, None, FAT)
    c.paint(muscle, None, MUSCLE)
    return _Body(skin=skin, muscle=muscle, axes=(am, bm))


def _paint_chest_cavity(c: _Canvas) -> _Cage:
    """Chest wall ring and the cavity inside it (it narrows toward the apex): mediastinal fat above the
    diaphragm, liver and spleen below it."""
    lat, ant, sup = c.lat, c.ant, c.sup
    cz = 1.0 - 0.2 * _smoothstep((sup - 80.0) / 50.0)
    lr, yr = lat / cz, -50.0 + (ant + 50.0) / cz - _CAGE_ANT
    rho_in = (lr / _CAGE_INNER[0]) ** 2 + (yr / _CAGE_INNER[1]) ** 2
    rho_out = (lr / _CAGE_OUTER[0]) ** 2 + (yr / _CAGE_OUTER[1]) ** 2
    cavity = rho_in < 1.0
    zd = {s: _diaphragm(lat, ant, s) for s in (-1, 1)}
    zdia = np.where(lat > 0, zd[1], zd[-1])
    c.paint(cavity & (sup >= zdia) & (sup < 128.0), None, MED_FAT)
    c.paint(cavity & (sup < zdia) & (lat <= 0), None, LIVER)
    c.paint(cavity & (sup < zdia) & (lat > 0), None, SPLEEN)
    return _Cage(lr=lr, yr=yr, rho_in=rho_in, rho_out=rho_out, cavity=cavity, diaphragm=zd)


def _organ_shapes(c: _Canvas, mirror: float) -> _Organs:
    """The mediastinal organs, thyroid, paraspinal muscles and spine as shapes (nothing painted yet)."""
    lat, ant, sup = c.lat, c.ant, c.sup
    (hl, ha, hs), haxes, hrot = _HEART
    heart_c, heart_rot = (hl * mirror, ha, hs), hrot * mirror
    aorta_pts = [list(p) for p in _AORTA]
    aorta_pts[0][0] *= mirror
    tl, ta, tz, tr, _ = _TRACHEA
    el, ea, er = _ESOPHAGUS
    veins = [((*a, 10.0), (lat_ * (mirror if abs(lat_) < 30 else 1.0), b, cc, 10.0)) for a, (lat_, b, cc) in _VEINS]
    thyroid_parts = [((tl - 25, 4.0, 133.0), (12.0, 13.0, 22.0)), ((tl + 25, 4.0, 133.0), (12.0, 13.0, 22.0)),
                     ((tl, 16.0, 122.0), (18.0, 5.0, 7.0))]
    return _Organs(
        heart=_ellipsoid(lat, ant, sup, heart_c, haxes, 0.0, heart_rot),
        heart_margin=_ellipsoid(lat, ant, sup, heart_c, haxes, 5.0, heart_rot),
        d_aorta=_tube_distance(lat, ant, sup, aorta_pts),
        d_trachea=_tube_distance(lat, ant, sup, [(tl, ta, tz, tr), (tl, ta, 200.0, tr)]),
        d_esophagus=_tube_distance(lat, ant, sup, [(el, ea, -120.0, er), (el, ea, 200.0, er)]),
        d_veins=np.minimum.reduce([_tube_distance(lat, ant, sup, v) for v in veins]),
        thyroid=np.logical_or.reduce([_ellipsoid(lat, ant, sup, cc, a) for cc, a in thyroid_parts]),
        thyroid_margin=np.logical_or.reduce([_ellipsoid(lat, ant, sup, cc, a, 4.0) for cc, a in thyroid_parts]),
        autochthon={s: ((lat - 26 * s) / 15) ** 2 + ((ant + 84) / 10) ** 2 <= 1 for s in (-1, 1)},
        spine_zone=((lat / 26) ** 2 + ((ant - _BODY_ANT) / (_BODY_RY + 4)) ** 2 <= 1) | ((np.abs(lat) < 40) & (ant < _BODY_ANT)),
    )


def _paint_lungs(c: _Canvas, cage: _Cage, organs: _Organs, anat: SubjectAnatomy, condition: str, hw: float) -> None:
    """Lungs: cavity above the diaphragm, under the apical dome, lateral of the mediastinum; lobes split
    by the fissures (``hw``: a fissure's half-width), with a pleural effusion or a missing middle lobe."""
    lat, ant, sup, zd = c.lat, c.ant, c.sup, cage.diaphragm
    exclude = (
        organs.heart_margin | (organs.d_aorta <= 5.0) | (organs.d_trachea <= 4.0)
        | (organs.d_esophagus <= 4.0) | organs.thyroid_margin | organs.spine_zone | (np.abs(lat - 2.0) < 12.0)
    )
    lobes: dict[str, np.ndarray] = {}
    for s, side in ((1, "left"), (-1, "right")):
        apex = ((lat - 50 * s) / 62) ** 2 + ((ant + 8) / 72) ** 2 + (np.maximum(sup - 45, 0) / 80) ** 2 <= 1
        lung = cage.cavity & apex & (s * lat > 0) & (sup > zd[s]) & ~exclude
        slope, z0 = (0.9, -12.0) if s > 0 else (0.85, -20.0)
        oblique = sup - (z0 - slope * ant)  # > 0: upper (and middle) lobes
        fissure = lung & (np.abs(oblique) / np.sqrt(1 + slope**2) < hw)
        lower = lung & (oblique <= 0)
        if condition == "pleural_effusion" and s == anat.effusion_side:
            fluid = lower & (ant + 25.0 < 0.6 * (zd[s] + 50.0 - sup))  # a dependent layer, deepest at the back
            c.paint(fluid, None, EFFUSION)
            lower &= ~fluid
        lobes[f"lung_lower_lobe_{side}"] = lower
        upper = lung & (oblique > 0)
        if s < 0:
            middle = upper & (sup < -8.0)
            if condition != "missing_lobe":
                fissure |= upper & (np.abs(sup + 8.0) < hw)
                lobes["lung_middle_lobe_right"], upper = middle, upper & ~middle
            else:
                lobes["lung_middle_lobe_right"] = np.zeros_like(middle)
        lobes[f"lung_upper_lobe_{side}"] = upper
        for name in (f"lung_upper_lobe_{side}", f"lung_lower_lobe_{side}") + (("lung_middle_lobe_right",) if s < 0 else ()):
            c.paint(lobes[name], name, LUNG)
        c.tissue[fissure & (c.smap > 0)] = FISSURE


def _paint_mediastinum(c: _Canvas, body: _Body, organs: _Organs) -> None:
    """Pulmonary veins, heart, aorta, oesophagus, trachea (wall and air), thyroid, and the paraspinal
    muscles, each in a sheath of fat."""
    _, _, _, tr, tlum = _TRACHEA
    c.paint(organs.d_veins <= 0, "pulmonary_vein", VEIN)
    c.paint(organs.heart, "heart", HEART)
    c.paint(organs.d_aorta <= 0, "aorta", AORTA)
    c.paint((organs.d_esophagus <= 0) & body.muscle, "esophagus", ESOPHAGUS)
    c.paint((organs.d_trachea <= 0) & body.skin, "trachea", AIRWAY_WALL)
    c.paint((organs.d_trachea <= tlum - tr) & body.skin, "trachea", AIR)
    c.paint(organs.thyroid & body.skin, "thyroid_gland", THYROID)
    for s, side in ((1, "left"), (-1, "right")):
        sheath = ((c.lat - 26 * s) / 19) ** 2 + ((c.ant + 84) / 14) ** 2 <= 1
        c.paint(sheath & ~organs.autochthon[s] & body.muscle & (c.smap == 0), None, FAT)
        c.paint(organs.autochthon[s] & body.muscle, f"autochthon_{side}", AUTOCHTHON)


def _paint_spine(c: _Canvas, body: _Body) -> None:
    """Spine: canal and cord throughout; each level a body plus posterior elements; discs between."""
    lat, ant, sup, muscle = c.lat, c.ant, c.sup, body.muscle
    r_canal = np.sqrt(lat**2 + (ant - _CANAL_ANT) ** 2)
    c.paint((r_canal <= 8.0) & muscle, None, CSF)
    c.paint((r_canal <= 5.0) & muscle, "spinal_cord", CORD)
    posterior = ((r_canal > 8.0) & (r_canal <= 14.0) & (ant < _BODY_ANT - 10)) | (
        (np.abs(lat) < 4.5) & (ant > -95.0) & (ant < _CANAL_ANT - 10)
    ) | ((np.abs(lat) > 8) & (np.abs(lat) < 34) & (ant > -76) & (ant < -64))
    for j, level in enumerate(VERTEBRA_LEVELS):
        zc, half = _VERT_TOP - j * _VERT_PITCH, (8.0 if level == "C7" else 10.0 if level == "L1" else 9.0)
        rx = 16.0 + 6.0 * j / (len(VERTEBRA_LEVELS) - 1)
        vbody = (lat / rx) ** 2 + ((ant - _BODY_ANT) / _BODY_RY) ** 2 <= 1
        zs = _zslab(sup, zc - _VERT_PITCH / 2, zc + _VERT_PITCH / 2)
        zz = sup[..., zs]
        c.paint(vbody & (np.abs(zz - zc) > half) & muscle[..., zs], None, DISC, zs)
        c.paint((vbody | posterior) & (np.abs(zz - zc) <= half) & muscle[..., zs], f"vertebrae_{level}", VERTEBRA, zs)


def _paint_ribs_and_sternum(c: _Canvas, body: _Body, cage: _Cage) -> None:
    """Ribs and costal cartilages: bands in the chest-wall ring, sloping down toward the front; the sternum."""
    full, sup, lr, yr = c.full, c.sup, cage.lr, cage.yr
    ring = (cage.rho_in >= 1.0) & (cage.rho_out < 1.0) & body.muscle
    idx = np.nonzero(ring)
    theta = np.arctan2(np.broadcast_to(lr, full)[idx] / 113.0, -np.broadcast_to(yr, full)[idx] / 83.0)
    zr = np.broadcast_to(sup, full)[idx]
    side_of = np.sign(theta)
    theta = np.abs(theta)
    cart_ids = np.zeros(zr.shape, bool)
    rib_ids = np.zeros(zr.shape, np.uint8)
    for k in range(12):
        zpost = _VERT_TOP - (k + 1) * _VERT_PITCH + 4.0
        t_end, drop = _RIB_END[k], _RIB_DROP[k]
        t = np.clip((theta - _RIB_START) / (t_end - _RIB_START), 0.0, 1.0)
        on = (theta >= _RIB_START) & (theta <= t_end) & (np.abs(zr - (zpost - drop * t**1.3)) <= 7.0)
        for s, side in ((1, "left"), (-1, "right")):
            rib_ids[on & (side_of == s)] = _SID[f"rib_{side}_{k + 1}"]
        if k < 10:
            z_att = max(_STERNUM_Z[1] - 10 - 25.0 * k, _STERNUM_Z[0] + 8)
            u = np.clip((theta - t_end) / (_STERNUM_EDGE - 0.05 - t_end), 0.0, 1.0)
            zc = (zpost - drop) + (z_att - (zpost - drop)) * u
            cart_ids |= (theta > t_end) & (theta <= _STERNUM_EDGE) & (np.abs(zc - zr) <= 7.0)
    sel = rib_ids > 0
    c.smap[tuple(i[sel] for i in idx)] = rib_ids[sel]
    c.tissue[tuple(i[sel] for i in idx)] = RIB
    sel = cart_ids & ~sel
    c.smap[tuple(i[sel] for i in idx)] = _SID["costal_cartilages"]
    c.tissue[tuple(i[sel] for i in idx)] = CARTILAGE
    width = np.where(sup > 65.0, 24.0, 16.0)
    sternum = (cage.rho_in >= 0.9) & (cage.rho_out <= 1.08) & (yr > 0) & (np.abs(lr) < width) & (sup >= _STERNUM_Z[0]) & (sup <= _STERNUM_Z[1])
    c.paint(sternum & body.muscle, "sternum", STERNUM)


def _paint_pacemaker(c: _Canvas, body: _Body, anat: SubjectAnatomy) -> None:
    """A pacemaker in the left pectoral fat (``metal_artefact``): metal tissue, no structure, labels unchanged."""
    am, bm = body.axes
    front = am * 0 + bm * np.sqrt(1 - (60.0 / am) ** 2)
    device = _ellipsoid(c.lat, c.ant - front, c.sup, (60.0, anat.fat_mm / 2 / anat.scale[1], anat.metal_sup), (20.0, 5.0, 16.0))
    c.tissue[device & body.skin & (c.smap == 0)] = METAL


def build_anatomy(
    shape: Sequence[int], spacing: Sequence[float], anat: SubjectAnatomy, condition: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the structure-id and tissue volumes of one subject, one organ system after another.

    Returns:
        ``(structures uint8 [X,Y,Z], tissue uint8 [X,Y,Z])``: structure ids are ``STRUCTURES`` index + 1
        (0: no structure); tissues index ``TISSUE_HU``.
    """
    lat, ant, sup = template_coordinates(shape, spacing, anat)
    full = tuple(int(n) for n in shape)
    c = _Canvas(lat, ant, sup, smap=np.zeros(full, np.uint8), tissue=np.zeros(full, np.uint8))
    mirror = -1.0 if condition == "mirrored_heart" else 1.0
    body = _paint_body(c, anat)
    cage = _paint_chest_cavity(c)
    organs = _organ_shapes(c, mirror)  # lungs keep a fat margin around them
    _paint_lungs(c, cage, organs, anat, condition, hw=max(1.5, 0.5 * min(spacing)))  # a fissure: at least one voxel
    _paint_mediastinum(c, body, organs)
    _paint_spine(c, body)
    _paint_ribs_and_sternum(c, body, cage)
    if condition == "metal_artefact":
        _paint_pacemaker(c, body, anat)
    return c.smap, c.tissue


# ---- intensities ---------------------------------------------------------------------------------------
def _metal_streaks(tissue: np.ndarray, spacing: Sequence[float], phase: float) -> np.ndarray:
    """Bright and dark radial streaks (HU) in the axial slices around a metal object."""
    streaks = np.zeros(tissue.shape, np.float32)
    where = np.nonzero(tissue == METAL)
    if not where[0].size:
        return streaks
    cx, cy = (float(np.mean(w)) for w in where[:2])
    z0, z1 = int(where[2].min()), int(where[2].max())
    u = (np.arange(tissue.shape[0])[:, None] - cx) * spacing[0]
    v = (np.arange(tissue.shape[1])[None, :] - cy) * spacing[1]
    phi, r = np.arctan2(v, u), np.hypot(u, v)
    pattern = (1200.0 * np.cos(7 * phi + phase) ** 40 - 500.0 * np.cos(7 * phi + phase + np.pi / 7) ** 40) * (
        60.0 / (r + 60.0)
    )
    reach = max(1, int(round(12.0 / spacing[2])))
    for k in range(max(0, z0 - reach), min(tissue.shape[2], z1 + reach + 1)):
        fade = 1.0 if z0 <= k <= z1 else 0.5
        streaks[:, :, k] = fade * pattern
    streaks[tissue == AIR] = 0.0
    return streaks


def render_hu(
    tissue: np.ndarray,
    anat: SubjectAnatomy,
    rng: np.random.Generator,
    spacing: Sequence[float],
    *,
    noise_sd: float,
    blur_mm: float,
) -> np.ndarray:
    """CT intensities: tissue levels, a gentle bias field, blur, metal streaks, correlated noise; int16 HU."""
    levels = np.asarray(anat.tissue_hu, np.float32)
    hu = levels[tissue]
    coarse = rng.standard_normal((4, 4, 4)).astype(np.float32)
    bias = ndimage.zoom(coarse, [n / 4 for n in tissue.shape], order=1, mode="nearest")[
        : tissue.shape[0], : tissue.shape[1], : tissue.shape[2]
    ]
    hu += 6.0 * bias * (tissue != AIR)
    if blur_mm > 0:
        hu = ndimage.gaussian_filter(hu, [blur_mm / sp for sp in spacing], mode="nearest")
    hu += _metal_streaks(tissue, spacing, anat.streak_phase)
    noise = ndimage.gaussian_filter(rng.standard_normal(tissue.shape).astype(np.float32), 0.6)
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    hu += noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _check_spacing(spacing: float | Sequence[float]) -> tuple[float, float, float]:
    values = (spacing,) * 3 if np.isscalar(spacing) else tuple(spacing)
    if len(values) != 3 or not all(np.isfinite(float(v)) and float(v) > 0 for v in values):
        raise ValueError(f"Expected argument `spacing` to be a positive number or three positive numbers (mm), but got {spacing!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate a grid shape: three integers, each at least 8."""
    try:
        values = tuple(int(n) for n in shape)
        ok = len(values) == 3 and all(v == n and v >= 8 for v, n in zip(values, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"Expected argument `shape` to be three integers >= 8 (voxels), but got {shape!r}")
    return values  # type: ignore[return-value]


def generate_subject(
    rng: np.random.Generator,
    shape: Sequence[int] = (80, 80, 80),
    spacing: float | Sequence[float] = 4.0,
    *,
    sex: str = "m",
    age: float = 50,
    noise_sd: float = 30.0,
    condition: str = "none",
    blur_mm: float = 1.5,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Generate one synthetic thorax CT with its structure masks.

    Args:
        rng: the subject's random generator (the result is a function of its state and the arguments).
        shape: grid size in voxels (axes R, A, S).
        spacing: voxel size in mm, one number (isotropic) or three.
        sex: ``"m"`` or ``"f"`` (males are larger).
        age: years, 0-120 (older chests are deeper and fatter).
        noise_sd: standard deviation of the image noise in HU.
        condition: one of ``PLANTED_CONDITIONS``.
        blur_mm: standard deviation of the Gaussian smoothing in mm (0: none).

    Returns:
        ``(hu int16 [X,Y,Z], {structure name: uint8 0/1 mask [X,Y,Z]}, affine 4x4)``; the masks cover
        every name in ``STRUCTURES`` and never overlap.

    Raises:
        ValueError: an argument is out of range.

    Example:
        >>> hu, masks, affine = generate_subject(np.random.default_rng(0), (40, 40, 40), 8.0)
        >>> hu.dtype, masks["heart"].max()
        (dtype('int16'), 1)
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"Expected argument `rng` to be a numpy.random.Generator, but got {type(rng).__name__}")
    shape = check_shape(shape)
    spacing = _check_spacing(spacing)
    if sex not in ("m", "f"):
        raise ValueError(f"Expected argument `sex` to be 'm' or 'f', but got {sex!r}")
    if not 0 <= float(age) <= 120:
        raise ValueError(f"Expected argument `age` in [0, 120] years, but got {age!r}")
    if not (np.isfinite(noise_sd) and noise_sd >= 0):
        raise ValueError(f"Expected argument `noise_sd` to be a non-negative number (HU), but got {noise_sd!r}")
    if not (np.isfinite(blur_mm) and blur_mm >= 0):
        raise ValueError(f"Expected argument `blur_mm` to be a non-negative number (mm), but got {blur_mm!r}")
    if condition not in PLANTED_CONDITIONS:
        raise ValueError(f"Expected argument `condition` to be one of {PLANTED_CONDITIONS}, but got {condition!r}")
    anat = draw_anatomy(rng, sex=sex, age=float(age))
    smap, tissue = build_anatomy(shape, spacing, anat, condition)
    hu = render_hu(tissue, anat, rng, spacing, noise_sd=float(noise_sd), blur_mm=float(blur_mm))
    masks = {name: (smap == i + 1).astype(np.uint8) for i, name in enumerate(STRUCTURES)}
    return hu, masks, affine_for(shape, spacing)
