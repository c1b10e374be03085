"""The zoo benchmark (issue 19, item 7): every step on every architecture, and latency.

Runs the steps of ``tests/zoo_steps.py`` (masks, compact, sparse, onnx, ptl, pte) on
every model of ``tests/zoo_models.py``, then times the 90 %-pruned model in the sparse
runtime against dense torch and dense ONNX Runtime (batch 1, one thread, median of interleaved runs after
warm-up, :func:`mobileprune.measure.latency.compare_latency`). Writes
``docs/benchmarks/zoo.json`` (one row per model, saved as soon as the model is done)
and ``docs/zoo.md`` (the table). Resumable: a model already in the JSON is skipped
unless ``--fresh``; ``--only NAME`` (repeatable) runs those models again.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/zoo.py            # resume
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/zoo.py --fresh    # all again
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/zoo.py --only tv_vit
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/zoo.py --latency  # re-time only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from zoo_models import BY_NAME, ZOO, missing  # noqa: E402
from zoo_steps import STEPS, _example, one_line, pruned  # noqa: E402

JSON_PATH = ROOT / "docs" / "benchmarks" / "zoo.json"
MD_PATH = ROOT / "docs" / "zoo.md"


def _onnxruntime(path: Path, arrays: list):
    """A one-thread ONNX Runtime call on the exported ``path`` with ``arrays`` bound, or
    None when the export or ONNX Runtime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if not path.exists():
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(sess.get_inputs(), arrays)}
    return lambda *_: sess.run(None, feed)


def latency(entry, work: Path) -> dict:
    """Sparse runtime vs dense torch and dense ONNX Runtime (the ``onnx`` step's export)
    on the 90 %-pruned model, batch 1, one thread: ``{"sparse_ms", "torch_ms", "ort_ms",
    "speedup"}`` (speedup over the fastest dense runtime) or ``{"error": reason}``."""
    from mobileprune import export_sparse, runtime
    from mobileprune.measure.latency import compare_latency

    model, inputs = pruned(entry)
    path = work / f"{entry.name}.latency.mps"
    try:
        export_sparse(model, _example(inputs), path)
        net = runtime.load(path, threads=1)
    except Exception as exc:  # noqa: BLE001 - the cell's reason
        return {"error": one_line(exc)}
    arrays = [x.numpy() for x in inputs]
    engines = {"sparse": lambda *_: net(*arrays), "torch": model}
    ort_call = _onnxruntime(work / f"{entry.name}.onnx", arrays)
    if ort_call is not None:
        engines["onnxruntime"] = ort_call
    res = compare_latency(engines, inputs, repeats=30, warmup=5, threads=1)
    s, t = res["sparse"]["median_ms"], res["torch"]["median_ms"]
    o = res["onnxruntime"]["median_ms"] if "onnxruntime" in res else None
    fastest = min(t, o) if o is not None else t
    return {"sparse_ms": s, "torch_ms": t, "ort_ms": o, "speedup": fastest / s, "detail": res}


def run_model(entry, work: Path) -> dict:
    """One row: ``{"model", "source", "note", "steps": {step: result}, "info": {...},
    "seconds": {...}, "latency": {...}}``."""
    row = {"model": entry.name, "source": entry.source, "note": entry.note,
           "steps": {}, "info": {}, "seconds": {}}
    why = missing(entry)
    if why:
        row["steps"] = dict.fromkeys(STEPS, f"skipped: {why}")
        return row
    for name, step in STEPS.items():
        info: dict = {}
        t0 = time.perf_counter()
        try:
            row["steps"][name] = step(entry, work, info)
        except Exception as exc:  # noqa: BLE001 - a step that raises is a cell too
            row["steps"][name] = f"step raised {one_line(exc)}"
        row["seconds"][name] = round(time.perf_counter() - t0, 2)
        row["info"][name] = info
        print(f"  {entry.name} {name}: {row['steps'][name]} ({row['seconds'][name]} s)", flush=True)
    row["latency"] = latency(entry, work)
    return row


