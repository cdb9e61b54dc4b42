"""Every run checks the planner: measured peaks beside the plan's figures, a warning past the margin."""

from vss_core import config, plancheck

GiB = 2**30


def _plan(tiny_model_dir):
    cfg = config.load_config("cpu-demo", [f"model.source={tiny_model_dir}"])
    return cfg, plancheck.predicted_for(cfg, tiny_model_dir)


def _measured(rss_gib, step_s=1.0, gpu_gib=None):
    ranks = [{"peak_rss_bytes": int(g * GiB), "step_time_s": step_s} for g in rss_gib]
    if gpu_gib is not None:
        for r in ranks:
            r["gpu_max_reserved_bytes"] = int(gpu_gib * GiB)
    return {"per_rank": ranks, "step_time_s": step_s}


def test_peaks_within_the_plan_give_no_warning_and_the_figures_are_the_plans(tiny_model_dir):
    cfg, p = _plan(tiny_model_dir)
    ram = {i.component.split(" (")[0].split(":")[0]: i.gib for i in p.resource("CPU RAM").items}
    ranks = cfg.hardware.gpus_per_node
    # one rank's RSS: its share of what the ranks hold, the shared library pages whole (RSS counts
    # them in every process), rank 0's checkpoint load; not the launcher, the workers, the reserve
    shared = [
        "weight partitions, offloaded",
        "optimizer",
        "training processes' own memory",
        "a training step's fixed working memory",
        "batches in flight",
    ]
    device = next(k for k in ram if k.endswith("CPU ranks' device memory"))
    rank = sum(ram[k] for k in [*shared, device]) / ranks + ram["libraries' pages"] + ram["checkpoint load"]
    # the column at its bytes: the CPU ranks run with glibc's mmap threshold fixed (launch.training_env)
    assert not any(k.startswith("glibc") for k in ram)
    check = plancheck.compare(p, _measured([0.5 * rank] * ranks), ranks)
    by_name = {f.name: f for f in check.figures}
    assert abs(by_name["RAM per rank (peak RSS)"].predicted - rank) < 1e-9
    assert abs(by_name["RAM of this node's ranks (their peaks summed)"].measured - 0.5 * rank * ranks) < 1e-6
    assert (
        by_name["seconds per optimizer step"].predicted == p.time.step_s
        and not by_name["seconds per optimizer step"].judged
    )
    assert check.warnings == [] and "| RAM per rank (peak RSS) |" in check.table()
    assert "GPU memory per rank (max reserved)" not in by_name  # the CPU accelerator has none


def test_a_peak_over_the_margin_is_a_warning_and_a_slow_step_is_not(tiny_model_dir):
    cfg, p = _plan(tiny_model_dir)
    ranks = cfg.hardware.gpus_per_node
    per_rank = next(f for f in plancheck.compare(p, _measured([0.1] * ranks), ranks).figures).predicted
    over = plancheck.compare(p, _measured([per_rank * 1.2, per_rank * 0.5], step_s=1e6), ranks)
    assert len(over.warnings) == 1 and over.warnings[0].startswith("RAM per rank (peak RSS): measured")
    assert "20% above" in over.warnings[0] and "**over by 20%**" in over.table()
    within = plancheck.compare(p, _measured([per_rank * 1.09] * ranks), ranks)
    assert not any(f.over for f in within.figures) and within.warnings == []  # 9% over: inside the margin
