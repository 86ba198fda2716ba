"""Sweeps: points from grids, lists and FLOP budgets; a resumable run that records failures and goes on; the
results table; one train.py command per point; and two points through the real trainer."""
import csv
import json
import os
import shlex
import textwrap

import pytest
from ml_collections import ConfigDict

from synchformer_jax.scaling import sweep as sweeps
from synchformer_jax.train.config import ConfigError, model_config
from synchformer_jax.train.metric_log import METRICS_FILE

from tests.conftest import REPO_ROOT

AVCLIP = str(REPO_ROOT / 'configs' / 'avclip.py')


def _sweep(**fields) -> ConfigDict:
  s = ConfigDict({'base': AVCLIP, 'overrides': {'model': {'towers': {'depth': 1}}, 'eval_every': 10**9}})
  for name, value in fields.items():
    s[name] = value
  return s


def _fake_train(calls, fail=(), stop_at=None, late_notice=False):
  """A stand-in trainer: logs a loss falling with width and steps, and one evaluation; raises for the widths in
  `fail`; with `stop_at`, returns early at that step (as a preempted run does); with `late_notice`, finishes but
  reports a preemption notice received after its last step."""
  def train(config, workdir):
    calls.append(os.path.basename(workdir))
    dim = config.model.towers.dim
    if dim in fail:
      raise ValueError(f'width {dim} does not train')
    last = config.total_steps if stop_at is None else min(stop_at, config.total_steps)
    loss = 1.0 + 100.0 / dim + 10.0 / config.total_steps
    with open(os.path.join(workdir, METRICS_FILE), 'w') as f:
      f.writelines(json.dumps({'step': s, 'loss': loss + 1.0 / s}) + '\n' for s in range(1, last + 1))
      if last == config.total_steps:
        f.write(json.dumps({'step': last, 'eval/contrastive_loss': loss, 'eval/precision': 1 / loss}) + '\n')
    return {'step': last, 'preempted': stop_at is not None or late_notice}
  return train


def test_a_grid_expands_to_named_points_with_their_configs():
  sweep = _sweep(grid=[('model.towers.dim', [16, 32]), ('total_steps', [5, 10])],
                 points=[{'model.towers.dim': 48, 'model.towers.heads': 3, 'total_steps': 7}])
  points = sweeps.expand(sweep)
  assert [p.name for p in points] == ['towers.dim=16_total_steps=5', 'towers.dim=16_total_steps=10',
                                      'towers.dim=32_total_steps=5', 'towers.dim=32_total_steps=10',
                                      'towers.dim=48_towers.heads=3_total_steps=7']
  config = sweeps.point_config(sweep, points[-1])
  cfg = model_config(config)
  assert (config.total_steps, cfg.video.dim, cfg.audio.dim, cfg.video.heads, cfg.video.depth) == (7, 48, 48, 3, 1)
  row = sweeps.describe(config)
  assert row['clips_seen'] == 7 * config.batch_size and row['segments_seen'] == 14 * row['clips_seen']
  assert row['train_flops'] == 7 * row['step_flops'] and row['trainable'] == row['params'] > 0


def test_isoflop_budgets_keep_the_candidates_within_the_tolerance():
  candidates = [{'model.towers.dim': 16, 'model.towers.heads': 1}, {'model.towers.dim': 32, 'model.towers.heads': 2},
                {'model.towers.dim': 64, 'model.towers.heads': 4, 'total_steps': 3}]
  probe = sweeps.base_config(_sweep())
  probe.model.towers.update(dim=64, heads=4)
  step64 = sweeps.describe(probe)['step_flops']
  sweep = _sweep(points=candidates, isoflop={'budgets': [100 * step64, 3 * step64], 'tolerance': 0.05,
                                             'min_steps': 2})
  points = sweeps.expand(sweep)
  by_budget = {}
  for p in points:
    spent = sweeps.describe(sweeps.point_config(sweep, p))['train_flops']
    assert abs(spent - p.budget) <= 0.05 * p.budget
    by_budget.setdefault(p.budget, []).append(p.overrides['model.towers.dim'])
  # The fixed 3-step width-64 point spends only the small budget; every solved point fits both.
  assert by_budget == {100 * step64: [16, 32], 3 * step64: [16, 32, 64]}
  assert points[0].name.startswith('C=') and points[0].overrides['total_steps'] > 100


