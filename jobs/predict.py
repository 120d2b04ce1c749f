"""Ray job entrypoint for PREDICT (the smoothed classifier's predictions; abstains when unsure).

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml -- \
        python jobs/predict.py --config jobs/imagenet_resnet50_sigma0.50.yaml --out s3://bucket/predict-0.50

Every option of ``rscert predict`` is accepted and overrides the file (a certify job file works:
its CERTIFY-only settings n0/sampling/radii are not used). Submitting the same job again resumes it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["predict", "--executor", "ray", *sys.argv[1:]]))
