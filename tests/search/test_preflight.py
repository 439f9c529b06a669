"""Pre-flight checks on their own: what no node can place, and folders that can't be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.errors import UserError
from search.preflight import await_resources, check_resources, check_writable

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


def test_an_autoscaling_cluster_gets_a_warning_and_a_bounded_wait() -> None:
    """No autoscaler runs here, so the cluster's node list is a stand-in: a node that fits
    appears on the third look. A fixed cluster refuses at once, as before."""
    looks: list[int] = []
    said: list[str] = []
    asked: list[dict[str, float]] = []

    def nodes() -> list[dict[str, float]]:
        looks.append(1)
        return [{"CPU": 2.0}] + ([{"CPU": 8.0}] if len(looks) >= 3 else [])

    await_resources(
        4, 0, nodes, autoscaling=True, say=said.append, request=asked.append, poll_s=0.01
    )
    assert len(looks) == 3 and asked == [{"CPU": 4}]
    assert said == [
        "warning: resources.cpu: 4 per trial, but the largest Ray node has 2 CPUs; allowed: at "
        "most 2; the cluster autoscales, so gradsweep asked it for such a node and waits up to "
        "300 s for it"
    ]
    with pytest.raises(UserError, match=r"at most 2 \(waited 0.05 s for the autoscaler\)$"):
        small = [{"CPU": 2.0}]
        await_resources(
            4, 0, lambda: small, autoscaling=True, say=said.append, wait_s=0.05, poll_s=0.01
        )
    with pytest.raises(UserError, match=r"allowed: at most 2$"):
        await_resources(4, 0, lambda: [{"CPU": 2.0}], autoscaling=False, say=said.append)
