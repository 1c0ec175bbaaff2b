"""`sshd`: one real OpenSSH server on 127.0.0.1 per test module (tests.e2e.sshd_fixture)."""

from __future__ import annotations

import pytest

from tests.e2e.sshd_fixture import missing_tools, running_sshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    reason = missing_tools()
    if reason is not None:
        pytest.skip(reason)
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
