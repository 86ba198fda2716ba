"""Scaling sweeps: the points of a sweep file, each a base config with overrides, run through the real trainer.

A sweep file (`configs/sweeps/NAME.py`) has `get_sweep(arg='')` returning a ConfigDict:

  base       a stage config file, optionally with ':VARIANT' ('configs/avclip.py')
  overrides  fields set in every point, nested like the config ({'eval_every': 10**9, 'data': {'eval_max_clips': 32}})
  grid       [(dotted field, [values]), ...]: every combination is a point
  points     [{dotted field: value}, ...]: more points, as listed
  isoflop    budgets: training FLOPs; for each budget, every grid/list point whose analytic training FLOPs
             are within `tolerance` (relative) of it. A point that does not set `total_steps` gets the steps
             that spend the budget; one that does is kept or dropped as it is. `min_steps` drops points
             too short to mean anything.

Each point trains in `WORKDIR/NAME`, NAME made from its overrides. `run` skips finished points, resumes
interrupted ones from their checkpoints (the trainer's own resume), records a failure with its error and goes on;
`WORKDIR/results.jsonl` and `results.csv` are rewritten after every point from the points' workdirs, so points run
elsewhere (`commands`) are collected the same way.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import shlex
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, TextIO

import jax
from ml_collections import ConfigDict

from synchformer_jax.errors import InputError
from synchformer_jax.train import input_pipeline, mfu, trainer
from synchformer_jax.train.config import model_config, validate
from synchformer_jax.train.metric_log import METRICS_FILE, read_metrics

log = logging.getLogger(__name__)

POINT_FILE = 'sweep_point.json'  # in a point's workdir: its overrides, status, error and wall time
RESULTS_JSONL, RESULTS_CSV = 'results.jsonl', 'results.csv'
STATUSES = ('pending', 'running', 'done', 'interrupted', 'failed')
_NAME_LIMIT = 120  # characters of a point's directory name before it is shortened with a digest


class SweepError(InputError):
  """An invalid sweep file or field; the message names it."""


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: dict[str, Any]  # dotted config field -> value, the sweep's common overrides excluded
  budget: float | None = None  # the isoFLOP budget (training FLOPs) the point was chosen for


def load_config_file(spec: str, function: str = 'get_config') -> ConfigDict:
  """`path[:arg]` → the file's `function(arg)`, as `config_flags` reads a config file."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise SweepError(f'{path}: no such config file')
  module_spec = importlib.util.spec_from_file_location(f'_sweep_config_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise SweepError(f'{path}: defines no {function}(arg)')
  return getattr(module, function)(arg)


def load_sweep(spec: str) -> ConfigDict:
  """A sweep file's ConfigDict, checked field by field."""
  sweep = load_config_file(spec, 'get_sweep')
  path = spec.partition(':')[0]
  known = {'base', 'overrides', 'grid', 'points', 'isoflop'}
  unknown = sorted(set(sweep) - known)
  if unknown:
    raise SweepError(f'{path}: unknown sweep field {unknown[0]!r} (expected {sorted(known)})')
  if not isinstance(sweep.get('base'), str) or not sweep.base:
    raise SweepError(f'{path}: sweep.base: expected a config file path, got {sweep.get("base")!r}')
  for i, entry in enumerate(sweep.get('grid', ())):
    if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and len(entry[1]) > 0):
      raise SweepError(f'{path}: sweep.grid[{i}]: expected (dotted field, [values...]), got {entry!r}')
  isoflop = sweep.get('isoflop')
  if isoflop is not None and isoflop.get('budgets'):
    if any(not b > 0 for b in isoflop.budgets):
      raise SweepError(f'{path}: sweep.isoflop.budgets: expected positive FLOP counts, got {list(isoflop.budgets)}')
    if not 0 < isoflop.get('tolerance', 0.1) < 1:
      raise SweepError(f'{path}: sweep.isoflop.tolerance: expected a fraction in (0, 1), got {isoflop.tolerance!r}')
  return sweep


def _format(value: Any) -> str:
  return f'{value:g}' if isinstance(value, float) else str(value)


def point_name(overrides: dict[str, Any], budget: float | None = None) -> str:
  """A directory name that says what the point is: 'C=1e+12_towers.dim=32_total_steps=120'."""
  parts = ([f'C={budget:.3g}'] if budget is not None else []) + [
      f'{key.removeprefix("model.")}={_format(value)}' for key, value in overrides.items()]
  name = re.sub(r'[^A-Za-z0-9=._+-]', '-', '_'.join(parts)) or 'base'
  if len(name) > _NAME_LIMIT:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:_NAME_LIMIT - 11]}-{digest}'
  return name


def _apply(config: ConfigDict, overrides: dict[str, Any], origin: str) -> None:
  """Sets dotted fields, each of which must already exist in the config (a typo is an error, not a new field)."""
  for key, value in overrides.items():
    node, parts = config, key.split('.')
    for i, part in enumerate(parts):
      if not isinstance(node, ConfigDict) or part not in node:
        raise SweepError(f'{origin}: cannot set config field {key!r}: the config has no {".".join(parts[:i + 1])!r}')
      node = node[part]
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError, TypeError) as e:
      raise SweepError(f'{origin}: cannot set config field {key!r} to {value!r}: {e}') from None


