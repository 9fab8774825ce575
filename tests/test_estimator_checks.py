"""scikit-learn's own estimator checks on NeuroClassifier and T1wPreprocessor.

``NeuroClassifier`` goes through :func:`~sklearn.utils.estimator_checks.parametrize_with_checks`.
Its inputs are volumes ``(N, X, Y, Z)`` / ``(N, C, X, Y, Z)`` or images, never the 2D feature
arrays ``(n_samples, n_features)`` sklearn's data checks are built on: those checks cannot apply
and are listed below, each with its reason (strict: one that starts passing fails the test, so the
list stays true). What they would check on 2D data is checked on volumes at the end of this file.

``T1wPreprocessor`` learns one subject's registration: ``fit`` takes that subject's image, not a
set of samples, so none of the data checks can apply; its parameter-API checks, which need no
data, run one by one.
"""

import pickle

import numpy as np
import pytest
import sklearn
from sklearn.base import clone

from neuroml.errors import ConfigError, InputError
from neuroml.preprocessing import T1wPreprocessor
from neuroml.training import NeuroClassifier

_SKLEARN = tuple(int(p) for p in sklearn.__version__.split(".")[:2])
if _SKLEARN < (1, 6):
    pytest.skip("expected_failed_checks needs scikit-learn >= 1.6", allow_module_level=True)

from sklearn.utils import estimator_checks  # noqa: E402

_2D = "feeds 2D (n_samples, n_features) arrays; NeuroClassifier takes 3D volumes (N, X, Y, Z)"
#: Every check NeuroClassifier cannot take, with why.
NOT_APPLICABLE = {
    "check_fit_score_takes_y": _2D,
    "check_estimators_overwrite_params": _2D,
    "check_dont_overwrite_parameters": _2D,
    "check_estimators_fit_returns_self": _2D,
    "check_readonly_memmap_input": _2D,
    "check_n_features_in_after_fitting": _2D + "; volumes have a spatial_shape_, not features",
    "check_n_features_in": _2D + "; volumes have a spatial_shape_, not features",
    "check_positive_only_tag_during_fit": _2D,
    "check_estimators_dtypes": _2D,
    "check_complex_data": _2D + " of complex numbers",
    "check_dtype_object": _2D + " of objects",
    "check_estimators_empty_data_messages": _2D + " with no rows or columns",
    "check_pipeline_consistency": _2D,
    "check_estimators_nan_inf": _2D + " (NaN in volumes: test_estimator_api.py)",
    "check_estimator_sparse_tag": "sparse 2D matrices; volumes are dense",
    "check_estimator_sparse_array": "sparse 2D arrays; volumes are dense",
    "check_estimator_sparse_matrix": "sparse 2D matrices; volumes are dense",
    "check_estimators_pickle": _2D,
    "check_f_contiguous_array_estimator": _2D,
    "check_classifier_data_not_an_array": _2D + " wrapped in a non-array type",
    "check_classifiers_one_label": _2D + " (one class on volumes: below)",
    "check_classifiers_classes": _2D,
    "check_classifiers_train": _2D,
    "check_classifiers_regression_target": _2D,
    "check_supervised_y_2d": _2D,
    "check_methods_sample_order_invariance": _2D,
    "check_methods_subset_invariance": _2D,
    "check_fit2d_1sample": _2D + " with one row",
    "check_fit2d_1feature": _2D + " with one column",
    "check_dict_unchanged": _2D,
    "check_fit_idempotent": _2D,
    "check_fit_check_is_fitted": _2D,
    "check_fit2d_predict1d": _2D,
    "check_requires_y_none": _2D,
}

#: Small and quick: 1 epoch on CPU, every image used for training, no augmentation.
TINY = dict(epochs=1, val_fraction=0, augment=False, device="cpu", amp=False, batch_size=4)

_xfail = {"xfail_strict": True} if _SKLEARN >= (1, 8) else {}


@estimator_checks.parametrize_with_checks(
    [NeuroClassifier(**TINY)], expected_failed_checks=lambda est: NOT_APPLICABLE, **_xfail
)
def test_neuro_classifier_passes_sklearn_checks(estimator, check, one_torch_thread):
    check(estimator)


# -- the 2D data checks' questions, asked with volumes ----------------------------------------------
def _volumes(n=8, seed=0, shape=(17, 18, 19)):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


Y = np.array(["a", "b"] * 4)


@pytest.fixture(scope="module")
def fitted(one_torch_thread):
    clf = NeuroClassifier(**TINY)
    params = clf.get_params()
    assert clf.fit(_volumes(), Y) is clf  # check_estimators_fit_returns_self
    assert clf.get_params() == params  # check_dont_overwrite_parameters
    return clf


def test_volume_fit_sets_only_underscored_attributes(fitted):
    public = {k for k in vars(fitted) if not k.endswith("_") and not k.startswith("_")}
    assert public == set(fitted.get_params())


def test_volume_predict_leaves_the_estimator_unchanged(fitted):
    before = {k: repr(v) for k, v in vars(fitted).items()}
    fitted.predict(_volumes(3, seed=1))
    fitted.predict_proba(_volumes(3, seed=1))
    assert {k: repr(v) for k, v in vars(fitted).items()} == before  # check_dict_unchanged


def test_volume_fit_is_idempotent_and_pickles(fitted):
    test = _volumes(5, seed=2)
    again = clone(fitted).fit(_volumes(), Y).fit(_volumes(), Y)
    np.testing.assert_allclose(again.predict_proba(test), fitted.predict_proba(test), atol=1e-6)
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.predict_proba(test), fitted.predict_proba(test))


def test_volume_predictions_do_not_depend_on_batch_or_order(fitted):
    test = _volumes(6, seed=3)
    proba = fitted.predict_proba(test)
    np.testing.assert_allclose(fitted.predict_proba(test[2:4]), proba[2:4], atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(test[::-1]), proba[::-1], atol=1e-6)


def test_volume_one_class_is_refused():
    with pytest.raises(InputError, match="single class"):
        NeuroClassifier(**TINY).fit(_volumes(4), ["a"] * 4)


# -- T1wPreprocessor: the parameter API ------------------------------------------------------------
T1W_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_no_attributes_set_in_init",
]


@pytest.mark.parametrize("name", T1W_CHECKS)
def test_t1w_preprocessor_parameter_api(name):
    getattr(estimator_checks, name)("T1wPreprocessor", T1wPreprocessor(resolution=8.0))


def test_t1w_preprocessor_clone_keeps_extra_parameters():
    pre = T1wPreprocessor(resolution=8.0, n4=False)
    assert clone(pre).get_params() == pre.get_params()


def test_t1w_preprocessor_parameters_are_its_preprocessing_parameters():
    from neuroml.preprocessing import DEFAULT_PARAMS

    assert set(T1wPreprocessor().get_params()) == set(DEFAULT_PARAMS) | {"n_threads"}
    with pytest.raises(TypeError, match="n4_spacing"):
        T1wPreprocessor(n4_spacing=3.0)  # a typo of n4_spacing_mm
    with pytest.raises(ConfigError, match="Did you mean 'n4_spacing_mm'"):
        T1wPreprocessor().set_params(n4_spacing=3.0)
    assert T1wPreprocessor().set_params(n4=False).n4 is False
    assert (
        repr(T1wPreprocessor(resolution=8.0, n4=False))
        == "T1wPreprocessor(resolution=8.0, n4=False)"
    )
