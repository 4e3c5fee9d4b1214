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

RULES = ((0.0, 0.02), (0.005, 0.02), (0.01, 0.02), (0.01, 0.05), (0.005, 0.05))  # (margin, max drop)


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
        pairs = list(itertools.permutations([f"seed{s}" for s in range(args.seeds)], 2))
        print(f"{len(rows)} val images of {len(set(rows.patient_ids.tolist()))} patients")
        rules = [GateRule(margin=m, max_drop=d) for m, d in RULES]
        claims = dict.fromkeys(RULES, 0)
        for new, old in pairs:
            comparisons = {}
            for rule in rules:  # the bootstrap draws depend only on the seed: one comparison serves every rule
                key = (rule.max_drop,)
                if key not in comparisons:
                    comparisons[key] = compare(labels, probs[new], probs[old], rows.patient_ids, rule)
                comparison = comparisons[key]
                verdict = decide(comparison, rule)
                regressions = [f for f, d in comparison.findings.items() if d.regression]
                claims[(rule.margin, rule.max_drop)] += verdict.promoted or bool(regressions)
            c = comparisons[(rules[0].max_drop,)]
            worst = min((d.upper, f) for f, d in c.findings.items() if d.upper is not None)
            print(
                f"{new} vs {old}: gain {c.mean_gain:+.4f}, lower bound {c.mean_gain_lower:+.4f}, "
                f"{sum(d.compared for d in c.findings.values())} findings compared, "
                f"lowest finding upper bound {worst[0]:+.4f} ({worst[1]})"
            )
        for rule in rules:
            better = decide(compare(labels, probs["seed0"], probs["one-step"], rows.patient_ids, rule), rule)
            n = claims[(rule.margin, rule.max_drop)]
            print(
                f"margin {rule.margin:.3f}, max drop {rule.max_drop:.3f}: equal models called different in {n} of "
                f"{len(pairs)} ordered pairs ({n / len(pairs):.0%}); seed0 vs one-step "
                f"{'promoted' if better.promoted else 'NOT promoted'}"
            )
        print(f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
