"""Times one peer inference engine in its own interpreter, for ``benchmarks/engines.py``.

DeepSparse 1.8 needs ``onnx < 1.15`` and numpy 1.x, which the project's environment does
not have, so peers run in ``.venv-peers`` (``make peers``) as a child process that the
benchmark drives over stdin/stdout, one JSON object per line:

* ``{"cmd": "load", "engine": "deepsparse" | "openvino" | "openvino_f32", "onnx": PATH,
  "batch": N, "threads": T, "input": NPY}`` -> ``{"ok": true, "output": NPY, "info": ...}``
  (the engine's output on the input, written next to it, so the caller checks it);
* ``{"cmd": "time", "inner": K, "warm": W}`` -> ``{"ms": t}``: ``W`` untimed calls (default
  0), then the mean milliseconds of ``K`` calls, timed here with ``perf_counter`` exactly as
  the in-process engines are timed;
* ``{"cmd": "quit"}``.

Errors answer ``{"ok": false, "error": "..."}``. The process inherits the caller's CPU
affinity (``taskset``).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _deepsparse(onnx: str, batch: int, threads: int):
    import deepsparse
    import onnx as onnx_lib
    proto = onnx_lib.load(onnx)
    if proto.ir_version > 9:  # DeepSparse 1.8 reads IR version <= 9; the graph is the same
        proto.ir_version = 9
        onnx = onnx.replace(".onnx", ".ir9.onnx")
        onnx_lib.save(proto, onnx)
    engine = deepsparse.compile_model(onnx, batch_size=batch, num_cores=threads)
    return (lambda x: engine.run([x])[0]), f"deepsparse {deepsparse.__version__}"


def _openvino(onnx: str, batch: int, threads: int, f32: bool):
    import openvino as ov
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if f32:
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(core.read_model(onnx), "CPU", cfg)
    req = compiled.create_infer_request()
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")

    def run(x):
        req.infer({0: x})
        return req.get_output_tensor(0).data
    return run, f"openvino {ov.__version__.split('-')[0]} precision={precision}"


def _load(msg: dict):
    engine = msg["engine"]
    if engine == "deepsparse":
        return _deepsparse(msg["onnx"], msg["batch"], msg["threads"])
    if engine in ("openvino", "openvino_f32"):
        return _openvino(msg["onnx"], msg["batch"], msg["threads"], engine == "openvino_f32")
    raise ValueError(f"unknown engine {engine!r}")


def main() -> None:
    run = x = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "quit":
                break
            if msg["cmd"] == "load":
                run, info = _load(msg)
                x = np.ascontiguousarray(np.load(msg["input"]), dtype=np.float32)
                out = msg["input"].replace(".npy", f".{msg['engine']}.out.npy")
                np.save(out, np.asarray(run(x), dtype=np.float32))
                reply = {"ok": True, "output": out, "info": info}
            elif msg["cmd"] == "time":
                for _ in range(msg.get("warm", 0)):
                    run(x)
                t0 = time.perf_counter()
                for _ in range(msg["inner"]):
                    run(x)
                reply = {"ok": True, "ms": (time.perf_counter() - t0) * 1000 / msg["inner"]}
            else:
                raise ValueError(f"unknown command {msg['cmd']!r}")
        except Exception as e:  # reported to the driver, which records the engine as skipped
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
