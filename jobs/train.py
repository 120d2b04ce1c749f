"""Ray job entrypoint for noise-augmented training on Ray Train workers.

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train.py --config jobs/train_cifar10_resnet110_sigma0.25.yaml

Every option of ``rscert train`` is accepted and overrides the file; resubmitting resumes from the
last epoch's checkpoint.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