def retime(row: dict, entry, work: Path) -> None:
    """``--latency``: the row's latency again (after the ``onnx`` step that ONNX Runtime
    reads), its step results kept."""
    STEPS["onnx"](entry, work, {})
    row["latency"] = latency(entry, work)
    print(f"  {entry.name} latency: {_latency_cell(row['latency'])}", flush=True)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _latency_cell(lat: dict | None) -> str:
    if not lat:
        return ""
    if "error" in lat:
        return _cell(lat["error"])
    ort = f"{lat['ort_ms']:.3g}" if lat.get("ort_ms") is not None else "-"
    return f"{lat['sparse_ms']:.3g} / {lat['torch_ms']:.3g} / {ort} ms ({lat['speedup']:.2f}x)"


def markdown(data: dict) -> str:
    """``docs/zoo.md``: the command, the machine, the date, then one row per model."""
    lines = ["# The zoo", "",
             "Every architecture of `tests/zoo_models.py` through every step of `tests/zoo_steps.py` "
             "(issue 19, item 7): each cell is `ok` or the reason the step fails on this run. "
             "Latency: 90 %-pruned model, sparse runtime / dense torch / dense ONNX Runtime "
             "(the `onnx` step's file), batch 1, one thread, median of 30 interleaved runs "
             "after 5 warm-up runs (speedup = the fastest dense runtime / sparse).", "",
             f"- command: `{data['command']}`",
             f"- machine: {data['machine']}",
             f"- date: {data['date']}", "",
             "| model | source | " + " | ".join(STEPS) + " | latency sparse / torch / ORT | note |",
             "|" + "---|" * (len(STEPS) + 4)]
    for entry in ZOO:
        row = data["rows"].get(entry.name)
        if row is None:
            continue
        cells = [_cell(row["steps"].get(s, "not run")) for s in STEPS]
        lines.append(f"| {entry.name} | {row['source']} | " + " | ".join(cells)
                     + f" | {_latency_cell(row.get('latency'))} | {_cell(row['note'])} |")
    dense = {n: r["info"].get("masks", {}).get("left_dense") for n, r in data["rows"].items()}
    lines += ["", "Weights (2-D or more) that `default: 0.9` leaves dense, and why:", ""]
    for name, d in dense.items():
        if d:
            lines.append(f"- {name}: " + "; ".join(f"`{p}` ({r})" for p, r in d.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fresh", action="store_true", help="run every model again")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help=f"run (again) only this model; one of: {', '.join(BY_NAME)}")
    ap.add_argument("--latency", action="store_true",
                    help="re-time only (every model of the JSON, or --only): the steps' results are kept")
    args = ap.parse_args(argv)
    unknown = [n for n in args.only if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(BY_NAME)}")
    torch.set_num_threads(1)
    data = {"rows": {}} if args.fresh or not JSON_PATH.exists() else json.loads(JSON_PATH.read_text())
    data.update(command="OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/zoo.py "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                        f"torch {torch.__version__}",
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.latency:
        todo = [BY_NAME[n] for n in args.only or [e.name for e in ZOO if e.name in data["rows"]]]
    else:
        todo = [BY_NAME[n] for n in args.only] if args.only else [e for e in ZOO if e.name not in data["rows"]]
    JSON_PATH.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for entry in todo:
            print(f"{entry.name}", flush=True)
            if args.latency and entry.name in data["rows"]:
                retime(data["rows"][entry.name], entry, Path(tmp))
            else:
                data["rows"][entry.name] = run_model(entry, Path(tmp))
            JSON_PATH.write_text(json.dumps(data, indent=1, default=str) + "\n")
            MD_PATH.write_text(markdown(data))
    MD_PATH.write_text(markdown(data))
    print(f"wrote {JSON_PATH.relative_to(ROOT)} and {MD_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
