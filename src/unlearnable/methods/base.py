"""The `Method` base class: one call signature for every protection method.

``method.protect(imageset, budget, seed=0)`` returns a :class:`ProtectedSet`. Subclasses
implement :meth:`Method.perturb`, returning float perturbations δ in the [0, 1] scale (HWC, one
per image, at each image's native size; or whole grey levels as integers, :func:`grey_levels`,
where memory counts); the base class projects δ onto the budget, applies it
with the one shared quantisation step (:meth:`Budget.quantize`: add, round, clip — exact in grey
levels), measures the change and verifies the budget. Methods whose change is not additive (OPS,
CUDA) override :meth:`Method.apply` and declare ``budget_norm = "none"`` or ``"l0"``.

Hyperparameters are dataclass fields with the paper's defaults (torchattacks style), so
``create_method("random-classwise", dist="uniform")`` is the whole API.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..budget import Budget, summarize_changes
from ..data.imageset import ImageSet, Images
from ..device import describe_device, resolve_device
from ..errors import UnlearnableError

Deltas = Union[np.ndarray, List[np.ndarray]]
Progress = Optional[Callable[[int, int], None]]


def resize_delta(delta: np.ndarray, size: Tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """Resize an HWC float perturbation to ``size`` = (H, W).

    Nearest and bilinear both keep every value inside the convex hull of the input values,
    so an ℓ∞-bounded δ stays bounded at any size (ℓ2/ℓ0 are re-projected by the caller).
    """
    h, w = delta.shape[:2]
    H, W = size
    if (h, w) == (H, W):
        return delta
    if mode == "nearest":
        rows = np.minimum((np.arange(H) * h) // H, h - 1)
        cols = np.minimum((np.arange(W) * w) // W, w - 1)
        return delta[rows][:, cols]
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(delta, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def deltas_to_native(data: ImageSet, deltas: np.ndarray, mode: str = "bilinear") -> Deltas:
    """Working-size perturbations ``(N, h, w, C)`` (input order) → one δ per image at its native size.

    A stacked array for uniform sets (resized when the working size differs: e.g. a set of
    224-px photos worked at 32²), a list for mixed sizes. Methods that can make δ on the native
    pixels instead do so (``resize="through"``, :mod:`unlearnable.methods.resolution`).
    """
    if at_own_size(data, deltas.shape[1:3]):
        return np.ascontiguousarray(deltas, dtype=np.float32)
    out = [resize_delta(deltas[i], data.shape_of(i), mode).astype(np.float32) for i in range(len(deltas))]
    return as_deltas(data, out)


@dataclass
class ProtectedSet:
    """The result of protecting an :class:`ImageSet`.

    Attributes:
        clean: the input set (untouched).
        protected: the protected set: same ids, labels, classes and sizes, new pixels.
        method: registered method name.
        hyperparameters: the method's hyperparameters as used.
        budget: the declared budget.
        seed: the seed used.
        device: where it ran, human readable.
        seconds: wall time of generation, application and verification.
        per_image: per-image measured change (keys ``linf``, ``l2``, ``l0``, ``mean_abs``).
        pseudo_labels: ``None`` when the given labels were used; for unlabelled input to a
            method that needs labels, the k-means pseudo-labelling it was protected against
            (:func:`unlearnable.data.pseudo.pseudo_label_plan`).
    """

    clean: ImageSet
    protected: ImageSet
    method: str
    hyperparameters: Dict[str, Any]
    budget: Budget
    seed: int
    device: str
    seconds: float
    per_image: List[Dict[str, float]] = field(default_factory=list)
    pseudo_labels: Optional[Dict[str, Any]] = None  # k-means plan when unlabelled input was clustered

    @property
    def norms(self) -> Dict[str, Dict[str, float]]:
        """Max and mean over the set of each measured norm (grey levels for ℓ∞)."""
        return summarize_changes(self.per_image)

    @property
    def within_budget(self) -> bool:
        return all(self.budget.allows(r) for r in self.per_image)


def _at_least(lo: float) -> Tuple[str, Callable[[float], bool]]:
    return f">= {lo:g}", lambda v: v >= lo


_POSITIVE = ("> 0", lambda v: v > 0)
_FRACTION = ("in [0, 1)", lambda v: 0 <= v < 1)

#: The range a method field of this name must lie in, for every method that has one (``None``
#: stays allowed where the field is optional): one table, so ``--param steps=-1`` fails by name
#: before any work, whatever the method.
FIELD_RANGES: Dict[str, Tuple[str, Callable[[float], bool]]] = {
    **{name: _at_least(1) for name in (
        "batch_size", "eot", "restarts", "max_rounds", "train_steps", "surrogate_epochs", "surrogate_batch",
        "attack_batch", "working_size", "pattern_size", "patch_size", "k", "max_proposals",
        "lr_decay_every", "num_checkpoints")},
    **{name: _at_least(0) for name in (
        "steps", "pgd_steps", "rho_steps", "weight_decay", "rho", "blur_parameter", "required_response",
        "checkpoint_every_s")},
    **{name: _POSITIVE for name in (
        "lr", "surrogate_lr", "step_size", "rho_step_size", "grad_clip", "class_sep", "norm_bound")},
    **{name: _FRACTION for name in ("momentum", "surrogate_momentum", "stop_error")},
    "mix": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "lam": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "lr_gamma": ("in (0, 1]", lambda v: 0 < v <= 1),
    "subset_fraction": ("in (0, 1]", lambda v: 0 < v <= 1),
    "pseudo_classes": _at_least(2),
    "kernel_size": ("an odd number >= 1", lambda v: v >= 1 and v % 2 == 1),
}


def check_fields(method: "Method") -> None:
    """Raise a one-line error for a hyperparameter outside its range (:data:`FIELD_RANGES`)."""
    for f in dataclasses.fields(method):
        rule, value = FIELD_RANGES.get(f.name), getattr(method, f.name)
        if rule is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        what, ok = rule
        if not (math.isfinite(value) and ok(value)):
            raise UnlearnableError(f"{method.registry_name or type(method).__name__}: {f.name} must be {what}, "
                                   f"got {value:g}")


@dataclass
class Method:
    """Base class of protection methods (see the module docstring for the contract).

    Class attributes a subclass sets:
        budget_norm: the norm the method is bounded in (``linf``, ``l2``, ``l0``, ``none``).
        default_budget: the paper's budget, parsed with :meth:`Budget.parse`.
        needs_labels: whether the method uses class labels.
        paper: citation shown by ``unlearnable methods``.
    """

    budget_norm: ClassVar[str] = "linf"
    default_budget: ClassVar[str] = "8/255"
    needs_labels: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""
    #: Small hyperparameters (a tiny surrogate, few steps) for the registry's CPU tests.
    smoke_kwargs: ClassVar[Dict[str, Any]] = {}
    #: False for methods with no randomness: the seed cannot change their output (OPS).
    seeded: ClassVar[bool] = True
    #: What to tell a user whose images this method does not protect at their own size ("" when
    #: it keeps protecting there; measured in benchmarks/RESULTS.md, "Resolution policy").
    #: Methods whose caveat depends on a hyperparameter (``resize``) make it a property.
    mixed_size_caveat: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)  # a hyperparameter out of its range fails at creation, before any data is read

    # -- to implement --------------------------------------------------------------------
    def perturb(self, data: ImageSet, budget: Budget, *, seed: int, device: str,
                workdir: Optional[str] = None, progress: Progress = None) -> Deltas:
        """Return one float δ (HWC, [0,1] scale, the image's own size) per image."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    def resolution_warning(self, data: ImageSet, shapes: Optional[Sequence[Tuple[int, int]]] = None) -> Optional[str]:
        """``mixed_size_caveat`` as a warning, for a set not protected at its own size; else None.
        ``shapes``: the images' own sizes, for a set held at another (a streamed folder)."""
        caveat = self.mixed_size_caveat
        own = worked_at_own_size(shapes) if shapes is not None else at_own_size(data, working_size(data))
        if not caveat or not len(data) or own:
            return None
        return f"warning: {self.registry_name} {caveat} (benchmarks/RESULTS.md, 'Resolution policy')"

    @property
    def streams(self) -> bool:
        """Whether ``protect`` may feed this method a folder too large for memory a batch at a
        time. It then provides ``working_size`` (the side of the copies kept in memory),
        ``fit_native(small, shapes, budget, seed=, device=, workdir=)`` returning a fit with an
        ``order``, ``attack_native(fit, images, budget, seed=, device=, progress=, sink=, skip=)``
        calling ``sink(positions, deltas)`` with each finished batch's additive δ (the
        :meth:`apply` convention), and ``finish_run(fit, seconds)``: as PIL and every
        :class:`PerImageMethod` do."""
        return False

    def hyperparameters(self) -> Dict[str, Any]:
        """The constructor arguments, as recorded in the manifest."""
        return dataclasses.asdict(self)

    def parse_budget(self, budget: Union[str, float, Budget, None]) -> Budget:
        """The user's budget in this method's declared norm (its paper's default when None)."""
        b = Budget.parse(self.default_budget if budget is None else budget, default_norm=self.budget_norm)
        if b.norm != self.budget_norm and self.budget_norm != "none":
            like = self.default_budget if ":" in self.default_budget else f"{self.budget_norm}:{self.default_budget}"
            raise UnlearnableError(
                f"method {self.registry_name!r} is bounded in {self.budget_norm}, not {b.norm}; give a budget like {like}")
        return b

    def apply(self, data: ImageSet, deltas: Deltas, budget: Budget, x_chunk: int = 4096) -> Images:
        """Project δ onto the budget and quantise: the one shared application step."""

        def shared(x: np.ndarray, d: np.ndarray) -> np.ndarray:
            if budget.norm == "none":
                return _quantize_free(x, d)
            if x.ndim == 3:  # one image of a mixed-size set
                return budget.quantize(x, budget.project(d[None])[0])
            d = budget.project(d)
            if budget.norm == "linf":  # elementwise: the whole chunk at once
                return budget.quantize(x, d)
            return np.stack([budget.quantize(xi, di) for xi, di in zip(x, d)])

        return apply_rule(data, deltas, shared, self.registry_name, x_chunk)

    def protect(self, data: ImageSet, budget: Union[str, float, Budget, None] = None, *, seed: int = 0,
                device: Optional[str] = None, workdir: Optional[str] = None,
                progress: Progress = None) -> ProtectedSet:
        """Protect ``data``: perturb, apply with exact quantisation, measure and verify."""
        if not isinstance(data, ImageSet):
            raise UnlearnableError(f"protect takes an ImageSet (unlearnable.data.ImageSet(images, labels, classes, "
                                   f"ids) or load_images(path)), got {type(data).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise UnlearnableError(f"seed must be an integer, got {seed!r}")
        check_fields(self)  # fields may have been set after creation
        b = self.parse_budget(budget)
        if len(data) == 0:
            raise UnlearnableError("nothing to protect: the input has no images")
        dev = str(resolve_device(device))
        t0 = time.perf_counter()
        # Unlabelled input to a method that needs labels: protect against k-means pseudo-labels
        # (Unlearnable Clusters); the returned sets keep the caller's (absent) labels.
        from ..data.pseudo import pseudo_label_plan, pseudo_labels

        plan = pseudo_label_plan(self, data)
        target = data if plan is None else pseudo_labels(data, plan["k"], seed=seed)
        deltas = self.perturb(target, b, seed=seed, device=dev, workdir=workdir, progress=progress)
        del target
        images = self.apply(data, deltas, b)
        del deltas
        per_image = measure_set(data.images, images)
        seconds = time.perf_counter() - t0
        result = ProtectedSet(
            clean=data, protected=data.with_images(images), method=self.registry_name,
            hyperparameters=self.hyperparameters(), budget=b, seed=seed,
            device=describe_device(dev), seconds=seconds, per_image=per_image, pseudo_labels=plan)
        check_within_budget(self.registry_name, b, per_image)
        return result


@dataclass
class PerImagePlan:
    """What a :class:`PerImageMethod` decided for a set before reading any native pixel.

    Attributes:
        order: position ``p`` of the pass holds input image ``order[p]`` (the input order here).
        shapes: each image's own ``(H, W)``, input order.
        state: the method's plan (class patterns, each image's point, ...).
        seconds: wall time of the planning.
    """

    order: np.ndarray
    shapes: List[Tuple[int, int]]
    state: Any
    seconds: float


class PerImageMethod(Method):
    """A method whose δ for an image follows from a plan made from the set's labels, ids and
    sizes alone (class patterns, each image's point, which images a mix picks) and from that
    image's own pixels: :meth:`plan`, then :meth:`deltas_for` on any batch of images.

    Such a method streams a folder of photos (:attr:`Method.streams`): ``protect`` plans from
    the labels, ids and sizes, then decodes, perturbs and writes one batch at a time. In memory
    :meth:`perturb` runs the very same two steps, so both give the same bytes.
    """

    #: Side of the copies a streamed folder keeps in memory (the plan reads none of their pixels).
    working_size: ClassVar[int] = 32
    #: Images per :meth:`deltas_for` call on images of several sizes (fewer when they are large:
    #: :func:`~unlearnable.methods.resolution.size_batches`).
    batch_images: ClassVar[int] = 64
    #: Images per :meth:`deltas_for` call on a stacked set.
    stacked_chunk: ClassVar[int] = 4096

    # -- to implement --------------------------------------------------------------------
    def plan(self, data: ImageSet, shapes: Sequence[Tuple[int, int]], budget: Budget, *, seed: int,
             device: str) -> Any:
        """The method's decisions for ``data`` (read its labels, ids and class count, never its
        pixels: a streamed folder is held at ``working_size``) whose images have ``shapes``."""
        raise NotImplementedError

    def deltas_for(self, state: Any, images: Images, idx: np.ndarray, budget: Budget, *, device: str) -> Deltas:
        """δ for ``images`` (a stacked ``(B, H, W, C)`` array or a list), the set's images
        ``idx``: stacked for a stacked batch, else a list."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------
    @property
    def streams(self) -> bool:
        return True

    def fit_native(self, small: ImageSet, shapes: Sequence[Tuple[int, int]], budget: Budget, *, seed: int,
                   device: str, workdir: Optional[str] = None) -> PerImagePlan:
        """Part one of a streamed folder: the plan, from ``small`` (the set at ``working_size``,
        with the labels and ids of the full set) and each image's own ``shapes``."""
        t0 = time.perf_counter()
        state = self.plan(small, list(shapes), budget, seed=seed, device=device)
        return PerImagePlan(np.arange(len(small)), [tuple(s) for s in shapes], state, time.perf_counter() - t0)

    def attack_native(self, fit: PerImagePlan, images: Sequence[np.ndarray], budget: Budget, *, seed: int,
                      device: str, progress: Progress = None, sink=None, skip=None) -> None:
        """Part two: δ for each batch of ``images`` (input order; a sequence may decode each
        image on access), handed to ``sink(positions, deltas)``; batches ``skip`` is true for
        are not computed (a resumed stream)."""
        from .resolution import batch_pass, size_batches

        for _, idx in batch_pass(size_batches(fit.shapes, self.batch_images), images, skip, progress):
            sink(idx, list(self.deltas_for(fit.state, [images[p] for p in idx], np.asarray(idx), budget,
                                           device=device)))

    def finish_run(self, fit: PerImagePlan, seconds: float) -> None:
        """Record the run in ``last_run``."""
        self.last_run = {"plan_seconds": fit.seconds, "perturb_seconds": seconds}

    def perturb(self, data: ImageSet, budget: Budget, *, seed: int, device: str,
                workdir: Optional[str] = None, progress: Progress = None) -> Deltas:
        t0 = time.perf_counter()
        fit = self.fit_native(data, sample_shapes(data), budget, seed=seed, device=device)
        n = len(data)
        if isinstance(data.images, np.ndarray):  # one size: vectorised chunks, filled in place
            out: Any = None
            for s in range(0, n, self.stacked_chunk):
                d = np.asarray(self.deltas_for(fit.state, data.images[s:s + self.stacked_chunk],
                                               np.arange(s, min(n, s + self.stacked_chunk)), budget, device=device))
                if out is None:
                    out = np.empty((n,) + d.shape[1:], d.dtype)
                out[s:s + len(d)] = d
                if progress:
                    progress(s + len(d), n)
        else:
            out = [None] * n

            def keep(idx: List[int], deltas: List[np.ndarray]) -> None:
                for i, d in zip(idx, deltas):
                    out[i] = d

            self.attack_native(fit, data.images, budget, seed=seed, device=device, progress=progress, sink=keep)
        self.finish_run(fit, time.perf_counter() - t0 - fit.seconds)
        return out


def class_patterns_at(images: Images, labels: np.ndarray, patterns: np.ndarray, mode: str = "nearest") -> Deltas:
    """Each image its class's pattern, resized to the image's own size: stacked for a stacked
    batch (each pattern resized once), else a list."""
    if isinstance(images, np.ndarray):
        fitted = np.stack([resize_delta(p, images.shape[1:3], mode) for p in patterns]).astype(np.float32)
        return fitted[labels]
    return [resize_delta(patterns[y], im.shape[:2], mode).astype(np.float32) for im, y in zip(images, labels)]


def apply_rule(data: ImageSet, deltas: Deltas, rule: Callable[[np.ndarray, np.ndarray], np.ndarray],
               name: str = "method", chunk: int = 4096) -> Images:
    """Apply ``rule(clean_uint8, delta_float) -> uint8`` to chunks of a stacked set or to each image of a mixed one.

    The shared application step and the ``faithful`` quirks of official pipelines both go
    through here, so shape checks and chunking live in one place.
    """
    if len(deltas) != len(data):
        raise RuntimeError(f"{name}: {len(deltas)} perturbations for {len(data)} images")
    if isinstance(data.images, np.ndarray):
        x = data.images
        out = np.empty_like(x)
        for s in range(0, len(x), chunk):
            d = float_delta(deltas[s:s + chunk])
            if d.shape != x[s:s + chunk].shape:
                raise RuntimeError(f"{name}: perturbation shape {d.shape} != images {x[s:s + chunk].shape}")
            out[s:s + chunk] = rule(x[s:s + chunk], d)
        return out
    res = []
    for im, d in zip(data.images, deltas):
        d = float_delta(d)
        if d.shape != im.shape:
            raise RuntimeError(f"{name}: perturbation shape {d.shape} != image {im.shape}")
        res.append(rule(im, d))
    return res


def check_within_budget(name: str, budget: Budget, per_image: List[Dict[str, float]]) -> None:
    """Raise if a measured change exceeds ``budget``: a method bug, not a user error (the shared
    quantisation should make it impossible), so a ``RuntimeError`` naming the worst image's change."""
    if not all(budget.allows(r) for r in per_image):
        worst = max(per_image, key=lambda r: r[budget.norm] if budget.norm != "none" else 0)
        raise RuntimeError(f"{name} violated its budget {budget.describe()}: {worst}")


def grey_levels(delta: np.ndarray) -> np.ndarray:
    """δ in the [0, 1] scale rounded to whole grey levels: int8 (int16 beyond ±127).

    What a method may return instead of float δ where memory counts (a 12-megapixel photo's
    δ is 144 MB in float32, 36 MB in int8). It changes no output byte of an ℓ∞ budget or of an
    unbounded method: the shared quantisation rounds δ to grey levels before adding it. Not for
    ℓ2 or ℓ0 methods, whose projections rank or scale the float δ.
    """
    q = np.rint(np.asarray(delta, dtype=np.float32) * np.float32(255.0))
    return q.astype(np.int8 if q.size == 0 or float(np.abs(q).max()) <= 127 else np.int16)


def float_delta(delta: np.ndarray) -> np.ndarray:
    """A method's δ as float32 in the [0, 1] scale (integer arrays are :func:`grey_levels`)."""
    d = np.asarray(delta)
    if np.issubdtype(d.dtype, np.integer):
        return d.astype(np.float32) / np.float32(255.0)
    return np.asarray(d, dtype=np.float32)


def _quantize_free(clean: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Add, round, clip with no budget (for unbounded methods)."""
    return np.clip(clean.astype(np.int16) + np.rint(delta * 255.0).astype(np.int16), 0, 255).astype(np.uint8)


def measure_set(clean: Images, protected: Images) -> List[Dict[str, float]]:
    """Per-image measured change, vectorised for stacked sets."""
    if isinstance(clean, np.ndarray) and isinstance(protected, np.ndarray):
        rows: List[Dict[str, float]] = []
        for s in range(0, len(clean), 4096):
            d = protected[s:s + 4096].astype(np.int32) - clean[s:s + 4096].astype(np.int32)
            a = np.abs(d)
            flat = a.reshape(len(a), -1)
            linf = flat.max(axis=1) if flat.shape[1] else np.zeros(len(a))
            l2 = np.sqrt((d.reshape(len(d), -1).astype(np.int64) ** 2).sum(axis=1)) / 255.0
            l0 = (a.max(axis=-1) > 0).reshape(len(a), -1).sum(axis=1)
            mean = flat.mean(axis=1)
            rows.extend({"linf": float(i), "l2": float(j), "l0": float(k), "mean_abs": float(m)}
                        for i, j, k, m in zip(linf, l2, l0, mean))
        return rows
    from ..budget import measure_change

    return [measure_change(c, p) for c, p in zip(clean, protected)]


def rng_for(seed: int, *stream: Union[int, str]) -> np.random.Generator:
    """An independent NumPy generator for ``seed`` and a named stream (order-independent)."""
    import hashlib

    words = [seed & 0xFFFFFFFF]
    for s in stream:
        if isinstance(s, int):
            words.append(s & 0xFFFFFFFFFFFFFFFF)
        else:  # the whole name counts: "cat/001.png" and "cat/002.png" are different streams
            words.append(int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little"))
    return np.random.default_rng(np.random.SeedSequence(words))


def as_deltas(data: ImageSet, per_image: List[np.ndarray]) -> Deltas:
    """Per-image δ (input order) as :data:`Deltas`: stacked for a set of one size, else the list."""
    return np.stack(per_image) if data.uniform and len(per_image) else per_image


def at_own_size(data: ImageSet, hw: Sequence[int]) -> bool:
    """Whether every image of ``data`` is ``hw`` = (H, W): the set is worked at its own size, so a
    δ made at ``hw`` needs no resize."""
    return bool(len(data) and data.uniform and tuple(data.shape_of(0)) == tuple(hw))


def working_size(data: ImageSet, default: int = 32, max_native: int = 64) -> Tuple[int, int]:
    """The resolution a method optimises at (the resolution policy).

    Uniform sets whose sides are at most ``max_native`` (CIFAR, SVHN, 64-px subsets) run at
    their native size; mixed-size sets and large photos run at ``default``², and their
    perturbations are resized to each image's native size before quantisation.
    """
    if len(data) and data.uniform:
        return working_size_of([data.shape_of(0)], default, max_native)
    return (default, default)


def worked_at_own_size(shapes: Sequence[Tuple[int, int]], default: int = 32) -> bool:
    """Whether images of these ``(H, W)`` are worked at their own size (:func:`working_size_of`):
    one size, small enough; else their δ is made at another and brought to theirs."""
    return bool(len(shapes)) and len({tuple(s) for s in shapes}) == 1 and \
        working_size_of(shapes, default) == tuple(shapes[0])


def working_size_of(shapes: Sequence[Tuple[int, int]], default: int = 32, max_native: int = 64) -> Tuple[int, int]:
    """:func:`working_size` from the images' ``(H, W)`` alone (a folder not yet held in memory)."""
    if len(shapes) and len({tuple(s) for s in shapes}) == 1 and max(shapes[0]) <= max_native:
        return tuple(int(v) for v in shapes[0])  # type: ignore[return-value]
    return (default, default)


def per_class_patterns_to_images(data: ImageSet, patterns: np.ndarray, mode: str = "nearest") -> Deltas:
    """Give every image its class's pattern, resized to the image's own size."""
    return class_patterns_at(data.images, data.require_labels("a class-wise perturbation"), patterns, mode)


def sample_shapes(data: ImageSet) -> List[Tuple[int, int]]:
    """Each image's ``(H, W)``, input order."""
    return [data.shape_of(i) for i in range(len(data))]
