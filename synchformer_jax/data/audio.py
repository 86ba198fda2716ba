"""Synchformer's log-mel front end in NumPy, with torchaudio's ``MelSpectrogram`` semantics.

Per 10,240-sample segment at 16 kHz: centred STFT (reflect padding of n_fft/2), n_fft 1024, a periodic
Hann window of 400 samples zero-padded to 1024 in the middle, hop 160, power 2 -> 513 x 65; HTK mel
filterbank, 128 bands over 0-8000 Hz, no normalisation; ``log(x + 1e-6)``; right-pad the time axis with
0.0 (in the log domain) to 66 frames; AST normalisation ``(x - mean) / (2 * std)``.

Computed in float64 and returned as float32: the original's float32 torch result is within 5e-5 of it
(measured on the parity cases).

Also the training waveform augmentations (spec §2.8): sox reverb and pitch shift, torchaudio volume and
low-pass biquad, Gaussian noise.
"""

from __future__ import annotations

import functools

import numpy as np

from synchformer_jax.constants import AUDIO_RATE, MEL_BINS, SEGMENT_MEL_FRAMES

N_FFT = 1024
WIN_LENGTH = 400
HOP_LENGTH = 160
LOG_EPS = 1e-6
AST_MEAN = -4.2677393
AST_STD = 4.5689974


def periodic_hann(length: int) -> np.ndarray:
  """torch.hann_window(length) (periodic): 0.5 - 0.5 cos(2 pi n / length), float64."""
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


@functools.cache
def stft_window() -> np.ndarray:
  """torch.hann_window(400) (periodic), centred in n_fft as torch.stft pads it: 312 zeros each side."""
  left = (N_FFT - WIN_LENGTH) // 2
  return np.pad(periodic_hann(WIN_LENGTH), (left, N_FFT - WIN_LENGTH - left))


