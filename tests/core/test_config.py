"""Config: defaults work, precedence flag > env > file > default, errors name file and key."""

from pathlib import Path

import pytest

from mta.config.engine import ConfigError
from mta.config.service import load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    config = load_config(None, environ={})
    assert config.smtp.listen == "127.0.0.1:2525"
    assert config.retry.validity == 3.5 * 86400
    assert config.delivery.timeouts.dot == 600.0


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[smtp]\nlisten = "127.0.0.1:3000"\nhostname = "file.test"\n[delivery]\nport = 2600\n',
    )
    env = {"MTA_SMTP_LISTEN": "127.0.0.1:3001", "MTA_DELIVERY_PORT": "2601"}
    config = load_config(path, flags={"smtp.listen": "127.0.0.1:3002"}, environ=env)
    assert config.smtp.listen == "127.0.0.1:3002"  # flag
    assert config.delivery.port == 2601  # env
    assert config.smtp.hostname == "file.test"  # file
    assert config.smtp.max_recipients == 1000  # default


def test_durations_accept_units(tmp_path: Path) -> None:
    path = write(tmp_path, '[retry]\nfirst = "90s"\nvalidity = "84h"\n')
    config = load_config(path, environ={"MTA_DELIVERY_TIMEOUTS_DOT": "2m"})
    assert (config.retry.first, config.retry.validity) == (90.0, 84 * 3600.0)
    assert config.delivery.timeouts.dot == 120.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[smtp]\nlisen = 1\n", "mta.toml: unknown key 'smtp.lisen'"),
        ('[smtp]\nmax_recipients = "many"\n', "mta.toml: smtp.max_recipients: expected an integer"),
        ('[smtp]\nlisten = "nowhere"\n', "mta.toml: smtp.listen: expected HOST:PORT"),
        ('[retry]\nvalidity = "5d"\n', "mta.toml: retry: validity must be more than 0 and at most"),
        ('[delivery]\ntls = "maybe"\n', "mta.toml: delivery.tls: expected one of"),
        ('[[dkim.keys]]\ndomain = "a.test"\n', "mta.toml: missing key 'dkim.keys[0].selector'"),
        ("[smtp\n", "mta.toml: not valid TOML"),
        (
            '[smtp]\nrelay_networks = ["10.0.0.300/8"]\n',
            "mta.toml: smtp: relay_networks: '10.0.0.300/8' is not an IP network",
        ),
        (
            '[smtp]\nrelay_networks = ["0.0.0.0/0"]\n',
            "mta.toml: smtp: relay_networks covers every IPv4 address: that is an open relay; "
            "set allow_open_relay = true",
        ),
        (
            '[smtp]\nrelay_networks = ["0.0.0.0/1", "128.0.0.0/1"]\n',
            "covers every IPv4 address",
        ),
        ('[smtp]\nrelay_networks = ["::/0"]\n', "covers every IPv6 address"),
        ("[smtp]\nmax_connections = -1\n", "mta.toml: smtp: max_connections must be 0"),
        (
            '[smtp]\nworkers = "many"\n',
            "mta.toml: smtp.workers: expected an integer or one of 'auto', got 'many'",
        ),
        ("[smtp]\nworkers = -1\n", 'mta.toml: smtp: workers must be "auto", 0'),
    ],
)
def test_file_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(str(tmp_path)) and message in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MTA_DELIVERY_PORT": "abc"}, "MTA_DELIVERY_PORT: expected an integer"),
        ({"MTA_DELIVERY_PORT": "0"}, "MTA_DELIVERY_PORT: port must be 1-65535"),
        ({"MTA_SMTP_WORKERS": "two"}, "MTA_SMTP_WORKERS: expected an integer or one of 'auto'"),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ=env)
    assert message in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_the_example_config_file_loads_and_matches_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "mta.toml"
    assert load_config(example, environ={}) == load_config(None, environ={})


def test_one_webhook_from_the_environment() -> None:
    env = {
        "MTA_FEEDBACK_URL": "http://127.0.0.1:8090/webhook",
        "MTA_FEEDBACK_SECRET": "whsec_c2VjcmV0",
    }
    config = load_config(None, environ=env)
    assert [(w.url, w.secret) for w in config.feedback.endpoints] == [
        ("http://127.0.0.1:8090/webhook", "whsec_c2VjcmV0")
    ]
    with pytest.raises(ConfigError, match="MTA_FEEDBACK_URL: url and secret go together"):
        load_config(None, environ={"MTA_FEEDBACK_URL": "http://127.0.0.1:1/"})


def test_an_open_relay_needs_allow_open_relay(tmp_path: Path) -> None:
    path = write(tmp_path, '[smtp]\nrelay_networks = ["0.0.0.0/0"]\nallow_open_relay = true\n')
    assert load_config(path, environ={}).smtp.relay_networks == ("0.0.0.0/0",)


def test_unknown_variables_warn_with_the_closest_known_one() -> None:
    """Kubernetes sets MTA_SERVICE_HOST, MTA_PORT ... for a Service named `mta`: a start
    must not fail on them; a typo gets a hint."""
    warnings: list[str] = []
    env = {
        "MTA_SERVICE_HOST": "10.0.0.1",
        "MTA_PORT": "tcp://10.0.0.1:2525",
        "MTA_SMTP_LISTN": "127.0.0.1:2600",
        "MTA_SMTP_HOSTNAME": "mx.test",
    }
    config = load_config(None, environ=env, warn=warnings.append)
    assert config.smtp.hostname == "mx.test"
    assert config.smtp.listen == "127.0.0.1:2525"  # the typo changed nothing
    assert len(warnings) == 3
    by_name = {w.split("unknown variable ")[1].split()[0]: w for w in warnings}
    assert "did you mean MTA_SMTP_LISTEN?" in by_name["MTA_SMTP_LISTN"]
    assert all("ignored" in w for w in warnings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[clock]\ntime_scale = nan\n", "clock.time_scale: expected a finite number, got nan"),
        ("[retry]\nfactor = inf\n", "retry.factor: expected a finite number, got inf"),
        ("[retry]\nfirst = nan\n", "retry.first: not a duration: nan"),
        ("[dns]\nnameservers = ['resolver']\n", "dns: nameservers: expected IP addresses"),
        ("[dns]\nport = 99999\n", "dns: port must be 1-65535"),
        ("[dns]\ntimeout = 0\n", "dns: timeout must be more than 0"),
        (
            "[[delivery.bindings]]\naddress = '999.1.1.1'\n",
            "delivery.bindings[0]: address: expected an IP address, got '999.1.1.1'",
        ),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_a_flag_error_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="command line: --time-scale: expected a finite"):
        load_config(
            None,
            flags={"clock.time_scale": float("nan")},
            environ={},
            flag_names={"clock.time_scale": "--time-scale"},
        )


def test_workers_are_auto_unless_a_number_is_given(tmp_path: Path) -> None:
    assert load_config(None, environ={}).smtp.workers == "auto"
    assert load_config(None, environ={"MTA_SMTP_WORKERS": "3"}).smtp.workers == 3
    assert load_config(write(tmp_path, "[smtp]\nworkers = 0\n"), environ={}).smtp.workers == 0
    assert load_config(None, environ={"MTA_SMTP_WORKERS": "auto"}).smtp.workers == "auto"
