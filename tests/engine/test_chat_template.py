"""The bundle's chat template renders like Hugging Face's, inside a sandbox."""

from __future__ import annotations

import pytest

from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.errors import BadRequest, BundleError
from tests.fixtures.tiny_models import CHAT_TEMPLATE

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
]


def test_chatml_with_generation_prompt() -> None:
    text = ChatTemplate(CHAT_TEMPLATE).render(MESSAGES)  # type: ignore[arg-type]
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_without_generation_prompt() -> None:
    text = ChatTemplate(CHAT_TEMPLATE).render(MESSAGES, add_generation_prompt=False)  # type: ignore[arg-type]
    assert not text.endswith("assistant\n")


def test_bos_and_eos_variables_and_block_trimming() -> None:
    source = (
        "{{ bos_token }}\n{% for m in messages %}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    )
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    assert template.render(MESSAGES) == "<s>\nBe brief.</s>\nHi</s>\n"  # type: ignore[arg-type]


def test_raise_exception_becomes_a_bad_request() -> None:
    source = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
    )
    with pytest.raises(BadRequest, match="System role not supported"):
        ChatTemplate(source).render(MESSAGES)  # type: ignore[arg-type]


def test_tojson_loop_controls_and_strftime() -> None:
    source = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m | tojson }}{% endfor %}{{ strftime_now('%Y') | length }}"
    )
    assert ChatTemplate(source).render(MESSAGES) == (  # type: ignore[arg-type]
        '{"role": "system", "content": "Be brief."}4'
    )


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ raise_exception.__globals__['__builtins__']['open']('/etc/passwd').read() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{% set x = messages.append({'role': 'user', 'content': 'injected'}) %}",
        "{{ cycler.__init__.__globals__.os.system('touch /tmp/pwned-by-template') }}",
    ],
)
def test_hostile_template_cannot_reach_internals(hostile: str) -> None:
    with pytest.raises(BundleError):
        ChatTemplate(hostile).render(MESSAGES)  # type: ignore[arg-type]


def test_template_that_does_not_compile_is_a_bundle_error() -> None:
    with pytest.raises(BundleError):
        ChatTemplate("{% for m in messages %}")
