import json
import subprocess
import sys

import pytest

from vss_core import config
from vss_core.config import ModelConfig, UploadConfig, deepspeed_config, load_config
from vss_core.errors import ConfigError

SHIPPED = ["conservative-2xb200", "cpu-demo", "standard-8xh100"]


def test_shipped_profiles_are_listed():
    assert config.list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_profile_loads_and_generates_deepspeed_json(name):
    cfg = load_config(name)
    assert cfg.profile == name
    ds = deepspeed_config(cfg)
    json.dumps(ds)  # serialisable
    assert ds["zero_optimization"]["stage"] == 3
    world = cfg.hardware.gpus_per_node * cfg.hardware.nodes
    assert ds["train_batch_size"] == cfg.training.micro_batch_size * cfg.training.gradient_accumulation_steps * world


def test_conservative_profile_values_match_design():
    cfg = load_config("conservative-2xb200")
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert cfg.training.learning_rate == 5e-5
    assert cfg.training.gradient_accumulation_steps == 64
    assert (cfg.data.video_frames, cfg.data.audio_seconds) == (8, 10)
    assert cfg.training.gradient_clipping == 0.5
    assert (cfg.training.log_every_n_steps, cfg.training.checkpoints_to_keep) == (1, 2)
    assert cfg.hardware.gpus_per_node == 2
    zero = deepspeed_config(cfg)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True, "buffer_count": 4}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True, "buffer_count": 5}
    assert zero["sub_group_size"] == 100_000_000
    assert zero["stage3_max_live_parameters"] == 500_000_000
    assert zero["stage3_max_reuse_distance"] == 500_000_000
    assert zero["stage3_prefetch_bucket_size"] == 50_000_000
    assert zero["reduce_bucket_size"] == 50_000_000
    ds = deepspeed_config(cfg)
    assert ds["bf16"] == {"enabled": True}
    assert ds["data_types"] == {"keep_in_fp32_modules": ["e_score_correction_bias"]}  # the router bias stays fp32
    assert ds["activation_checkpointing"]["partition_activations"] is True
    assert ds["activation_checkpointing"]["contiguous_memory_optimization"] is True
    assert ds["train_batch_size"] == 1 * 64 * 2


def test_standard_profile_values_match_design():
    cfg = load_config("standard-8xh100")
    assert (cfg.lora.rank, cfg.lora.alpha) == (32, 64)
    assert cfg.training.learning_rate == 1e-4
    assert cfg.training.gradient_accumulation_steps == 32
    assert (cfg.data.video_frames, cfg.data.audio_seconds) == (16, 30)
    assert (cfg.training.log_every_n_steps, cfg.training.checkpoints_to_keep, cfg.training.warmup_steps) == (10, 3, 100)
    zero = deepspeed_config(cfg)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["stage3_max_live_parameters"] == 1_000_000_000
    # DeepSpeed defaults where the design says so
    assert "stage3_prefetch_bucket_size" not in zero and "reduce_bucket_size" not in zero
    assert deepspeed_config(cfg)["activation_checkpointing"]["partition_activations"] is False


def test_cpu_demo_is_cpu_two_ranks_few_steps():
    cfg = load_config("cpu-demo")
    assert cfg.hardware.accelerator == "cpu" and cfg.hardware.gpus_per_node == 2
    assert deepspeed_config(cfg)["bf16"] == {"enabled": False}
    assert cfg.deepspeed.pin_memory is False


def test_overrides_are_typed():
    cfg = load_config(
        "conservative-2xb200",
        ["training.learning_rate=1e-5", "lora.rank=8", "data.on_invalid=skip", "lora.targets=[attention, dense_mlp]"],
    )
    assert cfg.training.learning_rate == 1e-5 and cfg.lora.rank == 8
    assert cfg.data.on_invalid == "skip" and cfg.lora.targets == ["attention", "dense_mlp"]
    assert load_config("cpu-demo", {"training.epochs": 1}).training.epochs == 1


def test_unknown_keys_and_bad_values_are_all_reported_by_key():
    with pytest.raises(ConfigError) as err:
        load_config("cpu-demo", ["training.lerning_rate=1e-4", "lora.rank=0", "data.on_invalid=maybe", "foo.bar=1"])
    msg = str(err.value)
    assert "training.lerning_rate: unknown key" in msg
    assert "lora.rank" in msg and "greater than or equal to 1" in msg
    assert "data.on_invalid" in msg
    assert "foo: unknown key" in msg


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="data.video_frames=3 must be even"):
        load_config("cpu-demo", ["data.video_frames=3"])
    with pytest.raises(ConfigError, match="hostfile"):
        load_config("standard-8xh100", ["hardware.nodes=2"])
    with pytest.raises(ConfigError, match="nvme_path"):
        load_config("standard-8xh100", ["deepspeed.offload_param=nvme"])


