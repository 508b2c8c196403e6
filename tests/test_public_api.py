"""Every public name of the API reference before the library was arranged in subpackages still imports.

``PREVIOUS_API`` was written once from the tree of commit 8fcd0ea: every module its API page
(``docs/api.md``) documented with ``automodule``, plus the package itself, and each module's
public names there (its ``__all__``, or the classes and functions it defined). Chapters and users
import these paths; none may disappear, and each must still be importable from the same module.
"""

from __future__ import annotations

import importlib

import pytest

PREVIOUS_API: dict[str, tuple[str, ...]] = {
    'normlib': (
        '__version__', 'available_norms', 'create_norm', 'register_norm',
    ),
    'normlib.registry': (
        'NormSpec', 'available_norms', 'create_norm', 'norm_factory', 'register_norm',
        'register_weight_norm', 'weight_transform',
    ),
    'normlib.framework': (
        'Affine', 'BATCH', 'BATCH_GROUP', 'GROUP', 'INSTANCE', 'LAYER', 'Operation', 'POSITIONAL',
        'Partition', 'RegionPartition', 'Standardize', 'compute_dtype', 'normalize', 'update_running',
    ),
    'normlib.functional': (
        'BACKENDS', 'batch_group_norm', 'batch_norm', 'check_input', 'default_num_groups',
        'divisive_norm', 'evonorm_b0', 'evonorm_s0', 'filter_response_norm', 'group_norm',
        'instance_norm', 'layer_norm', 'local_context_norm', 'local_contrast_norm',
        'local_response_norm', 'population_norm', 'positional_norm', 'region_norm', 'rms_norm', 'tlu',
        'variance_norm',
    ),
    'normlib.layers': (
        'BatchGroupNorm', 'BatchNorm', 'DivisiveNorm', 'EvoNormB0', 'EvoNormS0', 'FilterResponseNorm',
        'GroupNorm', 'InstanceNorm', 'LayerNorm', 'LocalContextNorm', 'LocalContrastNorm',
        'LocalResponseNorm', 'NormLayer', 'PopulationNorm', 'PositionalNorm', 'RMSNorm', 'RegionNorm',
        'VarianceNorm', 'resolve_groups',
    ),
    'normlib.whitening': (
        'BatchWhitening', 'GroupWhitening', 'RUNNING_STATS', 'WHITENING_METHODS', 'Whiten',
        'batch_whitening', 'covariance', 'group_whitening', 'inverse_sqrt_symmetric', 'merge_groups',
        'split_groups', 'whiten', 'whitening_error', 'whitening_matrix',
    ),
    'normlib.recovery': (
        'AdaIN', 'AttentiveNorm', 'ConditionalBatchNorm', 'MatrixAffine', 'SPADE', 'SampleAffine',
        'adain', 'instance_statistics', 'sample_affine', 'whitening_coloring',
    ),
    'normlib.multimode': (
        'ModeNorm', 'ModeStandardize', 'SWITCHABLE_MODES', 'SWITCHABLE_WHITENING_MODES',
        'SwitchableNorm', 'SwitchableStandardize', 'SwitchableWhiten', 'SwitchableWhitening',
        'mode_norm', 'switchable_norm', 'switchable_whitening',
    ),
    'normlib.weight': (
        'NormPropReLU', 'OrthogonalWeightNorm', 'ScaledWeightStandardization', 'SpectralNorm',
        'WeightNorm', 'WeightStandardization', 'activation_gamma', 'centered_weight_norm', 'normprop',
        'normprop_mlp', 'normprop_relu', 'oni', 'orthogonal_weight_norm', 'orthogonalize_weight',
        'power_iteration_', 'scaled_weight_standardization', 'spectral_norm', 'spectral_normalize',
        'standardize_weight', 'weight_norm', 'weight_norm_directions', 'weight_normalize',
        'weight_standardization',
    ),
    'normlib.optim': (
        'GradientCentralization', 'GradientNormalization', 'GradientTransform', 'LAMB', 'LANS', 'LARS',
        'centralize_gradient', 'lamb_trust_ratio', 'lars_trust_ratio', 'normalize_gradient',
        'relative_updates',
    ),
    'normlib.hessian': (
        'ConvergenceWarning', 'EigenResult', 'HessianOperator', 'LanczosResult', 'LayerMoments',
        'LearningRateThresholds', 'SGDRun', 'SpectralDensity', 'TraceEstimate', 'condition_number',
        'hessian_matrix', 'hessian_trace', 'lanczos', 'layer_second_moments',
        'learning_rate_thresholds', 'preserved_model_state', 'run_sgd', 'spectral_density',
        'top_eigenpairs',
    ),
    'normlib.analysis': (
        'InvarianceTable', 'NormDynamics', 'PopulationDiscrepancy', 'SNDEstimate', 'SNDSweep',
        'SND_METHODS', 'ScaleDynamics', 'TRANSFORMS', 'empirical_snd', 'equilibrium_angular_update',
        'equilibrium_norm', 'invariance_error', 'invariance_table', 'normalize_in_batches',
        'predicted_scale_dynamics', 'rescalable_layers', 'scale_dynamics', 'scale_invariant_parameters',
        'sgd_norm_dynamics', 'snd_sweep', 'stochastic_normalization_disturbance',
        'train_inference_discrepancy',
    ),
    'normlib.propagation': (
        'BN_GRADIENT_EXPLOSION_LIMIT', 'GRADIENT_STATISTICS', 'MODES', 'RESNET_BRANCHES', 'STATISTICS',
        'activation_variance', 'bn_gradient_explosion_rate', 'bn_similarity_fixed_point',
        'cosine_similarity_matrix', 'derived_seed', 'effective_rank', 'gn_gradient_explosion_rate',
        'gram_eigenvalues', 'gram_matrix', 'grid_configurations', 'groupnorm_rank_lower_bound',
        'growth_rate', 'mean_cosine_similarity', 'numerical_rank', 'orthogonality_gap',
        'preserved_state', 'probe', 'probe_points', 'readout_gap_curve', 'relu_correlation_map',
        'relu_resnet_moments', 'relu_similarity_by_depth', 'representation_statistics',
        'residual_variance', 'running_maximum_moments', 'second_moment', 'stable_rank', 'sweep',
    ),
    'normlib.propagation.statistics': (
        'MIN_RTOL', 'STATISTICS', 'activation_variance', 'cosine_similarity_matrix', 'effective_rank',
        'gram_eigenvalues', 'gram_matrix', 'mean_cosine_similarity', 'numerical_rank',
        'orthogonality_gap', 'representation_statistics', 'second_moment', 'stable_rank',
    ),
    'normlib.propagation.probe': (
        'GRADIENT_STATISTICS', 'MODES', 'NORM_TYPES', 'preserved_state', 'probe', 'probe_points',
    ),
    'normlib.propagation.sweep': (
        'derived_seed', 'grid_configurations', 'growth_rate', 'sweep',
    ),
    'normlib.propagation.theory': (
        'BN_GRADIENT_EXPLOSION_LIMIT', 'RESNET_BRANCHES', 'bn_gradient_explosion_rate',
        'bn_similarity_fixed_point', 'gn_gradient_explosion_rate', 'groupnorm_rank_lower_bound',
        'readout_gap_curve', 'relu_correlation_map', 'relu_resnet_moments', 'relu_similarity_by_depth',
        'residual_variance', 'running_maximum_moments',
    ),
    'normlib.device': (
        'SIZES', 'default_device', 'pick', 'seed_everything', 'size_preset',
    ),
    'normlib.data': (
        'Split', 'cifar_root', 'load_cifar', 'load_digits', 'load_mnist1d', 'load_wine',
        'train_test_split',
    ),
    'normlib.models': (
        'BasicBlock', 'MLP', 'ResNet', 'VGG', 'has_activation_norm', 'kaiming_init_', 'resnet20',
        'resnet56',
    ),
    'normlib.linear': (
        'INPUT_TRANSFORMS', 'InputTransform', 'LeastSquares', 'LogisticRegression', 'condition_number',
        'fit_input_transform', 'gradient_descent', 'knn_accuracy', 'knn_predict', 'lr_thresholds',
        'mean_shift_lambda_max', 'mean_shift_second_moment', 'second_moment', 'steps_to_converge',
    ),
    'normlib.train': (
        'DATASETS', 'LrSearch', 'MODELS', 'MapEntry', 'ResultCache', 'RunResult', 'SCHEDULES',
        'STABLE_PROGRESS', 'TrainConfig', 'build_model', 'cache_dir', 'curves_frame',
        'data_fingerprint', 'divergence_threshold', 'largest_stable_lr', 'learning_rate_at',
        'load_dataset', 'results_frame', 'source_hash', 'train', 'train_seeds', 'training_map',
    ),
    'normlib.diagnose': (
        'Check', 'Diagnosis', 'PROPERTIES', 'STATUSES', 'Thresholds', 'diagnose', 'diagnose_config',
        'init_metrics', 'judge', 'spearman',
    ),
    'normlib.widgets': (
        'GROUPED_NORMS', 'PANELS', 'PropagationExplorer', 'explorer_config', 'plot_propagation',
        'propagation_profiles',
    ),
    'normlib.plotting': (
        'COLUMN_WIDTH', 'NORM_COLORS', 'NORM_MARKERS', 'THEORY', 'THEORY_BAND', 'figure', 'glue_figure',
        'norm_color', 'norm_label', 'norm_marker', 'norm_style', 'subplots', 'use_book_style',
    ),
}

CASES = [(module, name) for module, names in PREVIOUS_API.items() for name in names]


def test_the_snapshot_covers_every_documented_module():
    assert len(PREVIOUS_API) == 25 and len(CASES) == 328


@pytest.mark.parametrize("module, name", CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_a_public_name_of_the_previous_api_still_imports_from_the_same_path(module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"`from {module} import {name}` no longer works"
    exported = getattr(mod, "__all__", None)
    if exported is not None and not name.startswith("__"):
        assert name in exported, f"{module}.{name} imports but is missing from {module}.__all__"
