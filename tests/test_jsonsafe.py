import json
import re

import pytest

from nbutils.core import jsonsafe


def test_encode_escapes_lone_surrogates_and_reads_back_the_same_string():
    text = jsonsafe.dumps({"d": "x \ud800 y \udcff é"})
    assert jsonsafe.encode(text) == '{"d": "x \\ud800 y \\udcff é"}'.encode()
    assert json.loads(jsonsafe.encode(text)) == {"d": "x \ud800 y \udcff é"}
    assert jsonsafe.clean_text("x \ud800 y") == "x \ufffd y"


@pytest.mark.parametrize("text, message, line", [
    ('{"a": %s}' % ("1" * 5000), "an integer with 5000 digits (more than 100)", 1),
    ('[\n1,\n-%s]' % ("2" * 101), "an integer with 101 digits", 3),
    ("\n\n" + "[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels", 3),
])
def test_loads_refuses_huge_integers_and_deep_nesting_and_says_where(text, message, line):
    with pytest.raises(jsonsafe.LimitError, match=re.escape(message)) as err:
        jsonsafe.loads(text)
    assert text.count("\n", 0, err.value.pos) + 1 == line


def test_loads_reads_what_is_within_bounds():
    assert jsonsafe.loads('{"s": "[[[[ %s", "n": %s}' % ("7" * 200, "9" * 100)) == {"s": "[[[[ " + "7" * 200,
                                                                                      "n": int("9" * 100)}
    assert jsonsafe.loads("[" * 64 + "]" * 64) is not None
    with pytest.raises(json.JSONDecodeError):
        jsonsafe.loads("{oops")
