"""protect → save → verify: the data owner's path, with atomic output and resume.

``protect_folder`` loads an input, protects it, and writes the protected images as lossless
PNG under the same relative paths plus ``manifest.json``. Work happens in a hidden sibling
folder ``.<out>.partial`` that is renamed into place at the end; an interrupted run leaves only
that folder, which ``resume=True`` continues (the protected pixels are checkpointed once
generated, and a journal records each PNG written). ``verify_output`` re-checks hashes and the
budget against the clean input.

Folders of photos are protected as a stream when the method can (PIL, and the methods whose δ
for an image needs only a plan and that image: random-classwise, regions-4, lsp, cuda; see
:attr:`~unlearnable.methods.base.Method.streams`): only their working-size copies stay in memory, and each batch is decoded, protected and written before the next
(:func:`_run_streaming`); the bytes are those of the in-memory path.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .budget import Budget, measure_change, summarize_changes
from .data import check_split, load_images, read_image
from .data.load import (FolderIndex, MemoryCheck, chunk_length, decode_files, index_images, largest_side,
                        read_views)
from .data.imageset import ImageSet, resize_image
from .data.save import (atomic_write, atomic_write_json, check_npz_destination, check_output_folder, export_npz,
                        move_into_place, output_names, sha256_file, write_pngs)
from .data.pseudo import pseudo_label_plan, pseudo_label_warning
from .errors import Interrupted, UnlearnableError, VerificationError
from .methods import create_method, streaming_methods
from .methods.base import ProtectedSet, check_within_budget, measure_set

MANIFEST = "manifest.json"
FORMAT = "unlearnable-protected/1"
_STAGE = "protected.npz"
_RUN = "run.json"
_JOURNAL = "journal.tsv"
_GENERATION = "generation.json"  # generation seconds (and device), kept across a resume
_SPENT = "spent.json"  # seconds an unfinished generation has taken so far, over all invocations
_WORK = ".work"

ProgressFactory = Optional[Callable[[str], Callable[[int, int], None]]]


def versions() -> Dict[str, str]:
    """Versions recorded with every output and result."""
    import PIL
    import torch

    return {"unlearnable": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__, "python": platform.python_version()}


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_output_location(inp: Path, out: Path, overwrite: bool) -> None:
    """Refuse outputs that would overwrite or live inside the input (or contain it)."""
    if out == inp or _is_within(out, inp):
        raise UnlearnableError(f"output {out} is inside the input {inp}; choose a folder outside it")
    if _is_within(inp, out):
        raise UnlearnableError(f"output {out} contains the input {inp}; choose another folder")
    check_output_folder(out, overwrite)


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def fingerprint_set(data: ImageSet) -> str:
    """Hash of ids and per-file hashes (or pixels): identifies the input a partial run used."""
    h = hashlib.sha256()
    for i, id_ in enumerate(data.ids):
        h.update(id_.encode())
        h.update((data.sha256[i] if data.sha256 else "").encode())
    if not data.sha256:
        for k in sorted(data.source_files):
            h.update(f"{k}:{data.source_files[k]}".encode())
        if not data.source_files:
            for im in data.images:
                h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()


def _save_stage(path: Path, result: ProtectedSet) -> None:
    imgs = result.protected.images
    arrays = {"x": imgs} if isinstance(imgs, np.ndarray) else {f"i{i}": im for i, im in enumerate(imgs)}
    # Streamed into the file: a copy of every protected image in memory would double the peak.
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_stage(path: Path, n: int):
    with np.load(path, allow_pickle=False) as z:
        if "x" in z.files:
            return z["x"]
        return [z[f"i{i}"] for i in range(n)]


@dataclass
class ProtectJob:
    """All the arguments of one protect run (what the CLI collects)."""

    input: str
    out: str
    method: str
    budget: Optional[str] = None
    seed: int = 0
    params: Optional[Dict[str, Any]] = None
    split: str = "train"
    labels: str = "auto"
    device: Optional[str] = None
    overwrite: bool = False
    resume: bool = False
    npz: Optional[str] = None


#: Grey levels of change past which the field's budgets never go (16/255 at most): warned about.
VISIBLE_LEVELS = 32

#: The images, their perturbation and the protected copy are all in memory at once.
PROTECT_MEMORY = MemoryCheck(3, "protecting them whole", "protect the folder in parts (a few class folders at "
                                                         "a time, each to its own --out), or with a method that "
                                                         "reads photos a batch at a time (pil, the default, or "
                                                         f"{', '.join(m for m in streaming_methods() if m != 'pil')})")


def protect_folder(job: ProtectJob, progress: ProgressFactory = None, log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Run a protect job end to end and return the manifest.

    Nothing is created until the input has loaded and the method and budget are valid, so a
    bad input leaves no output folder behind.
    """
    inp = Path(job.input).expanduser()
    if not inp.exists():
        raise UnlearnableError(f"input {inp} does not exist")
    inp = inp.resolve()
    check_split(inp, job.split)
    out = Path(job.out).expanduser().resolve()
    part = partial_dir(out)
    if job.resume and not job.overwrite and not part.exists() and (out / MANIFEST).is_file():
        raise UnlearnableError(f"{out} is already complete: there is nothing to resume (pass --overwrite to redo it)")
    check_output_location(inp, out, job.overwrite)
    if part.exists() and not (job.resume or job.overwrite):
        raise UnlearnableError(
            f"an interrupted run left {part}; pass --resume to continue it or --overwrite to start over")
    npz_path = Path(job.npz).expanduser().resolve() if job.npz else None
    if npz_path is not None and _is_within(npz_path, inp):
        raise UnlearnableError(f"NPZ export {npz_path} is inside the input {inp}")
    if npz_path is not None:  # found now, not after the whole set has been protected
        check_npz_destination(npz_path, overwrite=job.overwrite or job.resume)

    method = create_method(job.method, **(job.params or {}))
    budget = method.parse_budget(job.budget)
    if budget.norm == "linf" and budget.levels > VISIBLE_LEVELS:  # 0.5 (127 levels) for 0.5/255, say
        log(f"warning: ε = {budget.levels}/255 changes images visibly; the field protects at 8/255–16/255 "
            "(a bare number below 1 is a fraction of 255: 0.03 ≈ 8/255)")
    t_load = time.perf_counter()
    index = _stream_index(job, method, inp)
    stream = _load_small(index, method, job.seed, progress) if index is not None else None
    if stream is not None:
        data = stream.small
        log(f"read {len(data)} images from {data.root} in {time.perf_counter() - t_load:.1f}s: kept at "
            f"{method.working_size}x{method.working_size} in memory, protected at their own sizes a batch at a time")
    else:
        data = load_images(inp, split=job.split, labels=job.labels, progress=progress("load") if progress else None,
                           memory=PROTECT_MEMORY)
        log(f"loaded {data.summary()} from {data.root or inp} in {time.perf_counter() - t_load:.1f}s")
        if npz_path is not None and not data.uniform:  # found now, not after the whole set is protected
            raise UnlearnableError(f"--npz needs images of one size, and {inp} has images of several sizes; "
                                   "leave out --npz (or export a resized copy with `unlearnable export --size N`)")
    names = output_names(data.ids)

    run_info = {
        "method": job.method, "hyperparameters": method.hyperparameters(), "budget": budget.to_dict(),
        "seed": job.seed, "input": str(inp), "split": job.split, "labels": job.labels,
        "fingerprint": fingerprint_set(data),
    }
    created_here = False
    if part.exists() and job.resume and (part / MANIFEST).exists():
        # Interrupted after everything was written: only the rename is left.
        manifest = read_manifest(part)
        _finalize(part, out)
        log(f"finished the interrupted run in {part}")
        return manifest
    if part.exists() and job.resume:
        try:
            previous = json.loads((part / _RUN).read_text())
        except (OSError, ValueError):
            raise UnlearnableError(f"{part} is not a resumable run (no readable {_RUN}); remove it or pass --overwrite") from None
        if previous.get("run") != run_info:
            raise UnlearnableError(f"{part} was started with other arguments or input "
                                   f"({_what_differs(previous.get('run') or {}, run_info)}); rerun them, or pass "
                                   "--overwrite to start over")
        log(f"resuming {part}")
    else:
        if part.exists():
            shutil.rmtree(part)
        part.mkdir()
        created_here = True
        atomic_write_json(part / _RUN, {"run": run_info})

    # The flags that continue a kept partial folder: an output this run replaces still stands
    # until the final rename, so resuming it needs --overwrite too.
    again = "--resume --overwrite" if out.exists() else "--resume"
    try:
        if stream is not None:
            return _run_streaming(job, method, budget, stream, names, out, part, progress, log)
        return _run_in_partial(job, method, budget, data, names, inp, out, part, run_info, npz_path, progress, log)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {part} kept: rerun with {again} to continue") from None
    except BaseException as exc:
        journal = part / _JOURNAL
        wrote = (part / _STAGE).exists() or (journal.exists() and journal.stat().st_size > 0)
        if created_here and not wrote:
            shutil.rmtree(part, ignore_errors=True)
        elif isinstance(exc, UnlearnableError) and not isinstance(exc, Interrupted) and part.exists() \
                and "--overwrite" not in str(exc):
            # Work is kept for --resume (a file that went bad mid-run can be fixed first): say so.
            raise type(exc)(f"{exc}; the images written so far are kept in {part}: rerun with {again} "
                            "to continue, or --overwrite to start over") from None
        raise


