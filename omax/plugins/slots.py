"""Detect a worker's inference slots: its GPUs, or one CPU slot."""

from __future__ import annotations

from omax.plugins.state import Slot


def detect_slots(device: str, cpu_slot_memory: int) -> tuple[Slot, ...]:
    """GPUs through torch.cuda when present (and allowed); otherwise one CPU slot
    whose memory is the configured ``omax.worker.slot-memory``."""
    if device in ("auto", "cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                slots = []
                for i in range(torch.cuda.device_count()):
                    free, total = torch.cuda.mem_get_info(i)
                    util = 0.0
                    try:
                        util = float(torch.cuda.utilization(i))
                    except Exception:  # pynvml missing: utilisation unknown
                        pass
                    slots.append(
                        Slot(
                            id=f"cuda:{i}",
                            device="cuda",
                            name=torch.cuda.get_device_name(i),
                            memory_total=int(total),
                            memory_free=int(free),
                            utilization=util,
                        )
                    )
                return tuple(slots)
        except Exception:  # no usable CUDA: fall through to the CPU slot
            pass
    return (
        Slot(
            id="cpu",
            device="cpu",
            name="CPU",
            memory_total=cpu_slot_memory,
            memory_free=cpu_slot_memory,
        ),
    )
