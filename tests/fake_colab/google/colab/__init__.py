"""Fake ``google.colab`` for tests: see tests/fake_colab/README.md."""

import json
import os


def _record(call: str, **details) -> None:
    log = os.environ.get("FAKE_COLAB_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"call": call, **details}) + "\n")
