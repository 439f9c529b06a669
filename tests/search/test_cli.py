"""The informational commands: what a study may name, straight from the registries."""

from __future__ import annotations

import pytest

from search.cli import main
from search.schema import FACTORS, FORMATS
from spaces import presets
from trainers import ACTIVATIONS


def test_activations_lists_every_registered_activation(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["activations"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ACTIVATIONS)
    low, high, log = ACTIVATIONS["leaky_relu"].search_range or (0, 0, False)
    assert f"{low:g}..{high:g}" + (" (log)" if log else "") in out


def test_presets_lists_every_bundled_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in presets())


def test_leaderboard_help_lists_every_format_and_factor_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one row per option: names are not wrapped apart
    assert main(["leaderboard", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in (*FORMATS, *FACTORS))
