"""whetstone-snn: train ordinary deep networks into single-time-step binary spiking networks.

Implements Whetstone (Severa et al., Nature Machine Intelligence 1, 86-94, 2019) natively in PyTorch:
activations are sharpened during training, layer by layer from the input up, until every unit emits
exactly 0 or 1.
"""

from importlib import metadata as _metadata

from .convert.calibration import calibrate, calibrate_head
from .convert.graph_builder import check_deployable, to_spiking_graph
from .convert.inference import for_inference
from .convert.spikify import ConversionError, pool_before_spikes, spikify
from .data.datasets import DatasetError, load_dataset
from .data.loader import TensorLoader
from .graph.integer import IntegerNetwork
from .graph.nodes import DeployError, SpikingGraph
from .graph.quantization import quantize
from .graph.simulator import SimResult, simulate
from .graph.spike_plot import plot_spikes
from .models.zoo import Recipe, SpikingClassifier, create_model, list_models, register_model
from .nn.activations import SpikingActivation, SpikingBReLU, SpikingSigmoid, spiking_brelu, spiking_sigmoid
from .nn.decode import SoftmaxDecode, key_generator, thermometer_offsets
from .nn.losses import Classification, Distillation, Reconstruction, distillation_loss
from .nn.quantization_aware import QuantizationAware, float_weights, quantize_weights
from .nn.sharpen import (
    AdaptiveSharpener,
    ScheduledSharpener,
    Sharpener,
    SimpleSharpener,
    model_sharpness,
    ramp_schedule,
    set_model_sharpness,
    set_model_surrogate,
    sharpness_map,
    spiking_layers,
)
from .nn.tracing import fold_batchnorm
from .runs.build import build_run
from .runs.config import ConfigError, RunConfig
from .runs.restore import model_from_checkpoint
from .training.batchnorm_statistics import reestimate_batchnorm
from .training.callbacks import Callback
from .training.checkpoint import load_checkpoint
from .training.evaluation import binary_report, evaluate, is_fully_binary
from .training.trainer import Trainer
from .utils.logs import install_fallback as _install_fallback

_install_fallback()  # each epoch's line shows, from Python too, until logging is configured otherwise

try:  # the installed distribution's version: pyproject.toml is its one source
    __version__ = _metadata.version("whetstone-snn")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "AdaptiveSharpener",
    "Callback",
    "Classification",
    "ConfigError",
    "ConversionError",
    "DatasetError",
    "DeployError",
    "Distillation",
    "IntegerNetwork",
    "QuantizationAware",
    "Recipe",
    "Reconstruction",
    "RunConfig",
    "ScheduledSharpener",
    "Sharpener",
    "SimResult",
    "SimpleSharpener",
    "SoftmaxDecode",
    "SpikingActivation",
    "SpikingBReLU",
    "SpikingClassifier",
    "SpikingGraph",
    "SpikingSigmoid",
    "TensorLoader",
    "Trainer",
    "binary_report",
    "build_run",
    "calibrate",
    "calibrate_head",
    "check_deployable",
    "create_model",
    "distillation_loss",
    "evaluate",
    "float_weights",
    "fold_batchnorm",
    "for_inference",
    "is_fully_binary",
    "key_generator",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "model_from_checkpoint",
    "model_sharpness",
    "plot_spikes",
    "pool_before_spikes",
    "quantize",
    "quantize_weights",
    "ramp_schedule",
    "reestimate_batchnorm",
    "register_model",
    "set_model_sharpness",
    "set_model_surrogate",
    "sharpness_map",
    "simulate",
    "spikify",
    "spiking_brelu",
    "spiking_layers",
    "spiking_sigmoid",
    "thermometer_offsets",
    "to_spiking_graph",
]
