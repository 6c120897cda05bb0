"""Data-quality metrics for `datadream inspect`: how one class's synthetic images compare with
its real few-shot images, measured on image embeddings (CLIP, rows L2-normalised upstream).

Pure maths: every function takes feature matrices (torch tensors or numpy arrays, shape
(n, dim)) and returns numbers; nothing here reads files, configs or models. Work is done in
float64 on the features' device, vectorised within a class; `summarise_classes` loops over
classes. Measured on 2 CPU cores, `summarise` of 16 shots vs 500 images takes about 35-40 ms
in 512 or 768 dimensions (so under a minute for 1,000 classes), about half of it in the FD
bootstrap (100 small SVDs), the rest mostly the synthetic-vs-synthetic products of PRDC's
distances and of the kernel distance (O(n_synth^2 dim) each).

What each metric answers, for a class with real shots R and synthetic images S:

- frechet_distance / frechet_distance_spread: do S and R have the same mean and spread?
- kernel_distance: do S and R share their first three moments (mean, spread, skew)? Unbiased in n.
- prdc: are the S images realistic (precision, density) and do they span R (recall, coverage)?
- diversity: are the S images as varied as R, or collapsed onto a few modes?
- near_copies: did the generator memorise a shot (S images closer to a shot than shots are
  to one another, more often than fresh samples would be)?
- clip_score: does each image still look like its class prompt?

Small n is the normal case here (16 shots, sometimes 1-4): each docstring says how its metric
behaves there, and `summarise` reports None where a metric is undefined rather than a number
that would be read as a measurement.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

Features = torch.Tensor | np.ndarray

# Feature vectors closer than this (Euclidean, on unit-norm features whose distances are
# ~0.1-1.4) are the same image twice, not two shots; see near_copies.
_DUPLICATE = 1e-6
# Upper bound on the elements of one temporary (n x m) float64 matrix: 2**24 * 8 B = 128 MiB.
# Large inputs are processed in chunks of rows below it, so memory stays flat as n grows.
_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------- input handling

def _features(x: Features, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected an (n, dim) feature matrix, got shape {tuple(t.shape)}")
    # float64 throughout: FD subtracts traces of similar size and the kernel distance subtracts
    # kernel sums of similar size, where float32 rounding is of the order of the differences.
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: features contain NaN or infinity")
    return t


def _pair(real: Features, synth: Features, min_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _features(real, "real"), _features(synth, "synth")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real and synth features differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    for name, t in (("real", x), ("synth", y)):
        if t.shape[0] < min_n:
            raise ValueError(f"{name}: needs at least {min_n} feature rows, got {t.shape[0]}")
    return x, y.to(x.device)


def feature_sets(real: Features, synth: Features, *, l2_normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sets as float64 tensors on one device, checked for what every metric needs (one
    dimension, finite values, >= 2 rows each), each row scaled to unit length when `l2_normalize`.
    A ValueError says what is wrong."""
    x, y = _pair(real, synth, min_n=2)
    if not l2_normalize:
        return x, y
    unit = []
    for name, t in (("real", x), ("synth", y)):
        norms = t.norm(dim=1, keepdim=True)
        if not bool((norms > 0).all()):
            row = int((norms[:, 0] == 0).nonzero()[0])
            raise ValueError(f"{name}: row {row} is all zeros and has no direction to L2-normalise")
        unit.append(t / norms)
    return unit[0], unit[1]


def _generator(seed: int) -> torch.Generator:
    # Random draws happen on the CPU and move to the features' device, so a seed gives the same
    # resamples on every device.
    return torch.Generator().manual_seed(int(seed))


def _row_chunk(columns: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, columns))


# --------------------------------------------------------------------------- Fréchet distance