class _SpentClock:
    """Seconds spent on an unfinished generation, kept in ``path`` across invocations: saved
    every ``every`` seconds from the method's progress ticks (a kill -9 loses at most that) and
    when the call ends; ``before`` is what earlier invocations spent."""

    def __init__(self, path: Path, inner: Optional[Callable[[int, int], None]] = None, every: float = 10.0):
        self.path, self.inner, self.every = path, inner, every
        try:
            self.before = float(json.loads(path.read_text())["seconds"]) if path.exists() else 0.0
        except (OSError, ValueError, KeyError, TypeError):
            self.before = 0.0
        self.t0 = self.last = time.perf_counter()

    def tick(self, done: int, total: int) -> None:
        if self.inner:
            self.inner(done, total)
        if time.perf_counter() - self.last > self.every:
            self.save()

    @property
    def seconds(self) -> float:
        """Every invocation's seconds so far, this one's included."""
        return self.before + time.perf_counter() - self.t0

    def save(self) -> None:
        self.last = time.perf_counter()
        atomic_write_json(self.path, {"seconds": self.seconds})


def _what_differs(before: Dict[str, Any], now: Dict[str, Any]) -> str:
    """``steps: 60 then, 30 now; the input's files`` — what a refused resume would change."""
    said = []
    # Plain fields first (the method, the seed), then each field of a dict (the budget's parts):
    # with four shown at most, the change that matters is not hidden behind its consequences.
    for key in sorted(set(before) | set(now), key=lambda k: (isinstance(now.get(k, before.get(k)), dict), k)):
        a, b = before.get(key), now.get(key)
        if a == b:
            continue
        if key == "fingerprint":
            said.append("the input's files")
        elif isinstance(a, dict) and isinstance(b, dict):
            said += [f"{k}: {a.get(k)} then, {b.get(k)} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            said.append(f"{key}: {a} then, {b} now")
    return "; ".join(said[:4]) + ("; ..." if len(said) > 4 else "") if said else "a different run"


def _run_in_partial(job: ProtectJob, method, budget: Budget, data: ImageSet, names: List[str], inp: Path,
                    out: Path, part: Path, run_info: Dict[str, Any], npz_path: Optional[Path],
                    progress: ProgressFactory, log: Callable[[str], None]) -> Dict[str, Any]:
    stage = part / _STAGE
    meta_path = part / _GENERATION
    if stage.exists() and meta_path.exists():
        images = _load_stage(stage, len(data))
        gen = json.loads(meta_path.read_text())
        per_image = measure_set(data.images, images)
        log(f"reusing protected pixels from the interrupted run ({gen['seconds']:.1f}s of generation)")
    else:
        for caveat in (method.resolution_warning(data), pseudo_label_warning(method, data)):
            if caveat:
                log(caveat)
        work = part / _WORK  # the method's own checkpoints (optimising methods resume from them)
        work.mkdir(exist_ok=True)
        clock = _SpentClock(part / _SPENT, progress("protect") if progress else None)
        try:
            result = method.protect(data, budget, seed=job.seed, device=job.device, workdir=str(work),
                                    progress=clock.tick)
        finally:
            clock.save()
        images, per_image = result.protected.images, result.per_image
        check_changed(method, budget, per_image, data.shape_of)
        # Every invocation's seconds, as the streamed path counts them: a resumed EM run's
        # manifest says what the whole generation cost, not only its last part.
        gen = {"seconds": clock.before + result.seconds, "device": result.device}
        _save_stage(stage, result)
        atomic_write_json(meta_path, gen)
        log(f"protected {len(data)} images with {job.method} in {result.seconds:.2f}s on {result.device}")

    warning = faint_warning(budget, data, per_image)
    if warning:
        log(warning)
    # Resume: skip files the journal records as written and still present.
    journal = part / _JOURNAL
    done, _ = _read_journal(journal, names, part)
    with open(journal, "a", buffering=1) as jf:
        def record(i: int, digest: str) -> None:
            jf.write(f"{names[i]}\t{digest}\n")
            done[i] = digest

        write_pngs(part, names, images, skip=set(done), on_written=record,
                   progress=progress("write") if progress else None)

    manifest = build_manifest(job, method, budget, data, names, per_image, done, gen)
    if npz_path is not None:
        export_npz(data.with_images(images), npz_path, overwrite=job.overwrite or job.resume)
        log(f"wrote {npz_path}")
    # The manifest is written last: a partial folder holding one is complete and only needs
    # the transient files removed and the rename (see the resume branch in protect_folder).
    atomic_write_json(part / MANIFEST, manifest)
    _finalize(part, out)
    return manifest


def _read_journal(journal: Path, names: List[str], part: Path) -> Tuple[Dict[int, str], Dict[int, Dict[str, float]]]:
    """The PNGs an interrupted run wrote and that are still there: ``{index: sha256}``, and
    ``{index: measured change}`` for the lines that carry it (streamed runs write it)."""
    done: Dict[int, str] = {}
    norms: Dict[int, Dict[str, float]] = {}
    if not journal.exists():
        return done, norms
    index = {n: i for i, n in enumerate(names)}
    for line in journal.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) not in (2, 3) or parts[0] not in index or not (part / parts[0]).exists():
            continue
        if sha256_file(part / parts[0]) != parts[1]:  # changed since it was written: write it again
            continue
        i = index[parts[0]]
        done[i] = parts[1]
        if len(parts) == 3:
            try:
                norms[i] = {k: float(v) for k, v in json.loads(parts[2]).items()}
            except (ValueError, AttributeError):
                del done[i]  # a torn line: write the file again
    return done, norms


