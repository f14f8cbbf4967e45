"""cluster.users: scrypt records, and fenced user changes against a real etcd."""
from __future__ import annotations

import base64
import threading
import unicodedata

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cluster import users
from cluster.keys import decode
from lease.election import Fence
from lease.errors import NotLeader


@pytest.fixture
def epoch(etcd, keys) -> int:
    """We lead: a real leader key exists, and its create revision is our epoch."""
    etcd.put(keys.leader, b'{"name": "p1"}')
    return etcd.get(keys.leader)[1].create_revision


@pytest.fixture
def fence(etcd, keys, epoch):
    return Fence(etcd, keys.leader, epoch)


@pytest.fixture
def stale_fence(etcd, keys, epoch):
    """A fence of a leader whose epoch is over: the key was re-created by someone else."""
    etcd.delete(keys.leader)
    etcd.put(keys.leader, b'{"name": "p2"}')
    return Fence(etcd, keys.leader, epoch)


# -- password records (pure) -------------------------------------------------------

def test_hash_and_verify():
    record = users.hash_password("correct horse")
    assert {"n": 2 ** 14, "r": 8, "p": 1}.items() <= record.items()
    assert len(base64.b64decode(record["salt"])) == 16
    assert len(base64.b64decode(record["hash"])) == 32
    assert users.verify_password("correct horse", record)
    assert not users.verify_password("correct horsE", record)
    assert not users.verify_password("", record)


def test_salts_differ():
    a, b = users.hash_password("same password"), users.hash_password("same password")
    assert a["salt"] != b["salt"] and a["hash"] != b["hash"]


def test_verify_accepts_a_full_user_record():
    record = users.user_record("viewer", "s3cret-pass")
    assert record["role"] == "viewer"
    assert users.verify_password("s3cret-pass", record)
    assert not users.verify_password("s3cret-pasS", record)


def test_stored_parameters_are_used():
    """A record made with other scrypt parameters still verifies (they can change later)."""
    salt = b"0123456789abcdef"
    key = Scrypt(salt=salt, length=32, n=2 ** 10, r=4, p=2).derive(b"old-params")
    record = {"n": 2 ** 10, "r": 4, "p": 2, "salt": base64.b64encode(salt).decode(),
              "hash": base64.b64encode(key).decode()}
    assert users.verify_password("old-params", record)
    assert not users.verify_password("other-params", record)
    assert users.needs_rehash(record)
    assert not users.needs_rehash(users.hash_password("x" * 8))


def test_unicode_forms_of_one_password_match():
    composed = unicodedata.normalize("NFC", "päss wörd")
    decomposed = unicodedata.normalize("NFD", "päss wörd")
    assert composed != decomposed
    assert users.verify_password(decomposed, users.hash_password(composed))


def _good() -> dict:
    return users.hash_password("password1")


@pytest.mark.parametrize("breaks", [
    lambda r: None,
    lambda r: "not a dict",
    lambda r: {},
    lambda r: {**r, "salt": "%%%not-base64"},
    lambda r: {**r, "hash": ""},
    lambda r: {**r, "hash": base64.b64encode(b"short").decode()},
    lambda r: {k: v for k, v in r.items() if k != "salt"},
    lambda r: {**r, "n": 1000},          # not a power of two
    lambda r: {**r, "n": 2 ** 24},       # would cost 2 GiB
    lambda r: {**r, "p": True},
    lambda r: {**r, "r": "8"},
    lambda r: {"role": "admin", "scrypt": "x"},
])
def test_malformed_records_verify_false(breaks):
    assert not users.verify_password("password1", breaks(_good()))


def test_non_text_password_is_false():
    assert not users.verify_password(None, _good())
    assert not users.verify_password(b"password1", _good())


@pytest.mark.parametrize("name", ["", "a/b", "../admin", "-x", "a b", "x" * 64, None, 7])
def test_bad_user_names(name):
    with pytest.raises(users.UserError, match="user name"):
        users.validate_username(name)


