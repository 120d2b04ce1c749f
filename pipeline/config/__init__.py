"""Settings as pydantic models, from YAML and the command line (no torch): certify's (:mod:`.certify`),
train's (:mod:`.train`), and the YAML reading and messages they share (:mod:`.files`)."""

from rscert.config.certify import CertifyConfig, fingerprint, load_config
from rscert.config.files import ConfigFileError, format_validation_error, load_yaml
from rscert.config.train import TrainConfig

__all__ = ["CertifyConfig", "ConfigFileError", "TrainConfig", "fingerprint", "format_validation_error",
           "load_config", "load_yaml"]
