"""Config: found by --config / $DIGEST_CONFIG / ./digest.toml, env overrides, one-line errors."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, one_line_error, run_digest, write_config
from digest.config import TABLE_LISTS, field_of, initial_value, load_settings, section_models, toml_value


def test_env_overrides_the_file(tmp_path, monkeypatch):
    path = write_config(tmp_path, smtp_port=2500)
    monkeypatch.setenv("DIGEST_SMTP__PORT", "2525")
    monkeypatch.setenv("DIGEST_NEWSLETTER__NAME", "From Env")
    cfg = load_settings(path)
    assert cfg.smtp.port == 2525 and cfg.newsletter.name == "From Env"
    assert cfg.edition.excerpt_words == 60 and cfg.newsletter.public_url == "http://127.0.0.1:8000"


def test_found_through_digest_config_and_cwd(tmp_path):
    path = write_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import os
    import subprocess
    import sys
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
    [feed] = cfg.feed_locations()
    assert feed.location == str(tmp_path / "feed.xml") and feed.key == "feed.xml"
    assert (tmp_path / "digest.db").exists()
    other = tmp_path / "b" / "digest.toml"
    other.parent.mkdir()
    run_digest(other, "init", check=True)
    assert load_settings(other).newsletter.secret_key != cfg.newsletter.secret_key
    again = run_digest(path, "init", check=True)
    assert "left as it is" in again.stdout and path.read_text() == text


def line_of(path, text: str) -> int:
    """The number of the config file's line that starts with `text`."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.startswith(text))


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("DIGEST_SMTP__PORT", "70000", "invalid setting 'smtp.port': Input should be less than or equal to 65535"),
        ("DIGEST_SMTP__TIMEOUT", "0", "invalid setting 'smtp.timeout': Input should be greater than 0"),
        ("DIGEST_SMTP__LOCAL_HOSTNAME", "my host", "invalid setting 'smtp.local_hostname': must be one host name"),
        ("DIGEST_FEEDS__TIMEOUT", "-1", "invalid setting 'feeds.timeout': Input should be greater than 0"),
        ("DIGEST_FEEDS__MAX_BYTES", "-5", "invalid setting 'feeds.max_bytes': Input should be greater than or equal to 1"),
        ("DIGEST_FEEDS__URLS", '["a.atom", ', "invalid setting 'feeds.urls': not a JSON list"),
        ("DIGEST_NEWSLETTER__SUBJECT", "{name}: {count} posts", "invalid setting 'newsletter.subject': unknown field {count}: use {name}, {n}, {number}, {date}"),
        ("DIGEST_NEWSLETTER__SUBJECT", "{name} {", "invalid setting 'newsletter.subject': Single '{' encountered"),
        ("DIGEST_NEWSLETTER__SITE_URL", "blog.example.com", "invalid setting 'newsletter.site_url': must start with http:// or https://"),
        ("DIGEST_DATABASE__URL", "notadb://x", "invalid setting 'database.url': unknown kind of database 'notadb'"),
        ("DIGEST_DATABASE__URL", "digest.db", "invalid setting 'database.url': not a database URL"),
        ("DIGEST_DELIVERY__JOURNAL_DIR", "digest.toml", "invalid setting 'delivery.journal_dir': {dir}/digest.toml is a file, not a directory"),
        ("DIGEST_EDITION__TEMPLATES_DIR", "mytemplates", "invalid setting 'edition.templates_dir': {dir}/mytemplates does not exist"),
        ("DIGEST_SMTPP__HOST", "mail.example.com", "not a digest setting: there is no section [smtpp] (did you mean DIGEST_SMTP__HOST?)"),
        ("DIGEST_SMTP__PROT", "2525", "not a digest setting: [smtp] has no key 'prot' (did you mean DIGEST_SMTP__PORT?)"),
        ("DIGEST_SMTP", '{"port": 2525}', "not a digest setting: set each key of [smtp] as DIGEST_SMTP__<KEY>"),
    ],
)
def test_a_bad_environment_variable_is_one_line_naming_it(tmp_path, variable, value, message):
    path = write_config(tmp_path)
    proc = run_digest(path, "editions", env={variable: value})
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(f"error: {variable}: " + message.replace("{dir}", str(tmp_path)))