def test_a_run_records_failures_goes_on_and_resumes_without_redoing_finished_points(tmp_path):
  sweep = _sweep(grid=[('model.towers.dim', [16, 32, 64]), ('total_steps', [4])])
  calls = []
  rows = sweeps.run(sweep, str(tmp_path), train=_fake_train(calls, fail=(32,)))
  assert calls == ['towers.dim=16_total_steps=4', 'towers.dim=32_total_steps=4', 'towers.dim=64_total_steps=4']
  assert [r['status'] for r in rows] == ['done', 'failed', 'done']
  assert rows[1]['error'] == 'ValueError: width 32 does not train'
  assert 'width 32 does not train' in (tmp_path / 'towers.dim=32_total_steps=4' / 'error.log').read_text()
  assert rows[0]['final_contrastive_loss'] == pytest.approx(1 + 100 / 16 + 10 / 4)
  assert rows[0]['final_train_loss'] == pytest.approx(1 + 100 / 16 + 10 / 4 + sum(1 / s for s in range(1, 5)) / 4)
  assert rows[2]['best_precision'] == rows[2]['final_precision'] and rows[0]['wall_s'] >= 0

  # Again: the finished points are not run, the failed one is tried again (and now trains).
  calls.clear()
  rows = sweeps.run(sweep, str(tmp_path), train=_fake_train(calls))
  assert calls == ['towers.dim=32_total_steps=4'] and [r['status'] for r in rows] == ['done'] * 3

  table = list(csv.DictReader((tmp_path / sweeps.RESULTS_CSV).open()))
  assert [r['name'] for r in table] == [r['name'] for r in rows]
  assert json.loads(table[1]['overrides']) == {'model.towers.dim': 32, 'total_steps': 4}
  assert [json.loads(line)['status'] for line in (tmp_path / sweeps.RESULTS_JSONL).read_text().splitlines()] == \
      ['done'] * 3


def test_an_interrupted_point_stops_the_sweep_and_resumes_first(tmp_path):
  sweep = _sweep(grid=[('model.towers.dim', [16, 32]), ('total_steps', [6])])
  calls = []
  rows = sweeps.run(sweep, str(tmp_path), train=_fake_train(calls, stop_at=3))
  assert calls == ['towers.dim=16_total_steps=6'] and [r['status'] for r in rows] == ['interrupted', 'pending']
  rows = sweeps.run(sweep, str(tmp_path), train=_fake_train(calls))
  assert calls[1:] == ['towers.dim=16_total_steps=6', 'towers.dim=32_total_steps=6']
  assert [r['status'] for r in rows] == ['done', 'done']


def test_a_notice_during_a_points_final_export_lets_it_finish_and_stops_the_sweep(tmp_path):
  sweep = _sweep(grid=[('model.towers.dim', [16, 32]), ('total_steps', [6])])
  calls = []
  rows = sweeps.run(sweep, str(tmp_path), train=_fake_train(calls, late_notice=True))
  assert calls == ['towers.dim=16_total_steps=6'] and [r['status'] for r in rows] == ['done', 'pending']


def test_an_invalid_point_stops_the_sweep_before_any_point_runs(tmp_path):
  sweep = _sweep(points=[{'model.towers.dim': 16, 'model.towers.heads': 1}, {'model.towers.dim': 30}])
  calls = []
  with pytest.raises(ConfigError, match=r'config.model.video.heads: expected a divisor of dim 30'):
    sweeps.run(sweep, str(tmp_path), train=_fake_train(calls))
  assert calls == []
  with pytest.raises(sweeps.SweepError, match=r"cannot set config field 'model.towers.width'"):
    sweeps.run(_sweep(points=[{'model.towers.width': 16}]), str(tmp_path), train=_fake_train(calls))
  with pytest.raises(sweeps.SweepError, match=r'listed more than once'):
    sweeps.expand(_sweep(points=[{'total_steps': 3}, {'total_steps': 3}]))


