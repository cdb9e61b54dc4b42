import json

import pytest

from deployments import cli
from vss_core import data


def test_config_command_prints_resolved_config_and_deepspeed_json(capsys):
    assert cli.main(["config", "--profile", "conservative-2xb200", "training.learning_rate=1e-5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["training"]["learning_rate"] == 1e-5
    assert out["deepspeed"]["zero_optimization"]["offload_param"]["buffer_count"] == 5


def test_bad_override_is_a_clear_error_not_a_traceback(capsys):
    assert cli.main(["config", "--profile", "cpu-demo", "lora.rnk=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration") and "lora.rnk: unknown key" in err


def test_run_help_lists_every_config_key_with_its_description(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    assert "deepspeed.max_live_parameters" in out and "stage3_max_live_parameters" in out
    assert "data.on_invalid" in out and "lora.targets" in out


def test_validate_command_exit_code_follows_policy(tmp_path, demo_data_dir, capsys):
    assert cli.main(["validate", str(demo_data_dir)]) == 0
    assert "| 01 | yes |" in capsys.readouterr().out
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo_data_dir, bad)
    (bad / "01" / "in.wav").write_bytes(b"")
    assert cli.main(["validate", str(bad)]) == 1
    assert "01" in capsys.readouterr().err
    assert cli.main(["validate", str(bad), "data.on_invalid=skip"]) == 0


def test_importing_the_cli_does_not_start_prefect():
    import subprocess
    import sys

    code = "import sys, deployments.cli; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_vss_validate_json_prints_the_full_report_and_exits_by_policy(dataset, tmp_path, capsys):
    from deployments import cli

    cache = f"data.validation_cache={tmp_path / 'cli-cache'}"
    assert cli.main(["validate", str(dataset), cache, "--json"]) == 0
    out = capsys.readouterr().out
    report = data.DatasetReport.model_validate_json(out)
    assert [s.name for s in report.samples] == ["01", "02", "03"] and report.samples[0].video.codec == "h264"

    (dataset / "02" / "in.wav").write_bytes(b"")
    assert cli.main(["validate", str(dataset), cache, "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["samples"][1]["problems"] == ["in.wav is empty (0 bytes)"]
    assert "02: in.wav is empty" in captured.err
    assert cli.main(["validate", str(dataset), cache, "data.on_invalid=skip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == ["02"]
    for d in ("01", "03"):
        (dataset / d / "in.wav").write_bytes(b"")
    assert cli.main(["validate", str(dataset), cache, "data.on_invalid=skip", "--json"]) == 1
    capsys.readouterr()
    assert cli.main(["validate", str(tmp_path / "nowhere"), cache, "--json"]) == 2
    assert "does not exist" in capsys.readouterr().err
