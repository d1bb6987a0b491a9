"""Config: defaults < TOML < flags, typos are errors; Store: counters persist, transactions roll back."""

from __future__ import annotations

import pytest

from p2pnode.config import NodeConfig, load_config
from p2pnode.errors import ConfigError
from p2pnode.store import Store, schema


def test_defaults_file_and_overrides(tmp_path):
    (tmp_path / "config.toml").write_text('[net]\nlisten = ["/ip4/127.0.0.1/tcp/5001"]\nheartbeat_s = 2\n'
                                          '[offer]\nprice = 7\n')
    cfg = load_config(home=tmp_path)
    assert cfg.net.listen == ["/ip4/127.0.0.1/tcp/5001"] and cfg.net.heartbeat_s == 2.0 and cfg.offer.price == 7
    assert cfg.net.bootstrap == [] and cfg.key_file == tmp_path / "identity.json"
    cfg = load_config(home=tmp_path, overrides={"net": {"listen": ["/ip4/0.0.0.0/tcp/1"], "bootstrap": None},
                                                "offer": {"price": None}})
    assert cfg.net.listen == ["/ip4/0.0.0.0/tcp/1"] and cfg.offer.price == 7  # None = flag not given
    assert NodeConfig().net.heartbeat_s == 1.0


@pytest.mark.parametrize("text, match", [
    ("[net]\nlisen = []\n", "unknown setting 'lisen'"),
    ("[nett]\n", "unknown setting 'nett'"),
    ("[net]\nmax_peers = 'many'\n", "expected an integer"),
    ("[net]\nlisten = '/ip4/1.2.3.4/tcp/1'\n", "expected a list"),
    ("[offer]\nttl_s = 601\n", "ttl_s"),
    ("[offer]\nmin_s = 10\nmax_s = 5\n", "min_s"),
    ("[net\n", "invalid TOML"),
])
def test_config_errors_are_user_errors(tmp_path, text, match):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(home=tmp_path)


def test_missing_explicit_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


schema("test_core_rows", "CREATE TABLE IF NOT EXISTS test_core_rows (k TEXT PRIMARY KEY, v INTEGER NOT NULL);")


def test_store_counter_persists_and_tx_rolls_back(tmp_path):
    path = tmp_path / "node.db"
    store = Store(path)
    assert [store.next_counter("seq") for _ in range(3)] == [1, 2, 3]
    assert store.next_counter("seq", at_least=10) == 10
    with pytest.raises(RuntimeError):
        with store.tx() as db:
            db.execute("INSERT INTO test_core_rows VALUES ('a', 1)")
            raise RuntimeError("boom")
    assert store.query("SELECT * FROM test_core_rows") == []
    with store.tx() as db:
        with store.tx():  # nested joins the outer
            db.execute("INSERT INTO test_core_rows VALUES ('b', 2)")
    store.put("x", b"y")
    store.close()
    again = Store(path)
    assert again.next_counter("seq") == 11
    assert [tuple(r) for r in again.query("SELECT k, v FROM test_core_rows")] == [("b", 2)]
    assert again.get("x") == b"y" and again.get("missing", 5) == 5
    assert again.query("PRAGMA journal_mode")[0][0] == "wal"
    again.close()


def test_client_flags_are_settable_in_toml_and_flags_win(tmp_path):
    import pytest

    from p2pnode.cli.net import price_limit
    from p2pnode.config import ConfigError, load_config

    (tmp_path / "config.toml").write_text('[client]\nverbose = true\nmax_price = "2.5"\nstatus_timeout_s = 3.0\n'
                                          'wait_s = 1.5\ndevice_kind = "cuda"\ngpu = "H100"\nmin_tflops = 10.0\n')
    cfg = load_config(home=tmp_path)
    c = cfg.client
    assert (c.verbose, c.max_price, c.status_timeout_s, c.wait_s, c.device_kind, c.gpu, c.min_tflops) == \
        (True, "2.5", 3.0, 1.5, "cuda", "H100", 10.0)
    flags = load_config(home=tmp_path, overrides={"client": {"max_price": "7", "wait_s": None, "verbose": None}})
    assert flags.client.max_price == "7" and flags.client.wait_s == 1.5 and flags.client.verbose is True
    assert price_limit("2.5") == 250_000_000 and price_limit("") is None
    with pytest.raises(ConfigError):
        price_limit("cheap")
    (tmp_path / "config.toml").write_text('[client]\nmax_prize = "1"\n')
    with pytest.raises(ConfigError, match="max_prize"):
        load_config(home=tmp_path)
