"""The defaults the command line takes from the library are the ones its help states."""

import pytest

from neuroml.cli import build_parser
from neuroml.workflows.pipeline import step_default


@pytest.mark.parametrize(
    "command, option, step, parameter",
    [("train", "--folds", "train", "folds"), ("attribute", "--n-sanity", "attribute", "n_sanity")],
)
def test_help_states_the_library_default(command, option, step, parameter):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    (action,) = [a for a in sub._actions if option in a.option_strings]
    assert action.default is None  # unset unless given: the library's default applies
    assert f"(default {step_default(step, parameter)};" in action.help
