"""Weights & Biases logging beside TensorBoard (``logger.wandb=true``), checked offline: the W&B run file
holds the same rows as metrics.csv, a resume continues the same W&B run, and a missing wandb is one line."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

wandb = pytest.importorskip("wandb")

from resel import RESeL  # noqa: E402
from resel.cli.main import app  # noqa: E402
from resel_deploy.extras import install_hint  # noqa: E402
from resel_train.logger import COLUMNS, tb_tag  # noqa: E402

TINY = {"model.mamba.d_state": 4, "model.mamba.d_conv": 4, "model.embed": 16, "model.hidden": 16, "model.mamba.dt_rank": 2,
        "algo.batch_size": 32, "warmup_steps": 75, "eval_episodes": 1, "threads": 1, "eval_every": 40,
        "log_every": 20}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def wandb_records(path: Path):
    """The protobuf records of a .wandb file: W&B's leveldb-style log (7-byte file header, 32 KiB blocks,
    each record a 7-byte header -- crc32, length, type: full / first / middle / last -- then its bytes)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # the rest of a block too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history(run_dir: Path) -> tuple[dict[int, dict[str, float]], list[str]]:
    """{step: {tag: value}} over every offline W&B run in ``run_dir``, and the W&B run ids seen."""
    rows: dict[int, dict[str, float]] = {}
    ids = []
    for file in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.append(record.run.run_id)
            elif kind == "history":
                items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
                step = int(items.pop("_step"))
                rows.setdefault(step, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return rows, ids


def test_rows_reach_wandb_as_in_metrics_csv_and_a_second_learn_continues_the_same_run(tmp_path):
    model = RESeL("Wind", out=tmp_path, **TINY, **{"logger.wandb": True})
    model.learn(95)
    model.learn(25)
    logged, ids = history(model.run_dir)
    assert len(ids) == 2 and ids[0] == ids[1] and ids[0].startswith("Wind_mamba_s0-")  # one W&B run, resumed
    with (model.run_dir / "metrics.csv").open() as f:
        expected = list(csv.DictReader(f))
    assert [int(r["step"]) for r in expected] == sorted(logged) == [20, 40, 60, 80, 95, 100, 120]
    for row in expected:
        got = logged[int(row["step"])]
        for column in COLUMNS[1:]:
            if row[column] != "":
                assert got[tb_tag(column)] == pytest.approx(float(row[column]), rel=1e-6), (row["step"], column)
        assert set(got) == {tb_tag(c) for c in COLUMNS[1:] if row[c] != ""}


def test_without_wandb_the_cli_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    args = ["train", "--env", "Wind", "--steps", "80", "--out", str(tmp_path), "--no-progress",
            "--set", "logger.wandb=true", *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert install_hint("wandb") in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "Wind_mamba_s0").exists()  # refused before anything was created
