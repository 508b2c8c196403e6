r"""Analysis of normalization: scale invariance, effective learning rate, stochasticity.

Three properties explain much of what normalization does to training
:cite:p:`huang2023normalization`, and each is measured here rather than assumed:

- **Scale invariance.** A normalizer after a linear map makes the layer's output
  independent of the scale of its weight. :func:`scale_dynamics` rescales the
  weights of a network layer by layer (:math:`W_k \to \alpha_k W_k`) and measures
  how layer inputs, output gradients and weight gradients change;
  :func:`predicted_scale_dynamics` gives the products of :math:`\alpha` that theory
  predicts. :func:`invariance_table` decides, by computing outputs before and after,
  which normalizers are invariant to which transformation of weights and data
  :cite:p:`ba2016layer`.
- **Effective learning rate.** For a scale-invariant weight :math:`w` the gradient is
  orthogonal to :math:`w` and shrinks as :math:`1/\|w\|`, so SGD with learning rate
  :math:`\eta` moves the direction :math:`w/\|w\|` like a step of :math:`\eta/\|w\|^2`
  :cite:p:`van2017l2,hoffer2018norm`. :func:`sgd_norm_dynamics` records
  :math:`\|w_t\|`, the effective learning rate and the angular update during SGD,
  with and without weight decay; :func:`equilibrium_angular_update` is the angular
  update that weight decay settles to :cite:p:`wan2021spherical`.
- **Stochasticity.** In training, a sample is normalized with the statistics of the
  random batch it arrives in. :func:`stochastic_normalization_disturbance` measures
  how much its normalized output moves from batch to batch (the SND of
  :cite:t:`huang2020investigation`); :func:`train_inference_discrepancy` measures the
  gap between the training output (batch statistics) and the inference output
  (population statistics).

Every tool leaves a model as it found it: parameters, buffers (BatchNorm running
statistics), train/eval flags and ``.grad`` fields, also when it raises.

The package, one module per idea:

- :mod:`normlib.analysis.scaling`: :func:`scale_dynamics`, :func:`predicted_scale_dynamics`.
- :mod:`normlib.analysis.invariance`: :func:`invariance_error`, :func:`invariance_table`.
- :mod:`normlib.analysis.norm_dynamics`: :func:`scale_invariant_parameters`,
  :func:`sgd_norm_dynamics`, :func:`equilibrium_angular_update`, :func:`equilibrium_norm`.
- :mod:`normlib.analysis.stochasticity`: :func:`stochastic_normalization_disturbance`,
  :func:`snd_sweep`, :func:`normalize_in_batches`, :func:`empirical_snd`.
- :mod:`normlib.analysis.discrepancy`: :func:`train_inference_discrepancy`.

Explained in the chapter "Analysis of normalization" (``chapters/analysis.md``).

Example:
    >>> import torch
    >>> from normlib.analysis import invariance_table
    >>> table = invariance_table(["bn", "ln"], ["weight_rescaling", "sample_rescaling"])
    >>> table.as_dict()["bn"]
    {'weight_rescaling': True, 'sample_rescaling': False}
    >>> table.as_dict()["ln"]
    {'weight_rescaling': True, 'sample_rescaling': True}
"""

from normlib.analysis.discrepancy import PopulationDiscrepancy, train_inference_discrepancy
from normlib.analysis.invariance import TRANSFORMS, InvarianceTable, invariance_error, invariance_table
from normlib.analysis.norm_dynamics import (
    NormDynamics,
    equilibrium_angular_update,
    equilibrium_norm,
    scale_invariant_parameters,
    sgd_norm_dynamics,
)
from normlib.analysis.scaling import (
    ScaleDynamics,
    predicted_scale_dynamics,
    rescalable_layers,
    scale_dynamics,
)
from normlib.analysis.stochasticity import (
    SND_METHODS,
    SNDEstimate,
    SNDSweep,
    empirical_snd,
    normalize_in_batches,
    snd_sweep,
    stochastic_normalization_disturbance,
)

__all__ = [
    "ScaleDynamics",
    "rescalable_layers",
    "scale_dynamics",
    "predicted_scale_dynamics",
    "TRANSFORMS",
    "InvarianceTable",
    "invariance_error",
    "invariance_table",
    "scale_invariant_parameters",
    "NormDynamics",
    "sgd_norm_dynamics",
    "equilibrium_angular_update",
    "equilibrium_norm",
    "SND_METHODS",
    "normalize_in_batches",
    "empirical_snd",
    "SNDEstimate",
    "stochastic_normalization_disturbance",
    "SNDSweep",
    "snd_sweep",
    "PopulationDiscrepancy",
    "train_inference_discrepancy",
]
