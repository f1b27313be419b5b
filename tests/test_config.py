"""Config: found by --config / $DIGEST_CONFIG / ./digest.toml, env overrides, one-line errors."""

from __future__ import annotations

import pytest

from conftest import run_digest, write_config
from digest.config import load_settings


def test_env_overrides_the_file(tmp_path, monkeypatch):
    path = write_config(tmp_path, smtp_port=2500)
    monkeypatch.setenv("DIGEST_SMTP__PORT", "2525")
    monkeypatch.setenv("DIGEST_NEWSLETTER__NAME", "From Env")
    cfg = load_settings(path)
    assert cfg.smtp.port == 2525 and cfg.newsletter.name == "From Env"
    assert cfg.digest.excerpt_words == 60 and cfg.newsletter.public_url == "http://127.0.0.1:8000"


def test_found_through_digest_config_and_cwd(tmp_path):
    path = write_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import subprocess, sys, os
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    by_env = subprocess.run([sys.executable, "-m", "digest", "editions"], cwd=elsewhere, capture_output=True, text=True,
                            env={**env, "DIGEST_CONFIG": str(path)})
    assert by_env.returncode == 0, by_env.stderr
    by_cwd = subprocess.run([sys.executable, "-m", "digest", "editions"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert by_cwd.returncode == 0 and "No editions yet." in by_cwd.stdout
    missing = subprocess.run([sys.executable, "-m", "digest", "editions"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert missing.returncode == 2
    assert "config file not found" in missing.stderr and "digest init" in missing.stderr


@pytest.mark.slow
def test_missing_and_wrong_keys_are_one_line_errors(tmp_path):
    path = write_config(tmp_path)
    text = path.read_text()
    path.write_text(text.replace('name = "Test Weekly"', "# no name"))
    proc = run_digest(path, "editions")
    assert proc.returncode == 2
    assert "missing required setting 'newsletter.name'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    path.write_text(text.replace('security = "none"', 'security = "ssl"'))
    proc = run_digest(path, "editions")
    assert "invalid setting 'smtp.security'" in proc.stderr and "Traceback" not in proc.stderr

    path.write_text(text.replace('from = "Test Weekly <news@digest.test>"', 'from = "nobody"'))
    assert "invalid setting 'newsletter.from'" in run_digest(path, "editions").stderr

    path.write_text(text + "\n[smtp\n")
    proc = run_digest(path, "editions")
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


@pytest.mark.slow
def test_init_writes_a_commented_config_with_a_fresh_secret(tmp_path):
    path = tmp_path / "digest.toml"
    proc = run_digest(path, "init", "--name", "Codelooru Weekly", "--feed", "feed.xml")
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    assert "DIGEST_<SECTION>__<KEY>" in text and "secret_key" in text
    cfg = load_settings(path)
    assert cfg.newsletter.name == "Codelooru Weekly" and len(cfg.newsletter.secret_key) >= 32
    assert cfg.feed_locations() == [str(tmp_path / "feed.xml")]
    assert (tmp_path / "digest.db").exists()
    other = tmp_path / "b" / "digest.toml"
    other.parent.mkdir()
    run_digest(other, "init", check=True)
    assert load_settings(other).newsletter.secret_key != cfg.newsletter.secret_key
    again = run_digest(path, "init", check=True)
    assert "left as it is" in again.stdout and path.read_text() == text
