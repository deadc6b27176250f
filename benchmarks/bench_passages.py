"""Passages under edits, and the cost of resuming a read.

    python -m benchmarks.bench_passages                      # stability and sizes, old splitter vs new
    python -m benchmarks.bench_passages --edits 100 --chunk-size 256
    python -m benchmarks.bench_passages resume --size-mb 1000  # seconds to reach a resume offset, per GB

Stability: a ~100-page document (prose generated from a fixed seed: sentences of Zipf-distributed words,
paragraphs of 1-10 sentences, numbered headings, bulleted lists), and a variant whose paragraphs run
longer than a passage. For each of `--edits` seeded trials one paragraph is replaced by another (edit),
one is inserted, or one is deleted; both versions are split, and a passage of the original counts as
changed when no passage of the new version has its text and its boundaries (shifted by the edit's change
of length when after it). Reported: the share of passages changed, and how many of them lie wholly before
or wholly after the edited paragraph (they would ideally never change). The old splitter is the one of
`--old-rev` (git show REV:shared/ingest/splitter.py), the last one that cut greedily.

Resume: a JSONL and a text file of `--size-mb` each are generated, plain and gzip (and the JSONL in
UTF-16), read once through read_records keeping the positions past 25/50/75% of the content and near its
end, then resumed from each with a fresh stream opened as a stager would (at `position.open_at`): the
time to load the ids seen before (SeenIds.load) and to reach the first item after the position is what a
resumed delivery pays before it makes progress. Positions are taken every 100 items. Takes about 10
minutes at the default size on 2 cores (most of it the full reads that take the positions).
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.domain.options import JobOptions  # noqa: E402
from shared.ingest import ReadPosition, SeenIds, estimate_tokens, read_records  # noqa: E402
from shared.ingest.splitter import split_passages  # noqa: E402

NAME = "passages"
#: The last commit whose splitter cut greedily at the last break before the limit.
OLD_REV = "b019c69"
WORDS_PER_PAGE = 500

# -- realistic prose ------------------------------------------------------------------------------

_SYLLABLES = ["ta", "ro", "men", "ka", "li", "ver", "son", "di", "al", "tion", "ex", "pre", "com", "ing", "er",
              "an", "st", "ble", "ou", "ght", "re", "in", "de", "con", "ly", "ment", "ar", "or", "ic", "at"]
_FUNCTION_WORDS = ["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be",
                   "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
                   "an", "they", "you", "were", "her", "she", "there", "one", "all", "we", "their", "can"]


class Prose:
    """Deterministic English-like prose: 45% function words, the rest from a Zipf-ranked vocabulary."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < 3000:
            words.add("".join(self._rng.choice(_SYLLABLES) for _ in range(self._rng.choice([1, 2, 2, 3, 3, 4]))))
        self._vocabulary = sorted(words)
        self._rng.shuffle(self._vocabulary)
        self._weights = [1 / (rank + 1) for rank in range(len(self._vocabulary))]
        self._section = 0

    def word(self) -> str:
        if self._rng.random() < 0.45:
            return self._rng.choice(_FUNCTION_WORDS)
        return self._rng.choices(self._vocabulary, self._weights)[0]

    def sentence(self) -> str:
        rng = self._rng
        words = [self.word() for _ in range(max(3, int(rng.gauss(17, 7))))]
        for index in range(2, len(words) - 2):
            if rng.random() < 0.06:
                words[index] += ","
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), str(rng.randint(2, 2024)))
        return " ".join(words).capitalize() + rng.choice(".........?!")

    def paragraph(self, sentences: float) -> str:
        rng = self._rng
        kind = rng.random()
        if kind < 0.04:
            self._section += 1
            return f"{self._section}. " + " ".join(self.word() for _ in range(rng.randint(2, 6))).title()
        if kind < 0.08:
            return "\n".join("- " + self.sentence() for _ in range(rng.randint(2, 6)))
        return " ".join(self.sentence() for _ in range(max(1, int(rng.gauss(sentences, sentences / 2)))))

    def paragraphs(self, pages: float, sentences: float = 5) -> list[str]:
        out: list[str] = []
        words = 0
        while words < pages * WORDS_PER_PAGE:
            out.append(self.paragraph(sentences))
            words += out[-1].count(" ") + 1
        return out


def document_paragraphs(pages: float = 100, sentences: float = 5, seed: int = 7) -> list[str]:
    """A document of about `pages` pages, as its paragraphs (joined by blank lines)."""
    return Prose(seed).paragraphs(pages, sentences)


# -- splitters ------------------------------------------------------------------------------------

Split = Callable[[str], list[tuple[str, int, int]]]


def new_splitter(chunk_size: int, overlap: int) -> Split:
    def split(document: str) -> list[tuple[str, int, int]]:
        return [(p.text, p.start, p.end) for p in split_passages([document], max_tokens=chunk_size, overlap=overlap)]
    return split


