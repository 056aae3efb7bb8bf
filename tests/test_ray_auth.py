"""Ray token auth settings (``pipelines.on_ray.auth``); a local Ray started with them is in
test_ray_startup.py, the real refusal by a cluster in test_ray_cluster.py."""

import os
import stat

import pytest

from pipelines.on_ray import auth as ray_auth
from pipelines.on_ray.auth import RayAuthError, cluster_auth_env, prepare_ray_auth, write_token_file


@pytest.fixture(autouse=True)
def _no_auth_env(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so whatever a test sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(ray_auth, "RAY_DEFAULT_TOKEN", tmp_path / "home" / ".ray" / "auth_token")
    monkeypatch.setattr(ray_auth, "_refresh_ray_config", lambda: None)


def test_token_file_is_private_random_and_kept(tmp_path):
    path = write_token_file(tmp_path / "state" / "auth_token")
    token = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex
    assert write_token_file(path).read_text() == token  # never overwritten
    assert write_token_file(tmp_path / "other").read_text() != token


def test_cluster_env_generates_a_token_when_none_is_given(tmp_path):
    env = cluster_auth_env(tmp_path)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}
    assert cluster_auth_env(tmp_path) == env  # the same token on the next start


def test_cluster_env_prefers_the_secret_from_the_environment(tmp_path, monkeypatch):
    secret = write_token_file(tmp_path / "secret" / "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(secret))
    env = cluster_auth_env(tmp_path / "state")
    assert env["RAY_AUTH_TOKEN_PATH"] == str(secret)
    assert not (tmp_path / "state" / "auth_token").exists()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "f" * 64)
    assert cluster_auth_env(tmp_path / "state") == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "f" * 64,
    }


def test_a_token_file_others_can_read_is_refused(tmp_path, monkeypatch):
    secret = write_token_file(tmp_path / "token")
    secret.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(secret))
    with pytest.raises(RayAuthError, match="chmod 600"):
        cluster_auth_env(tmp_path)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(RayAuthError, match="does not name a file"):
        prepare_ray_auth("127.0.0.1:6379")


def test_joining_a_cluster_means_token_auth(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # e.g. inherited from a test environment
    with pytest.raises(RayAuthError, match="requires token authentication"):
        prepare_ray_auth("10.0.0.5:6379")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(write_token_file(tmp_path / "t")))
    prepare_ray_auth("10.0.0.5:6379")
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_the_local_ray_defaults_to_token_auth_with_a_generated_token(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    prepare_ray_auth("")
    token = tmp_path / "dagster_home" / "ray_auth_token"
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert not (tmp_path / "home").exists()  # never Ray's own ~/.ray/auth_token


def test_an_explicit_local_mode_is_respected(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # what the test suite sets
    prepare_ray_auth("")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ
