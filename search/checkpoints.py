"""Where a trial's checkpoint lives and who may load it (light: trial workers import this)."""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_FILE = "checkpoint.pt"
#: Config key with which a resumed study points a trial at its last checkpoint directory.
RESUME_KEY = "resume_checkpoint"


def owned_by_user(path: Path) -> bool:
    """Checkpoints are unpickled: only load files this user owns."""
    return path.stat().st_uid == os.getuid()