def common_overrides(sweep: ConfigDict) -> dict[str, Any]:
  """The sweep's `overrides`, flattened to dotted fields."""
  def flatten(node, prefix: str) -> dict[str, Any]:
    if isinstance(node, (ConfigDict, dict)):
      return {k: v for key, value in node.items() for k, v in flatten(value, f'{prefix}{key}.').items()}
    return {prefix[:-1]: node}
  return flatten(sweep.get('overrides') or {}, '')


def base_config(sweep: ConfigDict, overrides: dict[str, Any] | None = None, origin: str = '') -> ConfigDict:
  """The sweep's base config with its common overrides, then `overrides` (errors name `origin`)."""
  config = load_config_file(sweep.base)
  _apply(config, common_overrides(sweep), 'sweep.overrides')
  _apply(config, overrides or {}, origin)
  return config


def point_config(sweep: ConfigDict, point: Point) -> ConfigDict:
  return base_config(sweep, point.overrides, f'sweep point {point.name}')


@functools.lru_cache(maxsize=None)
def _parameter_counts(cfg) -> dict[str, int]:
  return trainer.parameter_counts(cfg)


def step_flops(config: ConfigDict) -> int:
  """Analytic FLOPs of one training step: 3× the forward of what trains; frozen towers once a step, unless
  they run once for precomputed features."""
  return mfu.train_step_flops(model_config(config), config.batch_size,
                              frozen_towers_run=not input_pipeline.uses_features(config))


def describe(config: ConfigDict) -> dict[str, Any]:
  """What a point is, analytically: parameters, training FLOPs (`step_flops` times the steps) and data seen."""
  cfg = model_config(config)
  per_step = step_flops(config)
  clips = config.total_steps * config.batch_size
  return {**_parameter_counts(cfg), 'step_flops': per_step, 'train_flops': per_step * config.total_steps,
          'steps': config.total_steps, 'batch_size': config.batch_size, 'clips_seen': clips,
          'segments_seen': clips * cfg.transformer.n_segments}


def _candidates(sweep: ConfigDict) -> list[dict[str, Any]]:
  grid = list(sweep.get('grid', ()))
  keys = [key for key, _ in grid]
  combos = [dict(zip(keys, values)) for values in itertools.product(*(values for _, values in grid))] if grid else []
  listed = [dict(p) for p in sweep.get('points', ())]
  return combos + listed or [{}]


def expand(sweep: ConfigDict) -> list[Point]:
  """The sweep's points, in order: the grid's combinations, then the listed points; with isoFLOP budgets,
  each budget's candidates that spend it within the tolerance."""
  candidates = _candidates(sweep)
  isoflop = sweep.get('isoflop')
  if isoflop is None or not isoflop.get('budgets'):
    points = [Point(point_name(c), c) for c in candidates]
  else:
    tolerance, min_steps = isoflop.get('tolerance', 0.1), isoflop.get('min_steps', 1)
    points = []
    for budget in isoflop.budgets:
      for candidate in candidates:
        per_step = step_flops(base_config(sweep, candidate, 'sweep candidate'))
        steps = candidate.get('total_steps', max(1, round(budget / per_step)))
        if steps >= min_steps and abs(steps * per_step - budget) <= tolerance * budget:
          overrides = {**candidate, 'total_steps': steps}
          points.append(Point(point_name(overrides, budget), overrides, float(budget)))
  names = [p.name for p in points]
  duplicated = sorted({n for n in names if names.count(n) > 1})
  if duplicated:
    raise SweepError(f'sweep: points {duplicated} are listed more than once')
  if not points:
    raise SweepError('sweep: no point: the isoFLOP budgets admit no candidate within the tolerance')
  return points