@pytest.mark.parametrize(
    "line, replacement, message",
    [
        ("port = 25", "port = 65536", "invalid setting 'smtp.port': Input should be less than or equal to 65535"),
        ("# rate_limit = 0", "timeout = 0", "invalid setting 'smtp.timeout': Input should be greater than 0"),
        ('host = "127.0.0.1"', 'local_hostname = "mail example com"', "invalid setting 'smtp.local_hostname': must be one host name"),
        ("# timeout = 20            # seconds for a whole feed fetch", "timeout = -1", "invalid setting 'feeds.timeout': Input should be greater than 0"),
        ("# max_bytes", "max_bytes = -1", "invalid setting 'feeds.max_bytes': Input should be greater than or equal to 1"),
        ("# subject =", 'subject = "{name} #{nummer}"', "invalid setting 'newsletter.subject': unknown field {nummer}"),
        ("# subject =", 'subject = "{number:03d}"', "invalid setting 'newsletter.subject': cannot be filled in"),
        ("port = 25", "prot = 25", "unknown setting 'smtp.prot' (did you mean 'smtp.port'?)"),
        ("[smtp]", "[smpt]", "unknown section [smpt] (did you mean [smtp]?)"),
        ("# templates_dir", 'templates_dir = "digest.toml"', "invalid setting 'edition.templates_dir': {dir}/digest.toml is not a directory"),
        ("# journal_dir", 'journal_dir = "digest.toml"', "invalid setting 'delivery.journal_dir': {dir}/digest.toml is a file, not a directory"),
    ],
)
def test_a_bad_setting_in_the_file_is_one_line_naming_file_line_and_key(tmp_path, line, replacement, message):
    """What used to fail only at send time (or never) is refused when the settings load."""
    path = write_config(tmp_path)
    number = line_of(path, line)
    lines = path.read_text().splitlines()
    lines[number - 1] = replacement
    path.write_text("\n".join(lines) + "\n")
    proc = run_digest(path, "editions")
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(f"error: {path}:{number}: " + message.replace("{dir}", str(tmp_path)))


def test_a_login_needs_both_username_and_password(tmp_path):
    path = write_config(tmp_path)
    proc = run_digest(path, "editions", env={"DIGEST_SMTP__USERNAME": "digest"})
    assert proc.returncode == 2
    assert one_line_error(proc) == (f"error: {path}: missing required setting 'smtp.password' (smtp.username is set;"
                                    " set it in the file or as DIGEST_SMTP__PASSWORD)")
    path.write_text(path.read_text().replace('# password = ""', 'password = "s3cret"'))
    proc = run_digest(path, "editions")
    assert "missing required setting 'smtp.username' (smtp.password is set;" in one_line_error(proc)
    path.write_text(path.read_text().replace('# username = ""', 'username = "digest"'))
    assert run_digest(path, "editions").returncode == 0


