"""Where torch runs and on how many CPU threads: shared by the backbone, k-center and scoring.

This module does not import kedro.
"""

from __future__ import annotations

import torch


def resolve_device(device: str | None = "auto", parameter: str = "backbone.device") -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; ``"cpu"``/``"cuda[:N]"`` checked.

    ``parameter`` names the setting the value came from, so an error points at it.
    """
    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"{parameter} is {device!r} but CUDA is not available here; use 'cpu' or 'auto'.")
        return device
    raise ValueError(f"Unknown device {device!r} (parameter {parameter}): use 'auto', 'cpu' or 'cuda'.")


def set_torch_threads(n: int | None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (``None``/``0``: leave as is); returns the previous."""
    previous = torch.get_num_threads()
    if n is not None and int(n) > 0:
        torch.set_num_threads(int(n))
    return previous