def test_sweep_files_are_checked_field_by_field(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text(textwrap.dedent(f'''
      from ml_collections import ConfigDict
      def get_sweep(arg):
        return ConfigDict({{'base': {AVCLIP!r}, 'gird': []}})'''))
  with pytest.raises(sweeps.SweepError, match=r"unknown sweep field 'gird'"):
    sweeps.load_sweep(str(path))
  sweep = sweeps.load_sweep(str(REPO_ROOT / 'configs' / 'sweeps' / 'avclip_tiny.py'))
  assert len(sweeps.expand(sweep)) == 16
  isoflop = sweeps.expand(sweeps.load_sweep(str(REPO_ROOT / 'configs' / 'sweeps' / 'avclip_tiny.py') + ':isoflop'))
  assert {p.budget for p in isoflop} == {5e11, 1e12, 2e12}
  # The TPU sweep: every width × depth at each budget, steps spending it within 2 %.
  tpu = sweeps.load_sweep(str(REPO_ROOT / 'configs' / 'sweeps' / 'avclip_audioset.py'))
  points = sweeps.expand(tpu)
  assert len(points) == 36 and {p.budget for p in points} == {3e18, 1e19, 3e19}
  for p in points[:3]:
    spent = sweeps.step_flops(sweeps.point_config(tpu, p)) * p.overrides['total_steps']
    assert abs(spent - p.budget) <= 0.02 * p.budget


def test_print_commands_gives_one_train_command_per_point_with_its_config(tmp_path):
  from absl import flags
  from ml_collections import config_flags
  sweep = _sweep(grid=[('model.towers.dim', [16]), ('optim.learning_rate', [1e-4, 3e-4])])
  lines = sweeps.commands(sweep, str(tmp_path))
  assert len(lines) == 2
  for line, point in zip(lines, sweeps.expand(sweep)):
    argv = shlex.split(line)
    assert argv[:3] == ['python', 'scripts/train.py', '--config']
    assert argv[argv.index('--workdir') + 1] == str(tmp_path / point.name)
    flag_values = flags.FlagValues()
    config_flag = config_flags.DEFINE_config_file('config', None, flag_values=flag_values, sys_argv=argv[1:])
    flag_values([argv[1]] + [a for a in argv[2:] if not a.startswith('--workdir') and a != str(tmp_path / point.name)])
    assert config_flag.value.to_dict() == sweeps.point_config(sweep, point).to_dict()


@pytest.mark.slow
def test_two_points_train_through_the_real_trainer_and_a_rerun_keeps_them(tmp_path, synthetic_data):
  sweep = _sweep(points=[{'model.towers.dim': 16, 'model.towers.heads': 1}, {'model.towers.dim': 32,
                                                                             'model.towers.heads': 2}])
  sweep.overrides.update({'total_steps': 2, 'batch_size': 2, 'checkpoint_every': 2,
                          'data': {'dir': str(synthetic_data), 'build_if_missing': False, 'eval_max_clips': 4}})
  rows = sweeps.run(sweep, str(tmp_path))
  assert [r['status'] for r in rows] == ['done', 'done']
  assert rows[0]['trainable'] < rows[1]['trainable'] and rows[0]['train_flops'] < rows[1]['train_flops']
  for row in rows:
    assert row['last_step'] == 2 and row['final_contrastive_loss'] > 0 and 0 <= row['final_precision'] <= 1
    assert (tmp_path / row['name'] / 'model').is_dir()
  before = (tmp_path / rows[0]['name'] / METRICS_FILE).read_text()
  again = sweeps.run(sweep, str(tmp_path))
  assert again == rows and (tmp_path / rows[0]['name'] / METRICS_FILE).read_text() == before
