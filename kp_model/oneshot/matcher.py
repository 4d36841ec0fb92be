"""Weight-free one-shot keypoint matcher: the default engine.

Identify, then detect, without learned weights:
1. the support image is rescaled so its keypoints span ``object_size`` working pixels and described
   at every support keypoint under several in-plane rotations (cached per support);
2. a query image is described densely at several scales; each support keypoint gives a similarity map;
3. a generalised Hough vote over (rotation, scale, object centre) finds the pose at which the support's
   keypoint constellation is best supported by the query, tolerating some deformation;
4. each keypoint is then refined locally around its voted position (similarity x Gaussian prior).

A thumbnail correlation decides whether the query shows the support's scene (a fixed-camera video: the
same individual, moving) or another one (another individual, framed alike). The first uses appearance-
specific descriptors and re-ranks poses by dense grey correlation; the second uses contrast- and colour-
invariant descriptors and favours the support's own place and pose unless a searched pose is clearly better.
Features can also come from a pretrained encoder (``OneShotConfig.encoder``).

All coordinates in and out are pixels (x right, y down) of the original images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from kp_model.appearance import global_descriptor, object_extent, rescale, smooth_grey, support_region
from kp_model.config import JsonConfig
from kp_model.oneshot.descriptors import DescriptorConfig, PooledChannels, _bilinear, describe_margin, norm_floor_of
from kp_model.oneshot.encoder import EncoderChannels, EncoderConfig, PatchEncoder
from kp_model.oneshot.grid import add_shifted, dilate_stack, local_peaks, subpixel

ONESHOT_REVISION = 2  # bumped when the same settings give other predictions (2: query descriptors pooled on the grid)


@dataclass(frozen=True)
class OneShotConfig(JsonConfig):
    descriptor: DescriptorConfig = field(default_factory=DescriptorConfig)  # descriptors for queries of the support's scene
    cross_descriptor: DescriptorConfig = field(
        default_factory=lambda: DescriptorConfig(signed=False, colour_weight=0.0)
    )  # for other scenes: other individuals differ in colour and contrast polarity, so neither is used
    rotations: int = 12  # in-plane rotations tried, evenly over max_rotation_deg both ways
    max_rotation_deg: float = 180.0  # largest support->query rotation searched (180 = any)
    scales: tuple[float, ...] = (0.5, 0.71, 1.0, 1.41, 2.0)  # query/support object-size ratios searched
    temperature: float = 0.08  # sharpness of exp((cos - 1) / T) turning similarities into votes
    vote_tolerance: float = 0.12  # deformation tolerated in the vote (fraction of object_size)
    refine_radius: float = 0.3  # local search radius after the vote (fraction of object_size)
    refine_sigma: float = 0.15  # Gaussian prior width around the voted position (fraction of object_size)
    max_working_side: int = 768  # cap on the query's working-image side (memory/time bound)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # pretrained backbone features instead of descriptors
    vote_keypoints: int = 24  # at most this many keypoints (spread out) vote for the pose; all are refined
    vote_floor: float = 0.02  # floor of each keypoint's vote before the log: how much one unmatched keypoint costs
    scale_prior: float = 0.7  # std (log2 units) of the prior on object scale relative to image size
    rotation_prior_deg: float = 90.0  # std of the prior favouring the support's orientation (0 = flat)
    copy_pose_bonus: float = 2.0  # other scenes: margin (mean log-vote) a searched pose must beat the support's own pose by
    verify_top: int = 12  # best poses re-ranked by dense grey correlation of the warped support region
    verify_region_grow: float = 0.15  # verified region: keypoint hull grown by this x object_size (more takes in the tail)
    verify_weight: float = 2.0  # weight of that correlation (in [-1, 1]) added to the pose score, same scene only
    same_scene_threshold: float = 0.8  # thumbnail correlation above which the query is the support's scene (no copy bonus)
    centre_prior: float = 0.5  # std of the prior on the object centre at the support's relative place (x diagonal; 0 = flat)

    def __post_init__(self) -> None:
        for name in ("object_size", "stride", "ring_points", "ring_radii"):
            if getattr(self.descriptor, name) != getattr(self.cross_descriptor, name):
                raise ValueError(f"cross_descriptor.{name} must equal descriptor.{name}: both share the keypoint geometry")
        if self.rotations < 1:
            raise ValueError(f"rotations must be >= 1, got {self.rotations}")
        if not 0 <= self.max_rotation_deg <= 180:
            raise ValueError(f"max_rotation_deg must be in [0, 180], got {self.max_rotation_deg}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be non-empty and positive, got {self.scales}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.verify_region_grow < 0:
            raise ValueError(f"verify_region_grow must be >= 0, got {self.verify_region_grow}")
        if self.rotation_prior_deg < 0 or self.centre_prior < 0:
            raise ValueError("rotation_prior_deg and centre_prior must be >= 0 (0 = no prior)")
        for name in ("vote_tolerance", "refine_radius", "refine_sigma", "scale_prior"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.vote_keypoints < 1:
            raise ValueError(f"vote_keypoints must be >= 1, got {self.vote_keypoints}")
        if self.max_working_side < 64:
            raise ValueError(f"max_working_side must be >= 64, got {self.max_working_side}")

    def angles(self) -> np.ndarray:
        """Rotation angles (radians) searched."""
        if self.rotations == 1:
            return np.zeros(1)
        if self.max_rotation_deg >= 180:
            return np.arange(self.rotations) * (2 * np.pi / self.rotations)
        return np.deg2rad(np.linspace(-self.max_rotation_deg, self.max_rotation_deg, self.rotations))


@dataclass
class SupportTemplate:
    """What the matcher caches for one support: descriptors per rotation and keypoint geometry.

    descriptors: (A, K, D) for queries of the same scene, cross_descriptors (A, K, D') for others;
    offsets: (A, K, 2) keypoint offsets from the constellation centre in working pixels;
    scale: original support px -> working px factor.
    """

    descriptors: np.ndarray
    cross_descriptors: np.ndarray
    offsets: np.ndarray
    scale: float
    angles: np.ndarray
    centre_rel: np.ndarray  # (2,) constellation centre as a fraction of the support image (x, y)
    image_diag: float  # support image diagonal (px)
    thumbnail: np.ndarray  # (1024,) zero-mean unit-norm 32x32 grey thumbnail of the support image
    rotations: np.ndarray  # (A, 2, 2) rotation matrices taking support offsets to each searched angle
    region: np.ndarray  # (M, 2) working-px offsets from the centre of support pixels around the keypoints
    region_grey: np.ndarray  # (M,) zero-mean unit-norm grey values of the support at ``region``


@dataclass
class Votes:
    """What ``OneShotMatcher.vote`` found in one query: candidates and peaks are (score, level, rotation index,
    x cell, y cell); levels (qscale, dense descriptors, (hg, wg), grey or None, origin px) per searched scale."""

    same_scene: bool
    support: np.ndarray  # (A, K, D) the support descriptors matched (same-scene or cross)
    candidates: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # best pose per (scale, rotation)
    peaks: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # local maxima (``vote(peaks=n)``)
    levels: list[tuple] = field(default_factory=list)


@dataclass
class Match:
    """One query's result. points: (K, 2) original query px; scores: (K,) in [0, 1]."""

    points: np.ndarray
    scores: np.ndarray
    pose_score: float
    angle_deg: float
    scale: float
    same_scene: bool


class OneShotMatcher:
    """Builds support templates and matches them; features are the hand-crafted descriptors, or the
    patch features of a pretrained encoder when ``cfg.encoder`` names one (loaded once, here)."""

    def __init__(self, cfg: OneShotConfig | None = None) -> None:
        self.cfg = cfg or OneShotConfig()
        self.encoder = PatchEncoder(self.cfg.encoder) if self.cfg.encoder.enabled else None

    @property
    def object_size(self) -> int:
        return self.cfg.encoder.object_size if self.encoder else self.cfg.descriptor.object_size

    @property
    def stride(self) -> int:
        return self.encoder.stride if self.encoder else self.cfg.descriptor.stride

    @property
    def max_side(self) -> int:
        return self.cfg.encoder.max_side if self.encoder else self.cfg.max_working_side

    def _channels(self, image: np.ndarray, dcfg: DescriptorConfig, valid: np.ndarray | None = None):
        if self.encoder is not None:
            return EncoderChannels(self.encoder, image, valid)
        return PooledChannels(image, dcfg, valid)

    def build_template(self, image: np.ndarray, keypoints: np.ndarray) -> SupportTemplate:
        """Describe the support.

        Args:
            image: (H, W, 3) uint8 RGB support image.
            keypoints: (K, 2) float support keypoints in pixels; all must lie inside the image.
        """
        cfg, dcfg = self.cfg, self.cfg.descriptor
        keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
        extent = object_extent(keypoints, image.shape[:2])
        scale = self.object_size / extent
        work = rescale(image, scale)
        pts = keypoints * scale
        centre = pts.mean(axis=0)
        h, w = work.shape[:2]
        # pad so rotations keep the object inside the canvas
        pad = int(np.ceil(np.hypot(h, w) / 2))
        canvas = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        inside = cv2.copyMakeBorder(np.ones(work.shape[:2], np.float32), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        c = centre + pad
        descs, cross, offsets, rotations = [], [], [], []
        angles = cfg.angles()
        size = (canvas.shape[1], canvas.shape[0])
        margin = describe_margin(dcfg)
        for a in angles:
            rot = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), float(np.rad2deg(-a)), 1.0)
            rp = (pts + pad) @ rot[:, :2].T + rot[:, 2]
            rotated = cv2.warpAffine(canvas, rot, size, borderMode=cv2.BORDER_REFLECT)
            if self.encoder is None:
                # descriptors read only ``margin`` px around the keypoints: describe a crop of the rotated canvas
                # (the same values, at a fraction of the cost), normalised with the whole canvas's floor
                floor = norm_floor_of(rotated)
                x0, y0 = np.maximum(np.floor(rp.min(axis=0) - margin).astype(int), 0)
                x1, y1 = np.minimum(np.ceil(rp.max(axis=0) + margin).astype(int) + 1, size)
                crop, crop_inside = rotated[y0:y1, x0:x1], cv2.warpAffine(inside, rot, size, borderValue=0)[y0:y1, x0:x1]
                local = rp - (x0, y0)
                descs.append(PooledChannels(crop, dcfg, crop_inside, floor).describe(local))
                cross.append(PooledChannels(crop, cfg.cross_descriptor, crop_inside, floor).describe(local))
            else:  # encoder features serve both cases
                rotated_inside = cv2.warpAffine(inside, rot, size, borderValue=0)
                descs.append(self._channels(rotated, dcfg, rotated_inside).describe(rp))
                cross.append(descs[-1])
            offsets.append(rp - c)
            rotations.append(rot[:, :2])
        region, region_grey = support_region(work, pts, max(1, int(cfg.verify_region_grow * self.object_size)))
        region -= centre
        h0, w0 = image.shape[:2]
        centre_rel = keypoints.mean(axis=0) / np.array([w0, h0])
        return SupportTemplate(
            np.stack(descs),
            np.stack(cross),
            np.stack(offsets),
            float(scale),
            angles,
            centre_rel,
            float(np.hypot(h0, w0)),
            global_descriptor(image),
            np.stack(rotations),
            region,
            region_grey,
        )

    def match(self, template: SupportTemplate, image: np.ndarray) -> Match:
        """Find the support's keypoints in a query image ((H, W, 3) uint8 RGB): the best pose of the vote."""
        votes = self.vote(template, image)
        return self.finish(template, votes, self.choose(template, votes))

    def choose(self, template: SupportTemplate, votes: Votes) -> tuple[float, int, int, int, int]:
        """The best pose candidate of ``votes``: re-ranked by grey correlation in the support's scene."""
        return self._verify(template, votes.candidates, votes.levels) if votes.same_scene else max(votes.candidates)

    def vote(self, template: SupportTemplate, image: np.ndarray, peaks: int = 0) -> Votes:
        """The Hough vote of the support's constellation over a query ((H, W, 3) uint8 RGB) at every searched scale
        and rotation: the best pose of each (scale, rotation), and with ``peaks`` > 0 also that many local maxima
        of each one's vote map (other individuals; scored without the centre prior or the copy bonus)."""
        cfg = self.cfg
        same_scene = float(template.thumbnail @ global_descriptor(image)) >= cfg.same_scene_threshold
        dcfg = cfg.descriptor if same_scene else cfg.cross_descriptor
        support = template.descriptors if same_scene else template.cross_descriptors
        copy_bonus = 0.0 if same_scene else cfg.copy_pose_bonus
        voters = _spread_subset(template.offsets[0], cfg.vote_keypoints)
        n_rot, n_kp, dim = support[:, voters].shape
        flat = support[:, voters].reshape(-1, dim)
        stride = self.stride
        tol = max(1, int(round(cfg.vote_tolerance * self.object_size / stride)))
        zero_angle = int(np.argmin(np.abs((np.rad2deg(template.angles) + 180) % 360 - 180)))
        votes = Votes(same_scene, support)
        qh, qw = image.shape[:2]
        diag = float(np.hypot(qh, qw))
        size_ratio = diag / template.image_diag  # objects are assumed to scale with the image
        expected = template.centre_rel * np.array([qw, qh])
        for ratio in cfg.scales:
            qscale = template.scale / (ratio * size_ratio)
            longest = max(image.shape[:2]) * qscale
            if longest > self.max_side:
                qscale *= self.max_side / longest
            if max(image.shape[:2]) * qscale < 16:
                continue
            work = rescale(image, qscale)
            qdesc, grid = self._channels(work, dcfg).dense()
            hg, wg = grid.shape[:2]
            origin = grid[0, 0].astype(np.float64)  # working px of grid cell (0, 0)
            votes_in = flat @ qdesc.T  # (n_rot * n_kp, cells) similarities, turned into votes in place below
            grey = smooth_grey(work) if same_scene else None  # only the same-scene verification reads it
            votes.levels.append((qscale, qdesc, (hg, wg), grey, origin))
            level = len(votes.levels) - 1
            kernel = np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)
            # each keypoint's votes dilated by the deformation tolerance, every rotation and keypoint (dilate_stack)
            # in place: the float32 values of exp((sims - 1) / T), without a temporary array per step
            np.exp(np.divide(np.subtract(votes_in, 1.0, out=votes_in), cfg.temperature, out=votes_in), out=votes_in)
            spread = dilate_stack(votes_in.reshape(n_rot * n_kp, hg, wg), kernel)
            np.log1p(np.divide(spread, cfg.vote_floor, out=spread), out=spread)
            spread = spread.reshape(n_rot, n_kp, hg, wg)
            prior = -0.5 * (np.log2(ratio) / cfg.scale_prior) ** 2
            centre_prior = np.zeros((hg, wg), np.float32)
            if cfg.centre_prior > 0:
                d = np.linalg.norm(grid / qscale - expected, axis=-1) / (cfg.centre_prior * diag)
                centre_prior = (-0.5 * d**2).astype(np.float32)
            for ai in range(n_rot):
                acc = np.full((hg, wg), n_kp * np.log(cfg.vote_floor), np.float32)
                for k in range(n_kp):
                    dx, dy = np.round(template.offsets[ai, voters[k]] / stride).astype(int)
                    add_shifted(acc, spread[ai, k], dx, dy)
                angle = (np.rad2deg(template.angles[ai]) + 180) % 360 - 180
                rot_prior = -0.5 * (angle / cfg.rotation_prior_deg) ** 2 if cfg.rotation_prior_deg > 0 else 0.0
                acc /= n_kp
                total = acc + centre_prior
                y, x = np.unravel_index(int(np.argmax(total)), total.shape)
                score = float(total[y, x]) + prior + rot_prior
                votes.candidates.append((score, level, ai, int(x), int(y)))
                if copy_bonus > 0 and ai == zero_angle and ratio == 1.0:
                    # the support's own place and pose, scaled with the image (what copying would do)
                    cx, cy = np.clip(np.round((expected * qscale - origin) / stride).astype(int), 0, [wg - 1, hg - 1])
                    votes.candidates.append((float(total[cy, cx]) + copy_bonus, level, ai, int(cx), int(cy)))
                for value, px, py in local_peaks(acc, tol, peaks) if peaks else ():
                    votes.peaks.append((value + prior + rot_prior, level, ai, px, py))
        if not votes.candidates:
            raise ValueError(f"query image of shape {image.shape} is too small to match")
        return votes

    def finish(self, template: SupportTemplate, votes: Votes, candidate: tuple[float, int, int, int, int]) -> Match:
        """The keypoints of one pose ``candidate`` (score, level, rotation, x, y cell) of ``votes``, refined locally."""
        score, li, ai, x, y = candidate
        qscale, qdesc, (hg, wg), _, origin = votes.levels[li]
        sims = (votes.support[ai] @ qdesc.T).reshape(-1, hg, wg)  # every keypoint, at the chosen rotation
        points, scores = self._refine(sims, template.offsets[ai], x, y)
        points = (points + origin) / qscale
        angle = float(np.rad2deg(template.angles[ai]))
        return Match(points, scores, score, angle, template.scale / qscale, votes.same_scene)

    def _verify(self, template: SupportTemplate, candidates: list, levels: list) -> tuple[float, int, int, int, int]:
        """Best candidate after adding the grey-level correlation of the support region warped by each pose."""
        cfg = self.cfg
        top = sorted(candidates, key=lambda c: -c[0])[: cfg.verify_top]
        if cfg.verify_weight == 0 or len(template.region) < 8:
            return top[0]
        best = None
        for score, li, ai, x, y in top:
            grey, origin = levels[li][3], levels[li][4]
            pos = template.region @ template.rotations[ai].T + np.array([x, y]) * self.stride + origin
            vals = _bilinear(grey, pos[:, 0], pos[:, 1])[:, 0]
            vals = vals - vals.mean()
            ncc = float(vals @ template.region_grey / (np.linalg.norm(vals) + 1e-6))
            total = score + cfg.verify_weight * ncc
            if best is None or total > best[0]:
                best = (total, li, ai, x, y)
        return best

    def _refine(self, sims: np.ndarray, offsets: np.ndarray, cx: int, cy: int) -> tuple[np.ndarray, np.ndarray]:
        """Local arg-max of similarity x Gaussian prior around each voted keypoint; grid cells -> working px."""
        cfg = self.cfg
        stride = self.stride
        n_kp, hg, wg = sims.shape
        radius = cfg.refine_radius * self.object_size / stride
        sigma = cfg.refine_sigma * self.object_size / stride
        ys, xs = np.mgrid[0:hg, 0:wg]
        points = np.zeros((n_kp, 2))
        scores = np.zeros(n_kp)
        for k in range(n_kp):
            px, py = cx + offsets[k, 0] / stride, cy + offsets[k, 1] / stride
            d2 = (xs - px) ** 2 + (ys - py) ** 2
            prior = np.where(d2 <= radius**2, np.exp(-d2 / (2 * sigma**2)), 0.0)
            if prior.max() == 0:  # voted position left the image: keep it, clamp to the border
                qx, qy = np.clip(px, 0, wg - 1), np.clip(py, 0, hg - 1)
                points[k] = (qx * stride, qy * stride)
                scores[k] = 0.0
                continue
            weighted = np.exp((sims[k] - 1.0) / cfg.temperature) * prior
            y, x = np.unravel_index(int(np.argmax(weighted)), weighted.shape)
            ox, oy = subpixel(weighted, x, y)
            points[k] = ((x + ox) * stride, (y + oy) * stride)
            scores[k] = float(np.clip(sims[k, y, x], 0.0, 1.0))
        return points, scores


def _spread_subset(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of at most ``n`` of ``points`` (K, 2) picked by farthest-point sampling (all if K <= n)."""
    if len(points) <= n:
        return np.arange(len(points))
    chosen = [int(np.argmax(np.linalg.norm(points - points.mean(axis=0), axis=1)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.array(sorted(chosen))