def test_good_user_names():
    for name in ("admin", "alice.smith", "ci_bot-2", "x" * 63):
        assert users.validate_username(name) == name


def test_roles_and_password_length():
    with pytest.raises(users.UserError, match="role 'root'"):
        users.user_record("root", "long enough")
    with pytest.raises(users.UserError, match="at least 8 characters"):
        users.user_record("admin", "short")
    assert users.user_record("admin", "12345678")["role"] == "admin"


# -- users in etcd --------------------------------------------------------------------

def test_add_list_get(etcd, keys, fence):
    users.add_user(etcd, keys, "bob", "viewer", "bob-password", fence)
    users.add_user(etcd, keys, "alice", "admin", "alice-password", fence)
    assert users.list_users(etcd, keys) == [{"name": "alice", "role": "admin"},
                                            {"name": "bob", "role": "viewer"}]
    alice = users.get_user(etcd, keys, "alice")
    assert alice["name"] == "alice" and alice["role"] == "admin"
    assert users.verify_password("alice-password", alice)
    assert not users.verify_password("bob-password", alice)
    assert users.get_user(etcd, keys, "carol") is None
    assert users.get_user(etcd, keys, "../alice") is None


def test_add_existing_user_is_refused_and_keeps_the_old_password(etcd, keys, fence):
    users.add_user(etcd, keys, "bob", "viewer", "first-password", fence)
    with pytest.raises(users.UserExists, match="bob already exists"):
        users.add_user(etcd, keys, "bob", "admin", "second-password", fence)
    bob = users.get_user(etcd, keys, "bob")
    assert bob["role"] == "viewer" and users.verify_password("first-password", bob)


def test_add_user_refuses_bad_input_before_writing(etcd, keys, fence):
    with pytest.raises(users.UserError):
        users.add_user(etcd, keys, "bad/name", "viewer", "long enough", fence)
    with pytest.raises(users.UserError):
        users.add_user(etcd, keys, "bob", "viewer", "short", fence)
    assert users.list_users(etcd, keys) == []


def test_fenced_out_leader_cannot_add(etcd, keys, stale_fence):
    with pytest.raises(NotLeader):
        users.add_user(etcd, keys, "mallory", "admin", "long enough", stale_fence)
    assert users.get_user(etcd, keys, "mallory") is None


def test_only_the_fence_of_the_current_epoch_adds(etcd, keys, epoch):
    users.add_user(etcd, keys, "by-epoch", "viewer", "long enough", Fence(etcd, keys.leader, epoch))
    assert [u["name"] for u in users.list_users(etcd, keys)] == ["by-epoch"]
    with pytest.raises(NotLeader):
        users.add_user(etcd, keys, "late", "viewer", "long enough", Fence(etcd, keys.leader, epoch - 1))
    assert users.get_user(etcd, keys, "late") is None


def test_set_password(etcd, keys, fence):
    users.add_user(etcd, keys, "bob", "viewer", "old-password", fence)
    users.set_password(etcd, keys, "bob", "new-password", fence)
    bob = users.get_user(etcd, keys, "bob")
    assert bob["role"] == "viewer"
    assert users.verify_password("new-password", bob) and not users.verify_password("old-password", bob)
    with pytest.raises(users.UnknownUser):
        users.set_password(etcd, keys, "nobody", "new-password", fence)


def test_delete_user(etcd, keys, fence):
    users.add_user(etcd, keys, "alice", "admin", "alice-password", fence)
    users.add_user(etcd, keys, "bob", "viewer", "bob-password", fence)
    users.delete_user(etcd, keys, "bob", fence)
    assert users.get_user(etcd, keys, "bob") is None
    with pytest.raises(users.UnknownUser, match="no user named bob"):
        users.delete_user(etcd, keys, "bob", fence)


