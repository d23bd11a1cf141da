"""unlearnx.models: small model builders (no weights downloaded) and a registry by name."""
from unlearnx.models.classifiers import available_models, build_model, mlp, regression_mlp, resnet_tiny, small_cnn

__all__ = ["mlp", "small_cnn", "resnet_tiny", "regression_mlp", "build_model", "available_models"]
