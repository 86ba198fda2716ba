"""Benchmarks: prints (and with --out writes) a JSON result and a BENCHMARKS.md table row.

  python scripts/benchmark.py stage2-forward --size full --batch 1 --dtype float32   # one 4.8 s window
  python scripts/benchmark.py train-step --stage avclip --size full --batch 1 --remat
  python scripts/benchmark.py flops --stage sync --size full            # analytic vs XLA, no timing
  python scripts/benchmark.py stage2-forward --stage sparsesync --size full --dtype bfloat16   # one 5 s clip
  python scripts/benchmark.py train-step --stage sparsesync --size tiny --batch 2   # end to end, BatchNorm in train mode
  python scripts/benchmark.py loader --stage sync --workers 2 --batch 8 --data_dir data/generated
  python scripts/benchmark.py head-probe --size tiny --batch 32 --steps 3000   # can the Stage II head learn?
  python scripts/benchmark.py head-diagnosis --size tiny --batch 32 --layers 3 --at_steps 0,100,400   # why not?

Runs on whatever JAX finds (CPU here); the row names the command, machine, versions and load average.
stage2-forward runs as inference does: XLA with its CPU inference settings (synchformer_jax/cpu.py), or torch's
kernels for bfloat16 on CPUs with AMX / AVX512-BF16 (synchformer_jax/inference/executor.py); `--executor` forces
one, `--xla_cpu_defaults` keeps XLA's own settings. original-forward times the PyTorch mirror of the original's
Stage II forward on the same random model (bfloat16: torch's CPU autocast), or both on one checkpoint, each
process holding only what its own code needs (convert it first with scripts/convert_checkpoint.py):
  python scripts/benchmark.py original-forward --size full --batch 1 --dtype bfloat16
  python scripts/benchmark.py original-forward --size full --checkpoint sync.pt
  python scripts/benchmark.py stage2-forward --size full --model_dir models/sync
"""
import argparse
import json
import os
import shlex
import sys