def old_splitter(rev: str, chunk_size: int, overlap: int) -> Split:
    source = subprocess.run(["git", "show", f"{rev}:shared/ingest/splitter.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("old_splitter")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:shared/ingest/splitter.py", "exec"), module.__dict__)  # noqa: S102 - our own file

    def split(document: str) -> list[tuple[str, int, int]]:
        return [(p.text, p.start, p.end) for p in module.split_passages([document], max_tokens=chunk_size, overlap=overlap)]
    return split


# -- stability ------------------------------------------------------------------------------------


def edited(paragraphs: list[str], kind: str, rng: random.Random, spare: list[str]) -> list[str]:
    """The document with one paragraph replaced, inserted or deleted (never the first or last)."""
    index = rng.randrange(1, len(paragraphs) - 1)
    if kind == "edit":
        return paragraphs[:index] + [rng.choice(spare)] + paragraphs[index + 1:]
    if kind == "insert":
        return paragraphs[:index] + [rng.choice(spare)] + paragraphs[index:]
    return paragraphs[:index] + paragraphs[index + 1:]


def changed_region(old: str, new: str) -> tuple[int, int, int]:
    """(start, end in old, shift): old[:start] and old[end:] are kept; old[end:] moves by shift."""
    limit = min(len(old), len(new))
    start = 0
    while start < limit and old[start] == new[start]:
        start += 1
    suffix = 0
    while suffix < limit - start and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    return start, len(old) - suffix, len(new) - len(old)


def compare(old_passages: list[tuple[str, int, int]], new_passages: list[tuple[str, int, int]],
            region: tuple[int, int, int]) -> tuple[int, int, int]:
    """(changed, of them wholly before the edit, wholly after it) among the old passages."""
    start, end, shift = region
    kept = set(new_passages)
    changed = before = after = 0
    for text, first, last in old_passages:
        if last <= start:
            key = (text, first, last)
        elif first >= end:
            key = (text, first + shift, last + shift)
        else:
            changed += 1  # it holds some of the edit
            continue
        if key not in kept:
            changed += 1
            if last <= start:
                before += 1
            else:
                after += 1
    return changed, before, after


def sizes(passages: list[tuple[str, int, int]]) -> dict[str, float]:
    tokens = sorted(estimate_tokens(text) for text, _, _ in passages)
    def quantile(share: float) -> int:
        return tokens[round(share * (len(tokens) - 1))]
    return {"passages": len(tokens), "mean": statistics.fmean(tokens), "p10": quantile(0.1),
            "p50": quantile(0.5), "p90": quantile(0.9)}


def stability(split: Split, paragraphs: list[str], spare: list[str], edits: int, seed: int = 1) -> dict[str, tuple]:
    """Per kind of edit: (mean share of passages changed, mean passages changed before, after)."""
    original = "\n\n".join(paragraphs)
    base = split(original)
    rng = random.Random(seed)
    out = {}
    for kind in ("edit", "insert", "delete"):
        shares, befores, afters = [], [], []
        for _ in range(edits):
            document = "\n\n".join(edited(paragraphs, kind, rng, spare))
            changed, before, after = compare(base, split(document), changed_region(original, document))
            shares.append(changed / len(base))
            befores.append(before)
            afters.append(after)
        out[kind] = (statistics.fmean(shares), statistics.fmean(befores), statistics.fmean(afters))
    return out


def run_stability(args: argparse.Namespace) -> None:
    print(f"chunk_size {args.chunk_size}, chunk_overlap {args.overlap}, {args.edits} edits of each kind, "
          f"old splitter from {args.old_rev}\n")
    splitters = {"old": old_splitter(args.old_rev, args.chunk_size, args.overlap),
                 "new": new_splitter(args.chunk_size, args.overlap)}
    for label, sentences in (("prose (paragraphs ~5 sentences)", 5), ("long paragraphs (~30 sentences)", 30)):
        paragraphs = document_paragraphs(args.pages, sentences)
        spare = Prose(99).paragraphs(5, sentences)
        document = "\n\n".join(paragraphs)
        print(f"{label}: {len(paragraphs)} paragraphs, {len(document)} characters, "
              f"{estimate_tokens(document)} tokens")
        print(f"  {'splitter':8} {'passages':>8} {'mean':>6} {'p10':>5} {'p50':>5} {'p90':>5}   "
              f"{'changed: edit / insert / delete':34}  outside the edited paragraph (before+after)")
        for name, split in splitters.items():
            size = sizes(split(document))
            result = stability(split, paragraphs, spare, args.edits)
            shares = " / ".join(f"{result[kind][0]:6.2%}" for kind in ("edit", "insert", "delete"))
            outside = " / ".join(f"{result[kind][1]:.2f}+{result[kind][2]:.2f}" for kind in ("edit", "insert", "delete"))
            print(f"  {name:8} {size['passages']:8} {size['mean']:6.1f} {size['p10']:5} {size['p50']:5} "
                  f"{size['p90']:5}   {shares:34}  {outside}")
        print()


