"""Multi-host training on one machine: two processes (jax.distributed over gloo, 2 CPU devices each),
each reading its own share of the data, log the same losses as one process with 4 devices, and a preemption
notice to one of them saves both at the same step."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from synchformer_jax import pretrained
from tests.conftest import REPO_ROOT


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'}


def _logged(workdir) -> dict[int, dict]:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  merged = {}
  for row in rows:
    merged.setdefault(row['step'], {}).update(row)
  return merged


@pytest.mark.slow
def test_two_processes_log_the_losses_of_one(tmp_path, synthetic_data):
  # Global batches of all 4 training clips; each process reads 2 of every batch.
  command = [sys.executable, str(REPO_ROOT / 'scripts' / 'train.py'), '--config', str(REPO_ROOT / 'configs' / 'sync.py'),
             '--config.total_steps=3', '--config.batch_size=4', '--config.eval_every=3', '--config.checkpoint_every=3',
             f'--config.data.dir={synthetic_data}', '--config.data.build_if_missing=False', '--config.data.eval_max_clips=4',
             '--config.data.precomputed_windows=0']
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  port = _free_port()
  processes = [subprocess.Popen(command + ['--workdir', str(multi), '--multihost', f'--coordinator_address=localhost:{port}',
                                           '--num_processes=2', f'--process_id={i}'],
                                env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  one = subprocess.run(command + ['--workdir', str(single)], env=_env(4), capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]

  two_hosts, one_host = _logged(multi), _logged(single)
  assert sorted(two_hosts) == sorted(one_host) == [1, 2, 3]
  for step in (1, 2, 3):
    np.testing.assert_allclose(two_hosts[step]['loss'], one_host[step]['loss'], rtol=1e-5)
  assert two_hosts[3]['eval/accuracy_1'] == one_host[3]['eval/accuracy_1']
  # Written once, by process 0, and loadable.
  model = pretrained.load(str(multi / 'model'))
  assert model.cfg.kind == 'sync'
  assert not any(p.name.startswith('.model.tmp') for p in multi.iterdir())


@pytest.mark.slow
def test_sigterm_to_one_process_saves_every_process_at_one_step(tmp_path, synthetic_data):
  """JAX's preemption sync point: the processes agree on the step after the notice, save it, and exit 0."""
  workdir = tmp_path / 'run'
  command = [sys.executable, str(REPO_ROOT / 'scripts' / 'train.py'), '--config', str(REPO_ROOT / 'configs' / 'sync.py'),
             '--config.total_steps=10000', '--config.batch_size=4', '--config.eval_every=10000',
             '--config.checkpoint_every=10000', f'--config.data.dir={synthetic_data}',
             '--config.data.build_if_missing=False', '--config.data.precomputed_windows=0', '--workdir', str(workdir),
             '--multihost', f'--coordinator_address=localhost:{_free_port()}', '--num_processes=2']
  processes = [subprocess.Popen(command + [f'--process_id={i}'], env=_env(2), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    deadline = time.monotonic() + 600
    while not (workdir / 'metrics.jsonl').exists() or len(_logged(workdir)) < 2:
      assert time.monotonic() < deadline and all(p.poll() is None for p in processes), 'the run did not start'
      time.sleep(0.5)
    processes[1].send_signal(signal.SIGTERM)  # not the process that writes the metrics
    outputs = [p.communicate(timeout=600)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  saved = []
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
    saved.append(int(re.search(r'preempted: saved step (\d+)', out).group(1)))
  assert saved[0] == saved[1]
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == [saved[0]]
  assert max(_logged(workdir)) == saved[0]
