"""A run's metric log: per-step metrics written to `metrics.jsonl` and TensorBoard, and read back."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

METRICS_FILE = 'metrics.jsonl'  # in a run's workdir: one JSON object per logged step


class MetricWriter:
  """Per-step metrics to `metrics.jsonl` (one object per line) and to TensorBoard event files."""

  def __init__(self, workdir: str, enabled: bool = True):
    """`enabled=False` (every process of a multi-host run but the first) writes nothing."""
    from tensorboardX import SummaryWriter  # imported here: only training writes events
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = enabled
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard')) if enabled else None

  def truncate_after(self, step: int) -> None:
    """Drops lines of steps after `step`: a resumed run re-logs them."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = '') -> None:
    if not self.enabled:
      return
    scalars = {f'{prefix}{k}': float(v) for k, v in metrics.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> tuple[list[dict], list[dict]]:
  """(training records, evaluation records) of a run; evaluation keys start with 'eval/'."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no {METRICS_FILE} (is {workdir} a training workdir?)')
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r for r in records if 'loss' in r]
  evals = [r for r in records if any(k.startswith('eval/') for k in r)]
  return train, evals
