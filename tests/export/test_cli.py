"""`blt-export`, in-process: init, inspect, import-hf, and a clear error before any file is written."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fastblt.export.cli import main as export_main


def test_init_and_inspect(tmp_path):
    runner = CliRunner()
    ckpt = tmp_path / "m"
    assert runner.invoke(export_main, ["init", "--out", str(ckpt)]).exit_code == 0
    out = runner.invoke(export_main, ["inspect", str(ckpt), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["params"]["decoder"] > 0


def test_import_hf(tmp_path, hf_checkpoints):
    res = CliRunner().invoke(export_main, ["import-hf", str(hf_checkpoints["k2-4bpp"]), "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "n" / "model.safetensors").is_file()


def test_train_refuses_a_bad_option_before_writing(tmp_path):
    res = CliRunner().invoke(export_main, ["train", "--run-dir", str(tmp_path / "run"), "--preset", "tiny",
                                           "--mask-weight", "0"])
    assert res.exit_code == 1 and "mask_weight=0.0 must be > 0" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def _no_weight_reads(monkeypatch):
    """Make any weight read fail: inspect must answer from config.json and safetensors headers alone."""
    import safetensors
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("inspect read weights")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)


def test_init_hf_config_sharded_and_inspect_reads_headers_only(tmp_path, monkeypatch):
    from fastblt.graphs.config import tiny_config
    from fastblt.graphs.hf_export import hf_config
    from fastblt.graphs.params import param_counts

    cfg = tiny_config()
    (tmp_path / "hf.json").write_text(json.dumps(hf_config(cfg, 260, cfg.max_patch_length)))
    ckpt = tmp_path / "m"
    res = CliRunner().invoke(export_main, ["init", "--config", str(tmp_path / "hf.json"), "--out", str(ckpt),
                                           "--shard-size", "50KB"])
    assert res.exit_code == 0, res.output
    shards = sorted(p.name for p in ckpt.glob("model-*.safetensors"))
    assert len(shards) >= 3 and f"({len(shards)} weights files)" in res.output

    _no_weight_reads(monkeypatch)
    out = CliRunner().invoke(export_main, ["inspect", str(ckpt), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    counts = param_counts(cfg)
    total, hashed = sum(counts.values()), counts["hash_embeddings"]
    assert report["kind"] == "hf" and report["params_from"] == "safetensors headers"
    assert report["params"] == counts and report["total_params"] == total and report["hash_table_params"] == hashed
    assert report["hash_table_shape"] == [3 * 257, 32]
    assert report["bytes"]["fp32"] == {"total": 4 * total, "hash_tables": 4 * hashed, "rest": 4 * (total - hashed)}
    assert report["bytes"]["int4"]["hash_tables"] == hashed // 2
    weights = report["weights"]
    assert weights["files"] == shards and weights["params_by_dtype"] == {"BF16": total}
    assert weights["bytes"] == 2 * total and weights["shapes"]["encoder_hash_tok_embedding.weight"] == [771, 32]
    text = CliRunner().invoke(export_main, ["inspect", str(ckpt)])
    assert text.exit_code == 0 and "hash tables" in text.output and "int4" in text.output


def test_inspect_config_only_directory_and_presets(tmp_path):
    runner = CliRunner()
    assert runner.invoke(export_main, ["init", "--out", str(tmp_path / "m")]).exit_code == 0
    (tmp_path / "m" / "model.safetensors").unlink()  # config.json alone: sizes come from the config
    report = json.loads(runner.invoke(export_main, ["inspect", str(tmp_path / "m"), "--json"]).output)
    assert report["params_from"] == "config" and report["weights"] is None and report["params"]["decoder"] > 0

    res = runner.invoke(export_main, ["inspect", "--preset", "blt-7b", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["kind"] == "hf preset" and report["total_params"] == 10_653_082_624
    assert report["hash_table_params"] == 3_000_012 * 1280 and report["hash_table_shape"] == [3_000_012, 1280]
    assert report["bytes"]["bf16/fp16"]["total"] == 2 * 10_653_082_624
    text = runner.invoke(export_main, ["inspect", "--preset", "blt-1b"])
    assert text.exit_code == 0 and "4,633,127,680" in text.output and "17.26 GiB" in text.output
    assert runner.invoke(export_main, ["inspect"]).exit_code == 2  # a checkpoint or a preset, one of them


def test_init_refuses_bad_sizes_before_writing(tmp_path):
    res = CliRunner().invoke(export_main, ["init", "--preset", "blt-1b", "--out", str(tmp_path / "m"),
                                           "--shard-size", "2 parsecs"])
    assert res.exit_code == 2 and "is not a size" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m").exists()


def test_init_native_dtype_and_shards(tmp_path):
    import torch

    from fastblt.graphs.checkpoint import stored_dtype

    res = CliRunner().invoke(export_main, ["init", "--out", str(tmp_path / "m"), "--dtype", "bf16",
                                           "--shard-size", "100KB"])
    assert res.exit_code == 0, res.output
    assert stored_dtype(tmp_path / "m") == torch.bfloat16
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
