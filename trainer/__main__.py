"""``python -m trainer --stage N --shards URL[,URL] --model PATH --out DIR [--max-steps N]``.

Single process on CPU as is; on GPU clusters the same command under ``accelerate launch
--config_file trainer/configs/accelerate_fsdp.yaml -m trainer ...`` (or accelerate_deepspeed.yaml).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from trainer.config import ConfigError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, required=True, help="stage number in the stages config (1-4)")
    p.add_argument("--shards", required=True,
                   help="comma-separated [KIND=]URL: shard version folders (index.json), dataset folders "
                        "(LATEST.json) or .tar files; KIND (image_caption, reasoning, ...) is inferred when left out")
    p.add_argument("--model", required=True, help="Qwen2.5-VL checkpoint folder (tiny local, MiMo-VL-7B-SFT, a stage's final/)")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, final/, metrics.json")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the stage's token budget)")
    p.add_argument("--config", default=None, help="stages YAML (default: trainer/configs/stages.yaml)")
    p.add_argument("--resume", default="auto", help="auto (newest checkpoint in --out), none, or a checkpoint folder")
    p.add_argument("--stop-at", type=int, default=None, help="end this run after this global step (resumable)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for decoding (0: in process)")
    p.add_argument("--cpu", action="store_true", help="force CPU even when an accelerator is present")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--attn-implementation", default=None, help="sdpa, eager, flash_attention_2, ...")
    p.add_argument("--log-every", type=int, default=1)
    # overrides of stage settings
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr", type=float, default=None)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--grad-accum-steps", type=int, default=None)
    p.add_argument("--token-budget", type=int, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--shuffle-buffer", type=int, default=None)
    p.add_argument("--max-pixels", type=int, default=None)
    return p.parse_args(argv)


OVERRIDES = ("seq_len", "lr", "min_lr", "micro_batch_size", "grad_accum_steps", "token_budget", "warmup_steps",
             "save_every", "seed", "shuffle_buffer", "max_pixels")


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.train import TrainArgs, train

    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = TrainArgs(
        stage=a.stage, shards=[s for s in a.shards.split(",") if s], model=a.model, out=a.out, max_steps=a.max_steps,
        config=a.config, overrides={k: getattr(a, k) for k in OVERRIDES}, resume=a.resume, stop_at=a.stop_at,
        num_workers=a.num_workers, cpu=a.cpu, dtype=a.dtype, attn_implementation=a.attn_implementation,
        log_every=a.log_every)
    try:
        result = train(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(json.dumps({"stage": result.stage, "steps": result.steps, "total_steps": result.total_steps,
                      "loss_first": result.losses[0] if result.losses else None,
                      "loss_last": result.losses[-1] if result.losses else None, "tokens": result.tokens,
                      "trainable": result.param_counts["all"]["trainable"], "final": result.final_dir,
                      "checkpoint": result.checkpoint, "metrics": result.metrics_path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
