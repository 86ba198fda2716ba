"""Only errors about the input become one-line messages or failed batch rows; a fault of the program propagates."""
import pytest

from synchformer_jax.data.decode import DecodeError
from synchformer_jax.errors import InputError
from synchformer_jax.inference import batch, cli


def _raise(error):
  def main():
    raise error
  return main


def test_an_input_error_is_one_line_and_exit_status_1(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.run(_raise(DecodeError('clip.mp4: corrupt or truncated video:\n  2 frames did not decode')))
  assert exit_.value.code == 1
  assert capsys.readouterr().err == 'error: clip.mp4: corrupt or truncated video: 2 frames did not decode\n'


@pytest.mark.parametrize('error', [ValueError('dot_general shapes (3, 64) and (32, 64) do not match'),
                                   TypeError('unsupported operand'), OSError('No space left on device')])
def test_a_fault_of_the_program_keeps_its_traceback(error):
  with pytest.raises(type(error)):
    cli.run(_raise(error))


def test_a_batch_records_bad_files_and_stops_on_a_fault(monkeypatch, tmp_path):
  items = [batch.FileItem(str(tmp_path / name)) for name in ('bad.mp4', 'fault.mp4')]

  def predict_file(model, item, options):
    if item.path.endswith('bad.mp4'):
      raise InputError(f'{item.path}: not a readable media file')
    raise ValueError('a shape bug inside the model')

  monkeypatch.setattr(batch, 'predict_file', predict_file)
  rows = batch.predict_files(None, items, batch.PredictOptions(), progress=False)
  assert 'not a readable media file' in next(rows)['error']
  with pytest.raises(ValueError, match='a shape bug inside the model'):
    next(rows)
