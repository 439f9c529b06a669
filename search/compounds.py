"""Trade-off claims: claims made of several of :mod:`search.claims`' claims, judged from their
rows, so every part keeps its own strata, replicates, test and Holm family.

The verdict is the intersection-union test's: the trade-off is held only if every part is held
(its p is the largest of the parts' Holm p), refuted if any part is refuted, and "not enough
data" if a part can't be decided, with that part's reason.
"""

from __future__ import annotations

import math
from typing import Any

from search.analysis import NUMBERS

ELU_COSTS_MORE = "ELU costs more per epoch than ReLU"
ELU_FEWER_EPOCHS = "ELU needs fewer epochs than ReLU (to 95% of its best)"
#: Trade-off -> the names of its parts (claims of :func:`search.claims.notes_claims`).
COMPOUNDS: dict[str, tuple[str, ...]] = {
    "ELU costs more per epoch but reaches its accuracy in fewer epochs": (
        ELU_COSTS_MORE,
        ELU_FEWER_EPOCHS,
    ),
}


def compound_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per :data:`COMPOUNDS` trade-off whose parts were all judged (from their rows)."""
    by_name = {str(r["claim"]): r for r in rows}
    out: list[dict[str, Any]] = []
    for name, part_names in COMPOUNDS.items():
        parts = [by_name[p] for p in part_names if p in by_name]
        if len(parts) < len(part_names):
            continue
        verdicts = [str(p["verdict"]) for p in parts]
        ps = [float(p["p_holm"]) for p in parts]
        label = "not significant"
        if "refuted" in verdicts:
            label = "refuted"
        elif "not enough data" in verdicts:
            label = "not enough data"
        elif all(v == "held" for v in verdicts):
            label = "held"
        shown = [p for p in parts if p["verdict"] == label] if label != "held" else parts
        why = "; ".join(f"{p['claim']}: {p['verdict']} ({p['why']})" for p in shown)
        out.append(
            {
                "claim": name,
                "family": parts[0]["family"],
                "metric": " & ".join(str(p["metric"]) for p in parts),
                "a": "",
                "b": "",
                **{k: math.nan for k in NUMBERS},
                "reason": "",
                "strata_used": "",
                "p_holm": math.nan if any(math.isnan(p) for p in ps) else max(ps),
                "verdict": label,
                "why": why,
            }
        )
    return out
