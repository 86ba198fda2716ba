"""The training loop's guards: invalid configs fail first, a NaN loss stops the run naming the step."""
import json
import subprocess
import sys

import pytest

from synchformer_jax.train.config import ConfigError, base_config, validate
from synchformer_jax.train.loop import NonFiniteLossError, train
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize('field, value, message', [
    ('total_steps', 0, 'config.total_steps: expected a positive integer'),
    ('model.size', 'huge', 'config.model.size: expected one of'),
    ('optim.schedule', 'linear', 'config.optim.schedule: expected one of'),
    ('model.remat_policy', 'everything', 'config.model.remat_policy: expected one of'),
    ('data.prob_oos', 1.5, 'config.data.prob_oos: expected a probability'),
    ('batch_size', 6, 'config.batch_size: expected a multiple of data × fsdp (4)'),
    ('mesh.fsdp', 3, 'config.mesh: expected sizes whose product is the 4 devices'),
])
def test_invalid_values_name_the_field(field, value, message):
  config = base_config('sync')
  config.mesh.data = -1
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    validate(config, num_devices=4)


def test_cli_rejects_a_bad_value_before_doing_anything(tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'train.py'), '--config',
                         str(REPO_ROOT / 'configs' / 'sync.py'), '--workdir', str(workdir),
                         '--config.optim.learning_rate=-1', f'--config.data.dir={tmp_path / "data"}'],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'config.optim.learning_rate: expected a positive number' in proc.stderr
  assert not workdir.exists() and not (tmp_path / 'data').exists()


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_data):
  config = base_config('sync')
  config.update(total_steps=6, batch_size=2, checkpoint_every=1, eval_every=1000)
  config.data.update(dir=str(synthetic_data), build_if_missing=False, eval_max_clips=2)
  config.optim.update(learning_rate=1e30, warmup_steps=0, clip_norm=0.0)  # the first update overflows
  workdir = tmp_path / 'run'
  with pytest.raises(NonFiniteLossError, match=r'at step (\d+)') as err:
    train(config, str(workdir))
  failed_step = int(err.value.args[0].split('at step ')[1].split(';')[0])
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and steps[-1] == failed_step - 1
  logged = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert max(logged) == failed_step - 1
