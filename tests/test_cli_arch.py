"""`python -m densenet_demo presets` and `arch`: tables, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from densenet_demo.architecture import totals
from densenet_demo.cli.main import main
from densenet_demo.config import PRESETS

REPO = Path(__file__).resolve().parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_presets_table_lists_every_preset_with_its_figures(capsys):
    code, out, err = run(capsys, "presets")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["name", "variant", "depth", "params", "GMACs", "size"]
    assert [line.split()[0] for line in lines[1:]] == list(PRESETS)
    densenet121 = lines[1].split()
    assert densenet121[1:6] == ["DenseNet-BC", "121", "7.98M", "2.834", "224"]


def test_presets_json_carries_exact_numbers(capsys):
    code, out, _ = run(capsys, "presets", "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert [r["name"] for r in records] == list(PRESETS)
    for record in records:
        t = totals(PRESETS[record["name"]].config)
        assert (record["params"], record["macs"], record["image_size"]) == (t["params"], t["macs"], t["image_size"])
        assert record["config"] == PRESETS[record["name"]].config.to_dict()


def test_presets_markdown_is_a_table(capsys):
    code, out, _ = run(capsys, "presets", "--format", "markdown")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("| name | variant |") and lines[1].startswith("|---|")
    assert len(lines) == 2 + len(PRESETS)
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 6 for line in lines[2:])


@pytest.mark.e2e
def test_presets_from_a_real_process():
    result = subprocess.run(
        [sys.executable, "-m", "densenet_demo", "presets", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert {r["name"] for r in json.loads(result.stdout)} == set(PRESETS)


def test_arch_json_is_one_object_with_config_rows_and_totals(capsys):
    code, out, _ = run(capsys, "arch", "densenet121", "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"config", "rows", "totals"}
    assert report["config"] == PRESETS["densenet121"].config.to_dict()
    assert report["totals"]["params"] == 7_978_856
    assert report["totals"]["image_size"] == 224
    assert len(report["rows"]) == 4 + 58 + 3 + 3
    assert report["rows"][4]["name"] == "features.denseblock1.denselayer1"


def test_arch_table_groups_rows_by_stage_and_ends_with_totals(capsys):
    code, out, _ = run(capsys, "arch", "densenet121", "--image-size", "128")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("DenseNet-BC, depth 121, 128x128x3 input")
    assert "block 3: 24 layers, 256 -> 1024 channels" in lines
    assert "transition 3" in lines and "head" in lines
    layer = next(line.split() for line in lines if line.strip().startswith("denselayer24"))
    assert layer[2:5] == ["992", "+32=1024", "8x8"]
    assert lines[-2].startswith("total: 7.98M params (7,978,856)")
    assert "naive" in lines[-1] and "memory-efficient" in lines[-1]


def test_arch_markdown_has_a_stage_column(capsys):
    code, out, _ = run(capsys, "arch", "densenet_bc100_k12", "--format", "markdown")
    assert code == 0
    assert "| stage | layer | op |" in out
    assert "| block 2 | denselayer16 |" in out


def test_arch_num_classes_changes_the_head(capsys):
    code, out, _ = run(capsys, "arch", "densenet121", "--num-classes", "5", "--format", "json")
    report = json.loads(out)
    assert code == 0
    assert report["rows"][-1]["out_channels"] == 5
    assert report["totals"]["params"] == 7_978_856 - 1024 * 995 - 995


def test_arch_reads_a_config_file(capsys, tmp_path):
    path = tmp_path / "mine.json"
    cfg = PRESETS["densenet_fashion"].config.replace(growth_rate=8, block_config=(2, 3))
    path.write_text(cfg.to_json())
    code, out, err = run(capsys, "arch", str(path), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["config"] == cfg.to_dict()
    assert report["totals"]["params"] == totals(cfg)["params"]
    assert sum(r["kind"] == "dense_layer" for r in report["rows"]) == 5


def test_unknown_preset_is_one_error_line_and_exit_2(capsys):
    code, out, err = run(capsys, "arch", "nope")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: unknown preset 'nope'")
    assert "densenet121" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"growth_rate": 12,', "not valid JSON"),
        ('{"growth_rate": 0}', "growth_rate"),
        ('{"colour": "red"}', "unknown config field"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_config_file_is_one_error_line_and_exit_2(capsys, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = run(capsys, "arch", str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["arch", "missing.json"], "cannot read config file"),
        (["arch", "densenet121", "--image-size", "16"], "too small"),
        (["arch", "densenet121", "--image-size", "100000"], "too large"),
        (["arch", "densenet121", "--num-classes", "0"], "num_classes"),
    ],
)
def test_bad_arguments_are_one_error_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


@pytest.mark.e2e
def test_arch_error_from_a_real_process():
    result = subprocess.run(
        [sys.executable, "-m", "densenet_demo", "arch", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: unknown preset") and result.stderr.count("\n") == 1


@pytest.mark.e2e
def test_arch_piped_into_a_reader_that_stops_early_exits_quietly():
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m densenet_demo arch densenet201 | head -n 2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 2
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