# -- resume cost ----------------------------------------------------------------------------------


class _Download:
    """Only read(n), like a GCS download stream."""

    def __init__(self, raw):
        self._raw = raw
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.read_bytes += len(data)
        return data


def _generate(directory: Path, size: int) -> dict[str, Path]:
    prose = Prose(3)
    pool = prose.paragraphs(300)
    rng = random.Random(4)
    files = {"input.txt": directory / "input.txt", "input.jsonl": directory / "input.jsonl"}
    with open(files["input.txt"], "w", encoding="utf-8", newline="\n") as out:
        written = 0
        while written < size:
            block = "\n\n".join(rng.sample(pool, len(pool))) + "\n\n"
            out.write(block)
            written += len(block)
    with open(files["input.jsonl"], "w", encoding="utf-8", newline="\n") as out:
        written = index = 0
        while written < size:
            line = f'{{"id": "doc-{index}", "text": "{rng.choice(pool)[:rng.randint(200, 1200)]}"}}\n'
            out.write(line)
            written += len(line)
            index += 1
    return files


def _variants(files: dict[str, Path], with_utf16: bool) -> Iterator[tuple[str, Path, str, int]]:
    """(label, path, object name, size of the content its positions count) of the inputs to resume."""
    for name, path in files.items():
        size = path.stat().st_size
        yield f"{name} plain", path, name, size
        gz = path.with_name(path.name + ".gz")
        with open(path, "rb") as source, gzip.open(gz, "wb", compresslevel=6) as target:
            while block := source.read(1 << 22):
                target.write(block)
        yield f"{name} gzip", gz, name, size
    if with_utf16:
        path = files["input.jsonl"]
        utf16 = path.with_name("input-utf16.jsonl")
        with open(path, encoding="utf-8") as source, open(utf16, "wb") as target:
            target.write(codecs.BOM_UTF16_LE)
            while block := source.read(1 << 20):
                target.write(block.encode("utf-16-le"))
        yield "input.jsonl UTF-16", utf16, "input.jsonl", path.stat().st_size  # lines are counted in UTF-8


def _positions(path: Path, name: str, options: JobOptions, content_size: int) -> list[tuple[ReadPosition, bytes, int]]:
    """The first positions past 25, 50 and 75% of the content and the last one (taken every 100 items),
    each with the ids dump and the item's number."""
    kept, marks, last = [], [content_size * quarter // 4 for quarter in (1, 2, 3)], None
    with open(path, "rb") as raw:
        reader = read_records(_Download(raw), name=name, content_type=None, options=options)
        for index, _ in enumerate(reader, 1):
            if index % 100:
                continue
            position = reader.position()
            last = (position, reader.seen_ids.dump(), index)
            if marks and position.offset >= marks[0]:
                marks.pop(0)
                kept.append(last)
    return kept + [last]
def run_resume(args: argparse.Namespace) -> None:
    options = JobOptions()
    print(f"resume cost: inputs of {args.size_mb} MB, positions past 25/50/75% of the content and at its end; "
          "time from opening the stream to the first item after the position (or the end)\n")
    print(f"{'input':22} {'item':>9} {'content offset':>15} {'bytes read':>12} {'ids load s':>10} "
          f"{'to item s':>9} {'s per GB skipped':>17}")
    with tempfile.TemporaryDirectory(prefix="bench_passages_") as workdir:
        files = _generate(Path(workdir), args.size_mb * 1_000_000)
        for label, path, name, content_size in _variants(files, with_utf16=not args.no_utf16):
            for position, dump, index in _positions(path, name, options, content_size):
                started = time.perf_counter()
                seen = SeenIds.load(dump)
                loaded = time.perf_counter()
                with open(path, "rb") as raw:
                    raw.seek(position.open_at)  # the stager's ranged read
                    stream = _Download(raw)
                    reader = read_records(stream, name=name, content_type=None, options=options,
                                          resume=position, seen_ids=seen)
                    next(reader, None)
                    seconds = time.perf_counter() - loaded
                skipped = position.offset if position.raw_offset is None else 0
                per_gb = f"{seconds / (skipped / 1e9):.2f}" if skipped >= 1e7 else "-"
                print(f"{label:22} {index:9} {position.offset:15} {stream.read_bytes:12} {loaded - started:10.3f} "
                      f"{seconds:9.3f} {per_gb:>17}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=["stability", "resume"], default="stability")
    parser.add_argument("--pages", type=float, default=100, help="document size in pages of 500 words (100)")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--edits", type=int, default=40, help="trials per kind of edit (40)")
    parser.add_argument("--old-rev", default=OLD_REV, help=f"commit of the old splitter ({OLD_REV})")
    parser.add_argument("--size-mb", type=int, default=1000, help="resume: size of each input in MB (1000)")
    parser.add_argument("--no-utf16", action="store_true", help="resume: skip the UTF-16 JSONL input")
    args = parser.parse_args()
    if args.what == "resume":
        run_resume(args)
    else:
        run_stability(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
