"""The `vss` command line.

    vss demo                                   tiny model + generated data + the flow on cpu-demo
    vss tiny-model DIR                         write a random-weight tiny checkpoint (real layout)
    vss demo-data DIR --samples N              write N real samples (H.264 mp4, 16 kHz wav)
    vss validate PATH [--json]                 check a dataset, sample by sample
    vss config --profile P [KEY=VALUE ...]     print the resolved config and DeepSpeed JSON
    vss run --profile P [KEY=VALUE ...]        run the `vss` flow
    vss serve                                  serve the Prefect deployments

It lives beside the deployments (not in vss_core) because `run` and `serve` start Prefect, and
vss_core never imports prefect. Prefect is imported only by the commands that need it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import BaseModel

from vss_core import config
from vss_core.errors import VSSError

DEMO_MODEL = Path(".vss/demo/tiny-model")
DEMO_DATA = Path(".vss/demo/data")
DEMO_SAMPLES = 8


def _fields_help(model: type[BaseModel] = config.VSSConfig, prefix: str = "") -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += _fields_help(ann, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            lines.append(f"  {prefix}{name:<34} {field.description or ''} [default: {default}]")
    return lines


OVERRIDES_HELP = (
    "Overrides are KEY=VALUE with dotted keys, values read as YAML. Every key:\n" + "\n".join(_fields_help())
)


def _load(args: argparse.Namespace) -> config.VSSConfig:
    return config.load_config(args.profile, args.overrides)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from vss_core import model

    path = model.write_tiny_checkpoint(Path(args.dir), seed=args.seed)
    print(f"Tiny LongCat-Flash-Omni checkpoint written to {path}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from vss_core import demo

    paths = demo.write_demo_dataset(
        Path(args.dir), args.samples, seed=args.seed, seconds=args.seconds, overwrite=args.overwrite
    )
    print(f"{len(paths)} samples written to {args.dir}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from vss_core import data

    cfg = config.load_config(args.profile, [*args.overrides, f"data.root={args.path}"])
    report = data.validate_dataset(cfg.data)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(report.table())
        for warning in report.warnings:
            print(f"warning: {warning}")
    try:
        data.select_samples(report, cfg.data.on_invalid)
    except VSSError as exc:
        if not args.json:
            print(f"\n{exc}", file=sys.stderr)
        return 1
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(json.dumps({"config": cfg.model_dump(mode="json"), "deepspeed": config.deepspeed_config(cfg)}, indent=2))
    return 0


def _ensure_demo_assets() -> None:
    from vss_core import demo, model

    if not (DEMO_MODEL / "config.json").is_file():
        print(f"Writing the tiny model to {DEMO_MODEL} ...")
        model.write_tiny_checkpoint(DEMO_MODEL)
    if not DEMO_DATA.is_dir() or not any(DEMO_DATA.iterdir()):
        print(f"Writing {DEMO_SAMPLES} demo samples to {DEMO_DATA} ...")
        demo.write_demo_dataset(DEMO_DATA, DEMO_SAMPLES)


def _run_flow(profile: str, overrides: list[str]) -> int:
    from flows.vss import vss

    cfg = config.load_config(profile, overrides)  # fail fast, before Prefect starts
    parsed = dict((".".join(k), v) for k, v in map(config.parse_override, overrides))
    result = vss(profile=profile, overrides=parsed)
    print(f"\nvss run finished ({cfg.profile}): {result.run_dir}")
    width = max(len(s.stage) for s in result.stages)
    for s in result.stages:
        print(f"  {s.stage:<{width}}  {s.status:<8}  {s.detail}")
    print(f"\nAdapter: {result.adapter_dir}")
    if result.hub_url:
        print(f"Hub: {result.hub_url}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_flow(args.profile, args.overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    _ensure_demo_assets()
    return _run_flow("cpu-demo", args.overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import serve_deployments

    if not args.no_demo_assets:
        _ensure_demo_assets()
    serve_deployments()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vss",
        description="Fine-tune LongCat-Flash-Omni for video-speech-to-speech with LoRA under DeepSpeed ZeRO-3, "
        "orchestrated by Prefect.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Profiles: {', '.join(config.list_profiles())}.  `vss run --help` lists every config key.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser, default: str | None = None) -> None:
        p.add_argument("--profile", required=default is None, default=default,
                       help=f"profile name ({', '.join(config.list_profiles())}) or a YAML path")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. training.epochs=1")

    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default (CPU)", epilog=OVERRIDES_HELP,
                       formatter_class=raw)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the cpu-demo profile")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tiny-model", help="write a random-weight tiny checkpoint in the real layout")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("demo-data", help="write generated samples (in.mp4, in.wav, out.wav)")
    p.add_argument("dir")
    p.add_argument("--samples", type=int, default=DEMO_SAMPLES, help="number of samples (default 8)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each sample in seconds (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty directory")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("validate", help="validate a dataset and print the report; non-zero exit when it would fail")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    with_config(p, default="cpu-demo")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("config", help="print the resolved config and generated DeepSpeed JSON",
                       epilog=OVERRIDES_HELP, formatter_class=raw)
    with_config(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("run", help="run the vss flow", epilog=OVERRIDES_HELP, formatter_class=raw)
    with_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="serve the Prefect deployments vss/train-2xb200, vss/train-8xh100, vss/demo-cpu")
    p.add_argument("--no-demo-assets", action="store_true",
                   help="do not write the tiny model and demo data that vss/demo-cpu uses")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # vss's own messages at INFO; libraries (httpx, ...) only when they warn. Prefect configures its own loggers.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vss_core").setLevel(logging.INFO)
    try:
        return args.func(args)
    except VSSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
