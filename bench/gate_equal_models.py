"""The gate on real models: pairs of equal quality (same recipe, other seed) and a clearly better one.

Trains ``--seeds`` small CNNs that differ only in their seed on one synthetic archive (most patients in
validation, so that findings have 10+ positive patients to compare on), plus one trained for a single
step, then runs the gate's paired patient bootstrap (:mod:`cxr.learn.compare`) on every pair of equal
models (both directions) and on the better-vs-barely-trained pair. A good gate claims a difference
between equal models in about 5 % of pairs at its 0.95 level and promotes the clearly better one.

    .venv/bin/python bench/gate_equal_models.py                 # 5 seeds: 20 ordered equal pairs
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest, write_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.learn.compare import compare, decide
from cxr.learn.config import TrainConfig
from cxr.learn.gate_rule import GateRule
from cxr.learn.inference import load_model, predict_rows, shard_store, single_process
from cxr.learn.shards import split_rows
from cxr.learn.train import main as train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2400)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(SynthConfig(out=str(root / "src"), n_images=args.images, size=64, seed=21))
        ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(32,), test_share=0.05, val_share=0.5))
        version = open_version(str(root / "ds"))
        write_manifest(build_manifest(version, ManifestConfig("weighted")), str(root / "m"))

        def trained(name: str, seed: int, max_steps: int | None = None) -> str:
            out = root / name
            config = TrainConfig(
                manifest=str(root / "m"),
                output_dir=str(out),
                model="small",
                epochs=args.epochs,
                batch_size=32,
                seed=seed,
                tracking=False,
                max_steps=max_steps,
            )
            train(config)
            return str(out / "model.pt")

        models = {f"seed{s}": trained(f"seed{s}", s) for s in range(args.seeds)}
        models["one-step"] = trained("one-step", 99, max_steps=1)
        info = single_process("cpu")
        rows = split_rows(version.metadata(), "val", expand_repeats=False)
        probs = {}
        for name, url in models.items():
            model, bundle = load_model(url)
            probs[name], labels = predict_rows(model, shard_store(version, bundle), rows, bundle.image_size, info)
        rule = GateRule()
        claims = 0
        pairs = list(itertools.permutations([f"seed{s}" for s in range(args.seeds)], 2))
        print(f"{len(rows)} val images of {len(set(rows.patient_ids.tolist()))} patients")
        for new, old in pairs:
            comparison = compare(labels, probs[new], probs[old], rows.patient_ids, rule)
            verdict = decide(comparison, rule)
            regressions = [f for f, d in comparison.findings.items() if d.regression]
            claimed = verdict.promoted or bool(regressions)
            claims += claimed
            print(
                f"{new} vs {old}: gain {comparison.mean_gain:+.4f}, lower bound {comparison.mean_gain_lower:+.4f}, "
                f"{sum(d.compared for d in comparison.findings.values())} findings compared, "
                f"{'promoted' if verdict.promoted else 'not promoted'}, regressions: {regressions or 'none'}"
            )
        better = compare(labels, probs["seed0"], probs["one-step"], rows.patient_ids, rule)
        verdict = decide(better, rule)
        print(
            f"seed0 vs one-step: gain {better.mean_gain:+.4f}, lower bound {better.mean_gain_lower:+.4f}: "
            f"{'promoted' if verdict.promoted else 'NOT promoted'}"
        )
        print(
            f"equal models: a difference claimed in {claims} of {len(pairs)} ordered pairs "
            f"({claims / len(pairs):.0%}; level {rule.level}); {time.perf_counter() - started:.0f} s in all"
        )


if __name__ == "__main__":
    main()
