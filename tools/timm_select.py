"""pytest plugin: run timm's own tests/test_models.py on a chosen set of model names.

Usage (from the timm sdist's tests folder):
    TIMM_SELECT=name1,name2 PYTHONPATH=<repo>:<repo>/tools python -m pytest -p timm_select test_models.py

* imports sparsedino (registers the *_entmax15 names with timm);
* timm.list_models is wrapped so every parametrized test of test_models.py sees only the selected names
  (with the same filters timm applies: exclude filters, name_matches_cfg, pretrained, tags). Our names are
  registered from the module ``timm_models``; they are VisionTransformer models, so a module filter that
  names 'vision_transformer' also admits them (as it admits timm's own ViTs);
* TIMM_IGNORE_NAME_MATCHES_CFG=1 also runs the tests keyed on ``name_matches_cfg`` for names without a
  registered pretrained cfg (otherwise such names silently drop out of those tests);
* tests that need the network (pretrained downloads) are deselected, as are tests with hard-coded model
  names that are not among the selected ones;
* TIMM_SPARSIFY=<normaliser> (e.g. entmax15) passes every model the tests build through
  ``sparsedino.attention.sparsify`` right after ``timm.create_model`` (test_models.py imports
  ``create_model`` from ``timm`` after this plugin is loaded, so it gets the wrapped one);
  TIMM_SPARSIFY_POOLS=1 converts attention pools too.
"""

import os

import timm

import sparsedino  # noqa: F401  (registers the entmax names)
from sparsedino.attention import parse_normalizer, sparsify

SELECTED = [n.strip() for n in os.environ["TIMM_SELECT"].split(",") if n.strip()]
NETWORK_TESTS = {"test_model_inference", "test_model_load_pretrained", "test_model_features_pretrained"}
_orig_list_models = timm.list_models


def _as_list(value):
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def list_models(
    filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False, include_tags=None
):
    modules = _as_list(module)
    if "vision_transformer" in modules:
        modules.append("timm_models")
    if name_matches_cfg and os.environ.get("TIMM_IGNORE_NAME_MATCHES_CFG") == "1":
        # point the cfg-keyed tests at names without a registered pretrained cfg too (measuring "before")
        name_matches_cfg = False
    names = _orig_list_models(filter, modules, pretrained, exclude_filters, name_matches_cfg, include_tags)
    return [n for n in names if n.split(".")[0] in SELECTED]


timm.list_models = list_models

SPARSIFY = parse_normalizer(os.environ["TIMM_SPARSIFY"]) if os.environ.get("TIMM_SPARSIFY") else None
SPARSIFY_POOLS = os.environ.get("TIMM_SPARSIFY_POOLS") == "1"
_orig_create_model = timm.create_model


def create_model(*args, **kwargs):
    model = _orig_create_model(*args, **kwargs)
    return sparsify(model, SPARSIFY, pools=SPARSIFY_POOLS)


if SPARSIFY is not None:
    timm.create_model = create_model


def _model_of(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = params.get("model_name")
    return name.split(".")[0] if isinstance(name, str) else None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        name = _model_of(item)
        ok = item.originalname not in NETWORK_TESTS and name in SELECTED
        (keep if ok else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


_outcomes: dict = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        name = report.nodeid.split("[")[-1].rstrip("]").split("-")[-1].split(".")[0]
        _outcomes.setdefault(name, {}).setdefault(report.outcome, 0)
        _outcomes[name][report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    if SPARSIFY is not None:
        pools = " (pools too)" if SPARSIFY_POOLS else ""
        terminalreporter.write_line(
            f"every model was passed through sparsify(model, {SPARSIFY.name!r}){pools}"
        )
    terminalreporter.write_line("per-model outcome counts (all tags of a name together):")
    for name in sorted(_outcomes):
        terminalreporter.write_line(f"  {name}: {_outcomes[name]}")


def pytest_configure(config):
    for mark in (
        "timeout",
        "base",
        "cfg",
        "cfg_nonstd",
        "forward",
        "backward",
        "torchscript",
        "features",
        "fxforward",
        "fxbackward",
    ):
        config.addinivalue_line("markers", f"{mark}: timm test marker")
