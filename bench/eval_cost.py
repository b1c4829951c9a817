"""What the authors' decoding costs against rank classification, on the demo's evaluation.

    python bench/eval_cost.py              # the demo preset's model (smollm2-135m) and its three targets
    python bench/eval_cost.py --tiny       # a tiny random Llama: proves the script works, in seconds

The paper presets predict by generation (beam search with 4 beams, repetition penalty 2.5, early
stopping, up to 127 new tokens), as the authors' code did; the demo and class_to_class_cpu keep rank
classification. This times, in one process and side by side, one dev evaluation (and with --with-test one test
evaluation) of a multi-prompt group (one prompt per demo target x split, as the demo's groups hold)
with each way of predicting: rank classification, greedy generation, and the authors' beam search
(with the demo's max_new_tokens cap and with theirs). Prints a table and the ratios to rank
classification; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.compute.backbone import Backbone  # noqa: E402
from engine.experiment.config import load_preset  # noqa: E402
from engine.compute.prompt import initial_prompt  # noqa: E402
from engine.experiment.plan import make_plan  # noqa: E402
from engine.compute.tuning import EvalItem, TuningConfig, evaluate_many  # noqa: E402

MODES = {  # name: TuningConfig fields
    "rank": dict(prediction="rank"),
    "greedy, 32 tokens": dict(prediction="generate", max_new_tokens=32),
    "beam 4, 32 tokens": dict(prediction="generate", max_new_tokens=32, num_beams=4, repetition_penalty=2.5,
                              early_stopping=True),
    "beam 4, 127 tokens (authors)": dict(prediction="generate", max_new_tokens=127, num_beams=4,
                                         repetition_penalty=2.5, early_stopping=True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of the demo's model")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--with-test", action="store_true", help="time the test evaluation too (slow with beams)")
    args = parser.parse_args()
    torch.manual_seed(0)
    preset, _ = load_preset("demo")
    plan = make_plan(preset)
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        import tempfile

        from conftest import build_tiny_model  # the test suite's tiny models

        model_dir = build_tiny_model("llama", Path(tempfile.mkdtemp()) / "tiny")
    else:
        model_dir = preset.model.name
    backbone = Backbone.load(str(model_dir), max_input_length=preset.model.max_input_length,
                             max_output_length=preset.model.max_output_length)
    from engine.experiment.data import TaskData

    data = TaskData(preset.data.dir)
    dev, test = [], []
    for task in plan.targets:
        info = data.task_info(task)
        for seed in plan.seeds:
            split = data.load_split(task, preset.data.k, seed)
            prompt = initial_prompt(backbone, length=preset.prompt.length, method="task_name", task_names=[task],
                                    seed=seed)
            dev.append((prompt, split.dev, info))
            test.append((prompt, split.test[: preset.downstream.max_test_examples], info))
    warm = TuningConfig(learning_rate=0.3, steps=1, prediction="rank", placement=preset.prompt.placement)
    evaluate_many(backbone, [EvalItem(p, examples[:4], info, warm) for p, examples, info in dev])  # warm-up, untimed
    rows = []
    for name, fields in MODES.items():
        cfg = TuningConfig(learning_rate=0.3, steps=1, eval_batch_size=preset.downstream.eval_batch_size,
                           placement=preset.prompt.placement, **fields)
        timings = {}
        for split_name, items in (("dev", dev), ("test", test))[: 2 if args.with_test else 1]:
            started = time.perf_counter()
            evaluate_many(backbone, [EvalItem(p, examples, info, cfg) for p, examples, info in items])
            timings[split_name] = time.perf_counter() - started
        rows.append({"mode": name, "examples": {"dev": sum(len(e) for _, e, _ in dev),
                                                 "test": sum(len(e) for _, e, _ in test)}, "seconds": timings})
        print(f"  {name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), flush=True)
    base = rows[0]["seconds"]
    print(f"model {backbone.name}, {len(dev)} prompts in one group, torch threads {torch.get_num_threads()}")
    print(f"{'prediction':<30} " + " ".join(f"{k + ' s':>8} {k + ' x rank':>11}" for k in base))
    for row in rows:
        s = row["seconds"]
        row["ratio"] = {k: s[k] / base[k] for k in s}
        print(f"{row['mode']:<30} " + " ".join(f"{s[k]:8.2f} {row['ratio'][k]:11.1f}" for k in s))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": backbone.name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
