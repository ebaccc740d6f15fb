"""Test session set-up: no test may reach for a model hub (this machine has no network to one).

huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported (timm imports it), so the
flag must be set before any test module imports anything."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
