"""Pool-level filtering at scale: describe the checkpoints of a pool for its catalogue, and choose
the teachers of a job from the catalogue by its tasks. Pure logic and single-process reads; the
distributed layer runs `describe_checkpoint` in parallel for large pools."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from math import comb
from typing import Any

from ray_amalgam.amalgamation.metrics import count_flops, count_params
from ray_amalgam.amalgamation.supervised import LabelledData
from ray_amalgam.io.catalogue import Candidate, read_catalogue
from ray_amalgam.io.checkpoints import checkpoint_hash, load_teacher
from ray_amalgam.models import teacher_from_weights
from ray_amalgam.spec import (
    ALL,
    EVERY_OWNER,
    OK,
    REFUSED,
    BadInputError,
    Catalogue,
    CatalogueEntry,
    JobSpec,
    TeacherRef,
)

MAX_COVER_COMBINATIONS = 200_000
"""Above this many candidate covers the exact minimal-cover search gives way to the greedy one."""


def describe_checkpoint(candidate: Candidate) -> CatalogueEntry:
    """Read one checkpoint (metadata, weights, content hash) and measure params and FLOPs.
    Never raises for a bad checkpoint: it comes back refused, with the reason."""
    base = {"name": candidate.name, "url": candidate.url, "fingerprint": candidate.fingerprint}
    if candidate.pickled_file:
        return CatalogueEntry(**base, status=REFUSED, reason=(
            f"{candidate.url}: a pickled weights file (pickles can run code and are refused); "
            "expected a checkpoint directory with model.safetensors and teacher.json"))
    try:
        meta, state = load_teacher(candidate.url)
        model = teacher_from_weights(meta, state, candidate.url)
        digest = checkpoint_hash(candidate.url)
    except BadInputError as error:
        return CatalogueEntry(**base, status=REFUSED, reason=str(error))
    except Exception as error:  # noqa: BLE001 - one unreadable checkpoint must not stop the index
        return CatalogueEntry(**base, status=REFUSED, reason=f"{candidate.url}: {type(error).__name__}: {error}")
    return CatalogueEntry(
        **base, status=OK, hash=digest, arch=meta.backbone.arch, width=meta.backbone.width,
        small_input_stem=meta.backbone.small_input_stem, input_size=meta.input_size, mean=meta.mean, std=meta.std,
        tasks=meta.tasks, params=count_params(model), flops=count_flops(model, meta.input_size),
    )


def index_plan(candidates: Sequence[Candidate], old: Catalogue | None) -> tuple[list[CatalogueEntry], list[Candidate]]:
    """(rows kept from the old catalogue, candidates to read): a checkpoint whose listing
    fingerprint is unchanged is not read again."""
    known = {e.url: e for e in old.entries} if old is not None else {}
    kept, to_read = [], []
    for candidate in candidates:
        entry = known.get(candidate.url)
        if entry is not None and entry.fingerprint == candidate.fingerprint and entry.name == candidate.name:
            kept.append(entry)
        else:
            to_read.append(candidate)
    return kept, to_read


def carry_quality(entry: CatalogueEntry, old: Catalogue | None) -> CatalogueEntry:
    """A re-read checkpoint with the same content hash keeps its measured quality figures."""
    if old is None or not entry.ok:
        return entry
    for previous in old.entries:
        if previous.hash == entry.hash and previous.quality:
            return entry.model_copy(update={"quality": previous.quality, "quality_data": previous.quality_data})
    return entry


@dataclass(frozen=True)
class PoolSelection:
    """The teachers a job draws from a pool, and why."""

    catalogue: str
    teachers: tuple[str, ...]
    sources: dict[str, tuple[str, ...]]
    """task -> the teacher(s) it learns from."""
    reasons: dict[str, str]
    """task -> why that teacher (or every owner)."""
    owners: dict[str, tuple[str, ...]]
    """task -> every accepted teacher of the pool that owns it."""
    pool_teachers: int
    refused: int

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def owner_rank(entry: CatalogueEntry, task: str) -> tuple:
    """Sort key, best first: a recorded quality before none, higher quality, then smaller
    (params, FLOPs), then name (so that equal teachers are chosen the same way every time)."""
    quality = entry.quality.get(task)
    return (quality is None, -(quality or 0.0), entry.params or 0, entry.flops or 0, entry.name)


def _describe(entry: CatalogueEntry, task: str) -> str:
    quality = entry.quality.get(task)
    shown = f"quality {quality:.3f}" if quality is not None else "no quality recorded"
    return f"{entry.name} ({shown}, {entry.params or 0:,} params)"


def _check_definitions(owners: dict[str, list[CatalogueEntry]], tasks: Sequence[str], source: str) -> None:
    for task in tasks:
        first = owners[task][0]
        seen = first.tasks[first.task_names.index(task)]
        for other in owners[task][1:]:
            spec = other.tasks[other.task_names.index(task)]
            if spec != seen:
                raise BadInputError(
                    f"{source}: pool: teachers '{first.name}' and '{other.name}' both define task '{task}' differently "
                    f"({seen.kind} {list(seen.names)} vs {spec.kind} {list(spec.names)}); expected the same kind and class/label names"
                )


def _minimal_cover(free: list[str], covered: set[str], owners: dict[str, list[CatalogueEntry]]) -> list[CatalogueEntry]:
    """The fewest teachers that own every task of `free` not in `covered`; among covers of that
    size, the one whose best owners have the best recorded quality, then the smallest."""
    needed = [t for t in free if t not in covered]
    if not needed:
        return []
    # Teachers owning the same needed tasks are interchangeable for the cover's size: keep the best of each group.
    groups: dict[frozenset[str], CatalogueEntry] = {}
    for task in needed:
        for entry in owners[task]:
            signature = frozenset(t for t in needed if t in entry.task_names)
            best = groups.get(signature)
            if best is None or _group_rank(entry, signature) < _group_rank(best, signature):
                groups[signature] = entry
    signatures = list(groups)
    target = set(needed)
    for size in range(1, len(needed) + 1):
        if comb(len(signatures), size) > MAX_COVER_COMBINATIONS:
            break
        combos = [c for c in itertools.combinations(signatures, size) if set().union(*c) >= target]
        if combos:
            best = min(combos, key=lambda c: _cover_rank([groups[s] for s in c], needed))
            return [groups[s] for s in best]
    return _greedy_cover(needed, groups)


def _greedy_cover(needed: list[str], groups: dict[frozenset[str], CatalogueEntry]) -> list[CatalogueEntry]:
    left, chosen = set(needed), []
    while left:
        signature = min(groups, key=lambda s: (-len(s & left), _group_rank(groups[s], s)))
        chosen.append(groups[signature])
        left -= signature
    return chosen


def _group_rank(entry: CatalogueEntry, tasks: frozenset[str]) -> tuple:
    known = [entry.quality[t] for t in tasks if t in entry.quality]
    return (-len(known), -sum(known), entry.params or 0, entry.flops or 0, entry.name)


def _cover_rank(cover: list[CatalogueEntry], tasks: list[str]) -> tuple:
    best = [min((e for e in cover if t in e.task_names), key=lambda e: owner_rank(e, t)) for t in tasks]
    known = [e.quality[t] for e, t in zip(best, tasks) if t in e.quality]
    return (-len(known), -sum(known), sum(e.params or 0 for e in cover), sorted(e.name for e in cover))


def select_teachers(catalogue: Catalogue, tasks: Sequence[str], task_teachers: dict[str, str], source: str) -> PoolSelection:
    """Choose a job's teachers from the accepted teachers of a pool.

    Tasks named in `task_teachers` learn from that teacher, or from every owner (`all`/`both`);
    the other tasks are covered by the fewest further teachers (exact search; greedy beyond
    MAX_COVER_COMBINATIONS candidate covers), and each learns from its best owner among the
    chosen teachers: the best recorded quality, the smaller teacher on a tie or with none.
    """
    accepted = catalogue.accepted
    by_name = {e.name: e for e in catalogue.entries}
    owners: dict[str, list[CatalogueEntry]] = {}
    for entry in accepted:
        for task in entry.task_names:
            owners.setdefault(task, []).append(entry)
    for task in tasks:
        if task not in owners:
            offered = sorted(owners)
            shown = offered if len(offered) <= 20 else [*offered[:20], f"... {len(offered) - 20} more"]
            raise BadInputError(f"{source}: tasks: no accepted teacher of pool {catalogue.prefix} owns task '{task}'; the pool offers {shown}")
    _check_definitions(owners, tasks, source)
    for task in task_teachers:
        if task not in tasks:
            raise BadInputError(f"{source}: task_teachers.{task}: '{task}' is not a chosen task {list(tasks)}")
    sources: dict[str, tuple[str, ...]] = {}
    reasons: dict[str, str] = {}
    forced: dict[str, CatalogueEntry] = {}
    for task, choice in task_teachers.items():
        names = [e.name for e in owners[task]]
        if choice in EVERY_OWNER:
            chosen = owners[task]
            reasons[task] = f"every owner ({len(chosen)}), per sample the least ambiguous (task_teachers: {choice})"
        elif choice in names:
            chosen = [by_name[choice]]
            reasons[task] = f"{choice}, named in task_teachers"
        else:
            entry = by_name.get(choice)
            why = f"is refused in the catalogue ({entry.reason})" if entry is not None and not entry.ok else f"does not own '{task}'"
            raise BadInputError(f"{source}: task_teachers.{task}: teacher '{choice}' {why}; owners are {names} (or '{ALL}')")
        sources[task] = tuple(e.name for e in chosen)
        forced.update({e.name: e for e in chosen})
    free = [t for t in tasks if t not in task_teachers]
    covered = {t for e in forced.values() for t in e.task_names}
    added = _minimal_cover(free, covered, owners)
    chosen_pool = {**forced, **{e.name: e for e in added}}
    for task in free:
        candidates = sorted((e for e in chosen_pool.values() if task in e.task_names), key=lambda e: owner_rank(e, task))
        best = candidates[0]
        sources[task] = (best.name,)
        every = sorted(owners[task], key=lambda e: owner_rank(e, task))
        if len(every) == 1:
            reasons[task] = f"{best.name}, the only owner in the pool"
        elif every[0].name == best.name:
            basis = "best recorded quality" if best.quality.get(task) is not None else "no quality recorded, the smallest"
            reasons[task] = f"{_describe(best, task)}: {basis} of {len(every)} owners"
        else:
            reasons[task] = (f"{_describe(best, task)}: already chosen for other tasks; the best of {len(every)} owners, "
                             f"{_describe(every[0], task)}, would add a teacher")
    ordered = list(dict.fromkeys(name for task in tasks for name in sources[task]))
    return PoolSelection(
        catalogue=catalogue.prefix, teachers=tuple(ordered), sources={t: sources[t] for t in tasks}, reasons={t: reasons[t] for t in tasks},
        owners={t: tuple(e.name for e in owners[t]) for t in tasks},
        pool_teachers=len(accepted), refused=len(catalogue.entries) - len(accepted),
    )


def resolve_pool_job(job: JobSpec, source: str) -> tuple[JobSpec, PoolSelection | None]:
    """A job with `pool:` turned into one naming its teachers (and each shared task's choice),
    plus the selection; other jobs come back unchanged. Reads the catalogue and nothing of the
    teachers that are not chosen."""
    if job.pool is None:
        return job, None
    try:
        catalogue = read_catalogue(job.pool)
    except BadInputError as error:
        raise BadInputError(f"{source}: pool: {error}") from None
    selection = select_teachers(catalogue, job.tasks, job.task_teachers, source)
    refs = tuple(TeacherRef(name=name, checkpoint=catalogue.entry(name).url) for name in selection.teachers)
    choices = {task: ALL if len(chosen) > 1 else chosen[0] for task, chosen in selection.sources.items()}
    return job.model_copy(update={"teachers": refs, "pool": None, "task_teachers": choices}), selection



POOL_ARCHS = (("resnet18", 0.25), ("mobilenet_v3_small", 0.25), ("resnet34", 0.125))


def synthesize_pool(root: str, count: int, seed: int = 0, input_size: int = 16) -> dict[str, tuple[str, ...]]:
    """Write `count` randomly initialised tiny teachers (three architectures in turn, each with
    its own two or three synthetic tasks) as `<root>/teacher_NN`: a pool for tests, demos and
    benchmarks in seconds. Returns teacher name -> its tasks."""
    import torch

    from ray_amalgam.io.checkpoints import save_teacher
    from ray_amalgam.io.fs import join
    from ray_amalgam.io.synth import SYNTH_TASKS
    from ray_amalgam.models import build_teacher
    from ray_amalgam.spec import BackboneSpec, TeacherMeta

    task_sets = [*itertools.combinations(SYNTH_TASKS, 2), *itertools.combinations(SYNTH_TASKS, 3)]
    written = {}
    for index in range(count):
        arch, width = POOL_ARCHS[index % len(POOL_ARCHS)]
        tasks = task_sets[(index * 3) % len(task_sets)]  # 3 is prime to 35: no set repeats within 35 teachers
        meta = TeacherMeta(backbone=BackboneSpec(arch=arch, width=width), tasks=tasks, input_size=input_size)
        torch.manual_seed(seed * 1000 + index)
        name = f"teacher_{index:02d}"
        save_teacher(join(root, name), build_teacher(meta).state_dict(), meta)
        written[name] = tuple(t.name for t in tasks)
    return written


def teacher_quality(entry: CatalogueEntry, data: LabelledData) -> dict[str, float]:
    """Quality figures of an accepted teacher on labelled data, for each of its tasks the data
    labels: accuracy (multiclass) or mAP (multilabel)."""
    import torch

    from ray_amalgam.amalgamation.metrics import matches, mean_average_precision
    from ray_amalgam.amalgamation.validation import load_teacher_model
    from ray_amalgam.io.images import to_tensor

    tasks = [t for t in entry.tasks if t.name in data.labels]
    if not tasks:
        return {}
    if data.images.shape[1] != entry.input_size:
        raise BadInputError(f"{entry.name}: expects {entry.input_size} px images, the labelled data has {data.images.shape[1]} px")
    meta = entry.teacher_meta()
    model = load_teacher_model(entry.url)
    logits: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    with torch.inference_mode():
        for start in range(0, len(data.images), 256):
            out = model(to_tensor(data.images[start : start + 256], meta.mean, meta.std), [t.name for t in tasks])
            for t in tasks:
                logits[t.name].append(out[t.name].float())
    quality = {}
    for t in tasks:
        values = torch.cat(logits[t.name])
        if t.kind == "multiclass":
            quality[t.name] = float(matches(values, torch.from_numpy(data.labels[t.name]), t.kind).mean())
        else:
            quality[t.name] = mean_average_precision(values.sigmoid().numpy(), data.labels[t.name])
    return quality
