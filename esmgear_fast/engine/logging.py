"""Run logging on rank 0: ``metrics.jsonl``, ``summary.json``, ``curves.png``, TensorBoard, W&B, tqdm.

``metrics.jsonl`` has one JSON line per (epoch, split): ``{"epoch", "split", "loss", <every metric>, "lr",
"seconds", "proteins_per_s", "peak_memory_mb", "step"}``. It is rewritten atomically from the records the
checkpoint carries, so a resumed run never holds duplicate or half-written lines.
"""
from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from .checkpoint import atomic_write_bytes

__all__ = ["RunLogger", "write_json", "plot_curves", "progress"]


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN/inf become strings ("nan", "inf") so the files stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n").encode())


def plot_curves(records: List[Dict[str, Any]], path) -> bool:
    """Loss and every metric per epoch and split in one picture. Returns False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    splits = sorted({r["split"] for r in records})
    skip = {"epoch", "split", "lr", "seconds", "proteins_per_s", "peak_memory_mb", "step"}
    keys = []
    for r in records:
        for k, v in r.items():
            if k not in skip and k not in keys and isinstance(v, (int, float)):
                keys.append(k)
    if not keys:
        return False
    n = len(keys)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for s in splits:
            pts = [(r["epoch"], r[key]) for r in records if r["split"] == s and isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def progress(iterable, enabled: bool, **kwargs):
    """tqdm on rank 0 when installed and enabled, else the iterable itself."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


class RunLogger:
    """Writes the run folder's logs. Every method is a no-op unless ``enabled`` (rank 0)."""

    def __init__(self, out_dir, enabled: bool, tensorboard: bool = True, wandb_project: Optional[str] = None,
                 wandb_entity: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 resume: bool = False):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
            except ImportError:
                pass  # optional: documented as "when installed"
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError(f"run.wandb={wandb_project!r} but wandb is not installed "
                                   f"(pip install wandb), or set run.wandb=null") from None
            self.wandb = wandb.init(project=wandb_project, entity=wandb_entity, config=config,
                                    dir=str(self.out_dir), resume="allow" if resume else None,
                                    id=self._wandb_id(resume))

    def _wandb_id(self, resume: bool) -> Optional[str]:
        path = self.out_dir / "wandb_id.txt"
        if resume and path.exists():
            return path.read_text().strip()
        import uuid
        run_id = uuid.uuid4().hex[:12]
        atomic_write_bytes(path, run_id.encode())
        return run_id

    def scalars(self, prefix: str, values: Dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        flat = {f"{prefix}/{k}": float(v) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in flat.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(flat, step=step)

    def epoch_records(self, records: List[Dict[str, Any]]) -> None:
        """Rewrites metrics.jsonl (atomically) and curves.png from all epoch records so far."""
        if not self.enabled:
            return
        text = "".join(json.dumps(_clean(r)) + "\n" for r in records)
        atomic_write_bytes(self.out_dir / "metrics.jsonl", text.encode())
        try:
            plot_curves(records, self.out_dir / "curves.png")
        except Exception as e:  # a picture must never stop a run; say so
            warnings.warn(f"curves.png not written: {e}")

    def summary(self, summary: Dict[str, Any]) -> None:
        if self.enabled:
            write_json(self.out_dir / "summary.json", summary)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