#: Folders whose first image is larger than this on a side are protected as a stream when the
#: method can (:attr:`Method.streams`): photos, decoded a batch at a time instead of held in
#: memory whole. Sets of small images (CIFAR-like) are loaded whole: that is cheap, and faster.
STREAM_MIN_SIDE = 64


def _stream_index(job: ProtectJob, method, inp: Path) -> Optional[FolderIndex]:
    """The folder to protect as a stream, or None to load it whole (a container file, an NPZ
    export, a method that cannot stream, small images)."""
    if not method.streams or job.npz is not None:
        return None
    index = index_images(inp, split=job.split, labels=job.labels)
    if index is None or not index.files:
        return None
    side = largest_side(index.paths[0])  # the header: the first image is decoded once, with the rest
    return index if side is not None and side > STREAM_MIN_SIDE else None


@dataclass
class _Stream:
    """A folder being protected as a stream: its files, its images at the working size (with
    the ids, labels and hashes of the full set), each image's native size and, for unlabelled
    input, the pseudo-labelled set the method is fitted on instead."""

    index: FolderIndex
    small: ImageSet
    shapes: List[Tuple[int, int]]
    target: ImageSet


def _load_small(index: FolderIndex, method, seed: int, progress: ProgressFactory) -> Optional[_Stream]:
    """Decode the folder a chunk at a time, keeping each image at the method's working size and
    its native size; None when the policy works the images at their own size (one small size:
    such a set fits in memory and is loaded whole).

    Unlabelled input is clustered as :meth:`Method.protect` does (:func:`pseudo_labels`), from
    copies at the feature size taken from the native pixels in the same pass, so the clusters
    and the bytes are those of the in-memory path.
    """
    from .data.pseudo import FEATURE_SIDE, pseudo_labels
    from .methods.base import worked_at_own_size

    side = int(method.working_size)
    sides = [side] + ([FEATURE_SIDE] if not index.labelled and method.needs_labels else [])
    kept, shapes, digests = read_views(index.paths, [lambda im, s=s: resize_image(im, (s, s)) for s in sides],
                                       progress("load") if progress else None)
    if worked_at_own_size(shapes, side):
        return None
    data = index.imageset(np.stack(kept[0]), digests)
    plan = pseudo_label_plan(method, data)
    target = data
    if plan:
        found = pseudo_labels(index.imageset(np.stack(kept[1]), digests), plan["k"], seed=seed)
        target = replace(data, labels=found.labels, classes=found.classes)
    return _Stream(index, data, shapes, target)


