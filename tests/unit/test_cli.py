import json

import pytest

from deployments import cli


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