@contextlib.contextmanager
def atomic_file(path: str, newline: str | None = None) -> Iterator[TextIO]:
  """A text file that appears at `path` only once it is completely written (a crash leaves the old one)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w', newline=newline) as f:
    yield f
  os.replace(tmp, path)


def read_point(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, POINT_FILE)
  if not os.path.exists(path):
    return {'status': 'pending', 'wall_s': 0.0}
  with open(path) as f:
    return json.load(f)


def _record(directory: str, point: Point, **fields) -> dict[str, Any]:
  record = {**read_point(directory), 'name': point.name, 'overrides': point.overrides, 'budget': point.budget,
            **fields}
  with atomic_file(os.path.join(directory, POINT_FILE)) as f:
    json.dump(record, f, indent=1)
  return record


def run(sweep: ConfigDict, workdir: str, train: Callable[[ConfigDict, str], dict[str, Any]] | None = None,
        only: Iterable[str] | None = None) -> list[dict[str, Any]]:
  """Runs every unfinished point (or those named in `only`), in order; returns the results table.

  A point that raises is recorded as failed, with its error, and the sweep goes on (a re-run tries it again, from
  its last checkpoint). A point that stops early (a preemption notice) is recorded as interrupted and the sweep
  stops, to be resumed by running it again; a notice during a point's final evaluation or export lets that point
  finish and then stops the sweep.
  """
  if train is None:
    from synchformer_jax.train.loop import train  # the trainer proper; tests may pass their own
  points = expand(sweep)
  wanted = set(only) if only else None
  unknown = sorted(wanted - {p.name for p in points}) if wanted else []
  if unknown:
    raise SweepError(f'sweep: no point named {unknown[0]!r}')
  configs = {point.name: point_config(sweep, point) for point in points}
  for config in configs.values():  # every config valid before any point runs (a typo fails the sweep at once)
    validate(config, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  rows = None
  for point in points:
    if wanted is not None and point.name not in wanted:
      continue
    directory = os.path.join(workdir, point.name)
    os.makedirs(directory, exist_ok=True)
    previous = read_point(directory)
    if previous['status'] == 'done':
      continue
    config = configs[point.name]
    log.info('sweep point %s (%s)', point.name, previous['status'])
    _record(directory, point, status='running', error=None)
    start = time.perf_counter()
    try:
      result = train(config, directory)
    except Exception as e:  # noqa: BLE001 -- one point's failure must not end the sweep
      with open(os.path.join(directory, 'error.log'), 'w') as f:
        f.write(traceback.format_exc())
      _record(directory, point, status='failed', error=f'{type(e).__name__}: {e}',
              wall_s=previous['wall_s'] + time.perf_counter() - start)
      log.error('sweep point %s failed: %s', point.name, e)
    else:
      finished = result['step'] >= config.total_steps
      _record(directory, point, status='done' if finished else 'interrupted',
              wall_s=previous['wall_s'] + time.perf_counter() - start)
      if not finished or result.get('preempted'):
        log.warning('sweep point %s: preempted at step %d, the sweep stops here', point.name, result['step'])
        return write_results(sweep, workdir)
    rows = write_results(sweep, workdir)
  return rows if rows is not None else write_results(sweep, workdir)


def _metric_summary(directory: str) -> dict[str, Any]:
  """Final and best evaluation metrics (min for losses, max otherwise) and the final training loss (mean of
  the last 10 logged steps), from a point's metrics.jsonl."""
  if not os.path.exists(os.path.join(directory, METRICS_FILE)):
    return {}
  train_rows, eval_rows = read_metrics(directory)
  summary: dict[str, Any] = {}
  if train_rows:
    last = [r['loss'] for r in train_rows[-10:]]
    summary['final_train_loss'] = sum(last) / len(last)
    summary['last_step'] = train_rows[-1]['step']
  if eval_rows:
    names = sorted({k for r in eval_rows for k in r if k.startswith('eval/')})
    for name in names:
      values = [r[name] for r in eval_rows if name in r]
      short = name.removeprefix('eval/')
      summary[f'final_{short}'] = values[-1]
      summary[f'best_{short}'] = min(values) if 'loss' in short else max(values)
  return summary


def results(sweep: ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """One row per point: what it is (overrides, parameters, FLOPs, data seen), how it went (status, error, wall
  time) and its metrics."""
  rows = []
  for point in expand(sweep):
    directory = os.path.join(workdir, point.name)
    record, config = read_point(directory), point_config(sweep, point)
    metrics = _metric_summary(directory)
    if record['status'] == 'pending' and metrics:  # run by its own `train.py` command (`commands`), not by `run`
      finished = metrics.get('last_step', 0) >= config.total_steps and os.path.isdir(os.path.join(directory, 'model'))
      record = {'status': 'done' if finished else 'running', 'wall_s': None}
    try:
      what = describe(config)
    except InputError as e:  # an invalid point (it failed too): its row says so, the table is still written
      what = {'error': str(e)}
    rows.append({'name': point.name, 'status': record['status'], 'error': record.get('error'),
                 'budget': point.budget, 'overrides': point.overrides, **what, 'wall_s': record.get('wall_s'),
                 **metrics})
  return rows


def write_results(sweep: ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Writes `results.jsonl` and `results.csv` (overrides as JSON in one column) atomically; returns the rows."""
  rows = results(sweep, workdir)
  with atomic_file(os.path.join(workdir, RESULTS_JSONL)) as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with atomic_file(os.path.join(workdir, RESULTS_CSV), newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows({**row, 'overrides': json.dumps(row['overrides'])} for row in rows)
  return rows


def read_results(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, RESULTS_JSONL)
  if not os.path.exists(path):
    raise SweepError(f'{workdir}: no {RESULTS_JSONL} (run scripts/sweep.py on it first)')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def commands(sweep: ConfigDict, workdir: str) -> list[str]:
  """One `train.py` command per point (to run the points on many machines; add --multihost for a slice)."""
  common = common_overrides(sweep)
  lines = []
  for point in expand(sweep):
    flags = [f'--config.{key}={_format(value)}' for key, value in {**common, **point.overrides}.items()]
    lines.append(shlex.join(['python', 'scripts/train.py', '--config', sweep.base,
                             '--workdir', os.path.join(workdir, point.name), *flags]))
  return lines

