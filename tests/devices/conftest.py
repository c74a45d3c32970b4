"""Fixtures for the doctor tests: real mosquitto brokers and a tiny verified bundle."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.broker import BrokerAuth, MosquittoBroker, User

DOCTOR_USER = User("gateway", "s3cret-pass", ("topic readwrite edge/#",))


@pytest.fixture(scope="session")
def doctor_user() -> User:
    """Return the one user the auth broker accepts."""
    return DOCTOR_USER


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """Yield a running anonymous mosquitto on a free loopback port."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("open-broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """Yield a running mosquitto that refuses anonymous clients and knows DOCTOR_USER."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("auth-broker"), BrokerAuth([DOCTOR_USER]))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def good_bundle(tiny_bundle: Callable[..., Path]) -> Path:
    """Return a tiny verified bundle (shared, never modified)."""
    return tiny_bundle("llama", "fp32")


@pytest.fixture
def tampered_bundle(good_bundle: Path, tmp_path: Path) -> Path:
    """Return a copy of the tiny bundle whose tokenizer was altered after conversion."""
    copy = tmp_path / "tampered"
    shutil.copytree(good_bundle, copy)
    tokenizer = copy / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"', "'", 1))
    return copy