def test_feed_urls_from_the_environment_are_comma_separated_or_json(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    monkeypatch.setenv("DIGEST_FEEDS__URLS", "feed.atom")
    assert load_settings(path).feeds.urls == ["feed.atom"]
    monkeypatch.setenv("DIGEST_FEEDS__URLS", "https://a.example/feed, https://b.example/feed?tags=x")
    assert load_settings(path).feeds.urls == ["https://a.example/feed", "https://b.example/feed?tags=x"]
    monkeypatch.setenv("DIGEST_FEEDS__URLS", '["https://a.example/feed?tags=x,y"]')
    assert load_settings(path).feeds.urls == ["https://a.example/feed?tags=x,y"]
    monkeypatch.setenv("DIGEST_EDITION__SECTIONS", "Architecture,In Focus")
    assert load_settings(path).edition.sections == ["Architecture", "In Focus"]
    proc = run_digest(path, "fetch", env={"DIGEST_FEEDS__URLS": "feed.atom"})
    assert proc.returncode == 1 and "feed.atom" in one_line_error(proc)


def test_digest_variables_that_are_not_settings_are_left_alone(tmp_path):
    path = write_config(tmp_path)
    env = {"DIGEST_COPY_TO": "sqlite:///copy.db", "DIGEST_TEST_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1/y",
           "DIGEST_CONFIG": str(path), "digest_smtp__port": "2525"}
    assert run_digest(path, "editions", env=env).returncode == 0


README = ROOT / "README.md"


def readme_default(section: str, key: str) -> str:
    """A key's default as the README's tables show it."""
    field = field_of(section, key)
    if field.is_required():
        return "required"
    if field.default is None:
        return (field.json_schema_extra or {}).get("unset", "unset")
    value = field.default
    shown = toml_value(value) if isinstance(value, (bool, float, list)) else str(value)
    return f"`{shown}`"


def settings_table() -> str:
    """README.md's configuration table, as the models say it: key, meaning, default."""
    rows = ["| key | meaning | default |", "|---|---|---|"]
    for section, model in section_models().items():
        for name, field in model.model_fields.items():
            key = field.alias or name
            rows.append(f"| `{section}.{key}` | {field.description} | {readme_default(section, key)} |")
    for section, model in TABLE_LISTS.items():  # `[[webhooks]]`: every key of a table is required
        for name, field in model.model_fields.items():
            assert field.is_required(), f"{section}.{name}"
            rows.append(f"| `{section}[].{field.alias or name}` | {field.description} | required |")
    return "\n".join(rows) + "\n"


def test_the_readme_configuration_table_is_the_settings_models():
    expected = settings_table()
    assert expected in README.read_text(encoding="utf-8"), (
        "README.md's configuration table differs from the settings models (config.py); it should read:\n" + expected)


def test_every_default_the_readme_shows_elsewhere_is_the_models():
    """The schedule's table (key, default, longer meaning) and the commented `# key = value`
    lines of the README's TOML examples, which show defaults."""
    readme = README.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)\.(\w+)` \| ([^|]+) \| [^|]+ \|$", readme.split("### The schedule", 1)[1], re.M)
    assert rows and {section for section, _, _ in rows} == {"schedule"}
    for section, key, default in rows:
        assert default.strip() == readme_default(section, key), f"{section}.{key}"
    shown = 0
    for block in re.findall(r"^```toml\n(.*?)^```", readme, re.M | re.S):
        section = None
        for line in block.splitlines():
            header = re.match(r"\[(\w+)\]", line)
            commented = re.match(r"# (\w+) = (\S+)", line)
            if header:
                section = header.group(1)
            elif commented and section:
                shown += 1
                assert commented.group(2) == toml_value(initial_value(section, commented.group(1))), line
    assert shown >= 2


def test_init_writes_every_key_with_its_description_and_default(tmp_path):
    path = write_config(tmp_path)
    text = path.read_text(encoding="utf-8")
    for section, model in section_models().items():
        for name, field in model.model_fields.items():
            key = field.alias or name
            lines = re.split(r"^\[\w+\]\n", text.split(f"\n[{section}]\n", 1)[1], flags=re.M)[0]  # the section's
            setting = re.search(rf"^(# )?{key} = (.*?)(  +# .*)?$", lines, re.M)
            assert setting, f"{section}.{key}"
            if setting.group(1):  # commented out: at its default (or an example of a value)
                assert setting.group(2) == toml_value(initial_value(section, key)), f"{section}.{key}"
            first_words = (field.description or "").split()[:3]
            assert " ".join(first_words) in " ".join(text.split()), f"{section}.{key}: its description"


def old_section_name(path) -> int:
    """Rename the file's [edition] to [digest], its former name; the header's line number."""
    text = path.read_text(encoding="utf-8")
    assert text.count("\n[edition]\n") == 1
    path.write_text(text.replace("\n[edition]\n", "\n[digest]\n"), encoding="utf-8")
    return line_of(path, "[digest]")


def test_the_former_section_digest_is_read_as_edition_with_one_warning(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    number = old_section_name(path)
    path.write_text(path.read_text().replace("excerpt_words = 60", "excerpt_words = 25"))
    assert load_settings(path).edition.excerpt_words == 25
    proc = run_digest(path, "editions")
    assert proc.returncode == 0 and "No editions yet." in proc.stdout
    assert one_line_error(proc).endswith(
        f"WARNING config: [digest] is now [edition], DIGEST_DIGEST__* is now DIGEST_EDITION__*: rename [digest] in"
        f" {path}:{number} (the former name is read until the next release)")
    proc = run_digest(path, "editions", env={"DIGEST_DIGEST__EXCERPT_WORDS": "2"})  # the variable is named in errors
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == ("error: DIGEST_DIGEST__EXCERPT_WORDS: invalid setting 'edition.excerpt_words':"
                                            " Input should be greater than or equal to 5")

    (tmp_path / "new").mkdir()
    monkeypatch.setenv("DIGEST_DIGEST__SECTIONS", "Architecture,In Focus")
    assert load_settings(write_config(tmp_path / "new")).edition.sections == ["Architecture", "In Focus"]


def test_both_names_of_the_section_at_once_are_an_error_naming_both(tmp_path):
    path = write_config(tmp_path)
    proc = run_digest(path, "editions", env={"DIGEST_DIGEST__EXCERPT_WORDS": "30", "DIGEST_EDITION__SECTIONS": "News"})
    assert proc.returncode == 2
    assert one_line_error(proc) == ("error: DIGEST_DIGEST__EXCERPT_WORDS and DIGEST_EDITION__SECTIONS: DIGEST_DIGEST__*"
                                    " and DIGEST_EDITION__* set the same section, now named [edition]: use"
                                    " DIGEST_EDITION__* only")
    new = line_of(path, "[edition]")
    path.write_text(path.read_text() + "\n[digest]\nexcerpt_words = 30\n")
    old = line_of(path, "[digest]")
    proc = run_digest(path, "editions")
    assert proc.returncode == 2
    assert one_line_error(proc) == (f"error: {path}:{old}: [digest] and [edition] ({path}:{new}) are the same section,"
                                    " now named [edition]: move the keys of [digest] into [edition]")
