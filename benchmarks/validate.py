"""Validation speed on a generated 100k-record CoIN file with a few bad records.

    python benchmarks/validate.py --records 100000 --images 20000 \\
        --out benchmarks/results/validate-cpu-2core.json

Writes a train.json and a test.json of `--records` records each, referring to `--images` distinct PNG
files (CoIN tasks share images between questions), with `--bad` broken records of each kind spread over
the file. Times `validate_train_records` / `validate_eval_records`: opening every distinct image header,
and existence checks only. Checks that exactly the broken records are reported. Writes JSON with how it was
measured (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

from PIL import Image
from record import Measurement, write_results

from modalprompt.data.validation import ImageChecker, validate_eval_records, validate_train_records


def _make(root: Path, n: int, n_images: int, n_bad: int, seed: int) -> tuple[list, list, set[int], set[int]]:
    (root / "images").mkdir(parents=True)
    for i in range(n_images):
        Image.new("RGB", (16, 12), (i % 256, 0, 0)).save(root / "images" / f"{i}.png")
    rng = random.Random(seed)
    train = [
        {
            "id": f"t{i}",
            "image": f"images/{i % n_images}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "a thing"},
            ],
        }
        for i in range(n)
    ]
    test = [
        {
            "question_id": i,
            "image": f"images/{i % n_images}.png",
            "text": "What is shown?",
            "answer": "a thing",
        }
        for i in range(n)
    ]
    bad_train, bad_test = set(rng.sample(range(n), 3 * n_bad)), set(rng.sample(range(n), 3 * n_bad))
    for k, i in enumerate(sorted(bad_train)):
        [
            lambda r: r["conversations"][1].update(value=""),
            lambda r: r.update(image="images/missing.png"),
            lambda r: r.pop("conversations"),
        ][k % 3](train[i])
    for k, i in enumerate(sorted(bad_test)):
        [
            lambda r: r.update(answer=""),
            lambda r: r.pop("text"),
            lambda r, i=i: r.update(question_id=i - 1 if i else 1),
        ][k % 3](test[i])
    return train, test, bad_train, bad_test


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--bad", type=int, default=5, help="broken records of each kind")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with Measurement() as measured, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, test, bad_train, bad_test = _make(root, args.records, args.images, args.bad, seed=0)
        (root / "train.json").write_text(json.dumps(train))
        (root / "test.json").write_text(json.dumps(test))
        rows = []
        for open_images in (True, False):
            for kind, path, validate in (
                ("train", "train.json", validate_train_records),
                ("test", "test.json", validate_eval_records),
            ):
                start = time.perf_counter()
                records = json.loads((root / path).read_text())
                report = validate(records, path, ImageChecker(root, open_images=open_images))
                seconds = time.perf_counter() - start
                expected = bad_train if kind == "train" else bad_test  # a duplicate flags the later record
                assert report.bad_indices == expected, "validation missed or invented bad records"
                rows.append(
                    {
                        "file": kind,
                        "open_images": open_images,
                        "records": len(records),
                        "bad_records": len(report.bad_indices),
                        "seconds": seconds,
                        "records_per_s": len(records) / seconds,
                    }
                )
    print(f"{args.records:,} records, {args.images:,} distinct images, {platform.machine()}")
    print(f"{'file':<6} {'image check':<12} {'bad':>4} {'seconds':>8} {'records/s':>10}")
    for r in rows:
        check = "open header" if r["open_images"] else "exists"
        print(
            f"{r['file']:<6} {check:<12} {r['bad_records']:>4} {r['seconds']:>8.2f} {r['records_per_s']:>10,.0f}"
        )
    if args.out:
        report = measured.record(None if argv is None else [__file__, *argv])
        write_results(args.out, report | {"records": args.records, "images": args.images, "runs": rows})


if __name__ == "__main__":
    main()
