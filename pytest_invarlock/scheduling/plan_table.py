"""The memory plan as a table: one row per collected suite item, printed by --gpu-plan and written as CSV.

Pure: takes the items, the inventory and a skip-reason callback, so it never needs the session state.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pytest_invarlock.campaign.items import Kind, SuiteItem, item_from_nodeid
from pytest_invarlock.scheduling.inventory import ROCM, Gpu, capacity_gb
from pytest_invarlock.scheduling.memory import MarginRule, kv_cache_gb, required_gpus
from pytest_invarlock.scheduling.tasks import item_need_gb, model_profile

PLAN_CSV = Path("analysis") / "memory_plan.csv"


@dataclass(frozen=True)
class PlanRow:
    nodeid: str
    model: str
    kind: str
    dtype: str
    params_b: float
    weights_gb: float
    kv_gb: float
    need_gb: float
    gpus: int | None  # GPUs the item needs on this node; None without an inventory
    note: str  # why it is skipped here, if it is; placement first (a --gpus plan on a CPU host)
    fits: bool | None = None  # whether the node's budget holds it (the policy's rule); None without an inventory


def plan_rows(
    index: dict[tuple[str, str], SuiteItem],
    gpus: Sequence[Gpu],
    nodeids: Iterable[str],
    skip_reason: Callable[[SuiteItem], str | None],
    margin: MarginRule = MarginRule(),
) -> list[PlanRow]:
    """The memory plan of the suite items among `nodeids`, in their order; `skip_reason` fills the note.

    GPUs are counted with the policy's own budget (`MarginRule.usable_gb` of each GPU's free memory).
    """
    budgets = [margin.usable_gb(g.total_gb, g.free_gb) for g in gpus]
    largest, capacity = max(budgets, default=0.0), capacity_gb(gpus, budgets)
    rows = []
    for nodeid in nodeids:
        item = item_from_nodeid(nodeid, index)
        if item is None:
            continue
        model, need = item.model, item_need_gb(item)
        profile = model_profile(model)
        kv = (
            0.0
            if item.kind == Kind.BENCHMARK
            else kv_cache_gb(profile, seq_len=model.settings.seq_len, batch=model.settings.eval_batch)
        )
        rows.append(
            PlanRow(
                nodeid,
                model.name,
                item.kind,
                model.dtype,
                profile.params / 1e9,
                profile.weights_gb,
                kv,
                need,
                required_gpus(need, largest) if largest > 0 else None,
                skip_reason(item) or "",
                need <= capacity if gpus else None,
            )
        )
    return rows


def write_plan_csv(rows: Sequence[PlanRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(PlanRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(row).items()})


def format_plan_table(rows: Sequence[PlanRow], gpus: Sequence[Gpu], margin: MarginRule = MarginRule()) -> list[str]:
    """The plan as aligned text lines: an inventory line, a header, one line per item, a placement summary."""
    sizes = Counter((g.total_gb, round(g.free_gb, 1), _kind(g)) for g in gpus)
    inventory = (
        " + ".join(
            f"{n} x {size:g} GB{kind}"
            + ("" if free == size else f" ({free:g} GB free)")
            + f", {margin.usable_gb(size, free):.1f} GB usable each"
            for (size, free, kind), n in sorted(sizes.items(), reverse=True)
        )
        or "no GPU (CPU run)"
    )
    table = [("item", "kind", "weights GB", "KV GB", "peak GB", "GPUs", "note")]
    for row in rows:
        table.append(
            (
                row.nodeid.split("::")[-1],
                row.kind,
                f"{row.weights_gb:.1f}",
                f"{row.kv_gb:.1f}",
                f"{row.need_gb:.1f}",
                "-" if row.gpus is None else str(row.gpus),
                row.note,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    return [f"GPUs: {inventory}; {len(rows)} item(s)", *lines, *placement_summary(rows)]


def _kind(gpu: Gpu) -> str:
    """What the inventory line says of a device besides its size: MIG slice, AMD (ROCm), or nothing."""
    return " MIG slice" if gpu.mig else " ROCm" if gpu.platform == ROCM else ""


def placement_summary(rows: Sequence[PlanRow]) -> list[str]:
    """One line: how many items the node places on how many GPUs, how many it cannot, how many skip for other reasons."""
    if not rows or rows[0].fits is None:
        return []
    placed = Counter(row.gpus for row in rows if row.fits)
    unfit = sum(1 for row in rows if not row.fits)
    other = sum(1 for row in rows if row.fits and row.note)
    spread = ", ".join(f"{n} on {gpus} GPU{'s' if gpus != 1 else ''}" for gpus, n in sorted(placed.items()))
    wide = sorted({row.model for row in rows if row.fits and (row.gpus or 0) > 1})
    return [
        f"placement: {sum(placed.values())} of {len(rows)} item(s) placed{f' ({spread})' if spread else ''}; {unfit} unplaceable"
        + (f"; across GPUs: {', '.join(wide)}" if wide else "")
        + (f"; {other} placed but skipped here for another reason (see note)" if other else "")
    ]