from synchformer_jax import cpu


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('benchmark', choices=['stage2-forward', 'original-forward', 'train-step', 'flops', 'loader',
                                            'head-probe', 'head-diagnosis'])
  parser.add_argument('--stage', choices=['avclip', 'sync', 'synchability', 'sparsesync'], default='sync',
                      help="the model: Synchformer's stages, or SparseSync (its forward: stage2-forward)")
  parser.add_argument('--size', choices=['tiny', 'small', 'full'], default='full', help="SparseSync: 'tiny' or 'full'")
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--remat', action='store_true', help='train-step: rematerialise every block')
  parser.add_argument('--remat_policy', default='nothing_saveable', help='train-step: with --remat')
  parser.add_argument('--attention_impl', choices=['xla', 'cudnn'], help="default: JAX's choice ('cudnn': NVIDIA GPUs)")
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=1, help='train-step: untimed steps first (0 for long steps)')
  parser.add_argument('--executor', choices=['auto', 'xla', 'torch'], default='auto',
                      help="stage2-forward on CPU: the engine (auto: inference's choice)")
  parser.add_argument('--xla_cpu_defaults', action='store_true',
                      help="stage2-forward: XLA:CPU's own settings, not the inference ones")
  parser.add_argument('--model_dir', help='stage2-forward: time this stored model (default: a random one)')
  parser.add_argument('--checkpoint',
                      help='original-forward: an original Stage II checkpoint to run (default: the random model)')
  parser.add_argument('--profile', action='store_true',
                      help="original-forward, stage2-forward on the torch engine: one more call under torch's profiler")
  parser.add_argument('--workers', type=int, default=0, help='loader: grain worker processes')
  parser.add_argument('--batches', type=int, default=10, help='loader: batches to time')
  parser.add_argument('--data_dir', default='data/generated', help='loader: where synthetic_sync is (built if absent)')
  parser.add_argument('--steps', type=int, default=3000, help='head-probe: training steps')
  parser.add_argument('--learning_rate', type=float, default=1e-3, help='head-probe: Adam, constant after warm-up')
  parser.add_argument('--layers', type=int, help="head-probe: global transformer layers (default: the size's)")
  parser.add_argument('--beacon_period', type=float, default=0.0,
                      help="head-probe: add the synthetic clips' dense cue with this period in s (0: events only)")
  parser.add_argument('--recipe', default='',
                      help="head-probe: changes to the original recipe, 'field=value,...' of HeadRecipe "
                           "(benchmarks/head_recipes.py), e.g. 'position_init=token_time,shift_attention_weight=1'")
  parser.add_argument('--seed', type=int, default=0, help='head-probe: model and simulation seed')
  parser.add_argument('--audio_tokens', choices=['events', 'lagged_video', 'lagged_products'], default='events',
                      help="head-probe: what the simulated audio tokens carry beside their events (diagnostics)")
  parser.add_argument('--at_steps', default='0,50,100,200,400',
                      help='head-diagnosis: the steps to measure at (0: initialisation); it trains to the last')
  parser.add_argument('--out', help='write the JSON result here as well')
  args = parser.parse_args(argv)
  if args.stage == 'sparsesync' and (args.size == 'small' or args.benchmark in ('head-probe', 'head-diagnosis')):
    parser.error("--stage sparsesync: --size tiny or full, and not the head probe (Synchformer's head)")
  os.environ['SYNCHFORMER_CPU_EXECUTOR'] = args.executor
  if args.benchmark in ('stage2-forward', 'original-forward') and not args.xla_cpu_defaults:
    cpu.use_inference_flags()  # before anything initialises JAX's backends

  from synchformer_jax.benchmarks import harness, report, suites  # imports JAX
  from synchformer_jax.models.config import config_for_size
  stage = 'sync' if args.benchmark == 'stage2-forward' and args.stage == 'avclip' else args.stage
  cfg = config_for_size(stage, args.size, dtype=args.dtype, remat=args.remat, remat_policy=args.remat_policy,
                        attention_impl=args.attention_impl)
  setting = {'stage': stage, 'size': args.size, 'batch': args.batch, 'dtype': args.dtype,
             **({'attention_impl': args.attention_impl} if args.attention_impl else {})}
  if args.benchmark == 'stage2-forward':
    clip = {'frames': cfg.frames} if stage == 'sparsesync' else {'segments': cfg.transformer.n_segments}
    measured = {**setting, **clip, **suites.stage2_forward(cfg, args.batch, args.repeats, model_dir=args.model_dir,
                                                           profile=args.profile)}
  elif args.benchmark == 'original-forward':
    measured = {**setting, 'segments': cfg.transformer.n_segments,
                **suites.original_forward(cfg, args.batch, args.repeats, checkpoint=args.checkpoint,
                                          profile=args.profile)}
  elif args.benchmark == 'train-step':
    measured = {**setting, 'remat': args.remat and args.remat_policy,
                **suites.train_step(cfg, args.batch, args.repeats, warmup=args.warmup)}
  elif args.benchmark == 'flops':
    measured = {**setting, **suites.forward_flops_check(cfg, args.batch)}
  elif args.benchmark == 'head-diagnosis':
    at_steps = [int(s) for s in args.at_steps.split(',')]
    measured = {**setting, **suites.head_diagnosis(cfg, args.batch, at_steps, args.learning_rate, args.layers)}
  elif args.benchmark == 'head-probe':
    measured = {**setting, **suites.head_probe(cfg, args.batch, args.steps, args.learning_rate, args.layers,
                                               args.beacon_period, recipe=args.recipe, seed=args.seed,
                                               audio_tokens=args.audio_tokens)}
  else:
    measured = {**setting, 'workers': args.workers,
                **suites.loader_benchmark(stage, args.size, args.batch, args.workers, args.batches, args.data_dir)}
  command = 'python scripts/benchmark.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
  result = {'benchmark': args.benchmark, **measured, 'machine': harness.machine_description(), 'command': command}
  text = json.dumps(result, indent=1)
  print(text)
  print(report.markdown_row(result))
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
