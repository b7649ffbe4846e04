"""Input checks shared by the message-passing ops."""
import torch


def check_index_range(op: str, name: str, index: torch.Tensor, size: int) -> None:
    """Raises ValueError unless every entry of ``index`` is in [0, size). Skipped under
    torch.compile (the check reads values, which would break the graph)."""
    if torch.compiler.is_compiling() or not index.numel():
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= size:
        raise ValueError(f"{op}: {name} has entries outside [0, {size}) (min {lo}, max {hi})")
