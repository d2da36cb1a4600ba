def test_arch_choices_are_the_architecture_table():
    """Every architecture ``build_vit`` knows can be chosen in a config, and nothing else."""
    from sparsedino.models import ARCHS
    from sparsedino.train.settings import _CHOICES

    assert set(_CHOICES["model.arch"]) == set(ARCHS)
