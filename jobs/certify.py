"""Ray job entrypoint for certification.

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml -- \
        python jobs/certify.py --config jobs/imagenet_resnet50_sigma0.50.yaml

Every option of ``rscert certify`` is accepted and overrides the file. The job runs on the cluster
it was submitted to (Ray sets RAY_ADDRESS for the driver). Submitting the same job again resumes it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rscert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["certify", "--executor", "ray", *sys.argv[1:]]))
