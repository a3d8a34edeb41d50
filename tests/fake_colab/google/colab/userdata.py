"""Fake ``google.colab.userdata``: secrets from the JSON file ``FAKE_COLAB_SECRETS``."""

import json
import os

from google.colab import _record


class NotebookAccessError(Exception):
    def __init__(self, key):
        super().__init__(f"Notebook does not have access to secret {key}")


class SecretNotFoundError(Exception):
    def __init__(self, key):
        super().__init__(f"Secret {key} does not exist.")


def get(key):
    _record("userdata.get", key=key)
    path = os.environ.get("FAKE_COLAB_SECRETS")
    secrets = json.load(open(path, encoding="utf-8")) if path else {}
    if key not in secrets:
        raise SecretNotFoundError(key)
    if isinstance(secrets[key], dict) and secrets[key].get("denied"):
        raise NotebookAccessError(key)
    return secrets[key]