class _Natives:
    """The images of a streamed folder in the attack's order, decoded when asked for and kept
    until their batch is written; checked against the hashes read before the attack. The next
    batch is decoded in a background thread while the current one is attacked
    (:meth:`prefetch`), so the device does not wait on the decoder."""

    def __init__(self, stream: _Stream, order: np.ndarray):
        from concurrent.futures import ThreadPoolExecutor

        self.stream, self.order = stream, order
        self.held: Dict[int, Any] = {}  # position -> image, or the future decoding it
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlearnable-prefetch")

    def __len__(self) -> int:
        return len(self.order)

    def _decode(self, p: int) -> np.ndarray:
        j = int(self.order[p])
        images, sha = decode_files([self.stream.index.paths[j]], workers=1)
        if sha[0] != self.stream.small.sha256[j]:
            raise UnlearnableError(f"{self.stream.index.paths[j]} changed while it was being protected; "
                                   "rerun with --overwrite")
        return images[0]

    def prefetch(self, positions: Sequence[int]) -> None:
        """Start decoding these images (the next batch) in the background."""
        for p in positions:
            if p not in self.held:
                self.held[p] = self.pool.submit(self._decode, p)

    def __getitem__(self, p: int) -> np.ndarray:
        item = self.held.get(p)
        if item is None:
            item = self.held[p] = self._decode(p)
        elif not isinstance(item, np.ndarray):
            item = self.held[p] = item.result()
        return item

    def pop(self, p: int) -> np.ndarray:
        image = self[p]
        del self.held[p]
        return image

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _run_streaming(job: ProtectJob, method, budget: Budget, stream: _Stream, names: List[str], out: Path,
                   part: Path, progress: ProgressFactory, log: Callable[[str], None]) -> Dict[str, Any]:
    """Protect a folder too large for memory: the method is fitted on the working-size set (PIL's
    surrogate, a pattern method's plan), then each batch of images is decoded, perturbed at native size, quantised by the shared
    rule, measured, checked against the budget and written before the next is decoded. The
    journal records every PNG with its measured change, so ``--resume`` skips finished batches.
    Same bytes as the in-memory path (:meth:`Method.protect`)."""
    from .device import describe_device, resolve_device

    data = stream.small
    dev = str(resolve_device(job.device))
    # The seconds of every invocation, so the manifest counts them all (nothing is staged on
    # this path: its generation file is the clock's).
    clock = _SpentClock(part / _GENERATION)
    work = part / _WORK
    work.mkdir(exist_ok=True)
    for warning in (method.resolution_warning(data, stream.shapes), pseudo_label_warning(method, data)):
        if warning:
            log(warning)
    fit = method.fit_native(stream.target, stream.shapes, budget, seed=job.seed, device=dev, workdir=str(work))
    journal = part / _JOURNAL
    done, per_image = _read_journal(journal, names, part)
    done = {j: d for j, d in done.items() if j in per_image}  # a line without its change: write it again
    if done:
        log(f"resuming: {len(done)} of {len(names)} images already written")
    natives = _Natives(stream, fit.order)
    with open(journal, "a", buffering=1) as jf:
        def sink(idx: List[int], deltas: List[np.ndarray]) -> None:
            js = [int(fit.order[p]) for p in idx]
            clean = [natives.pop(p) for p in idx]
            batch = ImageSet(clean, None, [], [data.ids[j] for j in js])
            protected = method.apply(batch, deltas, budget)
            measured = measure_set(clean, protected)
            check_within_budget(method.registry_name, budget, measured)

            def record(i: int, digest: str) -> None:
                jf.write(f"{names[js[i]]}\t{digest}\t{json.dumps(measured[i])}\n")
                done[js[i]] = digest
                per_image[js[i]] = measured[i]

            write_pngs(part, [names[j] for j in js], protected, on_written=record)
            clock.save()

        t1 = time.perf_counter()
        try:
            method.attack_native(fit, natives, budget, seed=job.seed, device=dev, sink=sink,
                                 skip=lambda idx: all(int(fit.order[p]) in done for p in idx),
                                 progress=progress("protect") if progress else None)
        finally:
            natives.close()
    method.finish_run(fit, time.perf_counter() - t1)
    gen = {"seconds": clock.seconds, "device": describe_device(dev)}
    log(f"protected {len(names)} images with {job.method} in {gen['seconds']:.2f}s on {gen['device']}"
        + (f" ({clock.before:.2f}s of them before the resume)" if clock.before else ""))
    rows = [per_image[j] for j in range(len(names))]
    try:
        check_changed(method, budget, rows, lambda j: stream.shapes[j])
    except UnlearnableError:
        shutil.rmtree(part, ignore_errors=True)  # nothing worth resuming: copies of the input
        raise
    warning = faint_warning(budget, data, rows, shape_of=lambda j: stream.shapes[j])
    if warning:
        log(warning)
    manifest = build_manifest(job, method, budget, data, names, rows, done, gen)
    atomic_write_json(part / MANIFEST, manifest)
    _finalize(part, out)
    return manifest