@functools.cache
def mel_filterbank() -> np.ndarray:
  """torchaudio ``melscale_fbanks(513, 0, 8000, 128, 16000, norm=None, mel_scale='htk')``: (513, 128)."""
  all_freqs = np.linspace(0, AUDIO_RATE // 2, N_FFT // 2 + 1)
  m_pts = np.linspace(0.0, 2595.0 * np.log10(1.0 + (AUDIO_RATE / 2) / 700.0), MEL_BINS + 2)  # HTK mel of 0..8 kHz
  f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
  f_diff = np.diff(f_pts)
  slopes = f_pts[None, :] - all_freqs[:, None]
  down = -slopes[:, :-2] / f_diff[:-1]
  up = slopes[:, 2:] / f_diff[1:]
  return np.maximum(0.0, np.minimum(down, up))


def centred_power_stft(waveform: np.ndarray, window: np.ndarray, hop_length: int) -> np.ndarray:
  """torch.stft(center=True, reflect padding) power: |rfft|^2 of (..., N) samples with an n_fft = len(window)
  window -> (..., 1 + N // hop_length, n_fft // 2 + 1) (time-major), float64."""
  n_fft = len(window)
  pad = [(0, 0)] * (waveform.ndim - 1) + [(n_fft // 2, n_fft // 2)]
  padded = np.pad(np.asarray(waveform, np.float64), pad, mode='reflect')
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop_length, :]
  spec = np.fft.rfft(frames * window, axis=-1)
  return spec.real**2 + spec.imag**2


def power_spectrogram(waveform: np.ndarray) -> np.ndarray:
  """|STFT|^2 of (..., N) samples -> (..., 1 + N // 160, 513) (time-major), float64."""
  return centred_power_stft(waveform, stft_window(), HOP_LENGTH)


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
  """AudioMelSpectrogram + AudioLog: (..., N) samples -> (..., 128, 1 + N // 160), float64."""
  mel = power_spectrogram(waveform) @ mel_filterbank()
  return np.swapaxes(np.log(mel + LOG_EPS), -1, -2)


def pad_or_truncate(spec: np.ndarray, n_frames: int = SEGMENT_MEL_FRAMES) -> np.ndarray:
  """PadOrTruncate: right-pad the last (time) axis with 0.0, or cut it, to ``n_frames``."""
  missing = n_frames - spec.shape[-1]
  if missing <= 0:
    return spec[..., :n_frames]
  return np.pad(spec, [(0, 0)] * (spec.ndim - 1) + [(0, missing)], constant_values=0.0)


def normalise_ast(spec: np.ndarray) -> np.ndarray:
  """AudioNormalizeAST: AST's convention of dividing by twice the std."""
  return (spec - AST_MEAN) / (2 * AST_STD)


def audio_features(segments: np.ndarray) -> np.ndarray:
  """The whole front end: (..., 10240) waveform segments -> (..., 128, 66) float32 model features."""
  return normalise_ast(pad_or_truncate(log_mel_spectrogram(segments))).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Waveform augmentations (training, §2.8). The original runs sox and torchaudio effects; these are NumPy
# re-implementations that match them in distribution, not bit for bit. Each takes (..., N) float samples.


def volume(waveform: np.ndarray, gain: float = 2.0) -> np.ndarray:
  """torchaudio ``Vol(2.0, 'amplitude')``: multiply, then clamp to [-1, 1]."""
  return np.clip(waveform * gain, -1.0, 1.0)


def gaussian_noise(waveform: np.ndarray, rng: np.random.Generator, std: float = 0.01) -> np.ndarray:
  return waveform + std * rng.standard_normal(waveform.shape)


def _linear_recurrence(x: np.ndarray, a: complex | float, initial=0.0) -> np.ndarray:
  """y[n] = x[n] + a * y[n-1] along the last axis, y[-1] = ``initial``; stable for |a| < 1.

  Vectorised as a Hillis-Steele scan: after the pass with stride k, y[n] sums a^j x[n-j] for j < 2k.
  """
  y = np.array(x, dtype=np.result_type(x, a, np.float64))
  y[..., 0] += a * np.asarray(initial)
  k, a_k = 1, a
  while k < y.shape[-1]:
    y[..., k:] += a_k * y[..., :-k]  # the right-hand side is evaluated before the in-place add
    k, a_k = 2 * k, a_k * a_k
  return y


def lowpass_biquad(
  waveform: np.ndarray, cutoff_hz: float = 100.0, q: float = 0.707, sample_rate: int = AUDIO_RATE
) -> np.ndarray:
  """torchaudio ``lowpass_biquad`` (RBJ cookbook low-pass, zero initial state, output clamped to [-1, 1]).

  The IIR part runs as two complex one-pole sections, one per pole of the biquad.
  """
  w0 = 2 * np.pi * cutoff_hz / sample_rate
  alpha = np.sin(w0) / (2 * q)
  b = np.array([(1 - np.cos(w0)) / 2, 1 - np.cos(w0), (1 - np.cos(w0)) / 2]) / (1 + alpha)
  a1, a2 = -2 * np.cos(w0) / (1 + alpha), (1 - alpha) / (1 + alpha)
  x = np.asarray(waveform, np.float64)
  fir = b[0] * x
  fir[..., 1:] += b[1] * x[..., :-1]
  fir[..., 2:] += b[2] * x[..., :-2]
  pole1, pole2 = np.roots([1.0, a1, a2])  # 1 + a1 z^-1 + a2 z^-2 = (1 - p1 z^-1)(1 - p2 z^-1)
  y = _linear_recurrence(_linear_recurrence(fir, pole1), pole2).real
  return np.clip(y, -1.0, 1.0)


def _delayed(x: np.ndarray, delay: int) -> np.ndarray:
  out = np.zeros_like(x)
  out[..., delay:] = x[..., :-delay]
  return out


def _comb(x: np.ndarray, delay: int, feedback: float, damping: float) -> np.ndarray:
  """sox/freeverb comb: y[n] = x[n] + feedback * s[n], s = one-pole low-pass of y[n - delay]; out y[n - delay].

  Processed in blocks of ``delay`` samples: inside a block the delayed signal is already known.
  """
  y = np.zeros_like(x)
  state = np.zeros(x.shape[:-1])
  for start in range(0, x.shape[-1], delay):
    stop = min(start + delay, x.shape[-1])
    past = y[..., start - delay : stop - delay] if start >= delay else np.zeros_like(x[..., start:stop])
    s = _linear_recurrence((1 - damping) * past, damping, initial=state)
    y[..., start:stop] = x[..., start:stop] + feedback * s
    state = s[..., -1]
  return _delayed(y, delay)


def _allpass(x: np.ndarray, delay: int) -> np.ndarray:
  """sox/freeverb all-pass: buf[n] = x[n] + buf[n - delay] / 2; out = buf[n - delay] - x[n]."""
  buf = x.copy()
  for start in range(delay, x.shape[-1], delay):
    buf[..., start : start + delay] += 0.5 * buf[..., start - delay : min(start, x.shape[-1] - delay)]
  return _delayed(buf, delay) - x


_REVERB_COMB_LENGTHS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)  # samples at 44.1 kHz
_REVERB_ALLPASS_LENGTHS = (225, 341, 441, 556)
_REVERB_STEREO_SPREAD = 12


def reverb(
  waveform: np.ndarray,
  reverberance: float = 50.0,
  hf_damping: float = 50.0,
  room_scale: float = 100.0,
  stereo_depth: float = 100.0,
  sample_rate: int = AUDIO_RATE,
) -> np.ndarray:
  """sox ``reverb -w`` (wet only, pre-delay 0, wet gain 0 dB) on mono input, averaged over its two outputs.

  sox's freeverb: 8 parallel damped combs then 4 all-passes in series, a second filter set with delays
  spread by +-12 samples for the right channel; each output is clipped to [-1, 1].
  """
  a = -1 / np.log(1 - 0.3)
  b = 100 / (np.log(1 - 0.98) * a + 1)
  feedback = 1 - np.exp((reverberance - b) / (a * b))
  damping = hf_damping / 100 * 0.3 + 0.2
  scale = room_scale / 100 * 0.9 + 0.1
  depth = stereo_depth / 100
  r = sample_rate / 44100
  x = np.asarray(waveform, np.float64)
  outputs = []
  for channel in range(int(np.ceil(depth)) + 1):
    # sox flips the sign of the spread from one filter to the next
    spread = [channel * depth * (-1) ** i * _REVERB_STEREO_SPREAD for i in range(len(_REVERB_COMB_LENGTHS))]
    wet = sum(
      _comb(x, int(scale * r * (length + s) + 0.5), feedback, damping)
      for length, s in zip(_REVERB_COMB_LENGTHS, spread)
    )
    for i in reversed(range(len(_REVERB_ALLPASS_LENGTHS))):
      wet = _allpass(wet, int(r * (_REVERB_ALLPASS_LENGTHS[i] + spread[i]) + 0.5))
    outputs.append(np.clip(wet * 0.015, -1.0, 1.0))
  return np.mean(outputs, axis=0)


def _resample_fft(x: np.ndarray, n_out: int) -> np.ndarray:
  """Band-limited resampling of the last axis to ``n_out`` samples (spectrum truncated or zero-padded)."""
  spectrum = np.fft.rfft(x, axis=-1)
  return np.fft.irfft(spectrum, n=n_out, axis=-1) * (n_out / x.shape[-1])


def _time_stretch(x: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
  """WSOLA time stretch (sox ``tempo``'s method and defaults: 82-ms segments, 14.68-ms search, 12-ms
  overlap) of a 1-D signal to ``round(len * factor)`` samples, pitch unchanged."""
  segment, search, overlap = (int(sample_rate * ms / 1000 + 0.5) for ms in (82, 14.68, 12))
  hop_out = segment - overlap
  n_out = round(x.shape[-1] * factor)
  padded = np.pad(x, (search, search + segment + int(n_out / factor)))
  ramp = np.linspace(0, 1, overlap, endpoint=False)
  out = [padded[search : search + segment]]
  natural = search + hop_out  # where the previous segment's input would continue
  for k in range(1, n_out // hop_out + 1):
    nominal = search + round(k * hop_out / factor)
    candidates = np.lib.stride_tricks.sliding_window_view(
      padded[nominal - search : nominal + search + overlap], overlap
    )
    best = nominal - search + int(np.argmax(candidates @ padded[natural : natural + overlap]))
    out[-1] = out[-1][:-overlap]
    out.append(padded[natural : natural + overlap] * (1 - ramp) + padded[best : best + overlap] * ramp)
    out.append(padded[best + overlap : best + segment])
    natural = best + hop_out
  return np.concatenate(out)[:n_out]


def pitch_shift(waveform: np.ndarray, cents: float = 1000.0, sample_rate: int = AUDIO_RATE) -> np.ndarray:
  """sox ``pitch 1000`` + ``rate 16000``: stretch the tempo by the pitch ratio, then resample back to the
  original length, which raises the pitch by ``cents`` and keeps duration and tempo."""
  ratio = 2 ** (cents / 1200)
  x = np.asarray(waveform, np.float64)
  flat = x.reshape(-1, x.shape[-1])
  out = [_resample_fft(_time_stretch(row, ratio, sample_rate), x.shape[-1]) for row in flat]
  return np.stack(out).reshape(x.shape)


def augment_waveform(waveform: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
  """Reverb, Volume, PitchShift, Lowpass, GaussNoise, in that order, each applied with probability ``p``."""
  effects = (reverb, volume, pitch_shift, lowpass_biquad, lambda x: gaussian_noise(x, rng))
  x = waveform
  for effect in effects:
    if rng.random() < p:
      x = effect(x)
  return np.asarray(x, np.float32)
