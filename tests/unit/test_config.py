"""node.config.load_config: a generated node.toml loads; every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.errors import ConfigError
from node import pki
from node.config import Delivery, Limits, load_config

LISTEN = "127.0.0.1:50052"
BASE = pki.node_toml("320000", LISTEN)


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / "conf" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def replace(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    return ei.value


# --------------------------------------------------------------------------------------------
# valid files


def test_generated_node_toml_loads(federation_dir: Path) -> None:
    path = federation_dir / "nodes" / "320000" / "node.toml"
    cfg = load_config(path)
    node_dir = path.parent.resolve()
    assert cfg.path == path
    assert cfg.code == "320000"
    assert cfg.listen.startswith("127.0.0.1:")
    assert cfg.store_url == f"sqlite:///{node_dir / 'store.db'}"
    expected = {
        "ca_cert": federation_dir / "ca" / "ca.crt",
        "tls_cert": node_dir / "tls.crt",
        "tls_key": node_dir / "tls.key",
        "sign_cert": node_dir / "sign.crt",
        "sign_key": node_dir / "sign.key",
        "manifest": federation_dir / "manifest.bin",
    }
    for attr, target in expected.items():
        value: Path = getattr(cfg, attr)
        assert value.is_absolute(), attr
        assert value.resolve() == target.resolve(), attr
        assert value.is_file(), attr
    assert cfg.limits == Limits()
    assert cfg.delivery == Delivery()
    assert cfg.replica == ""
    assert cfg.metrics_listen == ""
    assert cfg.manifest_refresh_seconds == 5.0


def test_paths_resolve_relative_to_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, BASE)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("conf") / "node.toml")
    conf_dir = (tmp_path / "conf").resolve()
    assert cfg.tls_cert == conf_dir / "tls.crt"
    assert cfg.ca_cert.resolve() == (tmp_path.parent / "ca" / "ca.crt").resolve()
    assert cfg.store_url == f"sqlite:///{conf_dir / 'store.db'}"
    assert load_config(str(path)).tls_cert == cfg.tls_cert


def test_absolute_paths_and_urls_are_kept(tmp_path: Path) -> None:
    text = replace('cert = "tls.crt"', 'cert = "/etc/cccfed/tls.crt"')
    text = replace('"sqlite:///store.db"', '"sqlite:////var/lib/cccfed/store.db"', text)
    cfg = load_config(write(tmp_path, text))
    assert cfg.tls_cert == Path("/etc/cccfed/tls.crt")
    assert cfg.store_url == "sqlite:////var/lib/cccfed/store.db"
    pg = replace('"sqlite:///store.db"', '"postgresql+psycopg://u@127.0.0.1/cccfed"')
    assert load_config(write(tmp_path, pg)).store_url == "postgresql+psycopg://u@127.0.0.1/cccfed"


def test_optional_settings(tmp_path: Path) -> None:
    text = replace(
        'store_url = "sqlite:///store.db"', 'store_url = "sqlite:///s.db"\nreplica = "a"'
    )
    text = replace("call_timeout_seconds = 10", "call_timeout_seconds = 2.5", text)
    text += "\n[delivery]\nconcurrency = 4\nretry_initial_seconds = 1\n\n[manifest]\n"
    text = text.replace('[manifest]\npath = "../../manifest.bin"\n', "", 1)
    text += 'path = "m.bin"\nrefresh_seconds = 1\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.replica == "a"
    assert cfg.limits.call_timeout_seconds == 2.5
    assert cfg.delivery.concurrency == 4
    assert cfg.delivery.retry_initial_seconds == 1.0
    assert isinstance(cfg.delivery.retry_initial_seconds, float)
    assert cfg.manifest_refresh_seconds == 1.0
    assert cfg.manifest.name == "m.bin"


def test_limits_section_is_optional(tmp_path: Path) -> None:
    text = BASE[: BASE.index("[limits]")]
    assert load_config(write(tmp_path, text)).limits == Limits()


# --------------------------------------------------------------------------------------------
# errors: each names the file and the key


NODE_BLOCK = BASE[BASE.index("[node]") : BASE.index("[tls]")]
TLS_BLOCK = BASE[BASE.index("[tls]") : BASE.index("[signing]")]


def case(id_: str, text: str, key: str, reason: str) -> object:
    return pytest.param(text, key, reason, id=id_)


ERROR_CASES = [
    case("missing-section-node", replace(NODE_BLOCK, ""), "[node]", "CONFIG_MISSING"),
    case("missing-section-tls", replace(TLS_BLOCK, ""), "[tls]", "CONFIG_MISSING"),
    case("renamed-section", replace("[node]\n", "[nodes]\n"), "[nodes]", "CONFIG_UNKNOWN"),
    case(
        "missing-listen", replace(f'listen = "{LISTEN}"\n', ""), "[node] listen", "CONFIG_MISSING"
    ),
    case("missing-code", replace('code = "320000"\n', ""), "[node] code", "CONFIG_MISSING"),
    case(
        "missing-manifest-path",
        replace('path = "../../manifest.bin"\n', ""),
        "[manifest] path",
        "CONFIG_MISSING",
    ),
    case(
        "missing-signing-key",
        replace('key = "sign.key"\n', ""),
        "[signing] key",
        "CONFIG_MISSING",
    ),
    case(
        "type-string-for-int",
        replace("max_message_bytes = 4194304", 'max_message_bytes = "big"'),
        "[limits] max_message_bytes",
        "CONFIG_TYPE",
    ),
    case(
        "type-float-for-int",
        replace("max_clock_skew_seconds = 300", "max_clock_skew_seconds = 300.5"),
        "[limits] max_clock_skew_seconds",
        "CONFIG_TYPE",
    ),
    case(
        "type-bool-for-int",
        replace("max_message_bytes = 4194304", "max_message_bytes = true"),
        "[limits] max_message_bytes",
        "CONFIG_TYPE",
    ),
    case(
        "type-bool-for-float",
        replace("call_timeout_seconds = 10", "call_timeout_seconds = false"),
        "[limits] call_timeout_seconds",
        "CONFIG_TYPE",
    ),
    case(
        "type-int-for-str",
        replace('code = "320000"', "code = 320000"),
        "[node] code",
        "CONFIG_TYPE",
    ),
    case(
        "type-section-not-table",
        "limits = 5\n" + BASE[: BASE.index("[limits]")],
        "[limits]",
        "CONFIG_TYPE",
    ),
    case(
        "unknown-key",
        replace("max_message_bytes = 4194304", "max_message_bytes = 4194304\nmax_mesage_age = 1"),
        "[limits] max_mesage_age",
        "CONFIG_UNKNOWN",
    ),
    case(
        "unknown-key-node",
        replace('code = "320000"', 'code = "320000"\nport = 1'),
        "[node] port",
        "CONFIG_UNKNOWN",
    ),
    case(
        "unknown-section",
        BASE + '\n[logging]\nlevel = "info"\n',
        "[logging]",
        "CONFIG_UNKNOWN",
    ),
    case(
        "listen-no-port",
        replace(f'listen = "{LISTEN}"', 'listen = "127.0.0.1"'),
        "[node] listen",
        "CONFIG_RANGE",
    ),
    case(
        "listen-port-text",
        replace(f'listen = "{LISTEN}"', 'listen = "127.0.0.1:http"'),
        "[node] listen",
        "CONFIG_RANGE",
    ),
    case(
        "listen-port-range",
        replace(f'listen = "{LISTEN}"', 'listen = "127.0.0.1:70000"'),
        "[node] listen",
        "CONFIG_RANGE",
    ),
    case(
        "listen-no-host",
        replace(f'listen = "{LISTEN}"', 'listen = ":50052"'),
        "[node] listen",
        "CONFIG_RANGE",
    ),
    case(
        "code-not-delta",
        replace('code = "320000"', 'code = "110000"'),
        "[node] code",
        "CONFIG_RANGE",
    ),
    case(
        "code-city",
        replace('code = "320000"', 'code = "320500"'),
        "[node] code",
        "CONFIG_RANGE",
    ),
    case(
        "negative-limit",
        replace("max_message_bytes = 4194304", "max_message_bytes = -1"),
        "[limits] max_message_bytes",
        "CONFIG_RANGE",
    ),
    case(
        "zero-limit",
        replace("call_timeout_seconds = 10", "call_timeout_seconds = 0"),
        "[limits] call_timeout_seconds",
        "CONFIG_RANGE",
    ),
    case(
        "negative-delivery",
        BASE + "\n[delivery]\nconcurrency = -3\n",
        "[delivery] concurrency",
        "CONFIG_RANGE",
    ),
    case(
        "store-url-mysql",
        replace('"sqlite:///store.db"', '"mysql://u@h/db"'),
        "[node] store_url",
        "CONFIG_RANGE",
    ),
    case(
        "store-url-path",
        replace('"sqlite:///store.db"', '"store.db"'),
        "[node] store_url",
        "CONFIG_RANGE",
    ),
    case(
        "log-format-unknown",
        replace('code = "320000"', 'code = "320000"\nlog_format = "xml"'),
        "[node] log_format",
        "CONFIG_RANGE",
    ),
    case(
        "peers-unknown-code",
        BASE + '\n[peers]\n110000 = "127.0.0.1:1"\n',
        "[peers] 110000",
        "CONFIG_UNKNOWN",
    ),
    case(
        "peers-not-host-port",
        BASE + '\n[peers]\n310000 = "127.0.0.1"\n',
        "[peers] 310000",
        "CONFIG_RANGE",
    ),
    case(
        "delivery-batch-not-bool",
        BASE + "\n[delivery]\nbatch = 1\n",
        "[delivery] batch",
        "CONFIG_TYPE",
    ),
    case("peers-not-text", BASE + "\n[peers]\n310000 = 5\n", "[peers] 310000", "CONFIG_TYPE"),
    case(
        "peers-self", BASE + '\n[peers]\n320000 = "127.0.0.1:9"\n', "[peers] 320000", "CONFIG_RANGE"
    ),
]


def test_log_format_and_peer_overrides_load(tmp_path: Path) -> None:
    text = replace('code = "320000"', 'code = "320000"\nlog_format = "json"')
    text += '\n[peers]\n310000 = "127.0.0.1:6001"\n340000 = "localhost:6002"\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.log_format == "json"
    assert cfg.peer_endpoints == {"310000": "127.0.0.1:6001", "340000": "localhost:6002"}
    plain = load_config(write(tmp_path, BASE, "plain.toml"))
    assert plain.log_format == "text"
    assert plain.peer_endpoints == {}


@pytest.mark.parametrize(("text", "key", "reason"), ERROR_CASES)
def test_error_names_file_and_key(text: str, key: str, reason: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    err = config_error(path)
    assert str(path) in str(err)
    assert key in str(err)
    assert err.reason == reason


@pytest.mark.parametrize(
    "text",
    [
        replace("max_message_bytes = 4194304", "max_message_bytes = "),
        replace("[limits]", "[limits"),
        BASE + '\n[node]\ncode = "310000"\n',  # a table defined twice
        replace('code = "320000"', 'code = "320000"\ncode = "310000"'),
    ],
    ids=["no-value", "unclosed-table", "duplicate-table", "duplicate-key"],
)
def test_bad_toml_syntax(text: str, tmp_path: Path) -> None:
    path = write(tmp_path, text)
    err = config_error(path)
    assert str(path) in str(err)
    assert "line" in str(err)  # tomllib says where
    assert err.reason == "CONFIG_SYNTAX"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    err = config_error(path)
    assert str(path) in str(err)
    assert err.reason == "CONFIG_MISSING"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(BASE.encode("utf-8").replace(b"# cccfed", b"# \xff\xfe cccfed"))
    err = config_error(path)
    assert str(path) in str(err)
    assert err.reason == "CONFIG_SYNTAX"
