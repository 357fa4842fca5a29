#!/usr/bin/env bash
# Install lmms-eval 0.7.3 into the active environment beside videollamb_hf, for `lmms-eval --model videollamb ...`
# (README, "lmms-eval"; .ci/run runs this same file). lmms-eval's own requirements pin torchvision and av<16,
# which would replace this environment's torch and PyAV, so it is installed without them, plus the modules its
# command line imports: loguru, pytz, sacrebleu, evaluate, tenacity, pytablewriter, and filelock<4 (filelock 4
# dropped `filelock._api`, which lmms_eval/evaluator.py imports; lmms-eval's CLI still exits 0 when that fails).
# videollamb_hf's `eval` extra brings datasets, which lmms-eval loads its tasks with.
set -euo pipefail
python -m pip install --no-deps "lmms-eval==0.7.3"
python -m pip install loguru pytz sacrebleu evaluate tenacity pytablewriter "filelock<4"
# Fails (and fails the install) unless the CLI's modules import beside this environment's torch and PyAV.
python -c 'import av, torch, lmms_eval.__main__, lmms_eval.evaluator, lmms_eval.api.model; print("lmms-eval", "ready beside torch", torch.__version__, "and PyAV", av.__version__)'