def _fd_from_moments(x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor | None = None,
                     wy: torch.Tensor | None = None) -> float:
    """FD from (optionally count-weighted) means and covariances in feature space: O(n dim^2 +
    dim^3), the route for n >> dim."""

    def moments(t: torch.Tensor, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        n = t.shape[0]
        w = torch.ones(n, dtype=t.dtype, device=t.device) if w is None else w
        mu = w @ t / n
        c = t - mu
        return mu, (c * w[:, None]).T @ c / (n - 1)

    mu1, s1 = moments(x, wx)
    mu2, s2 = moments(y, wy)
    # Tr sqrt(S1 S2) through the symmetric PSD form sqrt(S1) S2 sqrt(S1), which has the same
    # eigenvalues as S1 S2 but can use eigh (real, sorted, stable) instead of a general sqrtm.
    # Covariances of n < dim samples are singular, and rounding turns their zero eigenvalues
    # into tiny negatives: clamping them to 0 keeps the square roots real.
    evals, evecs = torch.linalg.eigh(s1)
    root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    middle = root @ s2 @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * trace_sqrt
    # FD is a squared Wasserstein-2 distance, so >= 0; what is below is rounding.
    return float(fd.clamp_min(0))


def _fd_from_samples(x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """FD for a batch of count-weighted resamples (wx: (B, n1), wy: (B, n2), rows summing to n)
    without forming dim x dim covariances: O(n1 n2 dim) once plus a small SVD per resample, the
    route for few samples in many dimensions (16 shots vs 500 images in 512-d)."""
    n1, n2 = x.shape[0], y.shape[0]
    mu1, mu2 = wx @ x / n1, wy @ y / n2                                    # (B, dim)
    # With A = diag(sqrt w1)(X - 1 mu1^T)/sqrt(n1-1) (so S1 = A^T A) and B likewise,
    # S1 S2 = A^T A B^T B has the non-zero eigenvalues of (A B^T)(A B^T)^T, hence
    # Tr sqrt(S1 S2) = sum of singular values of the n1 x n2 matrix A B^T. The singular values
    # are non-negative by construction, so the rank deficiency at n < dim costs nothing.
    # The centred cross products come from one Gram matrix: (x_i - mu1).(y_j - mu2)
    # = x_i.y_j - x_i.mu2 - mu1.y_j + mu1.mu2, so a resample only reweights it.
    gram = x @ y.T                                                         # (n1, n2)
    cross = (gram - (mu2 @ x.T)[:, :, None] - (mu1 @ y.T)[:, None, :]
             + (mu1 * mu2).sum(-1)[:, None, None])
    cross = cross * wx.sqrt()[:, :, None] * wy.sqrt()[:, None, :] / math.sqrt((n1 - 1) * (n2 - 1))
    # Same singular values either way round, but LAPACK is ~3x faster on tall matrices than on
    # wide ones (measured: (100, 500, 16) vs (100, 16, 500)), and the bootstrap spends its time here.
    trace_sqrt = torch.linalg.svdvals(cross if n1 >= n2 else cross.mT).sum(-1)
    # Tr S = (sum_i w_i |x_i|^2 - n |mu|^2) / (n - 1): the weighted sum of squared deviations.
    tr1 = (wx @ x.square().sum(1) - n1 * mu1.square().sum(-1)) / (n1 - 1)
    tr2 = (wy @ y.square().sum(1) - n2 * mu2.square().sum(-1)) / (n2 - 1)
    return ((mu1 - mu2).square().sum(-1) + tr1 + tr2 - 2 * trace_sqrt).clamp_min(0)


def _fd_method(n1: int, n2: int, dim: int, method: str) -> str:
    if method not in ("auto", "samples", "moments"):
        raise ValueError(f"method must be 'auto', 'samples' or 'moments', got {method!r}")
    if method != "auto":
        return method
    # Both routes are exact; pick the cheaper by rough flop counts (Gram + SVD vs two
    # covariances + two symmetric eigendecompositions).
    samples = n1 * n2 * dim + min(n1, n2) ** 2 * max(n1, n2)
    moments = (n1 + n2) * dim * dim + 20 * dim ** 3
    return "samples" if samples <= moments else "moments"


def frechet_distance(real: Features, synth: Features, *,
                     method: Literal["auto", "samples", "moments"] = "auto") -> float:
    """Fréchet distance between Gaussians fitted to the two sets (the formula of FID, applied to
    whatever features are given):

        FD = |mu_r - mu_s|^2 + Tr(S_r) + Tr(S_s) - 2 Tr sqrt(S_r S_s)

    with unbiased (n - 1) covariances. It is the squared 2-Wasserstein distance between the two
    Gaussians: range [0, inf), 0 for identical means and covariances, lower is better. On unit-norm
    features it is at most about 4 (|mu_r - mu_s|^2 <= 4 plus spreads), and its scale depends on
    the embedding, so compare values only within one feature extractor.

    Small n: the covariance of 16 shots has rank <= 15 in 512 dimensions. The formula is still
    well defined (both routes here are exact for singular covariances), but the estimate is biased
    upward by a term that shrinks like 1/n (Chong & Forsyth, 2020) and varies a lot between
    draws of the shots: compare FDs only between classes with the same shot and image counts,
    and use frechet_distance_spread to see how unstable it is.

    `method` picks the exact route: "samples" works with the n_real x n_synth cross-Gram matrix
    (cheap when the sets are small relative to dim), "moments" with dim x dim covariances
    (eigendecomposition of sqrt(S_r) S_s sqrt(S_r)); "auto" picks the cheaper. The samples route
    is also the more accurate at n < dim: the moments route takes square roots of the ~dim - n
    null eigenvalues, each rounding error of ~1e-17 becoming ~1e-9, so the two agree to about
    1e-8 there. Needs >= 2 rows in each set.
    """
    x, y = _pair(real, synth, min_n=2)
    if _fd_method(x.shape[0], y.shape[0], x.shape[1], method) == "moments":
        return _fd_from_moments(x, y)
    ones_x = torch.ones(1, x.shape[0], dtype=x.dtype, device=x.device)
    ones_y = torch.ones(1, y.shape[0], dtype=y.dtype, device=y.device)
    return float(_fd_from_samples(x, y, ones_x, ones_y)[0])


@dataclass(frozen=True, slots=True)
class FrechetSpread:
    """FD on the full sets plus its bootstrap distribution (resampling both sets)."""

    value: float  # FD of the full sets, the number to report
    mean: float  # mean over bootstrap draws
    std: float  # standard deviation over bootstrap draws: the instability to report
    low: float  # lower end of the central percentile interval over draws
    high: float  # upper end
    level: float  # coverage of [low, high], e.g. 0.9 for the 5th-95th percentiles
    draws: int


def _bootstrap_weights(n: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    # A resample with replacement is a vector of counts over the original rows; weighting
    # rows by counts avoids copying (draws, n, dim) feature tensors.
    idx = torch.randint(n, (draws, n), generator=generator)
    return torch.zeros(draws, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(draws, n, dtype=torch.float64))


def frechet_distance_spread(real: Features, synth: Features, *, draws: int = 100, seed: int = 0,
                            level: float = 0.9,
                            method: Literal["auto", "samples", "moments"] = "auto") -> FrechetSpread:
    """frechet_distance plus a bootstrap of it: both sets are resampled with replacement `draws`
    times (seeded: the same seed gives the same result) and FD recomputed on each pair.

    `std` (and the [low, high] percentile interval at `level`) says how much the FD would move had
    other shots and images been drawn; at 16 shots it is often a sizeable fraction of the value,
    which is the point of reporting it. It is an instability indicator, not a calibrated
    confidence interval: a resample holds fewer distinct points (about 63%) than the original, and
    FD's small-n bias grows as the distinct points shrink, so `mean` and the interval sit above
    `value`. The gap mean - value is a rough sign of that bias. Needs >= 2 rows in each set.
    """
    if draws < 2:
        raise ValueError(f"draws must be at least 2 for a spread, got {draws}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x, y = _pair(real, synth, min_n=2)
    n1, n2 = x.shape[0], y.shape[0]
    route = _fd_method(n1, n2, x.shape[1], method)
    value = frechet_distance(x, y, method=route)
    g = _generator(seed)
    wx = _bootstrap_weights(n1, draws, g).to(x.device)
    wy = _bootstrap_weights(n2, draws, g).to(x.device)
    if route == "samples":
        step = _row_chunk(n1 * n2)  # draws per batch so the (draws, n1, n2) tensor stays bounded
        fds = torch.cat([_fd_from_samples(x, y, wx[i:i + step], wy[i:i + step]) for i in range(0, draws, step)])
    else:
        fds = torch.tensor([_fd_from_moments(x, y, wx[i], wy[i]) for i in range(draws)], dtype=torch.float64)
    tail = (1 - level) / 2
    low, high = torch.quantile(fds.cpu(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return FrechetSpread(value=value, mean=float(fds.mean()), std=float(fds.std()), low=low, high=high,
                         level=level, draws=draws)


# --------------------------------------------------------------------------- kernel distance

@dataclass(frozen=True, slots=True)
class KernelDistance:
    """Unbiased MMD^2 of the full sets with its bootstrap spread."""

    value: float  # MMD^2 estimate from all rows of both sets: the number to report
    std: float | None  # std over bootstrap draws: its error bar; None below 3 rows in a set or 2 usable draws
    draws: int  # bootstrap draws the std comes from (those whose resamples hold a pair in each set)


def _kernel_sums(a: torch.Tensor, b: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor, scale: float,
                 degree: int) -> torch.Tensor:
    """sum_ij wa[r, i] wb[r, j] k(a_i, b_j) for every row r of the weights, the kernel matrix
    made in blocks of rows so memory stays bounded as the sets grow."""
    total = torch.zeros(wa.shape[0], dtype=a.dtype, device=a.device)
    step = _row_chunk(b.shape[0])
    for i in range(0, a.shape[0], step):
        block = (a[i:i + step] @ b.T / scale + 1) ** degree
        total += ((wa[:, i:i + step] @ block) * wb).sum(1)
    return total


def kernel_distance(real: Features, synth: Features, *, degree: int = 3, draws: int = 100,
                    seed: int = 0) -> KernelDistance:
    """Kernel distance: the unbiased estimate of the squared maximum mean discrepancy (MMD^2,
    Gretton et al., 2012) between the two sets, with the polynomial kernel

        k(a, b) = (a.b / s + 1)^degree,   s = mean |r|^2 over the real rows

    i.e. k = (cos(a, b) + 1)^3 on unit-norm features. For degree 3 the population value is

        MMD^2 = 3 |mu_r - mu_s|^2 / s + 3 |M2_r - M2_s|_F^2 / s^2 + |M3_r - M3_s|_F^2 / s^3

    with M2 = E[a a^T] and M3 = E[a (x) a (x) a]: it measures whether the two sets share their
    mean, their second moments (spread and its directions) and their third moments, and nothing
    beyond; sets that agree in those score 0. Range: >= 0 in the population, but the estimate
    dips below 0 by noise when the sets match; lower is closer; 0 within about one `std` means no
    detectable difference. s makes it blind to a common rescaling of all features, but its size
    depends on how spread the classes are in the embedding: compare values only within one
    feature extractor.

    It is KID's unbiased estimator and kernel (Bińkowski et al., 2018; clean-fid) with another s:
    KID's s = dim suits raw Inception features, whose a.b / dim is of order 1, but on unit-norm
    features a.b / dim <= 1 / dim makes the second- and third-moment terms vanish beside the first,
    and KID becomes (3 / dim) |mu_r - mu_s|^2, blind to spread and collapse; s = mean |r|^2 puts
    a.b / s in [-1, 1] there and of order 1 for raw features of any dimension. A Gaussian kernel with
    a median-heuristic bandwidth separated simulated cases (two modes, collapse, narrower spread;
    16 vs 500 and 300 vs 300 rows in 512-d) about as well, but its bandwidth moves with the data,
    a collapsed synthetic set included, so two runs' values would come from two kernels; this
    kernel is fixed for a feature space and has no setting to choose.

    Uses every row: within-set sums run over pairs of distinct rows, which makes the estimate
    unbiased at any n >= 2 (expectation 0 for two samples of one distribution, unlike FD whose
    bias grows as n shrinks); fewer rows only make it noisier, and `std` says how much. Passing one
    set twice is not two samples: the cross sum then holds each k(a, a), which puts the value at
    exactly -2 (mean k(a, a) - mean_{a != b} k(a, b)) / n.

    `std`: both sets are resampled with replacement `draws` times (seeded: the same seed gives the
    same result) and the estimate recomputed, a row drawn twice not being paired with itself (that
    would add k(a, a) and bias the resample upwards). With 16 shots it is mostly the luck of which
    shots were drawn. Measured on CLIP-like unit vectors in 64- to 512-d (3 to 300 rows per set,
    equal or differing sets), it runs about 1.5x (1.1-2.2x) the spread of the estimate across
    independent samples: the resampling noise adds to the noise already in the sample, most where
    the sets match. So it is a conservative error bar. A resample of a set that holds a single
    distinct row has no pair and is skipped (about 1 in 9 at 3 rows); with 2 rows every usable
    resample is the set itself, which hides the luck of the draw, so `std` is None there. Costs
    O((n_r + n_s)^2 (dim + draws)), like PRDC's distances. Needs >= 2 rows in each set.
    """
    if draws < 2:
        raise ValueError(f"draws must be at least 2 for a spread, got {draws}")
    if degree < 1:
        raise ValueError(f"degree must be a positive integer, got {degree}")
    x, y = _pair(real, synth, min_n=2)
    n1, n2 = x.shape[0], y.shape[0]
    scale = float(x.square().sum(1).mean().clamp_min(torch.finfo(x.dtype).tiny))
    g = _generator(seed)
    # Row 0 weights every row once, giving the estimate itself; rows 1.. are the resamples.
    wx = torch.cat([torch.ones(1, n1, dtype=x.dtype), _bootstrap_weights(n1, draws, g)]).to(x.device)
    wy = torch.cat([torch.ones(1, n2, dtype=x.dtype), _bootstrap_weights(n2, draws, g)]).to(x.device)

    def within(t: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Pairs of distinct rows: all weighted pairs minus each row with itself. A resample with
        # no such pair is skipped below; clamping its count only keeps 0/0 out of the arithmetic.
        pairs = w.sum(1).square() - w.square().sum(1)
        self_kernel = (t.square().sum(1) / scale + 1) ** degree
        sums = _kernel_sums(t, t, w, w, scale, degree) - w.square() @ self_kernel
        return sums / pairs.clamp_min(1), pairs > 0

    within_x, pairs_x = within(x, wx)
    within_y, pairs_y = within(y, wy)
    values = within_x + within_y - 2 * _kernel_sums(x, y, wx, wy, scale, degree) / (n1 * n2)
    usable = values[1:][(pairs_x & pairs_y)[1:]]
    std = float(usable.std()) if min(n1, n2) >= 3 and usable.numel() >= 2 else None
    return KernelDistance(value=float(values[0]), std=std, draws=int(usable.numel()))


# --------------------------------------------------------------------------- PRDC

@dataclass(frozen=True, slots=True)
class PRDC:
    precision: float  # share of synthetic images inside the real manifold (fidelity)
    recall: float  # share of real shots inside the synthetic manifold (diversity)
    density: float  # how many real balls hold each synthetic image, relative to k (fidelity)
    coverage: float  # share of real shots whose ball holds a synthetic image (diversity)
    k: int  # neighbours actually used (capped at n - 1 of the smaller set)


def _knn_radius(t: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (self excluded)."""
    n = t.shape[0]
    radii = []
    step = _row_chunk(n)
    for i in range(0, n, step):
        d = torch.cdist(t[i:i + step], t)
        rows = torch.arange(d.shape[0], device=t.device)
        d[rows, rows + i] = math.inf  # a point is not its own neighbour
        radii.append(d.kthvalue(k, dim=1).values)
    return torch.cat(radii)


def prdc(real: Features, synth: Features, *, k: int = 5) -> PRDC:
    """Precision, recall, density and coverage (Naeem et al., 2020), with the manifold of a set
    taken as the union of balls around its points whose radii are the distance to the k-th
    nearest neighbour in the same set. As in the authors' reference code, "inside" is strict
    (distance < radius), which makes density exactly 1 for identical sets; exact duplicate
    points therefore get an empty ball when k duplicates exist.

    - precision: share of synthetic images inside some real ball. [0, 1], higher is better.
    - recall: share of real shots inside some synthetic ball. [0, 1], higher is better.
    - density: (1 / (k n_synth)) * number of (synthetic, real ball) containments. [0, n_real / k];
      about 1 when the synthetic images are distributed like the real ones, below 1 when they lie
      off the real manifold, above 1 when they crowd into dense real regions. Nearer 1 is better;
      unlike precision it is robust to real outliers, whose big balls would catch anything.
    - coverage: share of real shots whose own ball holds a synthetic image. [0, 1], higher is
      better; unlike recall it is robust to synthetic outliers.

    Small n: k is capped at min(n_real, n_synth) - 1 (needs >= 2 rows each). The default k = 5
    suits thousands of points (Naeem et al.); with 16 shots a ball reaching the 5th of 15 other
    shots spans a third of the class, the union of balls fills most of the region around it,
    and precision/coverage saturate towards 1 even for mediocre images. With few shots prefer a
    smaller k (2-3) and compare numbers only at equal k and equal shot counts; very small k makes
    the radii noisy, so the scores jump between draws of the shots.
    """
    x, y = _pair(real, synth, min_n=2)
    k_used = min(int(k), x.shape[0] - 1, y.shape[0] - 1)
    if k_used < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real_radii, synth_radii = _knn_radius(x, k_used), _knn_radius(y, k_used)
    d = torch.cdist(x, y)                                                   # (n_real, n_synth)
    inside_real = d < real_radii[:, None]    # synthetic j inside the ball of real i
    precision = inside_real.any(dim=0).double().mean()
    density = inside_real.sum() / (k_used * y.shape[0])
    coverage = (d.min(dim=1).values < real_radii).double().mean()
    recall = (d < synth_radii[None, :]).any(dim=1).double().mean()
    return PRDC(precision=float(precision), recall=float(recall), density=float(density),
                coverage=float(coverage), k=k_used)


# --------------------------------------------------------------------------- diversity

def diversity(features: Features) -> float:
    """Mean cosine distance 1 - cos(a, b) over all pairs of distinct rows (self pairs excluded).

    Range [0, 1 + 1/(n - 1)]: 0 when all rows point the same way (mode collapse), 1 for mutually
    orthogonal rows; above 1 only for vectors spread around the origin, which CLIP image
    embeddings, all in one cone, are not. Higher means more varied. For synthetic images the
    useful reading is relative: near the real shots' value is right, well below is collapse,
    well above means the images wander off the class.

    Small n: it averages over pairs (a U-statistic), so it is unbiased for any n >= 2 and the
    value from 16 shots is directly comparable with that of 500 images; it is only noisier. Needs
    >= 2 rows. Costs O(n dim): the sum over pairs comes from the norm of the sum of unit vectors.
    """
    u = _features(features, "features")
    n = u.shape[0]
    if n < 2:
        raise ValueError(f"features: needs at least 2 rows for a pairwise mean, got {n}")
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total = u.sum(dim=0)
    # sum over i != j of u_i.u_j = |sum_i u_i|^2 - sum_i |u_i|^2: no n x n matrix needed.
    mean_cos = (total @ total - u.square().sum()) / (n * (n - 1))
    return float((1 - mean_cos).clamp_min(0))


# --------------------------------------------------------------------------- near copies

@dataclass(frozen=True, slots=True)
class NearCopies:
    share: float | None  # share of synthetic images that are near-copies; None with < 2 distinct shots
    expected_share: float | None  # share a generator of fresh samples would get: 2 / (shots + 1)
    count: int | None  # how many; None like share
    threshold: float | None  # the shots' own spacing used as the cut; None like share
    pairs: list[tuple[int, int, float]]  # (synthetic index, real index, distance), closest first


def near_copies(real: Features, synth: Features, *, top: int = 5) -> NearCopies:
    """For each synthetic image, its Euclidean distance to the nearest real shot. A synthetic
    image is a near-copy when that distance is below the smallest distance between two distinct
    shots of the class: it is closer to one shot than any two real photographs of the class are
    to each other. `share` is in [0, 1], lower is better. `pairs` lists the `top` closest
    (synthetic, real) pairs whatever the threshold, so a report can show them side by side.

    Read `share` against `expected_share`, not against 0: even a perfect generator, drawing fresh
    images from the real distribution, lands below the threshold with probability exactly
    2 / (n + 1) for n distinct shots (of n + 1 exchangeable points, the closest pair includes the
    new one with that probability): 11.8% at 16 shots, 40% at 4. A share well above it means
    the generator stays closer to the shots than real photographs do, i.e. memorisation; far
    below means the images keep away from the shots (or off the class).

    The threshold adapts to each class, so no global cut-off is needed, but it is set by a single
    pair of shots, hence noisy at small n. Shots whose features coincide (distance < 1e-6: the
    same photograph twice) count as one shot. With a single distinct shot there is no spacing:
    share, expected_share, count and threshold are None (not 0, which would read as "no copies
    found"); pairs are still returned.
    """
    x, y = _pair(real, synth, min_n=1)
    distances = torch.cdist(y, x)                                           # (n_synth, n_real)
    nearest, which = distances.min(dim=1)
    # stable: equal distances keep synthetic-index order, so reports do not reshuffle between runs
    order = torch.sort(nearest, stable=True).indices[:max(0, int(top))]
    pairs = [(int(j), int(which[j]), float(nearest[j])) for j in order.tolist()]
    shots = torch.cdist(x, x)
    duplicate = shots < _DUPLICATE
    # A shot is distinct unless it duplicates an earlier one (strict lower triangle).
    distinct = x.shape[0] - int(duplicate.tril(diagonal=-1).any(dim=1).sum())
    if distinct < 2:
        return NearCopies(share=None, expected_share=None, count=None, threshold=None, pairs=pairs)
    spacing = shots.masked_fill(duplicate, math.inf).min()
    flagged = int((nearest < spacing).sum())
    return NearCopies(share=flagged / y.shape[0], expected_share=2 / (distinct + 1), count=flagged,
                      threshold=float(spacing), pairs=pairs)


# --------------------------------------------------------------------------- CLIP score

def clip_score(image_features: Features, text_features: Features) -> torch.Tensor:
    """Per-image CLIP score: 100 * max(cos(image, text), 0), a (n,) float64 tensor.

    `text_features` is one prompt embedding (dim,) or (1, dim) shared by all images - the class
    prompt - or (n, dim), one per image. Both sides are normalised here, so raw embeddings work.

    Scale: Hessel et al. (2021) define CLIPScore = w * max(cos, 0) with w = 2.5, a constant chosen
    to stretch ViT-B/32's typical cosines (about 0.2-0.4) towards [0, 1]; it means nothing for
    other backbones. We use w = 100, as torchmetrics' CLIPScore does, so the number is "cosine in
    percent": range [0, 100], higher is better, typically 20-35 for a matching prompt with CLIP
    ViT-B and ViT-L. Compare it between real and synthetic images of the same class: synthetic
    images that score well above the shots follow the prompt more than the real data do (the
    prompt is the generator's conditioning), well below means drift away from the class. The
    clamp at 0 (Hessel et al.) treats every anti-aligned image as equally unrelated.

    Small n: a per-image score, so its class mean is unbiased at any n, just noisier with fewer
    images.
    """
    images = _features(image_features, "image_features")
    text = torch.as_tensor(text_features).to(torch.float64)
    text = text.reshape(1, -1) if text.ndim == 1 else text
    text = _features(text, "text_features").to(images.device)
    if text.shape[1] != images.shape[1] or text.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"text_features of shape {tuple(text.shape)} do not match image_features "
                         f"of shape {tuple(images.shape)}: expected (dim,), (1, dim) or (n, dim)")
    images = images / images.norm(dim=1, keepdim=True).clamp_min(1e-12)
    text = text / text.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return 100 * (images * text).sum(dim=1).clamp_min(0)


# --------------------------------------------------------------------------- summaries

def _round(value: float | None, digits: int) -> float | None:
    # Significant digits, not decimals: a kernel distance can be 1e-4 and FD is around 1, and a
    # fixed number of decimals would zero the first or pad the second.
    if value is None:
        return None
    return float(f"{value:.{digits}g}")


def summarise(real: Features, synth: Features, text_features: Features | None = None, *, k: int = 5,
              kd_draws: int = 100, fd_draws: int = 100, top: int = 5,
              seed: int = 0, digits: int = 4) -> dict[str, Any]:
    """All metrics for one class as a plain JSON-ready dict (numbers rounded to `digits`
    significant digits; None where a metric is undefined for these counts, e.g. FD, KD and PRDC
    with fewer than 2 real or synthetic rows, near-copies with a single distinct shot):

        n_real, n_synth
        fd, fd_std                            frechet_distance_spread: value and bootstrap std
        kd, kd_std                            kernel_distance: value and bootstrap std
        precision, recall, density, coverage, prdc_k
        diversity_real, diversity_synth
        near_copy_share, near_copy_expected_share, near_copy_count, near_copy_threshold,
        near_copy_pairs                       [[synthetic index, real index, distance], ...]
        clip_score_real, clip_score_synth     mean clip_score; only with text_features

    `seed` drives the FD and KD bootstraps, so equal inputs give equal output. The FD
    bootstrap's percentile interval is left out on purpose: it sits above `fd` (see
    frechet_distance_spread), which reads as a contradiction in a table; fd_std carries the
    instability.
    """
    x, y = _pair(real, synth, min_n=0)
    n1, n2 = x.shape[0], y.shape[0]
    both = n1 >= 2 and n2 >= 2
    values: dict[str, float | None] = dict.fromkeys(
        ("fd", "fd_std", "kd", "kd_std", "precision", "recall", "density", "coverage",
         "diversity_real", "diversity_synth", "near_copy_share", "near_copy_expected_share",
         "near_copy_threshold"))
    prdc_k = copy_count = None
    copy_pairs: list[list[float | int | None]] = []
    if both:
        spread = frechet_distance_spread(x, y, draws=fd_draws, seed=seed)
        values.update(fd=spread.value, fd_std=spread.std)
        kd = kernel_distance(x, y, draws=kd_draws, seed=seed)
        values.update(kd=kd.value, kd_std=kd.std)
        scores = prdc(x, y, k=k)
        values.update(precision=scores.precision, recall=scores.recall, density=scores.density,
                      coverage=scores.coverage)
        prdc_k = scores.k
    if n1 >= 2:
        values["diversity_real"] = diversity(x)
    if n2 >= 2:
        values["diversity_synth"] = diversity(y)
    if n1 >= 1 and n2 >= 1:
        copies = near_copies(x, y, top=top)
        values.update(near_copy_share=copies.share, near_copy_expected_share=copies.expected_share,
                      near_copy_threshold=copies.threshold)
        copy_count = copies.count
        copy_pairs = [[s, r, _round(d, digits)] for s, r, d in copies.pairs]
    if text_features is not None:
        values["clip_score_real"] = float(clip_score(x, text_features).mean()) if n1 else None
        values["clip_score_synth"] = float(clip_score(y, text_features).mean()) if n2 else None
    return {"n_real": n1, "n_synth": n2, **{key: _round(v, digits) for key, v in values.items()},
            "prdc_k": prdc_k, "near_copy_count": copy_count, "near_copy_pairs": copy_pairs}


# Keys of `summarise` that are per-class measurements worth averaging over classes.
_AVERAGED = ("fd", "fd_std", "kd", "kd_std", "precision", "recall", "density", "coverage",
             "diversity_real", "diversity_synth", "near_copy_share", "near_copy_expected_share",
             "clip_score_real", "clip_score_synth")


def summarise_classes(real: Mapping[str, Features], synth: Mapping[str, Features],
                      text_features: Mapping[str, Features] | None = None, *, seed: int = 0,
                      digits: int = 4, **options: Any) -> dict[str, Any]:
    """`summarise` for every class, plus an overall entry:

        {"classes": {name: summarise(...)},
         "overall": {"n_classes", "n_real", "n_synth" (totals),
                     <metric>: mean over the classes where it is defined,
                     "<metric>_classes": how many classes that mean covers}}

    `real`, `synth` (and `text_features`, one prompt embedding per class) must have the same class
    names. `options` go to summarise (k, kd_draws, fd_draws, top).

    Overall is the mean of per-class values, not the metrics of the pooled sets: pooled FD/KD
    would mostly measure whether classes are balanced, and pooled PRDC would need n_synth^2
    distances over all classes. Each class draws from its own seed, derived from `seed` and its
    name, so a class's numbers do not change when other classes are added or removed.
    """
    names = list(real)
    if set(names) != set(synth):
        missing = sorted(set(names) ^ set(synth))
        raise ValueError(f"real and synth must name the same classes; differing: {missing}")
    if text_features is not None and set(names) - set(text_features):
        raise ValueError(f"text_features lack classes: {sorted(set(names) - set(text_features))}")
    classes = {}
    for name in names:
        class_seed = (int(seed) + zlib.crc32(name.encode("utf-8"))) % (1 << 63)
        text = None if text_features is None else text_features[name]
        classes[name] = summarise(real[name], synth[name], text, seed=class_seed, digits=digits, **options)
    overall: dict[str, Any] = {"n_classes": len(names),
                               "n_real": sum(c["n_real"] for c in classes.values()),
                               "n_synth": sum(c["n_synth"] for c in classes.values())}
    for key in _AVERAGED:
        if text_features is None and key.startswith("clip_score"):
            continue
        values = [c[key] for c in classes.values() if c[key] is not None]
        overall[key] = _round(sum(values) / len(values), digits) if values else None
        overall[f"{key}_classes"] = len(values)
    return {"classes": classes, "overall": overall}
