"""data/hub.py: a hub request without a resolvable host is refused at once, naming the cache as the way on."""

from __future__ import annotations

import socket
import time

import pytest

from data.errors import DataError
from data.hub import OFFLINE_VARIABLES, check_hub_reachable, hub_offline
from data.sources import Source
from data.tokenizer import load_tokenizer


@pytest.fixture
def no_network(monkeypatch):
    """Online mode, no proxy, the default endpoint, on a machine where no name resolves (as a host without a network
    answers at once)."""
    from huggingface_hub import constants

    for name in (*OFFLINE_VARIABLES, "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    asked = []

    def unresolved(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unresolved)
    return asked


def test_a_hub_dataset_without_a_network_is_refused_at_once_naming_the_host_and_the_cache(no_network):
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"^cannot reach the Hugging Face hub for hub dataset 'org/data': huggingface"
                                        r"\.co does not resolve \(Name or service not known\); hub datasets need "
                                        r"internet, or set HF_HUB_OFFLINE=1 to load it from the local cache$"):
        Source("org/data", None, "train").open()
    assert time.perf_counter() - start < 5 and no_network == ["huggingface.co"]  # huggingface_hub retries ~20 s


def test_a_hub_tokenizer_without_a_network_is_refused_at_once_naming_the_packaged_one(no_network):
    with pytest.raises(DataError, match=r"tokenizer 'org/tok': .* or use data.tokenizer=gpt2, or set HF_HUB_OFFLINE"):
        load_tokenizer.__wrapped__("org/tok")


def test_the_endpoint_is_the_one_the_hub_libraries_use(no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.org:8443")
    with pytest.raises(DataError, match="hub.example.org does not resolve"):
        check_hub_reachable("x", "y")


@pytest.mark.parametrize("name", OFFLINE_VARIABLES)
@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_offline_mode_skips_the_look_and_leaves_the_cache_to_the_libraries(no_network, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert hub_offline()
    check_hub_reachable("x", "y")
    assert no_network == []


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_other_values_are_online(no_network, monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert not hub_offline()


def test_a_local_dataset_folder_named_as_a_hub_source_needs_no_network(no_network, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "local"}\n')
    assert [row["text"] for row in Source(str(tmp_path), None, "train").open()] == ["local"]
    assert no_network == []


def test_a_proxy_resolves_the_host_itself_so_nothing_is_looked_at(no_network, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    check_hub_reachable("x", "y")
    assert no_network == []
    monkeypatch.setenv("NO_PROXY", "huggingface.co")  # bypassed for the hub: looked at again
    with pytest.raises(DataError, match="huggingface.co does not resolve"):
        check_hub_reachable("x", "y")


def test_a_tokenizer_in_the_hub_cache_loads_without_a_network(no_network, monkeypatch, tmp_path):
    """A run trained with a hub tokenizer goes on (resume, generate) on a machine without a network."""
    import huggingface_hub

    from data.tokenizer import gpt2_tokenizer

    saved = tmp_path / "tokenizer.json"
    gpt2_tokenizer().save(str(saved))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda name, filename: str(saved))
    monkeypatch.setattr("data.tokenizer.Tokenizer.from_pretrained", lambda name: gpt2_tokenizer())
    assert load_tokenizer.__wrapped__("org/cached").vocab_size == 50257 and no_network == []