def test_last_admin_cannot_be_deleted(etcd, keys, fence):
    users.add_user(etcd, keys, "alice", "admin", "alice-password", fence)
    users.add_user(etcd, keys, "bob", "viewer", "bob-password", fence)
    with pytest.raises(users.UserError, match="last admin"):
        users.delete_user(etcd, keys, "alice", fence)
    users.add_user(etcd, keys, "carol", "admin", "carol-password", fence)
    users.delete_user(etcd, keys, "alice", fence)
    assert [u["name"] for u in users.list_users(etcd, keys)] == ["bob", "carol"]


def test_fenced_out_leader_cannot_delete(etcd, keys, epoch, fence):
    users.add_user(etcd, keys, "alice", "admin", "alice-password", fence)
    users.add_user(etcd, keys, "bob", "viewer", "bob-password", fence)
    with pytest.raises(NotLeader):
        users.delete_user(etcd, keys, "bob", Fence(etcd, keys.leader, epoch + 10_000))
    assert users.get_user(etcd, keys, "bob") is not None


# -- ensure_admin ---------------------------------------------------------------------

def test_ensure_admin_creates_admin_once(etcd, keys, fence):
    assert users.ensure_admin(etcd, keys, fence, password="given-password") == "given-password"
    admin = users.get_user(etcd, keys, "admin")
    assert admin["role"] == "admin" and users.verify_password("given-password", admin)
    assert users.ensure_admin(etcd, keys, fence, password="another-password") is None
    assert users.verify_password("given-password", users.get_user(etcd, keys, "admin"))


def test_ensure_admin_random_password(etcd, keys, fence, monkeypatch):
    monkeypatch.delenv("BATON_ADMIN_PASSWORD", raising=False)
    password = users.ensure_admin(etcd, keys, fence)
    assert isinstance(password, str) and len(password) >= 16
    assert users.verify_password(password, users.get_user(etcd, keys, "admin"))


def test_ensure_admin_uses_environment_password(etcd, keys, fence, monkeypatch):
    monkeypatch.setenv("BATON_ADMIN_PASSWORD", "from-the-env")
    assert users.ensure_admin(etcd, keys, fence) == "from-the-env"
    assert users.verify_password("from-the-env", users.get_user(etcd, keys, "admin"))


def test_ensure_admin_does_nothing_when_any_user_exists(etcd, keys, fence):
    users.add_user(etcd, keys, "alice", "viewer", "alice-password", fence)
    assert users.ensure_admin(etcd, keys, fence, password="given-password") is None
    assert users.get_user(etcd, keys, "admin") is None


def test_ensure_admin_refuses_short_password(etcd, keys, fence):
    with pytest.raises(users.UserError, match="at least 8"):
        users.ensure_admin(etcd, keys, fence, password="short")
    assert users.list_users(etcd, keys) == []


def test_ensure_admin_fenced_out(etcd, keys, stale_fence):
    with pytest.raises(NotLeader):
        users.ensure_admin(etcd, keys, stale_fence, password="given-password")
    assert users.list_users(etcd, keys) == []


def test_ensure_admin_loses_race_to_another_coordinator(etcd, keys, fence):
    """The other coordinator creates admin between our check and our commit."""
    theirs = users.user_record("admin", "their-password")

    class RacingFence(Fence):
        def commit(self, ops, also=()):
            from cluster.keys import encode
            etcd.put(keys.user("admin"), encode(theirs))
            return super().commit(ops, also)

    racing_fence = RacingFence(fence.etcd, fence.key, fence.epoch)
    assert users.ensure_admin(etcd, keys, racing_fence, password="our-password") is None
    assert users.verify_password("their-password", users.get_user(etcd, keys, "admin"))


def test_ensure_admin_concurrent_callers_create_one_admin(etcd, keys, fence):
    start = threading.Barrier(4)
    results: list = []

    def call(i):
        start.wait()
        results.append(users.ensure_admin(etcd, keys, fence, password=f"password-{i}"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r in results if r is not None]
    assert len(results) == 4 and len(winners) == 1
    assert users.verify_password(winners[0], users.get_user(etcd, keys, "admin"))
    assert len(etcd.get_prefix(keys.users)) == 1
    assert decode(etcd.get(keys.user("admin"))[0])["role"] == "admin"