def test_unknown_profile_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="profile 'nope' does not exist. Shipped profiles: conservative-2xb200"):
        load_config("nope")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("cpu-demo", ["training.epochs"])


def test_profile_from_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("hardware: {accelerator: cpu}\nmodel: {dtype: float32}\ntraining: {epochs: 2}\n")
    cfg = load_config(str(path))
    assert cfg.profile == "mine" and cfg.training.epochs == 2


def test_config_round_trips_through_run_json(tmp_path):
    cfg = load_config("cpu-demo", ["training.epochs=2"])
    path = tmp_path / "config.json"
    path.write_text(cfg.model_dump_json())
    assert config.config_from_json(path) == cfg
    path.write_text(json.dumps({**cfg.model_dump(mode="json"), "extra": 1}))
    with pytest.raises(ConfigError, match="extra: unknown key"):
        config.config_from_json(path)


def test_vss_core_does_not_import_prefect():
    code = "import sys, vss_core.config, vss_core.hardware, vss_core.runs, vss_core.hub, vss_core.launch, vss_core.train; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_typed_overrides_refuse_unknown_keys_and_merge_onto_the_profile():
    from pydantic import ValidationError

    o = config.VSSOverrides.model_validate({"training": {"learning_rate": 1e-5}, "data": {"root": "/d"}})
    cfg = load_config("conservative-2xb200", o)
    assert cfg.training.learning_rate == 1e-5 and cfg.data.root == "/d"
    assert cfg.training.gradient_accumulation_steps == 64  # the profile's, not the class default
    with pytest.raises(ValidationError, match="training.lerning_rate"):
        config.VSSOverrides.model_validate({"training": {"lerning_rate": 1}})
    with pytest.raises(ValidationError, match="lora.rank"):
        config.VSSOverrides.model_validate({"lora": {"rank": 0}})
    assert config.nested_overrides(["training.epochs=2", "data.root=/x"]) == {
        "training": {"epochs": 2},
        "data": {"root": "/x"},
    }


# --- values checked when a run is created (issue 13 item 5) ---------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "/tmp/elsewhere", "../up", "a/b", "a\\b", ""])
def test_run_name_must_stay_inside_output_dir(name):
    with pytest.raises(ConfigError, match=r"training.run_name: must be one folder name inside training.output_dir"):
        load_config("cpu-demo", {"training": {"run_name": name}})


def test_a_plain_run_name_is_accepted():
    assert load_config("cpu-demo", ["training.run_name=my-run.2"]).training.run_name == "my-run.2"


@pytest.mark.parametrize("repo", ["noowner", "a/b/c", "me/has space", "me/--x", "me/x.git", "../x"])
def test_upload_repo_id_must_be_owner_name(repo):
    with pytest.raises(ConfigError, match=r"upload.repo_id: not a Hub repo id: .*Use owner/name"):
        load_config("cpu-demo", {"upload": {"repo_id": repo}})


def test_model_source_is_a_directory_a_path_or_a_repo_id(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("cpu-demo", {"model": {"source": "not a repo!", "codec_source": "org codec"}})
    msg = str(err.value)  # both problems at once
    assert "model.source: neither an existing directory nor a Hub repo id" in msg and "'not a repo!'" in msg
    assert "model.codec_source: neither an existing directory nor a Hub repo id" in msg
    for ok in ["meituan-longcat/LongCat-Flash-Omni", str(tmp_path), ".vss/demo/tiny-model", "/not/yet/made"]:
        assert load_config("cpu-demo", [f"model.source={ok}", "upload.repo_id=me/adapter"]).model.source == ok


def test_model_config_hub_fields_are_validated():
    assert ModelConfig().verify == "size"
    with pytest.raises(ValueError):
        ModelConfig(verify="sha1")
    with pytest.raises(ValueError):
        UploadConfig(max_attempts=0)


def test_ram_stop_gb_is_bounded():
    from vss_core.errors import ConfigError

    with pytest.raises(ConfigError, match="training.ram_stop_gb"):
        load_config("cpu-demo", ["training.ram_stop_gb=-1"])
    assert load_config("cpu-demo").training.ram_stop_gb > 0  # on by default