def check_changed(method, budget: Budget, per_image: List[Dict[str, float]],
                  shape_of: Callable[[int], Sequence[int]]) -> None:
    """Refuse a run that changed no pixel of any image: its budget rounds away (an ℓ2 total
    spread over a photo, ``8/255`` read as an ℓ2 total of 0.031), and publishing copies of the
    input as protected would mislead. ``shape_of(i)``: image ``i``'s own (H, W)."""
    if not per_image or any(r["l0"] > 0 for r in per_image):
        return
    msg = f"{method.registry_name} with {budget.describe()} changed no pixel of any image, so nothing would be protected"
    if budget.norm == "l2":
        h, w = max((shape_of(i) for i in range(len(per_image))), key=lambda s: s[0] * s[1])
        default = Budget.parse(method.default_budget, default_norm="l2")
        msg += f"; {_l2_advice(default, h, w)}"
    raise UnlearnableError(msg)


def _l2_advice(budget: Budget, h: int, w: int) -> str:
    """What an ℓ2 budget set for 32-px images comes to on an image of ``h`` × ``w``."""
    scaled = budget.eps * math.sqrt(h * w / (32 * 32))
    return (f"an ℓ2 budget is a total over the image, so {budget.describe()} barely changes large images: the "
            f"same per-pixel strength at {w}x{h} px is l2:{scaled:.4g}, or use an ℓ∞ method such as pil")


