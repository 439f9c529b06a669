"""Pre-flight checks on their own: what no node can place, and folders that can't be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.errors import UserError
from search.preflight import check_resources, check_writable

NODES = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 8.0, "GPU": 0.0}, {"CPU": 1.0, "GPU": 1.0}]


@pytest.mark.parametrize(
    ("cpu", "gpu", "expected"),
    [
        (16, 0, r"resources\.cpu: 16 per trial, but the largest Ray node has 8 CPUs"),
        (1, 2, r"resources\.gpu: 2 per trial, but the largest Ray node has 1 GPU;"),
        (4, 0.5, "no Ray node has both"),
    ],
)
def test_requests_no_node_can_place(cpu: float, gpu: float, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        check_resources(cpu, gpu, NODES)


@pytest.mark.parametrize(("cpu", "gpu"), [(8, 0), (1, 1), (0.5, 0.25)])
def test_requests_a_node_can_place(cpu: float, gpu: float) -> None:
    check_resources(cpu, gpu, NODES)


def test_no_gpu_anywhere() -> None:
    with pytest.raises(UserError, match=r"resources\.gpu: 1 per trial, but no Ray node has a GPU"):
        check_resources(1, 1, NODES[:2])


def test_writable_folders_leave_nothing_behind(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b", "output_dir")
    check_writable(tmp_path, "output_dir")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"output_dir: .*/f/a can't be a folder: .*/f is a file"):
        check_writable(tmp_path / "f" / "a", "output_dir")
