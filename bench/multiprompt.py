"""R prompt-tuning jobs one by one vs. as one multi-prompt group, in the same process.

    python bench/multiprompt.py [--jobs 4] [--steps 5] [--model smollm2-135m] [--device cpu]

Prints one JSON report and a table: wall time and training sequences/s of each
way, and the ratio. Dev evaluation is switched off (eval_every > steps) so the
numbers are training throughput. A first part of issue 5's benchmark; the GPU
mode (T5-Large architecture, random weights) and the PEFT comparison are still
to come.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch

    from engine.backbone import Backbone
    from engine.data import TaskData
    from engine.tuning import Job, prompt_tune_group
    from engine.prompt import initial_prompt
    from engine.tuning import TuningConfig, prompt_tune

    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    backbone = Backbone.load(args.model, device=args.device, max_input_length=64, max_output_length=8)
    data = TaskData(REPO / "presets" / "demo-data")
    tasks = data.load_setting("demo").target
    jobs = []
    for r in range(args.jobs):
        task = tasks[r % len(tasks)]
        split = data.load_split(task, 16, 13)
        cfg = TuningConfig(learning_rate=0.3, steps=args.steps, batch_size=args.batch, eval_every=args.steps + 1)
        init = initial_prompt(backbone, length=args.prompt_length, method="vocab", seed=r)
        jobs.append(Job(init, split.train, split.dev, data.task_info(task), cfg, seed=r))

    sequences = args.jobs * args.steps * args.batch
    t = time.perf_counter()
    for job in jobs:
        # eval_every > steps: only the final evaluation runs, as in the group
        prompt_tune(backbone, job.init_prompt, job.train, job.dev, job.task, job.cfg, seed=job.seed)
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    prompt_tune_group(backbone, jobs)
    grouped = time.perf_counter() - t
    report = {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
              "model": args.model, "jobs": args.jobs, "steps": args.steps, "batch": args.batch,
              "threads": torch.get_num_threads(),
              "sequential_s": round(sequential, 2), "grouped_s": round(grouped, 2),
              "sequential_seq_per_s": round(sequences / sequential, 1),
              "grouped_seq_per_s": round(sequences / grouped, 1),
              "speedup": round(sequential / grouped, 2)}
    print(json.dumps(report))
    for key, value in report.items():
        print(f"{key:22s} {value}")


if __name__ == "__main__":
    main()