def faint_warning(budget: Budget, data: ImageSet, per_image: List[Dict[str, float]],
                  threshold: float = 0.5, shape_of: Optional[Callable[[int], Sequence[int]]] = None) -> Optional[str]:
    """A warning when images changed by less than ``threshold`` grey levels on average (ℓ∞, ℓ2),
    or, for ℓ2, by more than :data:`VISIBLE_LEVELS` (a bare ``--eps 300`` is an ℓ2 total).

    An ℓ2 budget is a total over the image, so on photos far larger than the 32² the
    baselines were designed for it spreads too thin to survive rounding: protect then exits
    successfully with images that are barely changed. Say so, with the scaled budget.
    """
    if budget.norm not in ("linf", "l2"):  # ℓ0 (OPS) is sparse by design; unbounded has no budget to spread
        return None
    mean = sum(r["mean_abs"] for r in per_image) / max(1, len(per_image))
    if budget.norm == "l2" and mean > VISIBLE_LEVELS:  # the ℓ∞ budget is warned about before the run
        return (f"warning: {budget.describe()} changed the images by {mean:.1f} grey levels on average, visibly; "
                "a bare number is an ℓ2 total in [0, 1] units, not grey levels (the field's ℓ2 budgets are "
                "0.5-1.3 at 32 px)")
    faint = [i for i, r in enumerate(per_image) if r["mean_abs"] < threshold]
    if not faint:
        return None
    shape_of = shape_of or data.shape_of  # a streamed set is held at its working size: its own sizes come apart
    i = max(faint, key=lambda j: shape_of(j)[0] * shape_of(j)[1])
    h, w = shape_of(i)
    msg = (f"warning: {len(faint)} of {len(per_image)} images changed by under {threshold} grey levels on average "
           f"(e.g. {data.ids[i]!r}, {w}x{h} px, {per_image[i]['mean_abs']:.2f})")
    if budget.norm == "l2":
        msg += f"; {_l2_advice(budget, h, w)}"
    else:
        msg += "; these images are barely protected"
    return msg


def _finalize(part: Path, out: Path) -> None:
    for name in (_STAGE, _JOURNAL, _GENERATION, _RUN, _SPENT):
        (part / name).unlink(missing_ok=True)
    shutil.rmtree(part / _WORK, ignore_errors=True)
    # A kill -9 between creating a temporary file and its rename leaves it behind.
    for tmp in part.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    move_into_place(part, out)


