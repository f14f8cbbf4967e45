"""cli/user_env.py: LC_CTYPE as the user gave it, when Python coerced its own (PEP 538)."""
from __future__ import annotations

import pytest

from cli.user_env import user_environ


@pytest.fixture
def started(tmp_path):
    """started(**env) -> the path of an environ file as /proc/self/environ holds it."""
    def write(**env):
        path = tmp_path / "environ"
        path.write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        return str(path)
    return write


def test_an_lc_ctype_the_user_never_set_is_dropped(started):
    assert user_environ({"PATH": "/bin", "LC_CTYPE": "C.UTF-8"}, started(PATH="/bin")) == {"PATH": "/bin"}


def test_an_lc_ctype_of_c_is_put_back(started):
    assert user_environ({"LC_CTYPE": "C.utf8"}, started(LC_CTYPE="C")) == {"LC_CTYPE": "C"}


def test_the_users_own_lc_ctype_stays(started):
    assert user_environ({"LC_CTYPE": "C.UTF-8"}, started(LC_CTYPE="C.UTF-8")) == {"LC_CTYPE": "C.UTF-8"}
    assert user_environ({"LC_CTYPE": "de_DE.UTF-8"}, started()) == {"LC_CTYPE": "de_DE.UTF-8"}


def test_with_lc_all_set_python_does_not_coerce(started):
    env = {"LC_ALL": "C", "LC_CTYPE": "UTF-8"}
    assert user_environ(env, started(LC_ALL="C")) == env


def test_without_proc_the_environment_is_taken_as_it_is(tmp_path):
    env = {"LC_CTYPE": "C.UTF-8"}
    assert user_environ(env, str(tmp_path / "none")) == env
