"""Recovery: a run killed with SIGKILL and resumed logs exactly the losses of an uninterrupted run;
SIGTERM saves and exits cleanly; an unreadable latest checkpoint falls back to the previous one."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synchformer_jax.checkpointing import TrainCheckpointer
from tests.conftest import REPO_ROOT

TRAIN = [sys.executable, str(REPO_ROOT / 'scripts' / 'train.py'), '--config', str(REPO_ROOT / 'configs' / 'sync.py')]


def _overrides(data_dir: Path) -> list[str]:
  # 6 steps of 2 of the 4 training clips: 3 epochs, so resuming also crosses epoch boundaries.
  return ['--config.total_steps=6', '--config.batch_size=2', '--config.checkpoint_every=2',
          '--config.eval_every=1000', '--config.data.eval_max_clips=2', f'--config.data.dir={data_dir}',
          '--config.data.build_if_missing=False', '--config.keep_checkpoints=10',
          '--config.data.precomputed_windows=0']  # the towers on every step: the loader's state is resumed too


def _step_losses(workdir: Path) -> dict[int, float]:
  """The last logged loss of every step (a resumed run re-logs the steps after its checkpoint)."""
  losses = {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    if 'loss' in record:
      losses[record['step']] = record['loss']
  return losses


def run_to_the_end(command: list[str], workdir: Path) -> None:
  subprocess.run(command + ['--workdir', str(workdir)], check=True, capture_output=True, timeout=900)


def start(command: list[str], workdir: Path) -> subprocess.Popen:
  """A training run in the background, its stderr kept for the error message of a run that exits early."""
  return subprocess.Popen(command + ['--workdir', str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)


def kill_after_step(command: list[str], workdir: Path, step: int) -> None:
  """Starts a run and SIGKILLs it once it has logged `step`."""
  proc = start(command, workdir)
  _wait_for_step(workdir, proc, step)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def _wait_for_step(workdir: Path, proc: subprocess.Popen, step: int, timeout: float = 600) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if (workdir / 'metrics.jsonl').exists() and max(_step_losses(workdir), default=0) >= step:
      return
    assert proc.poll() is None, f'training exited early: {proc.stderr.read()[-3000:]}'
    time.sleep(0.2)
  raise TimeoutError(f'step {step} not reached')


@pytest.mark.slow
def test_sigterm_and_sigkill_then_resume_log_the_losses_of_an_uninterrupted_run(tmp_path, synthetic_data):
  """One run is preempted (SIGTERM: it saves and exits 0), resumed, killed (SIGKILL), and resumed again."""
  command = TRAIN + _overrides(synthetic_data)
  reference = tmp_path / 'reference'
  run_to_the_end(command, reference)
  run = tmp_path / 'interrupted'

  proc = start(command, run)
  _wait_for_step(run, proc, 1)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
  stopped_at = max(_step_losses(run))
  assert stopped_at < 6
  assert _checkpoint_steps(run)[-1] == stopped_at  # saved where it stopped, not only every checkpoint_every

  kill_after_step(command, run, max(stopped_at + 2, 5))
  assert not (run / 'model').exists()

  run_to_the_end(command, run)
  expected = _step_losses(reference)
  assert sorted(expected) == list(range(1, 7))
  assert _step_losses(run) == expected
  assert (run / 'model' / 'synchformer_jax.json').exists()


def _checkpoint_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  checkpointer = TrainCheckpointer(str(tmp_path / 'ckpt'), keep=5, async_save=False)
  state = {'w': jnp.arange(4.0), 'key': jax.random.key(0)}
  for step in (1, 2):
    checkpointer.save(step, jax.tree.map(lambda x: x * step if x.dtype == jnp.float32 else x, state),
                      {'position': step}, {'best': step})
  checkpointer.wait()
  for path in (tmp_path / 'ckpt' / '2' / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'garbage')
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  step, restored, data_state, meta = checkpointer.restore_latest(abstract)
  assert (step, data_state, meta) == (1, {'position': 1}, {'best': 1})
  np.testing.assert_array_equal(restored['w'], np.arange(4.0))
  assert jax.random.key_data(restored['key']).tolist() == jax.random.key_data(state['key']).tolist()
  assert 'step 2' in caplog.text and 'falling back' in caplog.text
  checkpointer.close()
