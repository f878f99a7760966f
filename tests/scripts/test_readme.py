"""The README's config reference is generated from the config dataclasses and must be current."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
config_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(config_reference)


def test_config_reference_in_readme_is_current():
    assert config_reference.readme_section() == config_reference.reference(), (
        "README.md config reference is stale: run python scripts/config_reference.py --write"
    )


def test_every_config_key_is_documented():
    text = config_reference.reference()
    for key in ("`attention`", "`position`", "`block_size`", "`grad_accum`", "`wandb`", "`resume`"):
        assert key in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all(not line.endswith("|  |") for line in rows)  # every key has a comment
