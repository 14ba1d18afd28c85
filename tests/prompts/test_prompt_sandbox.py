"""Templates run sandboxed: no way out to Python internals, no mutation, no runaway sizes."""

from __future__ import annotations

import pytest

from contextkit.prompts import MissingValueError, PromptSecurityError, render


class Account:
    def __init__(self) -> None:
        self.name = "Ada"
        self._secret = "s3cret"

    def delete(self) -> str:
        return "deleted"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ x.__class__ }}",
        "{{ x.__class__ | default('fallback') }}",
        "{{ missing.__class__ }}",
        "{{ account._secret }}",
        "{{ account['_secret'] }}",
        "{{ account.__dict__ }}",
        "{{ account.delete.__func__.__globals__ }}",
        "{{ '{0.__class__}'.format(x) }}",
        "{{ '{a.__class__}'.format_map({'a': x}) }}",
        "{{ self.__init__ }}",
        "{{ (x|attr('__class__')) }}",
    ],
)
def test_escapes_to_python_internals_are_blocked(template):
    with pytest.raises(PromptSecurityError) as caught:
        render(template, {"x": 1, "account": Account()})

    assert caught.value.line == 1
    assert "sandbox" in caught.value.hint


@pytest.mark.parametrize(
    "template",
    [
        "{{ items.append(4) }}",
        "{{ items.pop() }}",
        "{{ settings.update({'admin': True}) }}",
        "{{ settings.clear() }}",
        "{% set _ = items.extend([1]) %}",
    ],
)
def test_calling_mutating_methods_is_blocked(template):
    items, settings = [1, 2, 3], {"admin": False}

    with pytest.raises(PromptSecurityError):
        render(template, {"items": items, "settings": settings})

    assert items == [1, 2, 3] and settings == {"admin": False}


@pytest.mark.parametrize(
    "template",
    [
        "{{ range(10 ** 7) | list | length }}",
        "{{ 'a' * 10 ** 8 }}",
        "{{ [0] * 10 ** 7 }}",
        "{{ 2 ** 100000 }}",
    ],
)
def test_runaway_sizes_are_blocked(template):
    with pytest.raises(PromptSecurityError):
        render(template, {})


def test_reasonable_arithmetic_and_ranges_still_work():
    assert render("{{ '-' * 3 }}{{ 2 ** 10 }}{{ range(3) | sum }}", {}) == "---10243"


def test_public_attributes_and_safe_methods_work():
    account = Account()

    text = render(
        "{{ account.name | upper }} {{ 'a,b'.split(',') | join('+') }}",
        {"account": account},
    )

    assert text == "ADA a+b"


def test_lipsum_global_is_removed():
    with pytest.raises(MissingValueError, match="lipsum"):
        render("{{ lipsum(1000) }}", {})
