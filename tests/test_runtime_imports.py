"""What runs on a robot imports numpy, never JAX, Flax, Optax or torch: checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import rtchunk

HEAVY = ("jax", "flax", "optax", "torch")

SCRIPT = f"""
import json, sys
import rtchunk.runtime, rtchunk.runtime.telemetry, rtchunk.methods, rtchunk.delays, rtchunk.execution
from rtchunk.runtime import Runtime, RuntimeConfig, SimulatedClock, MonotonicClock, Paper
loaded_at_import = sorted(m for m in {HEAVY!r} if m in sys.modules)
from rtchunk.runtime import flow_policy_fn, FlowChunkPolicy
import rtchunk.policy_adapter
print(json.dumps({{
    "at_import": loaded_at_import,
    "lazy_is_the_adapter": flow_policy_fn is rtchunk.policy_adapter.flow_policy_fn
                           and FlowChunkPolicy is rtchunk.policy_adapter.FlowChunkPolicy,
}}))
"""


def test_runtime_imports_no_jax_flax_optax_or_torch():
    env = {**os.environ, "PYTHONPATH": str(Path(rtchunk.__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"at_import": [], "lazy_is_the_adapter": True}