def build_manifest(job: ProtectJob, method, budget: Budget, data: ImageSet, names: List[str],
                   per_image: List[Dict[str, float]], out_sha: Dict[int, str], gen: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest of a protect run: what was done, with which versions, how big the change is, every hash."""
    head = {
        "method": job.method, "paper": method.paper, "hyperparameters": method.hyperparameters(),
        "budget": budget.to_dict(), "budget_declared_norm": method.budget_norm, "seed": job.seed,
        "device": gen.get("device"), "wall_seconds": float(gen.get("seconds", 0.0)),
        "input_path": str(Path(job.input).expanduser().resolve()), "split": job.split, "labels": job.labels,
        "pseudo_labels": pseudo_label_plan(method, data),  # what Method.protect did with unlabelled input
    }
    return compose_manifest(head, budget, data, names, per_image, out_sha)


def compose_manifest(head: Dict[str, Any], budget: Budget, data: ImageSet, names: List[str],
                     per_image: List[Dict[str, float]], out_sha: Dict[int, str]) -> Dict[str, Any]:
    """The manifest format, shared by protect runs and :func:`save_protected` (imports)."""
    files = []
    for i, (id_, name) in enumerate(zip(data.ids, names)):
        rec: Dict[str, Any] = {"id": id_, "output": name}
        if data.labels is not None:
            rec["class"] = data.classes[int(data.labels[i])]
        rec["input_sha256"] = data.sha256[i] if data.sha256 else None
        rec["output_sha256"] = out_sha[i]
        rec["linf"] = int(per_image[i]["linf"])
        files.append(rec)
    norms = summarize_changes(per_image)
    plan = head.get("pseudo_labels")
    return {
        "format": FORMAT,
        "method": head["method"],
        "paper": head.get("paper", ""),
        "hyperparameters": head.get("hyperparameters", {}),
        "budget": budget.to_dict(),
        "budget_declared_norm": head.get("budget_declared_norm", budget.norm),
        "seed": head.get("seed"),
        "versions": versions(),
        "device": head.get("device"),
        "wall_seconds": round(float(head.get("wall_seconds", 0.0)), 4),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # The input's name, not its path: a published folder must not carry the owner's home
        # directory; verify and audit are told where the clean input is (--clean).
        "input": {"name": Path(head["input_path"]).name if head.get("input_path") else None,
                  "split": head.get("split", "train"),
                  "labels": head.get("labels", "auto"), "source": data.source, "n_images": len(data),
                  "classes": data.classes,
                  **({"source_files": data.source_files} if data.source_files else {}),
                  **({"subset_of": int(head["subset_of"])} if head.get("subset_of") else {})},
        "labels_used": "pseudo" if plan else ("given" if data.labels is not None else "none"),
        "pseudo_labels": plan,
        "norms": {"declared": budget.norm, "linf_grey_levels": norms["linf"], "l2": norms["l2"],
                  "l0_pixels": norms["l0"], "mean_abs_grey_levels": norms["mean_abs"]},
        **({"notes": head["notes"]} if head.get("notes") else {}),
        "files": files,
    }


def save_protected(result: ProtectedSet, out: str, *, overwrite: bool = False, input_path: Optional[str] = None,
                   split: str = "train", labels: str = "auto", notes: Optional[str] = None,
                   subset_of: Optional[int] = None, progress: ProgressFactory = None) -> Dict[str, Any]:
    """Write any :class:`ProtectedSet` (e.g. another tool's poison, imported) as a protected folder.

    Same layout, manifest and atomic rename as ``protect``; ``verify --clean`` works on it
    when ``input_path`` names the clean set it was measured against. ``subset_of``: the
    number of images in that clean set when ``result`` covers only some of them (recorded as
    ``input.subset_of``, which ``verify`` checks instead of equal counts).
    """
    out_p = Path(out).expanduser().resolve()
    if input_path is not None:
        check_output_location(Path(input_path).expanduser().resolve(), out_p, overwrite)
    else:
        check_output_folder(out_p, overwrite)
    data = result.clean
    names = output_names(data.ids)
    part = partial_dir(out_p)
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        sha = write_pngs(part, names, result.protected.images, progress=progress("write") if progress else None)
        head = {"method": result.method, "hyperparameters": result.hyperparameters,
                "budget_declared_norm": result.budget.norm, "seed": result.seed, "device": result.device,
                "wall_seconds": result.seconds, "input_path": str(Path(input_path).expanduser().resolve()) if input_path else None,
                "split": split, "labels": labels, "pseudo_labels": result.pseudo_labels, "notes": notes,
                "subset_of": subset_of}
        manifest = compose_manifest(head, result.budget, data, names, result.per_image, sha)
        atomic_write_json(part / MANIFEST, manifest)
        _finalize(part, out_p)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return manifest


def load_protected(path: str, split: str = "train", training: bool = False, size: Optional[int] = None) -> ImageSet:
    """Load a protected set; for our own output folders, ids become the original input ids.

    ``protect`` writes ``cat/001.jpg`` as ``cat/001.png``; the manifest maps it back, so the
    protected images line up with their clean counterparts by id (audit, analyze). With
    ``training``, the set comes at a victim's input size (:func:`load_for_training`).
    """
    from .data import load_for_training

    data = load_for_training(path, split=split, size=size) if training else load_images(path, split=split)
    manifest = _manifest_of(path)
    if manifest is not None:
        files = manifest["files"]
        original = {f["output"]: f["id"] for f in files}
        if all(i in original for i in data.ids) and len(data) == len(files):
            # The input's order and class numbering, not the folder's sorted ones: a set
            # protected from an NPZ or CIFAR batches exports (PNG-per-index, NPZ) in its index
            # order, so that other tools pair each image with its own clean image and label.
            from dataclasses import replace

            at = {out: k for k, out in enumerate(data.ids)}
            data = data.subset([at[f["output"]] for f in files])
            data = replace(data, ids=[f["id"] for f in files])
            # The labels the images were protected with, as the manifest records them per file:
            # a set whose ids are not class folders (flat names, an NPZ's) reloads labelled, and
            # in its own class numbering.
            classes = list(manifest.get("input", {}).get("classes") or [])
            named = [f.get("class") for f in files]
            if classes and all(c in classes for c in named):
                data = replace(data, labels=np.array([classes.index(c) for c in named], np.int64), classes=classes)
    return data


def _manifest_of(path) -> Optional[Dict[str, Any]]:
    """The manifest of one of our output folders, else None (a file, another tool's folder)."""
    p = Path(path).expanduser()
    return read_manifest(p) if p.is_dir() and (p / MANIFEST).is_file() else None


def original_ids(path, output_ids: Sequence[str]) -> List[str]:
    """The input ids of a protected folder's files (``cat/001.png`` → ``cat/001.jpg``), by its
    manifest; ids as they are for a folder without one."""
    manifest = _manifest_of(path)
    original = {f["output"]: f["id"] for f in manifest["files"]} if manifest else {}
    return [original.get(i, i) for i in output_ids]


def read_manifest(out: Path) -> Dict[str, Any]:
    path = Path(out) / MANIFEST
    if not Path(out).is_dir():
        raise UnlearnableError(f"{out} is not a folder")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnlearnableError(f"{out} is not a protected output: it has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise UnlearnableError(f"{path} is unreadable or not JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise UnlearnableError(f"{path}: unknown manifest format {manifest.get('format')!r}")
    return manifest


@dataclass
class VerifyReport:
    """What ``verify_output`` found."""

    n_files: int
    violations: List[str]
    norms: Dict[str, Dict[str, float]]
    budget: Budget  # what the images were held to: the declared budget, or the one asked for
    checked_budget: bool
    declared: Optional[Budget] = None  # what the manifest says
    method: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations


def verify_output(out: str, clean: Optional[str] = None, progress: ProgressFactory = None,
                  expect: Optional[Budget] = None) -> VerifyReport:
    """Re-check every output hash, and (with the clean input) every input hash and the budget.

    ``expect``: the budget to hold the images to instead of the one the manifest declares, for
    someone checking a folder they did not make (a manifest is only as honest as its writer);
    it needs ``clean``, since only the pixels can show it."""
    out_p = Path(out).expanduser().resolve()
    manifest = read_manifest(out_p)
    declared = Budget.from_dict(manifest["budget"])
    if expect is not None and clean is None:
        raise UnlearnableError("checking against a budget of your own (--eps) needs the clean input (--clean) "
                               "to re-measure the pixels")
    budget = expect if expect is not None else declared
    violations: List[str] = []
    files = manifest["files"]
    listed = {f["output"] for f in files}
    present = {p.relative_to(out_p).as_posix() for p in out_p.rglob("*") if p.is_file() and p.name != MANIFEST}
    for extra in sorted(present - listed)[:20]:
        violations.append(f"{extra}: file not in the manifest")
    clean_set: Optional[ImageSet] = None  # container inputs (NPZ, CIFAR batches): loaded whole
    clean_index: Optional[FolderIndex] = None  # folders: each clean image read beside its output
    by_id: Dict[str, int] = {}
    if clean is not None:
        cp = Path(clean).expanduser()
        if not cp.exists():
            raise UnlearnableError(f"clean input {cp} does not exist")
        inp = manifest["input"]
        split, labels = inp.get("split", "train"), inp.get("labels", "auto")
        clean_index = index_images(cp.resolve(), split=split, labels=labels)
        if clean_index is None:
            clean_set = load_images(cp.resolve(), split=split, labels=labels,
                                    progress=progress("load clean") if progress else None)
        ids = clean_index.ids if clean_index is not None else clean_set.ids
        by_id = {id_: i for i, id_ in enumerate(ids)}
        missing = [f["id"] for f in files if f["id"] not in by_id]
        for m in missing[:20]:
            violations.append(f"{m}: in the manifest but not in the clean input")
        expected = inp.get("subset_of") or len(files)  # an imported poison may cover part of the set
        if len(ids) != expected:
            violations.append(f"clean input has {len(ids)} images, the manifest {expected}")

    def clean_refs(chunk: List[Dict[str, Any]]) -> Dict[str, Tuple[np.ndarray, Optional[str]]]:
        """The clean pixels and file hash of the chunk's images (a few hundred in memory at a time)."""
        wanted = [f["id"] for f in chunk if f["id"] in by_id]
        if clean_set is not None:
            return {i: (clean_set.image(by_id[i]), clean_set.sha256[by_id[i]] if clean_set.sha256 else None)
                    for i in wanted}
        if clean_index is None or not wanted:
            return {}
        images, shas = decode_files([clean_index.paths[by_id[i]] for i in wanted])
        return {i: (images[k], shas[k]) for k, i in enumerate(wanted)}

    per_image: List[Dict[str, float]] = []
    tick = progress("verify") if progress else None
    s0, step = 0, 8  # then sized by what the clean images take (chunk_length): photos or thumbnails
    while s0 < len(files):
        chunk = files[s0:s0 + step]
        refs = clean_refs(chunk)
        if refs:
            step = chunk_length(sum(r[0].nbytes for r in refs.values()) / len(refs))
        for f in chunk:
            path = out_p / f["output"]
            if not path.is_file():
                violations.append(f"{f['output']}: missing")
                continue
            pixels, digest = read_image(path)
            if digest != f["output_sha256"]:
                violations.append(f"{f['output']}: sha256 differs from the manifest")
            if f["id"] in refs:
                ref, sha = refs[f["id"]]
                if sha and f.get("input_sha256") and sha != f["input_sha256"]:
                    violations.append(f"{f['id']}: clean input changed since protection (sha256 differs)")
                if ref.shape != pixels.shape:
                    violations.append(f"{f['output']}: size {pixels.shape[:2]} differs from the clean {ref.shape[:2]}")
                    continue
                m = measure_change(ref, pixels)
                per_image.append(m)
                if not budget.allows(m):
                    violations.append(f"{f['output']}: change {m[budget.norm]:g} exceeds {budget.describe()}")
        del refs
        s0 += len(chunk)
        if tick:
            tick(s0, len(files))
    norms = summarize_changes(per_image) if per_image else {}
    return VerifyReport(len(files), violations, norms, budget, clean is not None, declared,
                        str(manifest.get("method", "")))


def raise_if_failed(report: VerifyReport) -> None:
    if not report.ok:
        more = f" (+{len(report.violations) - 1} more)" if len(report.violations) > 1 else ""
        raise VerificationError(f"verification failed: {report.violations[0]}{more}")
