"""Tests never touch the network: Hugging Face libraries run offline (set before they are imported), wandb quietly."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_SILENT", "true")
